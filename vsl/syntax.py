"""Parsing: script text -> Lark parse tree -> typed AST (:mod:`vsl.ast`).

The LALR parser is built once per process (its tables cached in a private directory, see
:mod:`vsl.parser_cache`); text is parsed by a lean driver over its tables
(:mod:`vsl.lalr_driver`), and by Lark itself where that one gives up, to report the error.
Lark errors are translated into :class:`VslSyntaxError` with the position,
the source line and the expected tokens in words.
"""
from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import lark
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from . import parse_tree as parse_tree_callbacks
from .errors import Pos, VslSyntaxError
from .lalr_driver import FastParser, fast_parser
from .parser_cache import grammar_cache
from .script_file import line_of

# grammar/ is installed as the package vsl.grammar (see pyproject.toml).
GRAMMAR = files("vsl.grammar") / "vsl.lark"

RESERVED = frozenset("""
    var static null nil void default match case goto spawn async await yield public private
    protected super new use with module package export this shared sync thread go exit
    is typeof and or not def class function do until struct enum self
""".split())

_TOKEN_WORDS = {
    "NAME": "a name", "INT": "a number", "FLOAT": "a number",
    "STRING": "a string", "TEMPLATE": "a string", "IN_OP": "'in'",
    "$END": "end of file",
}
_EXPR_START = {"NAME", "INT", "FLOAT", "STRING", "TEMPLATE"}
_EXPR_WORDS = {"'('", "'['", "'#{'", "'-'", "'!'", "'+'", "'true'", "'false'", "'if'",
               "'switch'", "'{'", "'|'", "'||'"}
_OPERATOR_WORDS = {f"'{op}'" for op in (
    "+ - * / % ** == != < <= > >= && || ?? .. ..= = += -= *= /= %= **= . [".split())} | {"'in'"}
_PUNCTUATION_ORDER = ["';'", "','", "')'", "']'", "'}'", "'{'", "'=>'", "':'"]


@lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = GRAMMAR.read_text(encoding="utf-8")
    return build_parser(grammar, grammar_cache(grammar, lark.__version__))


def build_parser(grammar: str, cache: Path | None) -> Lark:
    """The parser of ``grammar``, its tables cached in ``cache`` (see :mod:`vsl.parser_cache`)."""
    parser = Lark(grammar, parser="lalr", maybe_placeholders=True,
                  cache=str(cache) if cache else False, lexer_callbacks={"NAME": _reject_reserved})
    parse_tree_callbacks.install(parser)
    return parser


@lru_cache(maxsize=1)
def _fast_parser() -> FastParser | None:
    return fast_parser(_parser())


def _parse(text: str) -> Tree:
    """The tree of ``text``: the lean driver's, or Lark's, which raises Lark's errors."""
    fast = _fast_parser()
    tree = fast.parse(text) if fast is not None else None
    return tree if tree is not None else _parser().parse(text)


def _token_word(name: str) -> str:
    if name in _TOKEN_WORDS:
        return _TOKEN_WORDS[name]
    for term in _parser().terminals:
        if term.name == name and term.pattern.type == "str":
            return f"'{term.pattern.value}'"
    return name.lower()


def expected_words(expected: set[str]) -> str:
    """Describe a set of Lark terminal names in words: "';' or '}'", "an expression"."""
    summary = []
    if {"NAME", "INT"} <= set(expected):
        words = {_token_word(n) for n in expected if n not in _EXPR_START} - _EXPR_WORDS
        summary.append("an expression")
    else:
        words = {_token_word(n) for n in expected}
    operators = words & _OPERATOR_WORDS
    if len(operators) >= 3:
        words -= operators
        summary.append("an operator")
    first = [w for w in _PUNCTUATION_ORDER if w in words]
    ordered = first + sorted(words - set(first)) + summary
    if len(ordered) > 8:
        ordered = ordered[:8] + ["..."]
    if len(ordered) == 1:
        return ordered[0]
    return ", ".join(ordered[:-1]) + " or " + ordered[-1]


def _syntax_error(source: str, file: str, message: str, line: int, col: int) -> VslSyntaxError:
    return VslSyntaxError(message, Pos(file, line, col), line_of(source, line))


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type in ("NAME",):
        return f"name '{tok}'"
    if tok.type in ("INT", "FLOAT"):
        return f"number {tok}"
    if tok.type in ("STRING", "TEMPLATE"):
        return "string"
    return f"'{tok}'"


def _translate(err: UnexpectedInput, text: str) -> tuple[str, tuple[int, int]]:
    """The message and the position (in ``text``) of a Lark error."""
    if isinstance(err, UnexpectedCharacters):
        rest = text[err.pos_in_stream:]
        if rest.startswith('"'):
            msg = "unterminated string"
        elif rest.startswith("`"):
            msg = "unterminated backtick string (or an interpolation it cannot hold)"
        elif rest.startswith("/*"):
            msg = "unterminated block comment"
        else:
            msg = f"unexpected character {rest[:1]!r}"
        return msg, (err.line, err.column)
    if isinstance(err, UnexpectedEOF):
        return ("unexpected end of file, expected " + expected_words(set(err.expected)),
                _end_of(text))
    assert isinstance(err, UnexpectedToken)
    tok = err.token
    loc = _end_of(text) if tok.type == "$END" else (tok.line, tok.column)
    expected = set(err.expected)
    if err.interactive_parser is not None:
        expected = err.interactive_parser.accepts() or expected  # exact, not LALR-merged
    msg = f"unexpected {_describe_token(tok)}, expected {expected_words(expected)}"
    if tok.type != "$END" and text.startswith("/*", tok.start_pos):
        msg = "unterminated block comment"
    elif tok.type == "NAME" and str(tok) in RESERVED:
        msg = f"'{tok}' is a reserved word"
    elif tok.type == "RBRACE" and "SEMICOLON" in err.expected:
        msg = "expected ';' before '}'"
    return msg, loc


