"""A function that returns an int for int arguments gets a second body, its parameters
known ints (compile.ModuleCompiler.int_body): it must give what the first body gives for
every argument, charge the same operations, stop at the same call depth and raise the
same errors at the same positions, with the same stack."""
from __future__ import annotations

import textwrap

import pytest

from vsl.compile import ModuleCompiler
from vsl.errors import VslError
from vsl.limits import Limits
from vsl.stdlib import new_engine

SOURCE = textwrap.dedent("""\
    fn fib(n) { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
    fn add(a, b) { a + b }
    fn down(n) { if n == 0 { return 0; } down(n - 1) + 1 }
    fn via(x) { add(x, 1) * 2 }
    fn sum_to(n) { let s = 0; for i in 0..n { s += add(i, i); } s }
    fn mixed(n) { if n < 0 { "negative" } else { n } }
    fn reassigned(n) { n = `${n}`; 1 }
    fn pred(n) { n - 1 }
    fn succ(n) { n + 1 }
    fn steps(n) { pred(pred(n)) + succ(n * 2) }
    fn on(f, n) { if f == "pred" { pred(n) } else { succ(n) } }
    fn literal(x) { add(2.5, x) + add(x, 2) }
""")
I64_MAX = 2 ** 63 - 1
CALLS = [("fib", (15,)), ("fib", (2.5,)), ("fib", ("a",)), ("fib", (True,)),
         ("fib", (-I64_MAX - 1,)), ("fib", (2 ** 70,)),
         ("add", (I64_MAX - 1, 1)), ("add", (I64_MAX, 1)), ("add", (-I64_MAX, -2)),
         ("add", (1, "x")), ("add", ("x", 1)), ("add", (1.5, 2)),
         ("via", (I64_MAX // 2,)), ("via", (I64_MAX // 2 - 1,)), ("via", ("s",)),
         ("down", (30,)), ("down", (70,)), ("sum_to", (100,)), ("mixed", (3,)),
         ("mixed", (-3,)), ("pred", (-I64_MAX,)), ("pred", (-I64_MAX - 1,)),
         ("pred", (2 ** 63,)), ("succ", (I64_MAX - 1,)), ("succ", (I64_MAX,)),
         ("succ", (-2 ** 64,)), ("steps", (-I64_MAX + 1,)), ("steps", (-I64_MAX + 2,)),
         ("steps", (I64_MAX // 2,)), ("steps", (I64_MAX // 2 - 1,)), ("steps", (False,)),
         ("steps", (-I64_MAX,)), ("steps", (-I64_MAX - 1,)), ("literal", (1,)),
         ("literal", ("s",))] + [
    ("on", (f, n)) for f in ("pred", "succ")  # through their int bodies
    for n in (-I64_MAX - 1, -I64_MAX, I64_MAX - 1, I64_MAX, 2 ** 63, -2 ** 63 - 1, 2.5)]


def outcome(limits: Limits, name: str, args: tuple):
    """The value of a call, or its error's message, position and stack."""
    script = new_engine(limits).load_source(SOURCE, "ints.vsl")
    try:
        return script.call(name, *args)
    except VslError as err:
        return (type(err).__name__, err.message, err.pos.line, err.pos.col,
                [(frame.function, frame.pos.line) for frame in err.stack])


def without_int_bodies(monkeypatch) -> None:
    monkeypatch.setattr(ModuleCompiler, "int_results", lambda self: set())


def test_the_functions_with_an_int_body():
    compiler_of = {}
    original = ModuleCompiler.compile

    def compile(self):
        compiler_of["it"] = self
        return original(self)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModuleCompiler, "compile", compile)
        new_engine().load_source(SOURCE)
    # not sum_to: its ``s`` is given a call's value, not an int expression to int_variables
    # nor via and literal: they use no parameter in arithmetic or a comparison
    assert compiler_of["it"].int_fns == {("fib", 1), ("add", 2), ("down", 1), ("pred", 1),
                                         ("succ", 1), ("steps", 1), ("on", 2)}


@pytest.mark.parametrize("name, args", CALLS)
@pytest.mark.parametrize("limits", [Limits(max_call_depth=64), Limits(max_call_depth=20),
                                    Limits(max_operations=400, max_time=0)])
def test_an_int_body_gives_what_the_first_body_gives(name, args, limits, monkeypatch):
    fast = outcome(limits, name, args)
    without_int_bodies(monkeypatch)
    assert outcome(limits, name, args) == fast


@pytest.mark.parametrize("name, args", [("fib", (12,)), ("down", (40,)), ("sum_to", (30,))])
def test_an_int_body_fails_at_the_same_operation(name, args, monkeypatch):
    """Every limit from one below what the call needs down fails at the same place."""
    def outcomes():
        return [outcome(Limits(max_operations=n, max_time=0), name, args)
                for n in range(1, 120, 7)]
    fast = outcomes()
    assert any(isinstance(o, tuple) and "too many operations" in o[1] for o in fast)
    without_int_bodies(monkeypatch)
    assert outcomes() == fast


def test_the_call_depth_stops_at_the_same_call(monkeypatch):
    limits = Limits(max_call_depth=25)
    results = [outcome(limits, "down", (n,)) for n in (24, 25, 26, 27)]
    assert results[0] == 24 and isinstance(results[-1], tuple)
    without_int_bodies(monkeypatch)
    assert [outcome(limits, "down", (n,)) for n in (24, 25, 26, 27)] == results
