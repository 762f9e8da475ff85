"""Hardening of the language core: injective generated names, errors with positions for
every import problem, bounded and linear loading, and engine slips that were internal
errors."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from vsl.engine import Engine
from vsl.errors import ScriptError, VslError


def value(source: str, script_dir=None):
    return Engine().load_source(source, "t.vsl", script_dir).top_value


# ---- generated names are injective ----------------------------------------------------
@pytest.mark.parametrize("source, expected", [
    ("let x = 1; let x_1 = 2; let x = 3; x_1", 2),
    ("const LIMIT_1 = 10; let LIMIT = 0; let LIMIT = 999; LIMIT_1", 10),
    ("let v = 1; let v = 2; let v1_v = 3; v1_v", 3),
])
def test_redeclared_names_do_not_collide(source, expected):
    assert value(source) == expected


def test_import_aliases_do_not_collide(tmp_path):
    (tmp_path / "x.vsl").write_text('fn c(n) { "x::c" }')
    (tmp_path / "y.vsl").write_text('fn b_c(n) { "y::b_c" }')
    source = 'import "x" as a_b; import "y" as a; [a_b::c(1), a::b_c(1)]'
    assert value(source, tmp_path) == ["x::c", "y::b_c"]


# Names built to collide under a naive "name_N" scheme.
_NAMES = ["x", "x_1", "x_2", "x_1_1", "_x", "v", "v_x", "v1_x", "x1"]


@st.composite
def _programs(draw):
    """A block of lets (some in nested blocks) and the reference values, computed with
    plain Python scoping: the expected value of every name at the end."""
    statements, scope = [], {}

    def block(depth: int, scopes: list) -> list[str]:
        out = []
        for _ in range(draw(st.integers(1, 5))):
            if depth < 2 and draw(st.booleans()):
                out.append("{ " + " ".join(block(depth + 1, scopes + [{}])) + " }")
                continue
            name, n = draw(st.sampled_from(_NAMES)), draw(st.integers(0, 99))
            out.append(f"let {name} = {n};")
            scopes[-1][name] = n
        return out

    statements = block(0, [scope])
    names = sorted(scope)
    return " ".join(statements) + " [" + ", ".join(names) + "]", [scope[n] for n in names]


@settings(max_examples=150, deadline=None)
@given(_programs())
def test_random_redeclarations_agree_with_python_scoping(program):
    source, expected = program
    assert value(source) == expected
