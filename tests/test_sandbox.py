"""The sandbox: scripts cannot reach Python, cannot share state between calls,
and cannot escape the limits (operations, call depth, time, sizes).
"""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vsl.stdlib import default_namespaces, new_engine
from vsl.engine import Engine
from vsl.errors import InternalError, LimitError, ScriptError, VslError, VslSyntaxError
from vsl.limits import Limits
from vsl.natives import IO_DEADLINE, Namespace, io_time_left
from vsl.values import NativeObject, method

SMALL = Limits(max_operations=10_000, max_time=1.0)

# Text that would show a Python object leaking into a message.
PYTHON_LEAK = re.compile(r"<class |<function |<built-in|object at 0x|Traceback|__main__|"
                         r"mappingproxy|NoneType|\bdict\b|\blist\b|\btuple\b")


def load(source: str, limits: Limits = SMALL, engine: Engine | None = None):
    return (engine or new_engine(limits)).load_source(source, "sandbox.vsl")


def run_error(source: str, limits: Limits = SMALL) -> VslError:
    with pytest.raises(VslError) as info:
        load(source, limits)
    return info.value


# -- reaching Python ------------------------------------------------------------------

ESCAPES = [
    # dunder properties and methods of every kind of value
    ("let x = 1; x.__class__", r"i64 has no property '__class__'"),
    ('"".__class__.__mro__', r"string has no property '__class__'"),
    ("1.5.__class__", r"f64 has no property '__class__'"),
    ("[1].__class__", r"array has no property '__class__'"),
    ("true.__class__", r"bool has no property '__class__'"),
    ("(0..3).start", r"range has no property 'start'"),
    ("let x = 1; x.__add__(1)", r"unknown method '__add__'"),
    ('"abc".__len__()', r"unknown method '__len__'"),
    ("[1].__getitem__(0)", r"unknown method '__getitem__'"),
    ('"{0.__class__}".format(1)', r"unknown method 'format'"),
    ('"abc".encode()', r"unknown method 'encode'"),
    ("[1].append(2)", r"unknown method 'append'"),
    ("#{}.items()", r"unknown method 'items'"),
    ("#{}.update(#{})", r"unknown method 'update'"),
    ("#{}.setdefault(\"a\", 1)", r"unknown method 'setdefault'"),
    ("[3, 1].__reduce_ex__(2)", r"unknown method '__reduce_ex__'"),
    # Python builtins and the generated code's helpers are not names
    ('open("/etc/passwd")', r"unknown function 'open'"),
    ('eval("1 + 1")', r"unknown function 'eval'"),
    ('exec("import os")', r"unknown function 'exec'"),
    ('compile("1", "f", "eval")', r"unknown function 'compile'"),
    ('__import__("os")', r"unknown function '__import__'"),
    ('getattr(1, "real")', r"unknown function 'getattr'"),
    ('setattr(1, "real", 2)', r"unknown function 'setattr'"),
    ("globals()", r"unknown function 'globals'"),
    ("locals()", r"unknown function 'locals'"),
    ("vars()", r"unknown function 'vars'"),
    ("dir()", r"unknown function 'dir'"),
    ("type(1)", r"unknown function 'type'"),
    ("breakpoint()", r"unknown function 'breakpoint'"),
    ("input()", r"unknown function 'input'"),
    ("exit()", r"'exit' is a reserved word|unknown function 'exit'"),
    ("type_of(print)", r"undefined variable 'print'"),
    ("let p = print; p", r"undefined variable 'print'"),
    ("print.__self__", r"undefined variable 'print'"),
    ("type_of(status::next)", r"unknown namespace 'status::'|undefined"),
    ("__builtins__", r"undefined variable '__builtins__'"),
    ("_ops", r"undefined variable '_ops'"),
    ("_G", r"undefined variable '_G'"),
    ("__top__", r"undefined variable '__top__'"),
    ("_closure", r"undefined variable '_closure'"),
    ('_meth(1, "x")', r"unknown function '_meth'"),
    ("_ops.add(1, 2)", r"undefined variable '_ops'"),
    ("global::__builtins__", r"no top-level constant '__builtins__'"),
    ("global::_G", r"no top-level constant '_G'"),
    ("os::system(\"id\")", r"unknown namespace 'os::'"),
    ("sys::modules", r"unknown namespace 'sys::'"),
    # closures: no attributes at all
    ("let f = |x| x; f.__code__", r"Fn has no property '__code__'"),
    ("let f = |x| x; f.__globals__", r"Fn has no property '__globals__'"),
    ("let f = |x| x; f.__closure__", r"Fn has no property '__closure__'"),
    ("let f = |x| x; f.fn", r"Fn has no property 'fn'|'fn'"),
    ("let f = |x| x; f.arity", r"Fn has no property 'arity'"),
    ("let f = |x| x; f.__call__(1)", r"unknown method '__call__'"),
    # the native status object: only vsl_props are readable, no Python methods
    ("status::next().__dict__", r"status has no property '__dict__'"),
    ("status::next().__class__", r"status has no property '__class__'"),
    ("status::next().__init__", r"status has no property '__init__'"),
    ("status::next().vsl_props", r"status has no property 'vsl_props'"),
    ("status::next().vsl_methods", r"status has no property 'vsl_methods'"),
    ('status::next().vsl_get("kind")', r"unknown method 'vsl_get'"),
    ("status::next().vsl_display()", r"unknown method 'vsl_display'"),
    ("status::next().__class__()", r"unknown method '__class__'"),
    ('let s = status::next(); s.kind = "accept"; s', r"cannot set property 'kind' on status"),
    ('let s = status::next(); s.__dict__ = #{}; s', r"cannot set property '__dict__'"),
    ('let s = status::next(); s["kind"]', r"cannot index status"),
    # errors caught by a script are strings or thrown values, not Python exceptions
    ("let e = 0; try { 1 / 0 } catch (err) { e = err; } e.__traceback__",
     r"string has no property '__traceback__'"),
    ("let e = 0; try { 1 / 0 } catch (err) { e = err; } e.args", r"string has no property 'args'"),
]