def _end_of(text: str) -> tuple[int, int]:
    """The line and column just past the end of ``text``."""
    return text.count("\n") + 1, len(text) - text.rfind("\n")


class _ReservedWord(Exception):
    def __init__(self, token: Token):
        self.token = token


KEYWORDS = frozenset("""
    let const fn if else switch while loop for in break continue return throw try catch
    import as true false
""".split())


@lru_cache(maxsize=1)
def _keyword_types() -> dict[str, str]:
    types = {t.pattern.value: t.name for t in _parser().terminals
             if t.pattern.type == "str" and t.pattern.value in KEYWORDS}
    return types | {"in": "IN_OP"}


def _reject_reserved(tok: Token) -> Token:
    """Lexer callback on names. A reserved word is an error; a keyword the contextual lexer
    read as a name (``let fn = 1``) becomes its keyword token again, so the parser reports
    it as unexpected with the exact tokens it expected."""
    if str(tok) in RESERVED:
        raise _ReservedWord(tok)
    if str(tok) in KEYWORDS:
        return Token.new_borrow_pos(_keyword_types()[str(tok)], str(tok), tok)
    return tok


def parse_tree(text: str, file: str, origin: tuple[int, int] = (1, 1),
               source: str | None = None) -> Tree:
    """Parse script text into a Lark tree, raising VslSyntaxError on error. ``text`` may be
    a piece of the file's ``source`` that starts at ``origin`` (an interpolation, parsed as
    it is): the positions in the tree and in the error are the file's all the same."""
    try:
        tree = _parse(text)
    except UnexpectedInput as err:
        msg, loc = _translate(err, text)
    except _ReservedWord as err:
        tok = err.token
        hint = {"null": " (use () for nothing)", "nil": " (use () for nothing)",
                "var": " (use let)", "match": " (use switch)"}.get(str(tok), "")
        msg, loc = f"'{tok}' is a reserved word{hint}", (tok.line, tok.column)
    else:
        if origin != (1, 1):
            _shift_positions(tree, origin)
        return tree
    line, col = _shifted(loc, origin)
    raise _syntax_error(text if source is None else source, file, msg, line, col)


def _shifted(loc: tuple[int, int], origin: tuple[int, int]) -> tuple[int, int]:
    """Where ``loc``, a position in a piece of text that starts at ``origin``, is in the
    whole text."""
    line, col = loc
    if line == 1:
        return origin[0], origin[1] + col - 1
    return origin[0] + line - 1, col


def _shift_positions(tree: Tree, origin: tuple[int, int]) -> None:
    """Move every position in ``tree``, parsed from a piece of text that starts at
    ``origin``, to its place in the whole text (offsets such as start_pos and the ends of
    tokens stay the piece's). A node shares its start with its first child: each start
    moves once."""
    moved = set()
    for node in tree.iter_subtrees():
        start = node.meta
        if not start.empty and id(start) not in moved:
            moved.add(id(start))
            start.line, start.column = _shifted((start.line, start.column), origin)
        for tok in node.children:
            if isinstance(tok, Token):
                tok.line, tok.column = _shifted((tok.line, tok.column), origin)


# Left-associative operators and postfix chains: ``a + b + c`` and ``s.trim().len()``
# parse as a left child of the same rule, which is one level of nesting, not one per term.
_LEFT_CHAINS = frozenset({"or_op", "and_op", "binop", "in_op", "coalesce_op", "prop", "method",
                          "index"})
# A chain still nests in the compiled code, and CPython's compiler refuses about 1,000
# levels: counting each operator of a chain as a level, no path of the tree may be longer
# than this, whatever max_expr_depth says.
MAX_LEVELS = 200


def check_depth(tree: Tree, limit: int, source: str, file: str) -> None:
    """Reject trees nested deeper than ``limit`` (iteratively: no recursion). The left
    operand of a chain of the same operator kind is at the chain's level (see _LEFT_CHAINS);
    ``levels`` counts every level, chains included (see MAX_LEVELS)."""
    stack = [(tree, 1, 1)]
    while stack:
        node, depth, levels = stack.pop()
        if limit and depth > limit:
            raise _node_error(node, source, file, f"expression nested too deeply (more than "
                              f"{limit} levels; raise limits.max_expr_depth)")
        if levels > MAX_LEVELS:
            raise _node_error(node, source, file, f"expression too long (more than "
                              f"{MAX_LEVELS} levels, counting each operator of a chain; "
                              "split it with let)")
        for i, child in enumerate(node.children):
            if isinstance(child, Tree):
                chained = i == 0 and child.data == node.data and node.data in _LEFT_CHAINS
                stack.append((child, depth if chained else depth + 1, levels + 1))


def _node_error(node: Tree, source: str, file: str, message: str) -> VslSyntaxError:
    meta = node.meta
    return _syntax_error(source, file, message, getattr(meta, "line", 1),
                         getattr(meta, "column", 1))
