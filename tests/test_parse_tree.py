"""The lean tree callbacks (vsl/parse_tree.py) build Lark's own trees, positions included."""
from __future__ import annotations

from pathlib import Path
import re

from lark import Lark, Token, Tree
import pytest

from chunks import collect
from vsl import syntax
from vsl.lalr_driver import fast_parser

HERE = Path(__file__).parent
SOURCES = [c.source for d in ("lang", "lint") for c in collect(HERE / d)] + [
    p.read_text(encoding="utf-8") for folder in (HERE / "transcripts", HERE.parent / "examples")
    for p in sorted(folder.rglob("*.vsl"))]


@pytest.fixture(scope="module")
def lark_own() -> Lark:
    """The parser as Lark builds its trees: ``propagate_positions`` on, no lean callbacks."""
    return Lark(syntax.GRAMMAR.read_text(encoding="utf-8"), parser="lalr",
                propagate_positions=True, maybe_placeholders=True,
                lexer_callbacks={"NAME": syntax._reject_reserved})


def shape(node) -> tuple:
    """A node and its children, with where each starts."""
    if isinstance(node, Token):
        return ("token", node.type, str(node), node.line, node.column)
    if isinstance(node, Tree):
        start = None if node.meta.empty else (node.meta.line, node.meta.column)
        return (node.data, start, tuple(shape(child) for child in node.children))
    return (node,)


def test_trees_match_lark_propagate_positions(lark_own):
    compared = 0
    for source in SOURCES:
        try:
            expected = lark_own.parse(source)
        except Exception:  # a syntax error (Lark's or a reserved word): test_lang checks it
            continue
        assert shape(syntax.parse_tree(source, "t.vsl")) == shape(expected)
        compared += 1
    assert compared > 250


BLANKS_AND_COMMENTS = (
    "// a comment\r\nfn f(a, /* one */ b) {\n\t/* a /* nested */ one\n */ let s = `x\n${a}\n`;"
    "  // end\n  s + \"a\\\nb\" /* last */ }\n\n/**/ f(1,\n 2) // no newline at the end")


def test_blanks_and_comments_are_skipped_where_lark_skips_them(lark_own):
    assert fast_parser(syntax._parser()).parse(BLANKS_AND_COMMENTS) is not None
    assert shape(syntax.parse_tree(BLANKS_AND_COMMENTS, "t.vsl")) == \
        shape(lark_own.parse(BLANKS_AND_COMMENTS))


def test_no_terminal_lark_tries_first_matches_where_an_ignored_one_does():
    """The lean lexer skips the ignored terminals before trying the others (see
    vsl/lalr_driver.py): in every state, whatever Lark would try before an ignored
    terminal does not match where that one matches."""
    samples = {"WS": [" ", "\t", "\n", "\r\n"], "LINE_COMMENT": ["// x", "//"],
               "BLOCK_COMMENT": ["/* x */", "/**/", "/*/ x */"]}
    lexers = {id(lexer): lexer for lexer in syntax._parser().parser.lexer.lexers.values()}
    for lexer in lexers.values():
        assert set(lexer.ignore_types) == set(samples)
        before = []
        for terminal in lexer.scanner.terminals:
            if terminal.name in samples:
                for sample in samples[terminal.name]:
                    assert re.match(terminal.pattern.to_regexp(), sample), sample
                    assert not [t.name for t in before
                                if re.match(t.pattern.to_regexp(), sample)], sample
            else:
                before.append(terminal)


def test_the_whole_pattern_matches_as_each_state_would():
    """Where the one pattern of every terminal matches one a state accepts, that state's
    own pattern matches the same (see vsl/lalr_driver.py)."""
    fast = fast_parser(syntax._parser())
    words = {t.pattern.value for t in syntax._parser().terminals if t.pattern.type == "str"}
    samples = sorted(words) + ["elsewhere", "in x", "!in x", "!x", "1.5", "1..2", "0x1f", "_",
                               '"s"', "`t ${a}`", "|| x", "|a|", "  x", "/* c */ x", "// c\nx", ""]
    for state in range(len(fast.lexers)):
        lexer = fast._lexer(state)
        for text in samples:
            whole = fast.scan(text, 0)
            if whole is not None and whole.lastgroup in lexer.accepts:
                own = lexer.match(text, 0)
                assert (own.lastgroup, own.span()) == (whole.lastgroup, whole.span()), \
                    (state, text)


def test_an_interpolation_moves_each_start_once():
    tree = syntax.parse_tree("m[k]", "t.vsl", origin=(3, 10))
    index = next(tree.find_data("index"))
    assert (index.meta.line, index.meta.column) == (3, 10)
    assert (index.children[0].meta.line, index.children[0].meta.column) == (3, 10)


def test_the_lean_driver_leaves_errors_to_lark():
    fast = fast_parser(syntax._parser())
    assert fast is not None and fast.parse("let a = 1;") is not None
    for text in ("let = 1;", "let a = 1 +;", "let a = @;", "var x = 1;", "let s = \"open",
                 "fn f( {", "1 ..= 2 ..= 3"):
        assert fast.parse(text) is None, text


def test_a_lark_without_the_parts_gets_no_lean_driver():
    earley = Lark("start: \"a\"", parser="earley")
    assert fast_parser(earley) is None
