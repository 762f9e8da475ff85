"""Loading scripts: linear in the size of the script, interpolations included, and a load
in a worker thread (a reload) leaves the garbage collector of the server on."""
from __future__ import annotations

import gc
import threading

import pytest

from vsl import build
from vsl import engine as engine_module
from vsl.compile import ModuleCompiler
from vsl.stdlib import new_engine
from vsl.errors import VslError
from vsl.limits import Limits


def _one_line_of_templates(count: int) -> str:
    return "let a = 1; " + "let s = `${a}`; " * count


def _characters_parsed(monkeypatch, source: str) -> int:
    """How many characters loading ``source`` hands to the Lark parser, in all."""
    handed = []
    original = build.parse_tree

    def counting(text, *args, **kwargs):
        handed.append(len(text))
        return original(text, *args, **kwargs)

    monkeypatch.setattr(build, "parse_tree", counting)
    new_engine().load_source(source, "t.vsl")
    return sum(handed)


@pytest.mark.parametrize("source", [
    _one_line_of_templates(2_000),
    "let a = 1;\n" + "let s = `${a}`;\n" * 2_000,
    "let a = 1; let s = `" + "${a}" * 400 + "`;",
    "let a = 1; let s = `" + "${ `b` + #{c: a}.c }" * 200 + "`;",
], ids=["one line", "many lines", "one template", "backticks and braces inside"])
def test_interpolations_are_parsed_as_they_are(monkeypatch, source):
    """Each interpolation is parsed on its own text, not padded out to its line and column
    (which handed the parser the square of a long line: 39 KB loaded in 0.9 s, 660 KB in
    35 s)."""
    assert _characters_parsed(monkeypatch, source) < 2 * len(source)


@pytest.mark.parametrize("source, line, col, source_line", [
    ("let x = 0; let s = `v: ${ 1 + }`;", 1, 31, None),
    ("let x = 0;\nlet s = `v: ${\n  10 / x }`;", 3, 6, "  10 / x }`;"),
    ("let s = `a ${ nope }`;", 1, 15, None),
    ("let x = 0; let s = `${ `a`.len() / x }`;", 1, 34, None),
    ("let s = `line\n  two ${ [1, 2] @ }`;", 2, 17, "  two ${ [1, 2] @ }`;"),
    ("let s = `${ \"a\" }${ 1 + }`;", 1, 25, None),
    ("let s = `${\n}${ let }`;", 2, 9, "}${ let }`;"),
    ("let s = `${ 1 } ${ 2 +\n 3 +\n }`;", 3, 2, " }`;"),
], ids=["syntax", "runtime on a later line", "undefined", "backticks inside", "bad character",
        "second interpolation", "after a line break", "end of the interpolation"])
def test_an_error_in_an_interpolation_has_its_place_in_the_file(source, line, col,
                                                                source_line):
    with pytest.raises(VslError) as info:
        new_engine().load_source(source, "t.vsl")
    assert (info.value.pos.line, info.value.pos.col) == (line, col), info.value
    expected_line = source_line if source_line is not None else source.split("\n")[line - 1]
    assert info.value.source_line == expected_line


def test_a_load_in_a_worker_thread_leaves_the_collector_on(monkeypatch):
    """A reload runs in a worker thread while sessions go on: pausing the cyclic collector
    there paused it for the whole server. On the main thread (the start) it is paused."""
    seen = set()
    for owner, name in [(build, "parse_tree"), (engine_module, "resolve"),
                        (ModuleCompiler, "compile")]:
        monkeypatch.setattr(owner, name, _observing(getattr(owner, name), name, seen))
    assert gc.isenabled()
    loader = threading.Thread(target=new_engine().load_source, args=("let x = 1;", "t.vsl"),
                              name="reload")
    loader.start()
    loader.join()
    new_engine().load_source("let x = 1;", "t.vsl")
    main = threading.main_thread().name
    assert seen == {(thread, phase, thread == "reload") for thread in ("reload", main)
                    for phase in ("parse_tree", "resolve", "compile")}
    assert gc.isenabled()


def _observing(function, phase: str, seen: set):
    """``function``, noting in ``seen`` (thread, phase, whether the collector is on)."""
    def observed(*args, **kwargs):
        seen.add((threading.current_thread().name, phase, gc.isenabled()))
        return function(*args, **kwargs)
    return observed


@pytest.mark.parametrize("count", [1, 16, 17, 2000])
def test_a_template_of_thousands_of_interpolations_loads_and_runs(count):
    """Their checks were a chain of `&` nested as deep as there are parts, which CPython
    refused to compile from about a thousand ("maximum recursion depth exceeded")."""
    parts = "".join(f"${{a}}{i % 10}" for i in range(count))
    script = new_engine().load_source(f"let a = \"x\"; `{parts}`", "t.vsl")
    assert script.top_value == "".join(f"x{i % 10}" for i in range(count))


def test_a_template_over_the_size_limit_still_fails_with_many_parts():
    with pytest.raises(VslError, match="string"):
        new_engine(Limits(max_string_size=100)).load_source(
            "let a = \"xy\"; `" + "${a}" * 60 + "`", "t.vsl")
