"""Script limits under attack: work that grows with a value's size is charged and timed,
sizes are checked while values are built, and values from natives obey the same limits.

Each time attack warms the budget up with cheap operations first (so the deadline checks
are as far apart as they get), then repeats one costly operation until max_time.
"""
from __future__ import annotations

import threading
import time
import tracemalloc

import pytest

from vsl.stdlib.ctx import Context, Stage
from vsl.stdlib.support.mail import Message
from tests.support.servers import config_for, running
from tests.support.smtp_tools import FALLBACK, client
from vsl.stdlib import new_engine
from vsl.errors import LimitError, ScriptError, VslError
from vsl.limits import Limits

MAX_TIME = 0.5
TIMED = Limits(max_operations=0, max_time=MAX_TIME, max_array_size=1_000_000)

ATTACK = """
fn attack(n) {{
    let row = []; let a = []; let b = []; let flat = []; let i = 0;
    for k in 0..100 {{ row.push(k); }}
    for k in 0..n {{ a.push(row + []); b.push(row + []); }}
    for k in 0..400000 {{ flat.push(k); }}
    let needle = row + []; needle[99] = -1;
    loop {{ i += 1; if i > 50000 {{ {op}; }} }}
}}
"""

COSTLY = {  # a and b: 2,000 equal arrays of 100 numbers; flat: 400,000 numbers
    "deep ==": "a == b",
    "to_string": "a.to_string()",
    "to_debug": "a.to_debug()",
    "array +": "flat + flat",
    "template": "`${a}`",
    "string +": '"" + a',
    "contains": "a.contains(needle)",
    "index_of": "a.index_of(needle)",
    "in": "needle in a",
    "join": 'a.join(",")',
    "const": "const c = a",
}


@pytest.mark.parametrize("op", COSTLY.values(), ids=COSTLY.keys())
def test_costly_operations_stop_at_max_time(op):
    script = new_engine(TIMED).load_source(ATTACK.format(op=op), "attack.vsl")
    start = time.monotonic()
    with pytest.raises(LimitError, match="max_time"):
        script.call("attack", 2_000)
    overrun = time.monotonic() - start - MAX_TIME
    assert overrun < 0.2, f"{op}: {overrun:.2f} s past max_time"