@pytest.mark.parametrize("source, pattern", ESCAPES, ids=[s for s, _ in ESCAPES])
def test_escape_attempt_fails(source, pattern):
    err = run_error(source)
    assert isinstance(err, (ScriptError, VslSyntaxError)), f"{type(err).__name__}: {err}"
    assert not isinstance(err, InternalError)
    assert re.search(pattern, err.message), err.message
    assert not PYTHON_LEAK.search(err.message), err.message


def test_map_key_named_like_a_dunder_is_just_a_key():
    script = load(textwrap.dedent("""\
        let m = #{"__class__": 5, "__dict__": "d"};
        m["__init__"] = 7;
        m.__globals__ = 8;
        [m.__class__, m["__dict__"], m.__init__, m.__globals__, m.__missing__,
         m.keys().len(), type_of(m), m.contains("__class__")]
    """))
    assert script.top_value == [5, "d", 7, 8, None, 4, "map", True]


def test_variables_and_functions_named_like_python_internals():
    script = load(textwrap.dedent("""\
        fn __init__(state, depth) { state + depth }
        fn __top__() { "mine" }
        fn _ops(x) { x * 2 }
        let __class__ = 1;
        let __builtins__ = 2;
        let _G = 3;
        [__init__(__class__, __builtins__), __top__(), _ops(_G)]
    """))
    assert script.top_value == [3, "mine", 6]
    assert script.call("__top__") == "mine"


def test_status_object_exposes_only_its_props():
    script = load(textwrap.dedent("""\
        let q = status::quarantine("spam");
        let d = status::deny("550 5.7.1 no");
        [status::next().kind, d.kind, d.reply, d.queue, q.kind, q.queue, type_of(q),
         q.to_string()]
    """))
    assert script.top_value == ["next", "deny", "550 5.7.1 no", None, "quarantine", "spam",
                                "status", "quarantine(spam)"]


class Ctx(NativeObject):
    """A host object like the server's session context, with a secret attribute."""

    vsl_type = "ctx"
    vsl_props = frozenset({"helo"})

    def __init__(self, helo: str):
        self.helo = helo
        self.secret = "hunter2"
        self.calls = 0

    @method()
    def shout(self):
        self.calls += 1
        return self.helo.upper()

    def unexposed(self):  # a Python method, not registered for scripts
        return self.secret


