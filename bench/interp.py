"""Interpreter speed: vSL functions against the same logic in hand-written Python.

Prints, for each workload, the time per call of both and their ratio (measured
in the same run, best of several repeats). Targets: policy-style code within
2x of plain Python, loops within 5x.
"""
from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vsl.stdlib import new_engine  # noqa: E402
from vsl.limits import Limits  # noqa: E402
from vsl.stdlib import status  # noqa: E402

SCRIPT = r'''
const BLOCKED = ["spam.example", "junk.example"];
const SCORES = #{ "pass": 0, "neutral": 1, "softfail": 3, "fail": 10 };

fn policy(ctx) {
    if ctx.helo == "" { return "deny-helo"; }
    if ctx.domain in global::BLOCKED { return "deny-blocked"; }
    let score = global::SCORES[ctx.spf] ?? 5;
    if ctx.authenticated && score < 10 { return "accept"; }
    if score >= 5 { "deny-score" } else if ctx.rcpts > 50 { "deny-rcpts" } else { "next" }
}

fn stage(ctx) {
    if ctx.helo == "" { return status::deny("550 5.7.1 HELO required"); }
    if ctx.domain in global::BLOCKED { return status::deny(); }
    let score = global::SCORES[ctx.spf] ?? 5;
    if score >= 5 { return status::deny(`550 5.7.23 SPF ${ctx.spf}`); }
    status::next()
}

fn sum_loop(n) {
    let s = 0;
    for i in 0..n { s += i * 2; }
    s
}

fn while_loop(n) {
    let s = 0;
    let i = 0;
    while i < n { s += i % 7; i += 1; }
    s
}

fn strings(words) {
    let out = [];
    for w in words {
        if w.starts_with("x-") { out.push(w.to_upper()); } else { out.push(`${w}:${w.len()}`); }
    }
    out.len()
}

fn fib(n) { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
'''

BLOCKED = ("spam.example", "junk.example")
SCORES = {"pass": 0, "neutral": 1, "softfail": 3, "fail": 10}


def py_policy(ctx):
    if ctx["helo"] == "":
        return "deny-helo"
    if ctx["domain"] in BLOCKED:
        return "deny-blocked"
    score = SCORES.get(ctx["spf"], 5)
    if ctx["authenticated"] and score < 10:
        return "accept"
    if score >= 5:
        return "deny-score"
    return "deny-rcpts" if ctx["rcpts"] > 50 else "next"


def py_stage(ctx):  # the natives are the same Python functions the script calls
    if ctx["helo"] == "":
        return status.deny("550 5.7.1 HELO required")
    if ctx["domain"] in BLOCKED:
        return status.deny()
    score = SCORES.get(ctx["spf"], 5)
    if score >= 5:
        return status.deny(f"550 5.7.23 SPF {ctx['spf']}")
    return status.next_()


def py_sum_loop(n):
    s = 0
    for i in range(n):
        s += i * 2
    return s


def py_while_loop(n):
    s = i = 0
    while i < n:
        s += i % 7
        i += 1
    return s


def py_strings(words):
    out = []
    for w in words:
        out.append(w.upper() if w.startswith("x-") else f"{w}:{len(w)}")
    return len(out)


def py_fib(n):
    return n if n < 2 else py_fib(n - 1) + py_fib(n - 2)


def best(fns, repeat=25):
    """Best time of each function; the repeats alternate between them, so that a change
    of machine load during the run hurts both sides alike."""
    times = [[] for _ in fns]
    gc.disable()  # a collection landing in one side's run is noise, not its cost
    try:
        for _ in range(repeat):
            for fn, out in zip(fns, times):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return [min(t) for t in times]


def main() -> None:
    engine = new_engine(limits=Limits(max_operations=0, max_time=0))
    script = engine.load_source(SCRIPT, "bench.vsl")
    limited = new_engine().load_source(SCRIPT, "bench.vsl")  # default limits, as in the server
    ctx = {"helo": "mx.example", "domain": "ok.example", "spf": "softfail",
           "authenticated": False, "rcpts": 3}
    words = [f"x-{i}" if i % 3 == 0 else f"word{i}" for i in range(1000)]
    calls = 4000
    # a host looks a stage function up once (Script.function) and calls it per message
    policy, limited_policy, stage = (script.function("policy"), limited.function("policy"),
                                     script.function("stage"))
    workloads = [
        ("policy (per call)", calls, lambda: [policy(ctx) for _ in range(calls)],
         lambda: [py_policy(ctx) for _ in range(calls)]),
        ("policy, default limits", calls, lambda: [limited_policy(ctx) for _ in range(calls)],
         lambda: [py_policy(ctx) for _ in range(calls)]),
        ("policy, script.call()", calls,
         lambda: [script.call("policy", ctx) for _ in range(calls)],
         lambda: [py_policy(ctx) for _ in range(calls)]),
        ("stage + status::", calls, lambda: [stage(ctx) for _ in range(calls)],
         lambda: [py_stage(ctx) for _ in range(calls)]),
        ("for loop 100k", 1, lambda: script.call("sum_loop", 100_000),
         lambda: py_sum_loop(100_000)),
        ("while loop 100k", 1, lambda: script.call("while_loop", 100_000),
         lambda: py_while_loop(100_000)),
        ("strings 1k words", 1, lambda: script.call("strings", words), lambda: py_strings(words)),
        ("fib(20) recursion", 1, lambda: script.call("fib", 20), lambda: py_fib(20)),
    ]
    assert script.call("policy", ctx) == py_policy(ctx)
    assert script.call("stage", ctx).kind == py_stage(ctx).kind == "next"
    assert script.call("sum_loop", 1000) == py_sum_loop(1000)
    assert script.call("fib", 15) == py_fib(15)
    print(f"{'workload':24} {'vSL':>12} {'Python':>12} {'ratio':>7}")
    for name, n, vsl_fn, py_fn in workloads:
        v, p = (t / n for t in best([vsl_fn, py_fn]))
        unit, scale = ("us", 1e6) if n > 1 else ("ms", 1e3)
        print(f"{name:24} {v * scale:9.2f} {unit} {p * scale:9.2f} {unit} {v / p:6.2f}x")


if __name__ == "__main__":
    main()
