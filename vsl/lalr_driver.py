"""A lean LALR driver over Lark's own tables and lexers, for text that parses.

Design note. Lark's LALR loop and contextual lexer spend most of their time on generality
(a lexer state object and a line counter per text, an ``assert`` that compares rules on
every reduction, a generator between lexer and parser). :class:`FastParser` runs the same
machine from the same parts: the parse table and the goto table of Lark's parser, each
parser state's lexer (its compiled patterns and its callbacks, keyword and reserved-word
checks included) and the tree callbacks (vsl/parse_tree.py). A ``?rule`` that only passes
its child on costs one goto, no call. It only ever parses text Lark accepts, the same way:
at the first thing it would have to report (an unexpected character or token, a lexer
callback that raises) it gives up and returns None, and the caller has Lark parse the text,
which raises the error with Lark's own description. Built on parts of Lark that are not its
documented API: :func:`fast_parser` returns None (Lark then parses everything) when a
version of Lark lacks one of them.
"""
from __future__ import annotations

from lark import Lark, Token, Tree

from .parse_tree import pass_through


class _GiveUp(Exception):
    """Something Lark would report: let it parse the text."""


class _StateLexer:
    """The terminals one parser state accepts: patterns, callbacks, what is skipped."""

    __slots__ = ("patterns", "callbacks", "ignore", "newlines")

    def __init__(self, basic_lexer):
        scanner = basic_lexer.scanner  # built on first use, with the callbacks
        self.patterns = tuple(scanner._mres)
        self.callbacks = dict(basic_lexer.callback)
        self.ignore = frozenset(basic_lexer.ignore_types)
        self.newlines = frozenset(basic_lexer.newline_types)


class FastParser:
    """Parses text with a Lark LALR parser's tables, or gives up (None) where Lark would
    raise."""

    def __init__(self, parser: Lark):
        lalr = parser.parser.parser.parser
        table, callbacks = lalr.parse_table, lalr.callbacks
        self.start = table.start_states["start"]
        self.end = table.end_states["start"]
        # state -> {terminal: (True, next state) | (False, (size, callback, rule name))}
        self.actions: dict[int, dict] = {}
        self.gotos: dict[int, dict] = {}
        for state, row in table.states.items():
            actions, gotos = {}, {}
            for symbol, (action, arg) in row.items():
                if action.name != "Shift":
                    actions[symbol] = (False, (len(arg.expansion), callbacks[arg],
                                               arg.origin.name))
                elif symbol.isupper() or symbol == "$END":  # a terminal
                    actions[symbol] = (True, arg)
                else:  # a rule: where to go once it is reduced
                    gotos[symbol] = arg
            self.actions[state], self.gotos[state] = actions, gotos
        self.lark_lexers = parser.parser.lexer.lexers  # state -> Lark's lexer for it
        # the lexers made so far (a lexer compiles its patterns: only the states text
        # reaches), by state and by Lark's lexer, which states accepting the same share
        self.lexers: dict[int, _StateLexer] = {}
        self.by_lark_lexer: dict[int, _StateLexer] = {}

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

    def _parse(self, text: str) -> Tree:
        actions, gotos, lexers, end_state = self.actions, self.gotos, self.lexers, self.end
        states, values = [self.start], []
        state = self.start
        tokens = _Tokens(text)
        while True:
            token = tokens.next(lexers.get(state) or self._lexer(state))
            kind = token.type
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
                    state = states[-1] = gotos[states[-2]][origin]
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


class _Tokens:
    """The tokens of a text, each read with the lexer of the parser's state at that point
    (as Lark's contextual lexer does), with Lark's positions."""

    def __init__(self, text: str):
        self.text, self.pos, self.line, self.line_start = text, 0, 1, 0

    def next(self, lexer: _StateLexer) -> Token:
        """The next token that is not skipped, or ``$END``."""
        text, pos, line, line_start = self.text, self.pos, self.line, self.line_start
        try:
            while pos < len(text):
                for pattern in lexer.patterns:
                    match = pattern.match(text, pos)
                    if match:
                        break
                else:
                    raise _GiveUp
                value, kind = match.group(0), match.lastgroup
                start, start_line, column = pos, line, pos - line_start + 1
                pos += len(value)
                if kind in lexer.newlines:
                    newlines = value.count("\n")
                    if newlines:
                        line += newlines
                        line_start = start + value.rindex("\n") + 1
                if kind in lexer.ignore and kind not in lexer.callbacks:
                    continue
                token = _token(kind, value, start, start_line, column, line,
                               pos - line_start + 1, pos)
                if kind in lexer.callbacks:
                    try:
                        token = lexer.callbacks[kind](token)
                    except Exception as err:  # a reserved word, say: Lark raises it
                        raise _GiveUp from err
                if kind not in lexer.ignore:
                    return token
            return Token("$END", "", pos, line, pos - line_start + 1)
        finally:
            self.pos, self.line, self.line_start = pos, line, line_start


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
