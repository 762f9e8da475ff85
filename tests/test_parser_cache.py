"""The compiled grammar's cache (vsl/parser_cache.py): private, and never trusted blindly."""
from __future__ import annotations

from pathlib import Path

import lark

from vsl import syntax
from vsl.parser_cache import cache_dir, grammar_cache, private_dir

GRAMMAR = syntax.GRAMMAR.read_text(encoding="utf-8")


def parses(parser: lark.Lark) -> bool:
    return parser.parse("let a = 1 + 2;").data == "start"


def test_the_cache_is_under_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "vsl"


def test_the_directory_is_made_private(tmp_path):
    folder = private_dir(tmp_path / "a" / "vsl")
    assert folder is not None and folder.stat().st_mode & 0o777 == 0o700


def test_a_directory_others_may_write_to_is_not_used(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert private_dir(shared) is None
    assert grammar_cache(GRAMMAR, lark.__version__, shared) is None


def test_a_symbolic_link_is_not_used(tmp_path):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert private_dir(tmp_path / "link") is None


def test_the_tables_are_written_then_read(tmp_path):
    path = grammar_cache(GRAMMAR, lark.__version__, tmp_path)
    assert parses(syntax.build_parser(GRAMMAR, path)) and path.stat().st_size > 1000
    assert parses(syntax.build_parser(GRAMMAR, path))


def test_a_damaged_cache_is_compiled_again_and_rewritten(tmp_path):
    path = grammar_cache(GRAMMAR, lark.__version__, tmp_path)
    syntax.build_parser(GRAMMAR, path)
    whole = path.read_bytes()
    for damaged in (b"", b"not a cache", whole[:len(whole) // 2], whole[:70] + b"\0" * 100):
        path.write_bytes(damaged)
        assert parses(syntax.build_parser(GRAMMAR, path))
        rewritten = path.read_bytes()
        assert rewritten.split(b"\n")[0] == whole.split(b"\n")[0] and len(rewritten) > 1000


def test_another_grammar_or_lark_gets_another_file(tmp_path):
    names = {grammar_cache(GRAMMAR, "1.2.0", tmp_path), grammar_cache(GRAMMAR, "1.3.0", tmp_path),
             grammar_cache(GRAMMAR + "\n", "1.3.0", tmp_path)}
    assert len(names) == 3 and all(isinstance(n, Path) for n in names)


def test_no_cache_compiles_the_grammar():
    assert parses(syntax.build_parser(GRAMMAR, None))
