"""Loops and integer steps on their fast paths run the semantics of the general ones: a
loop counted a chunk at once (compile._Fn.range_chunks and counted_chunks) needs the same
operations as one ticking every iteration, stops at the same iteration with the same error and
position, and gives back what a break, return or caught error left unrun; integers
proved never below 0 still overflow at the i64 bounds."""
from __future__ import annotations

import textwrap

import pytest

from tests.test_fastpaths_budget import fewest_operations, succeeds
from vsl import compile as compiler, fastpaths
from vsl.errors import LimitError, ScriptError, VslError
from vsl.limits import Limits
from vsl.stdlib import new_engine

LOOPS = textwrap.dedent("""\
    fn sum(n) { let s = 0; for i in 0..n { s += i * 2; } s }
    fn early(n) { let s = 0; for i in 0..n { if i == 5 { break; } s += i; } s }
    fn found(n) { for i in 1..=n { if i % 7 == 6 { return i; } } -1 }
    fn caught(n) {
        let s = 0;
        try { for i in 0..n { if i == 3 { throw "stop"; } s += i; } } catch { s += 100; }
        for j in 0..n { s += j; }
        s
    }
    fn nested(n) { let s = 0; for i in 0..n { for j in i..n { s += j - i; } } s }
    fn fill(arr, n) { for i in 0..n { arr[i] = i; } }
    fn skip(n) { let s = 0; for i in 0..n { if i % 2 == 0 { continue; } s += i; } s }
    fn count(n) { let i = 0; while i < n { i += 1; } i }
    fn halt(n) { let i = 0; while true { if i == n { break; } i += 1; } i }
    fn forever(n) { let i = 0; loop { i += 1; if i >= n { return i; } } }
    fn thrown(n) {
        let i = 0;
        try { while i < n { i += 1; if i == 4 { throw "x"; } } } catch { }
        while i < n { i += 1; }
        i
    }
    fn bad_test(n) {
        let x = 0;
        try { while x < n { x += 1; if x == 3 { x = "a"; } } } catch { }
        let j = 0;
        while j < n { j += 1; }
        j
    }
    fn skipping(n) { let i = 0; let s = 0; while i < n { i += 1; if i % 2 == 0 { continue; } s += i; } s }
""")
CALLS = [("sum", (50,)), ("early", (50,)), ("found", (30,)), ("caught", (20,)),
         ("nested", (12,)), ("skip", (40,)), ("sum", (0,)), ("count", (30,)), ("count", (0,)),
         ("halt", (9,)), ("forever", (25,)), ("thrown", (20,)), ("bad_test", (20,)),
         ("skipping", (30,))]


@pytest.fixture
def ticking(monkeypatch):
    """Compile every loop with a tick per iteration (no chunks)."""
    return lambda: monkeypatch.setattr(compiler, "_budget_free", lambda stmts: False)


def chunked(source: str) -> bool:
    """Whether the compiled code of ``source`` counts a range loop by chunks."""
    script = new_engine().load_source(source)
    return any("grant" in fn.__code__.co_names for fn in script.functions.values())


def test_the_loops_of_these_tests_run_by_chunks():
    assert chunked(LOOPS)


@pytest.mark.parametrize("name, args", CALLS)
@pytest.mark.parametrize("timed", [False, True])
def test_a_chunked_range_loop_needs_the_operations_of_a_ticking_one(name, args, timed,
                                                                     ticking):
    def run(limits):
        if timed:  # chunks of 16 to 1024 operations, the clock read between them
            limits = limits.with_changes(max_time=60)
        return succeeds(lambda: new_engine(limits).load_source(LOOPS).call(name, *args))

    chunks = fewest_operations(run)
    expected = new_engine().load_source(LOOPS).call(name, *args)
    ticking()
    assert fewest_operations(run) == chunks
    assert new_engine().load_source(LOOPS).call(name, *args) == expected


