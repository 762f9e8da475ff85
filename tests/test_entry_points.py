"""The compiled entry points Script.call runs for a plain function of any arity (a stage's
call, a host's call with several arguments, in a module with or without closures): the
same results, errors, positions and limits as any other call."""
from __future__ import annotations

import asyncio
import textwrap

import pytest

from vsl.stdlib import new_engine
from vsl.errors import LimitError, ScriptError, VslError
from vsl.limits import Limits

SOURCE = textwrap.dedent("""\
    fn straight(a) { if "x" in a { "yes" } else { a.len() } }
    fn three_ins(a) { [5 in a, 6 in a, 7 in a] }
    fn spin(n) { let i = 0; while i < n { i += 1; } i }
    fn calls(n) { helper(n) + helper(n) }
    fn helper(n) { n * 2 }
    fn down(n) { down(n + 1) }
    fn divide(x) {
        let y = x;
        y / 0
    }
    fn two(a, b) { a + b }
    fn via_two(a, b) { three_ins(a) }
""")


def load(limits: Limits = Limits()):
    return new_engine(limits).load_source(SOURCE, "entry.vsl")


def test_plain_functions_of_any_arity_have_entry_points():
    """What every other test here relies on: the calls below go through e_<name>_<n>."""
    script = load()
    for name in ("straight", "three_ins", "spin", "calls", "down", "divide"):
        assert script.function(name).__name__ == f"e_{name}_1"
    assert script.function("two", 2).__name__ == "e_two_2"
    closures = new_engine().load_source("fn f(x) { [x].map(|v| v) }", "closures.vsl")
    assert closures.function("f").__name__ == "e_f_1"
    assert closures.call("f", 3) == [3]


def test_entry_points_return_what_the_function_returns():
    script = load()
    assert script.call("straight", ["x", "y"]) == "yes"
    assert script.call("straight", ["y"]) == 1
    assert script.call("spin", 10) == 10
    assert script.call("calls", 3) == 12


def test_function_binds_a_name_and_arity_once():
    script = load()
    straight, two = script.function("straight"), script.function("two", 2)
    assert straight(["a", "b"]) == 2
    assert two(1, 2) == 3
    with pytest.raises(VslError, match="no function 'missing' with 1 parameter"):
        script.function("missing")
    with pytest.raises(VslError, match="no function 'two' with 1 parameter"):
        script.function("two")


def test_function_of_a_name_with_several_arities():
    script = new_engine().load_source("fn f(x) { x }\nfn f(x, y) { x + y }\n", "arity.vsl")
    assert script.function("f")(1) == 1
    assert script.function("f", 2)(1, 2) == 3
    for f, args in [(script.function("f"), (1, 2)), (script.function("f", 2), (1,))]:
        with pytest.raises(TypeError):  # a host's mistake, as with any Python function
            f(*args)


def test_error_in_an_entry_point_has_its_position_and_stack():
    with pytest.raises(ScriptError, match="division by zero") as info:
        load().call("divide", 1)
    err = info.value
    assert (err.pos.file, err.pos.line, err.pos.col) == ("entry.vsl", 9, 7)  # the operator
    assert [f.function for f in err.stack] == ["divide"]


def test_straight_line_code_charges_its_work_to_one_budget():
    """A function without loops runs with no budget until a slow path needs one; then
    every operation of the call is charged to that one budget."""
    big = list(range(64 * 40))  # `in` costs 40 operations
    script = load(Limits(max_operations=100))
    assert script.call("straight", big) == len(big)
    with pytest.raises(LimitError, match="too many operations"):
        script.call("three_ins", big)  # 1 + 3 x 40 > 100
    assert script.call("straight", big) == len(big)  # the next call starts afresh
    with pytest.raises(LimitError, match="too many operations"):  # the same code, called
        script.call("via_two", big, 0)                            # with the caller's budget


def test_loops_in_entry_points_have_a_budget_per_call():
    script = load(Limits(max_operations=1_000))
    for _ in range(3):
        assert script.call("spin", 900) == 900
    with pytest.raises(LimitError, match="too many operations"):
        script.call("spin", 2_000)
    assert script.call("spin", 900) == 900


def test_time_limit_ends_an_entry_point():
    script = load(Limits(max_operations=0, max_time=0.2))
    with pytest.raises(LimitError, match="max_time"):
        script.call("spin", 10 ** 12)


def test_calls_from_an_entry_point_count_depth():
    with pytest.raises(LimitError, match=r"call depth limit exceeded \(10 nested"):
        load(Limits(max_call_depth=10)).call("down", 0)


def test_call_async_runs_the_entry_point():
    assert asyncio.run(load().call_async("calls", 5)) == 20


def test_constants_read_by_entry_points():
    script = new_engine().load_source(textwrap.dedent("""\
        const HOSTS = ["mx.example"];
        const LIMITS = #{ "rcpt": 50 };
        fn f(host) { [host in global::HOSTS, global::LIMITS["rcpt"] ?? 1] }
    """), "consts.vsl")
    assert script.call("f", "mx.example") == [True, 50]
    assert script.call("f", 7) == [False, 50]


def test_a_constant_the_top_level_never_defined_is_an_error_when_read():
    script = new_engine().load_source(textwrap.dedent("""\
        fn f(x) { global::LATE }
        fn g(x) { try { return global::LATE; } catch (e) { return e; } }
        if true { return; }
        const LATE = 1;
    """), "late.vsl")
    with pytest.raises(ScriptError, match="constant 'LATE' is not defined yet") as info:
        script.call("f", 1)
    assert (info.value.pos.line, info.value.pos.col) == (1, 11)
    assert "not defined yet" in script.call("g", 1)


LATE_MAP = textwrap.dedent("""\
    fn f(x) { x in global::M }
    fn g(x) { x !in global::M }
    if true { return; }
    const M = #{ "a": 1 };
""")


@pytest.mark.parametrize("needle", ["a", 1, None, [], {"a": 1}])
@pytest.mark.parametrize("name", ["f", "g"])
def test_in_a_constant_map_not_defined_yet_is_an_error_for_any_needle(name, needle):
    script = new_engine().load_source(LATE_MAP, "late_map.vsl")
    with pytest.raises(ScriptError, match="constant 'M' is not defined yet"):
        script.call(name, needle)


@pytest.mark.parametrize("source", [
    'let early = 1 in global::M;\nconst M = #{ "a": 1 };\n',
    'let early = 1 !in global::M;\nconst M = #{ "a": 1 };\n',
    'fn f(x) { x in global::M }\nlet early = f(1);\nconst M = #{ "a": 1 };\n',
])
def test_in_a_constant_map_read_before_the_top_level_defines_it(source):
    with pytest.raises(ScriptError, match="constant 'M' is not defined yet"):
        new_engine().load_source(source, "early.vsl")


def test_closures_of_an_imported_module_charge_the_entry_points_budget(tmp_path):
    """A closure finds the budget of the entry point's call in the call's context."""
    (tmp_path / "helpers.vsl").write_text(
        "fn doubled(a) { a.map(|x| { let s = 0; for i in 0..x { s += 2; } s }) }\n")
    (tmp_path / "main.vsl").write_text('import "helpers" as h;\nfn f(a) { h::doubled(a) }\n')
    script = new_engine(Limits(max_operations=100)).load(tmp_path / "main.vsl")
    assert script.function("f").__name__ == "e_f_1"
    assert script.call("f", [1, 2]) == [2, 4]
    with pytest.raises(LimitError, match="too many operations"):
        script.call("f", [50, 50])  # the closure's loops: 2 x 50 iterations
    assert script.call("f", [3]) == [6]  # the next call starts afresh