def ctx_engine(limits: Limits = SMALL) -> Engine:
    ns = Namespace("ctxtest", "test host objects")
    ns.register_type(Ctx)
    return Engine(limits, namespaces=default_namespaces() + [ns])


@pytest.mark.parametrize("expr, pattern", [
    ("ctx.secret", r"ctx has no property 'secret'"),
    ("ctx.calls", r"ctx has no property 'calls'"),
    ("ctx.__dict__", r"ctx has no property '__dict__'"),
    ("ctx.__class__", r"ctx has no property '__class__'"),
    ("ctx.shout.__func__", r"ctx has no property 'shout'"),
    ("ctx.unexposed()", r"(unknown method|has no method) 'unexposed'"),
    ('ctx.helo = "evil"', r"cannot set property 'helo' on ctx"),
    ('ctx.secret = "x"', r"cannot set property 'secret' on ctx"),
    ("ctx[\"secret\"]", r"cannot index ctx"),
])
def test_host_object_hides_everything_but_its_interface(expr, pattern):
    engine = ctx_engine()
    ctx = Ctx("mx.example")
    try:
        script = load(f"fn f(ctx) {{ {expr} }}", engine=engine)
        with pytest.raises(VslError) as info:
            script.call("f", ctx)
        err = info.value
    except VslError as static:
        err = static
    assert isinstance(err, (ScriptError, VslSyntaxError)), f"{type(err).__name__}: {err}"
    assert re.search(pattern, err.message), err.message
    assert ctx.helo == "mx.example" and ctx.secret == "hunter2"


def test_host_object_interface_works():
    script = load("fn f(ctx) { [ctx.helo, ctx.shout(), type_of(ctx)] }", engine=ctx_engine())
    ctx = Ctx("mx.example")
    assert script.call("f", ctx) == ["mx.example", "MX.EXAMPLE", "ctx"]
    assert ctx.calls == 1


def test_caught_errors_are_plain_values():
    script = load(textwrap.dedent("""\
        fn f() {
            let out = [];
            try { 1 / 0; } catch (err) { out.push(type_of(err)); out.push(err); }
            try { throw #{"code": 42}; } catch (err) { out.push(err.code); }
            try { [1][5]; } catch (err) { out.push(err); }
            out
        }
    """))
    assert script.call("f") == ["string", "division by zero", 42,
                                "array index 5 out of bounds (length 1)"]


@pytest.mark.parametrize("source, pattern", [
    ('assert::fails(|| 1 / 0, "(")', r"regex|pattern"),
    ('status::quarantine("..")', r"queue name"),
    ("status::quarantine(1)", r"queue name"),
    ("let r = 250; status::deny(`${r} ok`)", r"invalid reply"),
    ("let r = 550; status::accept(`${r} no`)", r"invalid reply"),
])
def test_natives_reject_bad_arguments_with_catchable_errors(source, pattern):
    """A native given bad input raises a ScriptError (catchable), never an internal error."""
    err = run_error(source)
    assert isinstance(err, ScriptError), f"{type(err).__name__}: {err.message}"
    assert re.search(pattern, err.message), err.message
    caught = load(f"fn f() {{ let out = (); try {{ {source}; }} catch (e) {{ out = `caught: ${{e}}`; }} out }}")
    assert caught.call("f") == f"caught: {err.message}"


# -- one compiled Script shared by concurrent calls ---------------------------------------

SHARED = textwrap.dedent("""\
    const LIST = [1, 2, 3];
    const CONF = #{"hosts": ["a", "b"], "nested": #{"n": 1}};

    fn work(tag, n) {
        let items = [];
        let seen = #{};
        for i in 0..n {
            let key = `${tag}-${i}`;
            items.push(key);
            seen[key] = i * n;
        }
        let total = 0;
        for k in seen.keys() { total += seen[k]; }
        #{"tag": tag, "n": n, "items": items, "total": total, "list": global::LIST}
    }

    fn push_list() { global::LIST.push(1) }
    fn push_nested() { global::CONF.hosts.push("evil") }
    fn set_nested() { global::CONF.nested.n = 2 }
    fn set_conf() { global::CONF["new"] = 1 }
    fn read_list() { global::LIST }
""")


def expected_work(tag: str, n: int) -> dict:
    return {"tag": tag, "n": n, "items": [f"{tag}-{i}" for i in range(n)],
            "total": sum(i * n for i in range(n)), "list": [1, 2, 3]}


