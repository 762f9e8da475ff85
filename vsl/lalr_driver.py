"""A lean LALR driver over Lark's own tables and lexers, for text that parses.

Design note. Lark's LALR loop and contextual lexer spend most of their time on generality
(a lexer state object and a line counter per text, an ``assert`` that compares rules on
every reduction, a generator between lexer and parser). :class:`FastParser` runs the same
machine from the same parts: the parse table and the goto table of Lark's parser, each
parser state's terminals (Lark's patterns, in Lark's order, and its callbacks, keyword and
reserved-word checks included) and the tree callbacks (vsl/parse_tree.py). It only ever
parses text Lark accepts, the same way: at the first thing it would have to report (an
unexpected character or token, a lexer callback that raises) it gives up and returns None,
and the caller has Lark parse the text, which raises the error with Lark's own
description. Three things make it fast:

- One match a token, one pattern compiled. Lark compiles a pattern for each parser
  state (the terminals it accepts, in Lark's order) and matches each blank and comment on
  its own, two thirds of its matches. Here one pattern holds every terminal in Lark's
  order (:func:`_scanner`): the ignored ones (blanks, comments), any number of them, in an
  atomic group that never gives back what it matched, then one of the others, or the end
  of the text. A state's own alternatives come in the same order, so where the whole
  pattern matches a terminal the state accepts, the state's pattern would have matched the
  same; elsewhere (``else`` where no name may stand, ``|`` ``|`` where ``||`` may not) the
  state's own pattern decides, compiled on first need (:class:`_StateLexer`): compiling a
  pattern per state was most of a first parse. Skipping the ignored terminals first skips
  exactly what Lark skips as long as no terminal that Lark tries before an ignored one can
  match where the ignored one does (none can in vsl's grammar: no token starts with a
  blank, and ``/`` and ``/=`` come after the comments, being shorter;
  tests/test_parse_tree.py checks it state by state).
- One step for a chain of ``?rule``\\ s. A reduction by ``?a: b`` only changes the state
  on top of the stack, from the state below it: ``x + 1`` passes ``1`` up through a dozen
  of them. The state a whole chain ends in is a function of the state on top, the one
  below and the lookahead, remembered once found (:meth:`FastParser._after_chain`; at most
  one entry per such triple of the table).
- A callback on a terminal (Lark's keyword check, vsl's reserved words) only retypes a
  token by its text: its answer for a text is remembered per lexer (a bounded memo).

Built on parts of Lark that are not its documented API: :func:`fast_parser` returns None
(Lark then parses everything) when a version of Lark lacks one of them.
"""
from __future__ import annotations

import re

import lark.lexer
from lark import Lark, Token, Tree

from .parse_tree import pass_through

_END = "end"  # the group that matches the end of the text (Lark's terminal names are upper case)
_MEMO_LIMIT = 4096  # texts a lexer remembers the callbacks' answer for


class _GiveUp(Exception):
    """Something Lark would report: let it parse the text."""


def _scanner(basic_lexer, terminals: list):
    """One pattern for ``terminals`` (in that order) of ``basic_lexer``: any number of
    ignored ones, never given back, then one of the others or the end of the text."""
    ignore = basic_lexer.ignore_types
    skipped = "|".join(t.pattern.to_regexp() for t in terminals if t.name in ignore)
    tokens = "|".join([*(f"(?P<{t.name}>{t.pattern.to_regexp()})"
                         for t in terminals if t.name not in ignore), f"(?P<{_END}>\\Z)"])
    return re.compile(f"(?>(?:{skipped})*)(?:{tokens})" if skipped else tokens,
                      basic_lexer.g_regex_flags)