@pytest.mark.parametrize("max_time", [0, 60])
def test_a_chunked_loop_stops_at_the_exact_iteration_and_position(max_time):
    script = new_engine(Limits(max_operations=100, max_time=max_time)).load_source(
        LOOPS, "loops.vsl")
    arr = [-1] * 1000
    with pytest.raises(LimitError, match="too many operations") as info:
        script.call("fill", arr, 1000)
    # the call's own operation and 99 iterations: the 100th iteration's tick fails
    assert arr[:99] == list(range(99)) and arr[99:] == [-1] * 901
    assert (info.value.pos.line, info.value.pos.col) == (11, 19)  # the loop's `for`
    assert [frame.function for frame in info.value.stack] == ["fill"]


def test_what_a_break_left_unrun_is_given_back_exactly():
    source = "fn f(arr) { for i in 0..1000 { if i == 10 { break; } } " \
             "for j in 0..1000 { arr[j] = j; } }"
    script = new_engine(Limits(max_operations=100, max_time=0)).load_source(source)
    arr = [-1] * 1000
    with pytest.raises(LimitError):
        script.call("f", arr)
    # 1 for the call, 11 ticks of the first loop (its break comes after i == 10's tick)
    assert arr[87] == 87 and arr[88] == -1


def test_a_range_over_the_whole_i64_runs_by_chunks():
    script = new_engine(Limits(max_operations=0, max_time=0)).load_source(
        "fn f() { let s = 0; for i in -9223372036854775808..9223372036854775807 { "
        "if i > -9223372036854775800 { return s; } s += 1; } s }")
    assert script.call("f") == 9


def test_a_loop_calling_a_function_still_ticks_every_iteration():
    source = "fn g(x) { x } fn f(n) { let s = 0; for i in 0..n { s += g(i); } s }"
    assert not chunked(source)
    assert chunked("fn f(n) { let s = 0; for i in 0..n { s += i; } s }")
    assert not chunked("fn f(n) { for i in 0..n { i = 1; } }")  # the variable counts
    assert chunked("fn f(n) { let i = 0; while i < n { i += 1; } i }")
    assert not chunked("fn f(n) { let i = 0; while i < n { i += 1; if i > 2 { continue; } } }")


@pytest.mark.parametrize("body, message", [
    ("let s = 9223372036854775800; for i in 0..20 { s += i; } s",
     "integer overflow: 9223372036854775806 + 4"),
    ("let i = 9223372036854775806; i += 1; i += 1; i", "integer overflow: 9223372036854775807 + 1"),
    ("let x = 4611686018427387904; for i in 0..1 { x = x * 2; } x",
     "integer overflow: 4611686018427387904 * 2"),
    ("let a = 5; let b = 9223372036854775807; let c = a + b; c",
     "integer overflow: 5 + 9223372036854775807"),
])
def test_ints_never_below_zero_still_overflow_at_the_i64_bounds(body, message):
    with pytest.raises(ScriptError, match=message.replace("+", r"\+").replace("*", r"\*")):
        new_engine().load_source(f"fn f() {{ {body} }}").call("f")


def test_a_difference_of_ints_never_below_zero_stays_within_i64():
    script = new_engine().load_source(
        "fn f() { let a = 0; let b = 9223372036854775807; let c = a - b; let d = b - a; "
        "[c, d] }")
    assert script.call("f") == [-9223372036854775807, 9223372036854775807]


@pytest.mark.parametrize("body", ["i - 1", "i - j", "j - i", "i + 1", "i + j", "i * 2"])
def test_a_range_variable_past_i64_from_a_hosts_bounds_still_overflows(body):
    script = new_engine().load_source(
        f"fn f(a, b) {{ let j = 0; for i in a..b {{ return {body}; }} }}")
    with pytest.raises(ScriptError, match="integer overflow"):
        script.call("f", 2 ** 64, 2 ** 64 + 1)


@pytest.mark.parametrize("body", ["i / 1", "i + 0", "i - 0", "i * 1"])
def test_a_range_variable_from_a_literal_past_i64_still_overflows(body):
    """The variable of a range from a literal is never below 0, but the host's bound may
    take it past I64_MAX: even ``/ 1`` and ``+ 0`` test it."""
    script = new_engine().load_source(
        f"fn f(b) {{ for i in 9223372036854775806..b {{ let r = {body}; }} }}")
    with pytest.raises(ScriptError, match="integer overflow"):
        script.call("f", 2 ** 63 + 4)