def normal(v):
    """Frozen values come back as tuples/FrozenMaps: compare as plain lists/dicts."""
    if isinstance(v, (list, tuple)):
        return [normal(x) for x in v]
    if isinstance(v, dict):
        return {k: normal(x) for k, x in v.items()}
    return v


MUTATORS = {"push_list": "constant array", "push_nested": "constant array",
            "set_nested": "constant map", "set_conf": "constant map"}


def _one_call(script, i: int):
    if i % 5 == 4:
        name = list(MUTATORS)[i % len(MUTATORS)]
        try:
            script.call(name)
        except ScriptError as err:
            return ("error", name, err.message)
        return ("no error", name, None)
    tag = f"t{i}"
    return ("ok", (tag, i % 37), normal(script.call("work", tag, i % 37)))


def _check_results(script, results):
    for kind, what, value in results:
        if kind == "ok":
            assert value == expected_work(*what)
        else:
            assert kind == "error", f"{what} did not fail"
            assert f"cannot modify a {MUTATORS[what]}" in value
    assert normal(script.constants["LIST"]) == [1, 2, 3]
    assert normal(script.constants["CONF"]) == {"hosts": ["a", "b"], "nested": {"n": 1}}
    assert normal(script.call("read_list")) == [1, 2, 3]


def test_frozen_constants_fail_every_time():
    script = load(SHARED)
    for _ in range(3):
        for name, what in MUTATORS.items():
            with pytest.raises(ScriptError, match=f"cannot modify a {what}"):
                script.call(name)
    _check_results(script, [])


def test_concurrent_threads_share_one_script():
    script = load(SHARED, Limits(max_operations=100_000, max_time=10.0))
    barrier = threading.Barrier(16)

    def worker(start: int):
        barrier.wait()
        return [_one_call(script, i) for i in range(start, start + 40)]

    with ThreadPoolExecutor(16) as pool:
        chunks = list(pool.map(worker, range(0, 16 * 40, 40)))
    results = [r for chunk in chunks for r in chunk]
    assert len(results) == 640
    _check_results(script, results)


def test_concurrent_threads_with_thread_switches():
    """Force frequent GIL switches so calls interleave inside the generated code."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        test_concurrent_threads_share_one_script()
    finally:
        sys.setswitchinterval(old)


def _async_engine(limits: Limits = Limits(max_operations=100_000, max_time=10.0)) -> Engine:
    ns = Namespace("t", "test natives that wait")

    @ns.native
    async def pause(value, seconds=0):
        await asyncio.sleep(seconds)
        return value

    return Engine(limits, namespaces=default_namespaces() + [ns])


ASYNC_SHARED = SHARED + textwrap.dedent("""\
    fn awork(tag, n) {
        let items = [];
        for i in 0..n {
            items.push(t::pause(`${tag}-${i}`));
        }
        #{"tag": tag, "n": n, "items": items}
    }
