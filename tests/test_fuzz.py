"""Property tests: whatever the input, the engine answers with a value or a VslError.

Never another exception type, never an InternalError (a bug by definition),
never a hang: every example runs under an alarm.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import signal
import string
import threading

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from vsl.engine import Engine
from vsl.errors import InternalError, ScriptError, VslError
from vsl.limits import Limits
from vsl.stdlib import new_engine
from vsl.values import FrozenMap, NativeObject, debug, type_name

LIMITS = Limits(max_operations=10_000, max_time=1.0, max_string_size=100_000,
                max_array_size=10_000, max_map_size=10_000)
ENGINE = new_engine(LIMITS)
I64_MIN, I64_MAX = -(2 ** 63), 2 ** 63 - 1
HANG_SECONDS = 10

# Hypothesis warns about the size of the recursive strategies' reprs: harmless here.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

# Deterministic by default (the suite must not be flaky); VSL_FUZZ=N explores N times more
# examples with fresh randomness: VSL_FUZZ=20 pytest tests/test_fuzz.py
_SCALE = int(os.environ.get("VSL_FUZZ", "0") or 0)


def fuzz_settings(n: int):
    return settings(max_examples=n * max(_SCALE, 1), deadline=None, database=None,
                    derandomize=not _SCALE,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


FAST = fuzz_settings(150)


class Hang(BaseException):
    """Raised by the alarm: not an Exception, so nothing in the engine can swallow it."""


@contextlib.contextmanager
def no_hang(seconds: float = HANG_SECONDS):
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum, frame):
        raise Hang(f"no answer after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def outcome(thunk):
    """Run ``thunk``: ("ok", value) or ("error", VslError). Anything else fails the test."""
    with no_hang():
        try:
            return "ok", thunk()
        except VslError as err:
            assert not isinstance(err, InternalError), f"internal error: {err}"
            assert isinstance(err.message, str)
            str(err)  # the formatted error (position, caret, stack) must render
            return "error", err


def load(text: str, engine: Engine = ENGINE):
    return outcome(lambda: engine.load_source(text, "fuzz.vsl"))


def check_value(v, depth: int = 0) -> None:
    """Every value leaving the engine is a script value."""
    assert depth < 200
    assert type_name(v) != "unknown", f"not a script value: {type(v).__name__}"
    if isinstance(v, (list, tuple)):
        for x in v:
            check_value(x, depth + 1)
    elif isinstance(v, (dict, FrozenMap)):
        for k, x in v.items():
            assert type(k) is str
            check_value(x, depth + 1)
    elif type(v) is int:
        assert I64_MIN <= v <= I64_MAX
    elif type(v) is float:
        assert not math.isnan(v)


# -- (a) any text --------------------------------------------------------------------------

@FAST
@given(st.text(max_size=200))
@example("fn f() { fn g() {} }")
@example("let x = 99999999999999999999;")
@example("fn f(a, a) {}")
@example("1 = 2;")
@example("/* never closed")
@example('"never closed')
@example("`${`")
@example("`${ \"}\" }`")
@example("let = 5;")
@example("import helpers;")
@example('import "x" as y;')
@example("\x00")
@example("\ufeff1")
@example("let ü = 1;")
@example("(" * 500 + ")" * 500)
@example("[" * 500 + "]" * 500)
@example("-" * 500 + "1")
@example("!" * 500 + "true")
@example("#{" * 200 + "}" * 200)
@example("{" * 500 + "}" * 500)
@example("if true {" * 300 + "}" * 300)
@example("1" + " + 1" * 3000)
@example("`" + "${" * 50 + "}" * 50 + "`")
def test_any_text_loads_or_fails_cleanly(text):
    kind, value = load(text)
    if kind == "ok":
        check_value(value.top_value)


_ALPHABET = string.ascii_letters[:12] + string.digits + " \n\t_\"'`${}()[]#;:,.+-*/%<>=!&|?\\"


@FAST
@given(st.text(alphabet=_ALPHABET, max_size=120))
def test_script_like_text_loads_or_fails_cleanly(text):
    kind, value = load(text)
    if kind == "ok":
        check_value(value.top_value)


KEYWORDS = ["let", "const", "fn", "if", "else", "while", "loop", "for", "in", "!in", "return",
            "break", "continue", "throw", "try", "catch", "switch", "import", "as", "true",
            "false", "global", "_", "ctx", "x", "y", "f", "print", "log", "status", "assert",
            "type_of", "len", "push", "keys", "call", "next", "deny", "accept", "null", "var"]
OPERATORS = ["+", "-", "*", "/", "%", "**", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "!",
             "??", "..", "..=", "=", "+=", "-=", "*=", "/=", "%=", "**=", ".", "::", ",", ";",
             ":", "=>", "|", "(", ")", "[", "]", "{", "}", "#{", "`", "${", "//", "/*", "*/"]
LITERALS = ["0", "1", "-1", "42", "9223372036854775807", "9223372036854775808", "0x7f", "0b101",
            "0o17", "1.5", "1e308", "1e400", '"a"', '""', '"${x}"', "`a${x}b`", "()", "[]",
            "#{}", '"550 5.7.1 no"', '"250 ok"']

token = st.one_of(st.sampled_from(KEYWORDS), st.sampled_from(OPERATORS),
                  st.sampled_from(LITERALS), st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True))


@FAST
@given(st.lists(token, max_size=40), st.sampled_from([" ", "", "\n"]))
@example(["loop", "{", "}"], " ")
@example(["fn", "f", "(", ")", "{", "f", "(", ")", "}", "f", "(", ")"], " ")
@example(["let", "x", "=", "[", "]", ";", "loop", "{", "x", ".", "push", "(", "x", ")", ";", "}"],
         " ")
@example(["while", "true", "{", "}"], " ")
@example(["let", "s", "=", '"a"', ";", "loop", "{", "s", "+=", "s", ";", "}"], " ")
def test_token_soup_loads_or_fails_cleanly(tokens, sep):
    kind, value = load(sep.join(tokens))
    if kind == "ok":
        check_value(value.top_value)


# -- (b) well-formed expressions -------------------------------------------------------------

def str_lit(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif ord(c) < 32 or ord(c) == 127:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def int_lit(n: int) -> str:
    if n == I64_MIN:
        return f"({I64_MIN + 1} - 1)"
    return f"({n})" if n < 0 else str(n)


ints = st.one_of(st.integers(-10, 10), st.integers(I64_MIN, I64_MAX),
                 st.sampled_from([I64_MIN, I64_MAX, I64_MAX - 1, 2 ** 32, -(2 ** 31)]))
small_text = st.text(max_size=8)

leaves = st.one_of(
    ints.map(int_lit),
    small_text.map(str_lit),
    st.sampled_from(["true", "false", "()", "[]", "#{}", "1.5", "(-0.5)", "1e300"]),
)

BINOPS = ["+", "-", "*", "/", "%", "**", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "??",
          "in", "!in", "..", "..="]
METHODS0 = ["len", "to_string", "to_debug", "type_of", "is_empty", "to_upper", "to_lower",
            "trim", "chars", "keys", "values", "reverse", "pop", "abs", "to_float", "to_int",
            "floor", "round", "parse_int", "parse_float", "split", "sort", "join", "clear"]
METHODS1 = ["contains", "push", "starts_with", "ends_with", "index_of", "split", "get",
            "remove", "join", "sub_string", "parse_int"]


def extend(children):
    return st.one_of(
        st.tuples(children, st.sampled_from(BINOPS), children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(st.sampled_from(["-", "!", "+"]), children).map(lambda t: f"({t[0]}{t[1]})"),
        st.lists(children, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.dictionaries(small_text, children, max_size=3).map(
            lambda kv: "#{" + ", ".join(f"{str_lit(k)}: {v}" for k, v in kv.items()) + "}"),
        st.tuples(children, children).map(lambda t: f"{t[0]}[{t[1]}]"),
        st.tuples(children, st.sampled_from(METHODS0)).map(lambda t: f"{t[0]}.{t[1]}()"),
        st.tuples(children, st.sampled_from(METHODS1), children).map(
            lambda t: f"{t[0]}.{t[1]}({t[2]})"),
        st.tuples(children, children, children).map(
            lambda t: f"if {t[0]} {{ {t[1]} }} else {{ {t[2]} }}"),
        st.tuples(children, children).map(lambda t: f"`${{{t[0]}}}-${{{t[1]}}}`"),
        st.tuples(children, children, children).map(
            lambda t: f"switch {t[0]} {{ 1 => {t[1]}, \"a\" => {t[2]}, _ => () }}"),
        st.tuples(children, children).map(lambda t: f"[{t[0]}].map(|v| v + {t[1]})"),
        st.tuples(children, children).map(
            lambda t: f"{{ let v = {t[0]}; try {{ v + {t[1]} }} catch (e) {{ e }} }}"),
        st.tuples(children, children).map(lambda t: f"{{ let v = {t[0]}; for i in v {{ }} {t[1]} }}"),
    )


expressions = st.recursive(leaves, extend, max_leaves=12)


def _check_expression(expr):
    kind, value = load(expr)
    if kind == "ok":
        check_value(value.top_value)
    else:
        # Runtime errors, limits, or the documented limit of the template syntax: an
        # interpolation cannot hold a backtick string with its own interpolation.
        assert isinstance(value, ScriptError) or "too" in value.message or \
            "nested" in value.message or "interpolation it cannot hold" in value.message, \
            f"{type(value).__name__}: {value.message}"


EXPRESSION_CASES = [
    "(-9223372036854775807..9223372036854775807).len()",
    "(0..9223372036854775807).len()",
    f"({I64_MIN + 1} - 1) / (-1)",
    f"({I64_MIN + 1} - 1) % (-1)",
    f"(-({I64_MIN + 1} - 1))",
    f"({I64_MIN + 1} - 1).abs()",
    "2 ** 64",
    "(-2) ** 63",
    "1e300 * 1e300",
    '"abc".sub_string(9223372036854775807, 9223372036854775807)',
    '"abc".index_of("b", 9223372036854775807)',
    "[1, 2].insert(-9223372036854775807, 3)",
    "9223372036854775807.to_float().to_int()",
    '"zz".parse_int(36)',
    '"-9223372036854775809".parse_int()',
    '[3, 1.5, "a"].sort()',
    "[1.5, 2].sort()",
    "(0..3).contains(9223372036854775807)",
    "(if true { 1 } else { 2 } in [1])",
    "({ 1 } in [1])",
    "(switch 1 { _ => 1 } in [1])",
]


@pytest.mark.parametrize("expr", EXPRESSION_CASES)
def test_expression_edge_cases(expr):
    _check_expression(expr)


@FAST
@given(expressions)
def test_expressions_evaluate_or_fail_cleanly(expr):
    _check_expression(expr)


# Integer arithmetic against a Python oracle (i64 checked at every step, Rhai division).

def _trunc_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _oracle(op: str, a: int, b: int) -> int:
    if op == "+":
        r = a + b
    elif op == "-":
        r = a - b
    elif op == "*":
        r = a * b
    elif op == "/":
        if b == 0:
            raise ZeroDivisionError
        r = _trunc_div(a, b)
    else:
        if b == 0:
            raise ZeroDivisionError
        r = abs(a) % abs(b)
        r = -r if a < 0 else r
    if not I64_MIN <= r <= I64_MAX:
        raise OverflowError
    return r


int_leaf = ints.map(lambda n: (int_lit(n), n))


def int_extend(children):
    def combine(t):
        (ta, va), op, (tb, vb) = t
        if isinstance(va, BaseException):
            return f"({ta} {op} {tb})", va
        if isinstance(vb, BaseException):
            return f"({ta} {op} {tb})", vb
        try:
            return f"({ta} {op} {tb})", _oracle(op, va, vb)
        except (OverflowError, ZeroDivisionError) as err:
            return f"({ta} {op} {tb})", err

    return st.tuples(children, st.sampled_from(["+", "-", "*", "/", "%"]), children).map(combine)


@FAST
@given(st.recursive(int_leaf, int_extend, max_leaves=10))
@example(("(9223372036854775807 + 1)", OverflowError()))
def test_integer_arithmetic_matches_oracle(case):
    text, expected = case
    kind, value = load(text)
    if isinstance(expected, OverflowError):
        assert kind == "error" and "overflow" in value.message, (text, kind, value)
    elif isinstance(expected, ZeroDivisionError):
        assert kind == "error" and "division by zero" in value.message, (text, kind, value)
    else:
        assert kind == "ok", f"{text}: {value}"
        assert value.top_value == expected and type(value.top_value) is int


@FAST
@given(st.lists(small_text, min_size=1, max_size=5))
def test_string_concatenation_matches_python(parts):
    kind, value = load(" + ".join(str_lit(p) for p in parts))
    assert kind == "ok", value
    assert value.top_value == "".join(parts)
    kind, value = load(f"({' + '.join(str_lit(p) for p in parts)}).len()")
    assert value.top_value == len("".join(parts))


# Printed values read back as the same values (debug() is vSL syntax).

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(I64_MIN, I64_MAX), small_text,
              st.floats(allow_nan=False, allow_infinity=False)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(small_text, children, max_size=4)),
    max_leaves=15,
)


@FAST
@given(json_values)
@example(I64_MIN)
@example([I64_MIN, -0.0, 1e16, 5e-324])
@example({"": {"\n\"\\": ["\x00\t\r"]}})
def test_debug_output_reads_back(v):
    assume(not (type(v) is float and v == 0 and math.copysign(1, v) < 0))  # -0.0 == 0.0 anyway
    kind, value = load(debug(v))
    assert kind == "ok", f"{debug(v)!r}: {value}"
    assert _same(value.top_value, v), f"{debug(v)!r} read back as {debug(value.top_value)!r}"


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# -- (c) Script.call with random JSON-like arguments ---------------------------------------

FUNCTIONS = """\
fn t_add(x, y) { x + y }
fn t_sub(x, y) { x - y }
fn t_mul(x, y) { x * y }
fn t_div(x, y) { x / y }
fn t_rem(x, y) { x % y }
fn t_pow(x, y) { x ** y }
fn t_eq(x, y) { [x == y, x != y] }
fn t_cmp(x, y) { [x < y, x <= y, x > y, x >= y] }
fn t_within(x, y) { [x in y, x !in y] }
fn t_coalesce(x, y) { x ?? y }
fn t_neg(x) { -x }
fn t_negate(x) { !x }
fn t_idx(x, y) { x[y] }
fn t_set_idx(x, y, z) { x[y] = z; x }
fn t_prop(x) { x.a }
fn t_set_prop(x, y) { x.a = y; x }
fn t_len(x) { x.len() }
fn t_text(x) { [x.to_string(), x.to_debug(), `${x}`, type_of(x)] }
fn t_each(x) { let n = 0; for v in x { n += 1; } n }
fn t_each2(x) { let out = []; for (v, i) in x { out.push([i, v]); } out }
fn t_keys(x) { [x.keys(), x.values()] }
fn t_sorted(x) { x.sort(); x }
fn t_mapped(x) { x.map(|v| [v]) }
fn t_filtered(x) { x.filter(|v| v == 1) }
fn t_summed(x) { x.reduce(|a, b| a + b, 0) }
fn t_joined(x, y) { x.join(y) }
fn t_split(x, y) { x.split(y) }
fn t_replace(x, y, z) { x.replace(y, z) }
fn t_sub_string(x, y, z) { x.sub_string(y, z) }
fn t_index_of(x, y) { x.index_of(y) }
fn t_contains(x, y) { x.contains(y) }
fn t_push(x, y) { x.push(y); x }
fn t_insert(x, y, z) { x.insert(y, z); x }
fn t_remove(x, y) { x.remove(y) }
fn t_parse(x) { [x.parse_int(), x.parse_float()] }
fn t_numbers(x) { [x.abs(), x.to_float(), x.to_int()] }
fn t_range(x, y) { let r = x..y; [r.len(), r.contains(0), type_of(r)] }
fn t_range_incl(x, y) { (x..=y).len() }
fn t_choose(x, y, z) { if x { y } else { z } }
fn t_pick(x) { switch x { 1 => "one", "a" => "letter", true => "yes", () => "unit", _ => x } }
fn t_cases(x) { [x.to_upper(), x.to_lower(), x.trim(), x.chars(), x.starts_with("a")] }
fn t_deny(x) { status::deny(x) }
fn t_accept(x) { status::accept(x) }
fn t_quarantine(x) { status::quarantine(x) }
fn t_show(x) { print(x); log("debug", x); x }
fn t_throws(x) { throw x; }
fn t_catches(x) { try { throw x; } catch (e) { e } }
fn t_closure(x) { let f = |a| a + x; f.call(x) }
fn t_call_it(x) { x.call(1) }
fn t_asserts(x, y) { assert::eq(x, y); "equal" }
"""

SCRIPT = new_engine(LIMITS).load_source(FUNCTIONS, "fuzz_calls.vsl")
NAMES = sorted(SCRIPT.functions)

json_args = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.integers(I64_MIN, I64_MAX),
              st.integers(), st.text(max_size=10),
              st.floats(allow_nan=False, allow_infinity=False),
              st.sampled_from(["550 5.7.1 no", "250 ok", "a,b", "12", "-3.5", "spam"])),
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(st.text(max_size=4), children, max_size=4)),
    max_leaves=12,
)


CALL_CASES = [
    (("t_range", 2), [-9223372036854775807, 9223372036854775807, 0]),
    (("t_numbers", 1), [2 ** 70, 0, 0]),
    (("t_add", 2), [2 ** 70, 1, 0]),
    (("t_text", 1), [[2 ** 70, {"k": 2 ** 80}], 0, 0]),
    (("t_sorted", 1), [[1, "a", None], 0, 0]),
    (("t_sorted", 1), [[1.5, 2, -3], 0, 0]),
]


def _check_call(key, args):
    name, arity = key
    kind, value = outcome(lambda: SCRIPT.call(name, *args[:arity]))
    if kind == "ok":
        _check_result(value)


@pytest.mark.parametrize("key, args", CALL_CASES)
def test_call_edge_cases(key, args):
    _check_call(key, args)


@fuzz_settings(400)
@given(st.sampled_from(NAMES), st.lists(json_args, min_size=3, max_size=3))
def test_call_with_random_arguments(key, args):
    _check_call(key, args)


# The same one-argument functions in a script without closures run through their compiled
# entry points (SCRIPT has closures, so it calls every function the general way).
ENTRY_SCRIPT = new_engine(LIMITS).load_source(
    "\n".join("" if re.search(r"\|\w*(, *\w+)*\|", line) else line
              for line in FUNCTIONS.splitlines()),
    "fuzz_calls.vsl")  # (the same line numbers)
ENTRY_NAMES = sorted(name for name, arity in ENTRY_SCRIPT.functions if arity == 1)


def _summary(kind, value):
    if kind == "ok":
        return kind, debug(value)
    return kind, type(value).__name__, value.message, value.pos, [f.function for f in value.stack]


@fuzz_settings(300)
@given(st.sampled_from(ENTRY_NAMES), json_args)
def test_entry_points_agree_with_the_general_path(name, arg):
    assert ENTRY_SCRIPT._entries.get((name, 1)) is not None
    entry = outcome(lambda: ENTRY_SCRIPT.call(name, copy.deepcopy(arg)))
    general = outcome(lambda: SCRIPT._call(name, (copy.deepcopy(arg),)))  # Engine.run
    assert _summary(*entry) == _summary(*general)


def _check_result(v, depth: int = 0):
    """Results are script values (host ints outside i64 may come back unchanged)."""
    assert depth < 100
    if type(v) is int:
        return
    assert type_name(v) != "unknown" or isinstance(v, NativeObject), type(v).__name__
    if isinstance(v, (list, tuple)):
        for x in v:
            _check_result(x, depth + 1)
    elif isinstance(v, dict):
        for x in v.values():
            _check_result(x, depth + 1)


@fuzz_settings(60)
@given(st.sampled_from(NAMES), st.lists(json_args, min_size=3, max_size=3))
def test_call_async_with_random_arguments(key, args):
    import asyncio

    name, arity = key

    async def main():
        return await SCRIPT.call_async(name, *args[:arity])

    kind, value = outcome(lambda: asyncio.run(main()))
    if kind == "ok":
        _check_result(value)


def test_wrong_arity_and_unknown_names_are_vsl_errors():
    for name, args in [("t_add", (1,)), ("t_add", (1, 2, 3)), ("nope", ()), ("__init__", ())]:
        with pytest.raises(VslError, match="no function"):
            SCRIPT.call(name, *args)


@pytest.mark.parametrize("arg", [object(), b"bytes", {1, 2}, (1, 2), 1j, print, {1: "int key"},
                                 float("nan"), float("inf")])
def test_host_values_that_are_not_json_like(arg):
    """Odd host values must still end as a value or a VslError (never a Python error)."""
    for name, arity in NAMES:
        if arity == 1:
            outcome(lambda: SCRIPT.call(name, arg))