class _StateLexer:
    """The terminals one parser state accepts; its own pattern, compiled when first needed;
    the callbacks' answers by text; which terminals may hold a newline."""

    __slots__ = ("accepts", "terminals", "basic_lexer", "pattern", "callbacks", "kinds",
                 "newlines")

    def __init__(self, basic_lexer):
        self.basic_lexer = basic_lexer
        self.terminals, self.callbacks = _terminals_and_callbacks(basic_lexer)
        self.accepts = frozenset(t.name for t in self.terminals) | {_END}
        self.pattern = None
        # terminal -> {text: its kind once the terminal's callback has seen it}
        self.kinds: dict[str, dict[str, str | None]] = {name: {} for name in self.callbacks}
        self.newlines = frozenset(basic_lexer.newline_types)

    def match(self, text: str, pos: int):
        """This state's own match at ``pos`` (None: nothing it accepts is there)."""
        if self.pattern is None:
            self.pattern = _scanner(self.basic_lexer, self.terminals)
        return self.pattern.match(text, pos)

    def retype(self, token: Token, text: str) -> str:
        """The kind of ``token`` (whose text is ``text``) once its terminal's callback has
        seen it."""
        known = self.kinds[token.type]
        kind = known.get(text, 0)
        if kind == 0:
            try:
                kind = self.callbacks[token.type](token).type
            except Exception:  # a reserved word, say: Lark raises it
                kind = None
            if len(known) < _MEMO_LIMIT:
                known[text] = kind
        if kind is None:
            raise _GiveUp
        return kind


def _terminals_and_callbacks(basic_lexer) -> tuple[list, dict]:
    """What Lark's lexer of a state matches, in its order, and the callbacks on them, as
    ``BasicLexer._build_scanner`` makes them but without compiling Lark's own scanner (half
    the work of a first parse): the keywords that ``NAME`` matches are left to its
    callback, and a user's callback on a terminal runs after that one."""
    terminals, callbacks = lark.lexer._create_unless(
        basic_lexer.terminals, basic_lexer.g_regex_flags, basic_lexer.re, basic_lexer.use_bytes)
    for kind, user in basic_lexer.user_callbacks.items():
        callbacks[kind] = lark.lexer.CallChain(callbacks[kind], user,
                                               lambda t, kind=kind: t.type == kind) \
            if kind in callbacks else user
    return terminals, callbacks