""")


def test_concurrent_asyncio_tasks_share_one_script():
    script = load(ASYNC_SHARED, engine=_async_engine())
    assert script.has("awork", 2)

    async def one(i: int):
        if i % 5 == 4:
            return await asyncio.to_thread(_one_call, script, i)
        if i % 2:
            tag = f"a{i}"
            value = await script.call_async("awork", tag, i % 23)
            return ("async", (tag, i % 23), normal(value))
        tag = f"t{i}"
        return ("ok", (tag, i % 37), normal(await script.call_async("work", tag, i % 37)))

    async def main():
        return await asyncio.gather(*(one(i) for i in range(300)))

    results = asyncio.run(main())
    sync_results = []
    for kind, what, value in results:
        if kind == "async":
            tag, n = what
            assert value == {"tag": tag, "n": n, "items": [f"{tag}-{i}" for i in range(n)]}
        else:
            sync_results.append((kind, what, value))
    _check_results(script, sync_results)


def test_waiting_function_needs_call_async_inside_a_loop():
    script = load(ASYNC_SHARED, engine=_async_engine())
    assert script.call("awork", "x", 2) == {"tag": "x", "n": 2, "items": ["x-0", "x-1"]}

    async def main():
        with pytest.raises(VslError, match="call_async"):
            script.call("awork", "x", 2)

    asyncio.run(main())


def test_cancelling_a_waiting_call():
    script = load("fn slow() { t::pause(1, 30) }", engine=_async_engine())

    async def main():
        task = asyncio.create_task(script.call_async("slow"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(main(), 10))


def test_const_closure_cannot_share_mutable_state():
    """A constant closure must not carry mutable state from one call (session) to the next."""
    src = textwrap.dedent("""\
        let acc = [];
        const ADD = |x| { acc.push(x); acc.len() };
        fn f(x) { global::ADD.call(x) }
    """)
    try:
        script = load(src)
    except VslError:
        return  # rejecting a closure over mutable state as a constant is fine too
    outcomes = []
    for i in range(3):
        try:
            outcomes.append(script.call("f", i))
        except ScriptError as err:
            outcomes.append(err.message)
    assert len(set(map(str, outcomes))) == 1, f"state leaked between calls: {outcomes}"


def test_const_closure_gets_a_fresh_budget_per_call():
    """A constant closure runs with the budget of the call that uses it, not of the load."""
    src = textwrap.dedent("""\
        const SPIN = |n| { let i = 0; while i < n { i += 1; } i };
        fn f(n) { global::SPIN.call(n) }
    """)
    script = load(src, Limits(max_operations=5_000, max_time=0.5))
    for _ in range(4):
        assert script.call("f", 3_000) == 3_000  # 3,000 < 5,000 per call
    time.sleep(0.6)
    assert script.call("f", 10) == 10  # max_time is per call, not since the load


def _charging_engine() -> Engine:
    ns = Namespace("w", "test natives whose work grows with their input")

    @ns.native(charges=len)
    def scan(text):
        return text.count("a")

    @ns.native(charges=len)
    async def ascan(text):
        return text.count("a")

    return Engine(Limits(max_operations=5_000, max_time=5.0),
                  namespaces=default_namespaces() + [ns])


@pytest.mark.parametrize("native", ["scan", "ascan"])
def test_a_native_declaring_charges_spends_operations_by_its_work(native):
    """charges=len: a call costs what a script step walking its text does (1 + len/64),
    so ten scans of 64,000 characters exceed 5,000 operations, ten of 100 do not."""
    script = load(f"fn f(t) {{ let n = 0; for i in 0..10 {{ n += w::{native}(t); }} n }}",
                  engine=_charging_engine())
    assert script.call("f", "a" * 100) == 1_000
    with pytest.raises(LimitError, match="too many operations"):
        script.call("f", "a" * 64_000)


def test_each_call_has_its_own_budget():
    script = load("fn spin(n) { let i = 0; while i < n { i += 1; } i }",
                  Limits(max_operations=5_000, max_time=0.5))
    for _ in range(5):
        assert script.call("spin", 3_000) == 3_000
    with pytest.raises(LimitError):
        script.call("spin", 20_000)
    assert script.call("spin", 3_000) == 3_000  # a failed call leaves nothing behind
    time.sleep(0.6)
    assert script.call("spin", 10) == 10


# -- limits cannot be caught ------------------------------------------------------------

LIMITED = textwrap.dedent("""\
    fn spin() { try { loop { } } catch { return "caught"; } "after" }
    fn spin_err() { try { loop { } } catch (e) { return e; } }
    fn deep(n) { try { deep(n + 1) } catch { "caught" } }
    fn deep_outer() { try { deep(0) } catch { "caught outside" } }
    fn fails_spin() { assert::fails(|| { loop { } }, ""); "after" }
    fn grow() { let s = "x"; try { loop { s += s; } } catch { "caught" } }
    fn closure_spin() { try { [1, 2].map(|x| { loop { } }) } catch { "caught" } }
    fn nested_try() {
        try { try { loop { } } catch { "inner" } } catch { "outer" }
    }
    fn spin_in_finally_like() {
        let r = "";
        try { throw "first"; } catch { loop { } }
        r
    }
