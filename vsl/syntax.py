"""Parsing: script text -> Lark parse tree -> typed AST (:mod:`vsl.ast`).

The LALR parser is built once per process (and cached on disk by Lark).
Lark errors are translated into :class:`VslSyntaxError` with the position,
the source line and the expected tokens in words.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .errors import Pos, VslSyntaxError

# grammar/ sits beside vsl/ in the source tree and in an installed wheel.
GRAMMAR = Path(__file__).resolve().parent.parent / "grammar" / "vsl.lark"

I64_MIN, I64_MAX = -(2 ** 63), 2 ** 63 - 1

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
    text = GRAMMAR.read_text(encoding="utf-8")
    return Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=True,
                cache=True, lexer_callbacks={"NAME": _reject_reserved})


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


def line_of(source: str, line: int) -> str:
    """Line ``line`` (1-based) of ``source``, "" past either end: the line an error shows."""
    lines = source.splitlines()
    return lines[line - 1] if 0 < line <= len(lines) else ""


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


def _translate(err: UnexpectedInput, source: str, file: str) -> VslSyntaxError:
    if isinstance(err, UnexpectedCharacters):
        rest = source[err.pos_in_stream:]
        if rest.startswith('"'):
            msg = "unterminated string"
        elif rest.startswith("`"):
            msg = "unterminated backtick string (or an interpolation it cannot hold)"
        elif rest.startswith("/*"):
            msg = "unterminated block comment"
        else:
            msg = f"unexpected character {rest[:1]!r}"
        return _syntax_error(source, file, msg, err.line, err.column)
    if isinstance(err, UnexpectedEOF):
        line = source.count("\n") + 1
        col = len(source) - source.rfind("\n")
        return _syntax_error(source, file, "unexpected end of file, expected "
                             + expected_words(set(err.expected)), line, col)
    assert isinstance(err, UnexpectedToken)
    tok = err.token
    if tok.type == "$END":
        line = source.count("\n") + 1
        col = len(source) - source.rfind("\n")
    else:
        line, col = tok.line, tok.column
    expected = set(err.expected)
    if err.interactive_parser is not None:
        expected = err.interactive_parser.accepts() or expected  # exact, not LALR-merged
    msg = f"unexpected {_describe_token(tok)}, expected {expected_words(expected)}"
    if tok.type != "$END" and source.startswith("/*", tok.start_pos):
        msg = "unterminated block comment"
    elif tok.type == "NAME" and str(tok) in RESERVED:
        msg = f"'{tok}' is a reserved word"
    elif tok.type == "RBRACE" and "SEMICOLON" in err.expected:
        msg = "expected ';' before '}'"
    return _syntax_error(source, file, msg, line, col)


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


def parse_tree(source: str, file: str) -> Tree:
    """Parse script text into a Lark tree, raising VslSyntaxError on error."""
    try:
        return _parser().parse(source)
    except UnexpectedInput as err:
        raise _translate(err, source, file) from None
    except _ReservedWord as err:
        tok = err.token
        hint = {"null": " (use () for nothing)", "nil": " (use () for nothing)",
                "var": " (use let)", "match": " (use switch)"}.get(str(tok), "")
        raise _syntax_error(source, file, f"'{tok}' is a reserved word{hint}", tok.line,
                            tok.column) from None


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