def test_a_variable_given_a_negative_value_is_not_taken_for_nonnegative():
    script = new_engine().load_source(
        "fn f(n) { let s = 0; for i in 0..n { s += i; s -= 2 * i; } let j = s - 1; "
        "let k = -9223372036854775807 + s; k }")
    with pytest.raises(VslError, match="integer overflow"):
        script.call("f", 3)


PARAMETERS = "fn less(n) { n - 1 } fn sum(a, b) { a + b } fn triple(x) { x * 3 } " \
             "fn fib(n) { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }"
SMALL = 2 ** 61  # fastpaths.SMALL: a parameter's int flag bounds it by this


@pytest.mark.parametrize("name, args, result", [
    ("less", (-SMALL,), -SMALL - 1), ("less", (-SMALL - 1,), -SMALL - 2),
    ("less", (-2 ** 63 + 1,), -2 ** 63), ("less", (-2 ** 63,), None), ("less", (2 ** 64,), None),
    ("sum", (SMALL, SMALL), 2 ** 62), ("sum", (2 ** 62, 2 ** 62), None),
    ("sum", (2 ** 62, 2 ** 62 - 1), 2 ** 63 - 1), ("sum", (-2 ** 62, -2 ** 62), -2 ** 63),
    ("sum", (-2 ** 62, -2 ** 62 - 1), None), ("triple", (SMALL,), 3 * SMALL),
    ("triple", (2 ** 62,), None), ("triple", (-(2 ** 63 // 3) - 1,), None),
    ("fib", (15,), 610), ("fib", (True,), None),
])
def test_parameters_within_the_small_bound_skip_only_the_checks_they_cannot_fail(name, args,
                                                                               result):
    script = new_engine().load_source(PARAMETERS)
    if result is None:
        with pytest.raises(ScriptError):
            script.call(name, *args)
    else:
        assert script.call(name, *args) == result


def test_recursion_still_meets_the_call_depth_limit_exactly():
    script = new_engine(Limits(max_call_depth=10)).load_source(
        "fn down(n) { if n == 0 { 0 } else { down(n - 1) + 1 } }")
    assert script.call("down", 10) == 10
    with pytest.raises(LimitError, match="call depth"):
        script.call("down", 11)


@pytest.mark.parametrize("loop", ["loop { i += 1; }", "while i >= 0 { i += 1; }",
                                  "for j in 0..9223372036854775807 { i += j % 2; }"])
def test_a_chunked_loop_still_ends_at_max_time(loop):
    assert chunked(f"fn spin() {{ let i = 0; {loop} i }}")
    script = new_engine(Limits(max_operations=0, max_time=0.2)).load_source(
        f"fn spin() {{ let i = 0; {loop} i }}")
    with pytest.raises(LimitError, match="longer than 0.2 s"):
        script.call("spin")


SIZES = "fn sized(x) { `${x}:${x.len()}` } fn words(list) { let out = []; " \
        "for w in list { out.push(`${w}=${w.len()}`); } out }"


@pytest.mark.parametrize("name, arg", [
    ("sized", "abc"), ("sized", [1, 2]), ("sized", {"a": 1}), ("sized", ""),
    ("sized", "x" * 70), ("words", ["a", "bb", [1, 2, 3], {"k": 1}]), ("sized", 5),
])
@pytest.mark.parametrize("max_string_size", [1_000_000, 12])
def test_a_size_in_a_template_is_what_the_helper_makes(name, arg, max_string_size,
                                                       monkeypatch):
    def outcome(limits):
        try:
            return new_engine(limits).load_source(SIZES).call(name, arg)
        except VslError as err:
            return type(err), err.message

    def within(limits) -> bool:  # any outcome but running out of operations
        result = outcome(limits.with_changes(max_string_size=max_string_size))
        return "too many operations" not in str(result)

    def needed():
        return fewest_operations(within)

    limits = Limits(max_string_size=max_string_size)
    fast, fast_ops = outcome(limits), needed()
    monkeypatch.setattr(fastpaths, "_INLINE_METHODS", {})  # len() through its helper
    assert outcome(limits) == fast
    assert needed() == fast_ops