""")


@pytest.mark.parametrize("fn, pattern", [
    ("spin", "too many operations"),
    ("spin_err", "too many operations"),
    ("fails_spin", "too many operations"),
    ("closure_spin", "too many operations"),
    ("nested_try", "too many operations"),
    ("spin_in_finally_like", "too many operations"),
    ("deep_outer", "call depth limit exceeded"),
    ("grow", "string too large"),
])
def test_limit_error_inside_try_ends_the_call(fn, pattern):
    script = load(LIMITED, SMALL.with_changes(max_string_size=10_000))
    with pytest.raises(LimitError, match=pattern) as info:
        script.call(fn)
    assert not isinstance(info.value, ScriptError)


def test_time_limit_inside_try_ends_the_call():
    script = load(LIMITED, Limits(max_operations=0, max_time=0.3))
    start = time.monotonic()
    with pytest.raises(LimitError, match="max_time"):
        script.call("spin")
    assert time.monotonic() - start < 2.0


def test_ops_limit_is_a_limit_error():
    err = run_error("let i = 0; while true { i += 1; }")
    assert type(err) is LimitError
    assert "too many operations" in err.message and "max_operations" in err.message
    assert err.pos is not None and err.pos.line == 1


def test_call_depth_limit_is_a_limit_error():
    err = run_error("fn r(n) { r(n + 1) }\nr(0)", SMALL.with_changes(max_call_depth=20))
    assert type(err) is LimitError
    assert "call depth limit exceeded (20 nested calls" in err.message
    assert len(err.stack) >= 20
    assert {f.function for f in err.stack} == {"r", "<top level>"}


def test_mutual_recursion_hits_the_call_depth_limit():
    src = "fn a(n) { b(n + 1) }\nfn b(n) { a(n + 1) }\na(0)"
    err = run_error(src)
    assert type(err) is LimitError
    assert "call depth" in err.message


def test_closure_recursion_is_a_limit_error():
    src = "let f = 0;\nf = |k| if k == 0 { 0 } else { f.call(k - 1) + 1 };\nf.call(100000)"
    err = run_error(src, Limits(max_operations=0, max_time=5.0))
    assert isinstance(err, LimitError), f"{type(err).__name__}: {err.message}"


THROUGH_CLOSURES = {  # each level is a function and a closure: 2 calls
    "call": "fn f(n, g) { if n == 0 { 0 } else { g.call(n - 1, g) + 1 } }\n"
            "fn main(n) { f(n, |k, h| f(k, h)) }",
    "map": "fn main(n) { if n == 0 { 0 } else { [n - 1].map(|k| main(k))[0] + 1 } }",
    "reduce": "fn main(n) { if n == 0 { 0 } else { [n].reduce(|a, k| main(k - 1), 0) + 1 } }",
}


@pytest.mark.parametrize("kind", THROUGH_CLOSURES)
def test_a_call_through_a_closure_counts_one_level_of_call_depth(kind):
    """A closure runs one level below its caller, not at the depth of the function that
    made it: recursion through closures stops at max_call_depth as a direct one does."""
    script = new_engine(Limits(max_call_depth=64)).load_source(THROUGH_CLOSURES[kind])
    assert script.call("main", 31) == 31  # its deepest call at depth 63 (or 64: map)
    for levels in (33, 300):
        with pytest.raises(LimitError, match=r"call depth limit exceeded \(64 nested calls"):
            script.call("main", levels)
        with pytest.raises(LimitError, match=r"call depth limit exceeded \(64 nested calls"):
            script._call("main", (levels,))


def test_deep_data_is_a_limit_error():
    src = "let a = [];\nfor i in 0..100000 { a = [a]; }\na.to_string().len()"
    err = run_error(src, Limits(max_operations=0, max_time=5.0))
    assert isinstance(err, LimitError), f"{type(err).__name__}: {err.message}"
    script_after = load("[1, 2].len()")  # the interpreter is still fine afterwards
    assert script_after.top_value == 2


@pytest.mark.parametrize("source, pattern", [
    ('let s = "x"; loop { s += s; }', "string too large"),
    ("let a = [1]; loop { a += a; }", "array too large"),
    ("let a = []; loop { a.push(1); }", "array too large"),
    ('let m = #{}; let i = 0; loop { m[`${i}`] = i; i += 1; }', "map too large"),
    ('let s = "abcdefghij"; loop { s = s.replace("a", "aaaaaaaaaa"); }', "string too large"),
])
def test_size_limits_are_limit_errors(source, pattern):
    limits = Limits(max_operations=0, max_time=5.0, max_string_size=10_000,
                    max_array_size=1_000, max_map_size=1_000)
    err = run_error(source, limits)
    assert type(err) is LimitError
    assert pattern in err.message


# -- limits that must hold even for expensive single operations ------------------------------

BOMB = textwrap.dedent("""\
    fn bomb(n) {
        let s = "";
        while s.len() < 1000 { s += "x"; }
        let a = [];
        for i in 0..n { a.push(s); }
        a
    }
    fn join(n) { bomb(n).join(",") }
    fn tpl(n) { `${bomb(n)}` }
    fn text(n) { bomb(n).to_string() }
    fn dbg(n) { bomb(n).to_debug() }
    fn concat(n) { "" + bomb(n) }
