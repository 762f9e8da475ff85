"""Language semantics: every chunk of tests/lang/*.vsl runs as its own script."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.chunks import collect
from vsl.engine import Engine
from vsl.stdlib import new_engine
from vsl.errors import VslError
from vsl.limits import Limits

LANG = Path(__file__).parent / "lang"
CHUNKS = collect(LANG)


def error_line(err: VslError, path: Path) -> int:
    """The line to match: the innermost stack frame in the test file, else the error's."""
    for frame in reversed(err.stack):
        if Path(frame.pos.file).name == path.name:
            return frame.pos.line
    return err.pos.line if err.pos else 0


def test_enough_chunks():
    assert len(CHUNKS) >= 200


@pytest.mark.parametrize("chunk", CHUNKS, ids=[c.id for c in CHUNKS])
def test_chunk(chunk):
    engine = new_engine(limits=Limits().with_changes(**chunk.options))
    try:
        engine.load_source(chunk.source, str(chunk.path), LANG)
    except VslError as err:
        line = error_line(err, chunk.path)
        if line not in chunk.expected:
            pytest.fail(f"unexpected error:\n{err}")
        pattern = chunk.expected[line]
        assert re.search(pattern, err.message), f"error {err.message!r} does not match {pattern!r}"
        assert len(chunk.expected) == 1, "a chunk stops at its first error: expect one per chunk"
        return
    if chunk.expected:
        line, pattern = next(iter(chunk.expected.items()))
        pytest.fail(f"expected an error matching {pattern!r} at line {line}, got none")


def test_line_of_is_public():
    """The source line an error shows, for the CLI as for the engine (``vsl.syntax``)."""
    from vsl.syntax import line_of

    assert [line_of("a\nb\n", n) for n in (0, 1, 2, 3)] == ["", "a", "b", ""]


def test_the_language_runs_without_a_host():
    """An engine without namespaces runs the bare language; natives are the host's."""
    engine = Engine()
    assert engine.namespaces == {}
    assert engine.load_source("fn f(x) { [x, x * 2] }\nf(21)[1]").top_value == 42
    with pytest.raises(VslError, match="unknown namespace 'status::'"):
        engine.load_source("status::next()")