class FastParser:
    """Parses text with a Lark LALR parser's tables, or gives up (None) where Lark would
    raise."""

    def __init__(self, parser: Lark):
        lark.lexer._create_unless, lark.lexer.CallChain  # noqa: B018 - this Lark has them
        lalr = parser.parser.parser.parser
        table, callbacks = lalr.parse_table, lalr.callbacks
        self.start = table.start_states["start"]
        self.end = table.end_states["start"]
        # state -> {terminal: (True, next state) | (False, (size, callback, rule name))}
        size = max(table.states) + 1
        self.actions: list[dict] = [{} for _ in range(size)]
        self.gotos: list[dict] = [{} for _ in range(size)]
        for state, row in table.states.items():
            actions, gotos = self.actions[state], self.gotos[state]
            for symbol, (action, arg) in row.items():
                if action.name != "Shift":
                    actions[symbol] = (False, (len(arg.expansion), callbacks[arg],
                                               arg.origin.name))
                elif symbol.isupper() or symbol == "$END":  # a terminal
                    actions[symbol] = (True, arg)
                else:  # a rule: where to go once it is reduced
                    gotos[symbol] = arg
        self.lark_lexers = parser.parser.lexer.lexers  # state -> Lark's lexer for it
        root = parser.parser.lexer.root_lexer  # every terminal, in Lark's order
        self.scan = _scanner(root, _terminals_and_callbacks(root)[0]).match
        # the lexers made so far (a lexer compiles its pattern: only the states text
        # reaches), by state and by Lark's lexer, which states accepting the same share
        self.lexers: list[_StateLexer | None] = [None] * size
        self.by_lark_lexer: dict[int, _StateLexer] = {}
        self.chains: dict[tuple[int, int, str], int] = {}  # see _after_chain

    def parse(self, text: str) -> Tree | None:
        """The tree of ``text``, as Lark's parser makes it; None if Lark would raise."""
        try:
            return self._parse(text)
        except _GiveUp:
            return None

    def _lexer(self, state: int) -> _StateLexer:
        lark_lexer = self.lark_lexers[state]
        lexer = self.by_lark_lexer.get(id(lark_lexer))
        if lexer is None:
            lexer = self.by_lark_lexer[id(lark_lexer)] = _StateLexer(lark_lexer)
        self.lexers[state] = lexer
        return lexer

    def _after_chain(self, state: int, below: int, kind: str) -> int:
        """The state on top once every ``?rule`` reduction that ``kind`` causes from
        ``state`` (with ``below`` under it) is done: each only replaces the top state."""
        top = state
        while True:
            action = self.actions[top].get(kind)
            if action is None or action[0] or action[1][1] is not pass_through:
                break
            top = self.gotos[below][action[1][2]]
        self.chains[state, below, kind] = top
        return top

    def _parse(self, text: str) -> Tree:
        actions, gotos, lexers, end_state = self.actions, self.gotos, self.lexers, self.end
        chains, scan = self.chains, self.scan
        states, values = [self.start], []
        state = self.start
        pos, line, line_start = 0, 1, 0
        while True:
            lexer = lexers[state] or self._lexer(state)
            match = scan(text, pos)
            if match is None:
                raise _GiveUp
            kind = match.lastgroup
            if kind not in lexer.accepts:  # this state matches less: see the design note
                match = lexer.match(text, pos)
                if match is None:
                    raise _GiveUp
                kind = match.lastgroup
            start, end = match.span(kind)
            if start != pos:  # blanks or comments skipped: count their lines
                newlines = text.count("\n", pos, start)
                if newlines:
                    line += newlines
                    line_start = text.rindex("\n", pos, start) + 1
            pos = end
            column = start - line_start + 1
            if kind == _END:
                kind, token = "$END", Token("$END", "", pos, line, column)
            else:
                token_line = line
                if kind in lexer.newlines:
                    newlines = text.count("\n", start, pos)
                    if newlines:
                        line += newlines
                        line_start = text.rindex("\n", start, pos) + 1
                value = match.group(kind)
                token = _token(kind, value, start, token_line, column, line,
                               pos - line_start + 1, pos)
                if kind in lexer.callbacks:
                    token.type = kind = lexer.retype(token, value)
            while True:
                action = actions[state].get(kind)
                if action is None:
                    raise _GiveUp
                shift, arg = action
                if shift:
                    states.append(arg)
                    values.append(token)
                    state = arg
                    break
                count, callback, origin = arg
                if callback is pass_through:  # the child is the node: only the state changes
                    state = states[-1] = chains.get((state, states[-2], kind)) \
                        or self._after_chain(state, states[-2], kind)
                    continue
                if count:
                    children = values[-count:]
                    del states[-count:]
                    del values[-count:]
                else:
                    children = []
                values.append(callback(children))
                state = gotos[states[-1]][origin]
                states.append(state)
                if state == end_state and kind == "$END":
                    return values[-1]


def _token(kind: str, value: str, start: int, line: int, column: int, end_line: int,
           end_column: int, end: int) -> Token:
    """``Token(kind, value, start, line, column, end_line, end_column, end)``, its documented
    attributes set directly: Lark's constructor, which also takes deprecated names, costs
    a tenth of a parse."""
    token = str.__new__(Token, value)
    token.type, token.value, token.start_pos, token.line, token.column = \
        kind, value, start, line, column
    token.end_line, token.end_column, token.end_pos = end_line, end_column, end
    return token


def fast_parser(parser: Lark) -> FastParser | None:
    """A :class:`FastParser` on ``parser``'s tables, or None if this Lark has not the parts
    it uses."""
    try:
        return FastParser(parser)
    except (AttributeError, KeyError, TypeError):
        return None