""")


@pytest.mark.parametrize("fn", ["join", "tpl", "text", "dbg", "concat"])
def test_string_limit_is_checked_before_building(fn):
    """The size limit stops a string while it is built, not after the whole thing exists."""
    script = load(BOMB, Limits(max_operations=100_000, max_time=5.0, max_string_size=1_000))
    tracemalloc.start()
    try:
        with pytest.raises(LimitError, match="string too large"):
            script.call(fn, 5_000)  # 5,000 x 1,000 characters = 5 MB (x2 for display)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"built {peak / 1e6:.1f} MB before noticing the 1,000-char limit"


def _isolated(code: str, timeout: float) -> tuple[str, float]:
    """Run engine code in a child process (so a runaway cannot hang the test run)."""
    prog = textwrap.dedent("""\
        import sys
        from vsl.stdlib import new_engine
        from vsl.errors import VslError
        from vsl.limits import Limits
        engine = new_engine(Limits(max_operations=100_000, max_time=1.0, max_string_size=1_000))
        try:
            engine.load_source(sys.argv[1], "iso.vsl")
            print("ok")
        except VslError as err:
            print(type(err).__name__, err.message)
    """)
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", prog, code], capture_output=True,
                              text=True, timeout=timeout, cwd=str(_ROOT))
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start
    return (proc.stdout + proc.stderr).strip(), time.monotonic() - start


_ROOT = Path(__file__).resolve().parent.parent

DAG = "let a = [1];\nfor i in 0..60 { a = [a, a]; }\n"


@pytest.mark.parametrize("tail", ["a.to_string().len()", "`${a}`.len()"])
def test_shared_structure_display_is_bounded(tail):
    """60 operations build a DAG whose printed form is 2^60 long: must stop within max_time."""
    out, elapsed = _isolated(DAG + tail, timeout=6)
    assert out.startswith("LimitError"), f"{out} after {elapsed:.1f} s"


@pytest.mark.parametrize("tail", ["a == b", "[b].contains(a)", "a in [1, 2, a]"])
def test_shared_structure_equality_is_bounded(tail):
    """Comparing two such DAGs: an answer or a LimitError, quickly either way."""
    twin = "let b = [1];\nfor i in 0..60 { b = [b, b]; }\n"
    out, elapsed = _isolated(DAG + twin + tail, timeout=6)
    assert out.startswith("LimitError") or (out == "ok" and elapsed < 3), \
        f"{out} after {elapsed:.1f} s"


def test_shared_structure_as_constant_is_bounded():
    out, elapsed = _isolated("const C = {\n" + DAG + "a\n};\n1", timeout=6)
    assert out.startswith("LimitError") or out == "ok" and elapsed < 3, \
        f"{out} after {elapsed:.1f} s"


def test_max_time_bounds_expensive_operations():
    """One operation can be O(n): the deadline must still hold (here 0.5 s)."""
    src = textwrap.dedent("""\
        fn slow() {
            let a = [];
            for i in 0..30000 { a.push(i); }
            loop { a.contains("nope"); }
        }
    """)
    script = load(src, Limits(max_operations=0, max_time=0.5))
    start = time.monotonic()
    with pytest.raises(LimitError, match="max_time"):
        script.call("slow")
    elapsed = time.monotonic() - start
    assert elapsed < 1.5, f"max_time=0.5 s but the call ran {elapsed:.1f} s"


def test_max_time_bounds_awaits():
    """A call that keeps waiting on I/O natives is stopped by max_time too."""
    engine = _async_engine(Limits(max_operations=0, max_time=0.5))
    script = load("fn sleepy(n) { for i in 0..n { t::pause(i, 0.05); } \"done\" }",
                  engine=engine)

    async def main():
        start = time.monotonic()
        with pytest.raises(LimitError, match="max_time"):
            await script.call_async("sleepy", 40)  # 40 x 0.05 s = 2 s
        return time.monotonic() - start

    elapsed = asyncio.run(main())
    assert elapsed < 1.5


def _io_engine() -> Engine:
    """An engine (max_time 1 s) with natives that tell how they were awaited."""
    ns = Namespace("io", "test natives that report on their await")

    @ns.native
    async def task_name(pause):
        await asyncio.sleep(pause)
        return asyncio.current_task().get_name()

    @ns.native
    async def time_left(pause):
        await asyncio.sleep(pause)
        return io_time_left()

    @ns.native
    async def thread_name(pause):
        await asyncio.sleep(pause)
        return threading.current_thread().name

    @ns.native
    async def times_out(pause):
        await asyncio.sleep(pause)
        raise TimeoutError("the native's own")

    @ns.native
    async def busy(seconds):  # work on the loop, answered without waiting
        time.sleep(seconds)
        return seconds

    return Engine(Limits(max_operations=0, max_time=1.0), namespaces=[ns])


IO_SCRIPT = """
fn task(pause) { io::task_name(pause) }
fn left(pause) { io::time_left(pause) }
fn times_out(pause) { io::times_out(pause) }
fn looping(pause) { for i in 0..2 { } io::thread_name(pause) }
fn slow(pause) { for i in 0..100 { io::time_left(pause); } }
fn busy(seconds) { io::busy(seconds) }
"""


@pytest.mark.parametrize("pause", [0, 0.01])
def test_a_waiting_call_runs_in_the_caller_s_task(pause):
    """Bounding a call by max_time makes no task: natives that answer at once (pause 0)
    cost no turn of the event loop, and those that wait run in the caller's task too."""
    script = load(IO_SCRIPT, engine=_io_engine())

    async def main():
        asyncio.current_task().set_name("caller")
        return await script.call_async("task", pause)

    assert asyncio.run(main()) == "caller"