def _peak_of(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


BIG_STRING = """
fn big(c) {{ let s = c; while s.len() < {least} {{ s += s; }} s }}
fn attack(c) {{ let s = big(c); {op} }}
"""


@pytest.mark.parametrize("op", [
    "`" + "${s}" * 100 + "`",
    "`${s}${s}${s}${s}${s}${s}${s}${s}${s}${s}${s}${s}${s}${s}${s}${s}${s}${s}${s}${s}x`",
    "s.chars()",
    'let t = s + s.sub_string(0, 1000); t.split("")',
], ids=["100 interpolations", "20 interpolations", "chars", "split by characters"])
def test_string_work_is_checked_while_building(op):
    """Before the fix the template made the whole text before checking it (100 x 1 M
    characters), and chars() made a million strings before checking the array size."""
    engine = new_engine(Limits(max_string_size=1_000_000, max_time=10.0, max_operations=0))
    script = engine.load_source(BIG_STRING.format(least=400_000, op=op), "big.vsl")

    def run():
        with pytest.raises(LimitError, match="too large"):
            script.call("attack", "\u20ac")  # not a latin-1 character: chars are objects
    assert _peak_of(run) < 8_000_000  # the string itself: 1 MB


@pytest.mark.parametrize("op", ['s.split("\u20ac")', "s.split()"])
def test_split_checks_the_array_size_while_building(op):
    engine = new_engine(Limits(max_array_size=1000, max_time=10.0, max_operations=0))
    script = engine.load_source(BIG_STRING.format(least=500_000, op=op), "split.vsl")

    def run():
        with pytest.raises(LimitError, match="array too large"):
            script.call("attack", "\u20ac\u20ac x")
    assert _peak_of(run) < 5_000_000  # the string itself: 1 MB


def _message_ctx(data: bytes) -> Context:
    ctx = Context("192.0.2.1", 4242, "192.0.2.25", 25, "mx.example.test")
    ctx.stage = Stage.PRE_QUEUE
    ctx.message = Message(data)
    return ctx


READ = """
fn body(ctx) { ctx.body.len() }
fn headers(ctx) { ctx.get_all_headers().len() }
fn guarded(ctx) {
    let out = ();
    try { out = ctx.body.len(); } catch (err) { out = `caught: ${err}`; }
    out
}
"""


def test_ctx_body_obeys_the_string_limit():
    engine = new_engine(Limits(max_string_size=10_000))
    script = engine.load_source(READ, "read.vsl")
    ctx = _message_ctx(b"Subject: x\r\n\r\n" + b"y" * 20_000 + b"\r\n")
    with pytest.raises(VslError, match="max_string_size"):
        script.call("body", ctx)
    assert script.call("guarded", ctx).startswith("caught: ")


def test_ctx_headers_obey_the_array_limit():
    engine = new_engine(Limits(max_array_size=100))
    script = engine.load_source(READ, "read.vsl")
    ctx = _message_ctx(b"".join(b"X-N: %d\r\n" % i for i in range(200)) + b"\r\nbody\r\n")
    with pytest.raises(VslError, match="max_array_size") as info:
        script.call("headers", ctx)
    assert isinstance(info.value, ScriptError)
    small = _message_ctx(b"X-N: 1\r\n\r\nbody\r\n")
    assert script.call("headers", small) == 1


SPIN = """
fn on_helo(ctx) {
    if ctx.helo == "spin.example.test" { let i = 0; loop { i += 1; } }
    status::next()
}
"""


def test_a_slow_script_does_not_stall_other_sessions(tmp_path):
    """Before the fix the stage ran on the event loop: every session waited 3 s."""
    config = config_for(tmp_path, SPIN, script_limits=Limits(max_operations=0, max_time=3.0))
    with running(config) as server:
        spun = []
        with client(server, helo="spin.example.test") as spinner:
            thread = threading.Thread(target=lambda: spun.append(spinner.ehlo()))
            thread.start()
            time.sleep(0.3)  # the spinner's on_helo is running
            start = time.monotonic()
            with client(server) as smtp:
                assert smtp.ehlo()[0] == 250
                assert smtp.sendmail("a@example.org", ["b@example.test"],
                                     b"Subject: hi\r\n\r\nhi\r\n") == {}
            took = time.monotonic() - start
            thread.join(10)
        assert took < 1.0, f"the other session took {took:.2f} s"
        assert spun and spun[0][0] == FALLBACK[0]  # the spinner hit max_time


QUICK_OR_NOT = """
fn straight(ctx) { if ctx.helo.ends_with(".test") { status::deny() } else { status::next() } }
fn arithmetic(n) { n + 1 == 2 }
fn looping(n) { let i = 0; while i < n { i += 1; } i }
fn calling(n) { straight(n) }
fn comparing(a) { a == [1, 2] }
fn printing(a) { `${a}` }
fn walking(a) { a.contains(1) }
fn freezing(a) { const c = a; c }
fn matching(s) { regex::captures(s, "a+") }
fn asking(ip, r) { dnsbl::check(#{ ip: ip, zones: ["z.test"], dns_resolver: r }) }
"""


def test_only_functions_that_cannot_run_long_run_on_the_event_loop():
    script = new_engine().load_source(QUICK_OR_NOT, "quick.vsl")
    # a charged native that waits (dnsbl::) does its work on the event loop wherever its
    # caller runs, so it does not send the caller to a thread; one that computes does
    assert {name for name, _ in script.quick} == {"straight", "arithmetic", "printing", "asking"}
    unlimited = new_engine(Limits(max_string_size=0)).load_source(QUICK_OR_NOT, "quick.vsl")
    assert {name for name, _ in unlimited.quick} == {"straight", "arithmetic", "asking"}
    with_closure = new_engine().load_source(QUICK_OR_NOT + "fn f(x) { |y| y }", "closure.vsl")
    assert not with_closure.quick  # a closure can loop