@pytest.mark.parametrize("pause", [0, 0.01])
def test_natives_wait_on_the_network_until_a_fifth_of_max_time_is_left(pause):
    script = load(IO_SCRIPT, engine=_io_engine())

    async def main():
        left = await script.call_async("left", pause)
        return left, IO_DEADLINE.get()

    left, after = asyncio.run(main())
    assert 0.5 < left <= 0.8  # max_time is 1 s
    assert after is None  # set for the call only


def test_a_call_answered_at_once_past_its_deadline_is_over_the_time_limit():
    """A native's work after the script last looked at the clock: its result is not
    returned as if the call had kept to max_time."""
    script = load(IO_SCRIPT, engine=_io_engine())
    assert asyncio.run(script.call_async("busy", 0.01)) == 0.01
    with pytest.raises(LimitError, match="max_time"):
        asyncio.run(script.call_async("busy", 1.2))  # max_time is 1 s


@pytest.mark.parametrize("pause", [0, 0.01])
def test_a_native_s_own_timeout_is_not_the_time_limit(pause):
    script = load(IO_SCRIPT, engine=_io_engine())
    with pytest.raises(VslError, match="TimeoutError: the native's own") as info:
        asyncio.run(script.call_async("times_out", pause))
    assert not isinstance(info.value, LimitError)


@pytest.mark.parametrize("pause", [0, 0.01])
def test_a_waiting_call_off_the_loop_runs_its_natives_on_the_server_s_loop(pause):
    script = load(IO_SCRIPT, engine=_io_engine())
    assert ("looping", 1) not in script.quick  # (it loops: a worker thread runs it)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            return await script.call_off_loop(pool, "looping", pause)

    assert asyncio.run(main()) == threading.main_thread().name


def test_max_time_bounds_a_waiting_call_off_the_loop():
    script = load(IO_SCRIPT, engine=_io_engine())

    async def main():
        start = time.monotonic()
        with ThreadPoolExecutor(1) as pool:
            with pytest.raises(LimitError, match="max_time"):
                await script.call_off_loop(pool, "slow", 0.05)  # 100 x 0.05 s = 5 s
        return time.monotonic() - start

    assert asyncio.run(main()) < 1.5  # max_time is 1 s
