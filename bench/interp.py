"""Interpreter speed: vSL functions against the same logic in hand-written Python.

Prints, for each workload, the time per call of both and their ratio (measured
in the same run, best of several repeats, CPU time). Then the policy-shaped loop
(a 4-argument function with string, map and array work, called 200,000 times
from a top-level ``for``: ``vsl run`` keeps the default max_operations of 1,000,000,
and an iteration counts four) as whole processes: ``vsl run FILE`` against
``python3 FILE.py``, start-up included, and the loop alone (each start-up, an
empty script's and ``python3 -c pass``, taken off). The "top-level loop" row
runs that program in this process (its vSL side includes parsing and compiling
the short script: a few ms). Targets (issue 19): every row within 2x of plain
Python, the whole ``vsl run`` process within 1.5x.
"""
from __future__ import annotations

import gc
import os
import resource
import subprocess
import sys
import tempfile
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

fn check(sender, rcpt, spf, counts) {
    let domain = sender.split("@")[1];
    if domain in global::BLOCKED { return 0; }
    let score = global::SCORES[spf] ?? 5;
    let key = `${domain}:${rcpt}`;
    counts[domain] = (counts[domain] ?? 0) + 1;
    if rcpt.starts_with("postmaster") { score += 1; }
    score + key.len()
}
'''

# The policy-shaped loop, as a whole script and as the same program in Python.
LOOP_SCRIPT = SCRIPT.split("fn policy")[0] + SCRIPT[SCRIPT.index("fn check"):] + r'''
let counts = #{};
let total = 0;
let senders = ["a@x.example", "b@y.example", "c@spam.example", "d@z.example"];
let spfs = ["pass", "fail", "softfail", "none"];
for i in 0..ITERATIONS {
    total += check(senders[i % 4], "postmaster@here", spfs[i % 4], counts);
}
total
'''
PY_LOOP = '''
BLOCKED = ("spam.example", "junk.example")
SCORES = {"pass": 0, "neutral": 1, "softfail": 3, "fail": 10}


def check(sender, rcpt, spf, counts):
    domain = sender.split("@")[1]
    if domain in BLOCKED:
        return 0
    score = SCORES.get(spf, 5)
    key = f"{domain}:{rcpt}"
    counts[domain] = counts.get(domain, 0) + 1
    if rcpt.startswith("postmaster"):
        score += 1
    return score + len(key)


counts = {}
total = 0
senders = ["a@x.example", "b@y.example", "c@spam.example", "d@z.example"]
spfs = ["pass", "fail", "softfail", "none"]
for i in range(ITERATIONS):
    total += check(senders[i % 4], "postmaster@here", spfs[i % 4], counts)
print(total)
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


def py_loop(iterations: int):
    """The policy-shaped loop's Python program, compiled, and its namespace's check()."""
    program = PY_LOOP.replace("print(total)", "total")
    code = compile(program.replace("ITERATIONS", str(iterations)), "loop.py", "exec")
    namespace = {}
    exec(compile(program.replace("ITERATIONS", "0"), "loop.py", "exec"), namespace)
    return code, namespace["check"]


def loop_script(iterations: int) -> str:
    return LOOP_SCRIPT.replace("ITERATIONS", str(iterations))


def best(fns, repeat=25):
    """Best CPU time of each function; the repeats alternate between them, so that a change
    of machine load during the run hurts both sides alike."""
    times = [[] for _ in fns]
    gc.disable()  # a collection landing in one side's run is noise, not its cost
    try:
        for _ in range(repeat):
            for fn, out in zip(fns, times):
                t0 = time.process_time()
                fn()
                out.append(time.process_time() - t0)
    finally:
        gc.enable()
    return [min(t) for t in times]


def child_cpu(argv: list[str]) -> float:
    """CPU seconds (user and system) of one run of ``argv`` as a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


WHOLE_ITERATIONS = 200_000


def whole_processes(repeat: int = 5) -> None:
    """``vsl run`` of the policy-shaped loop against ``python3`` of the same program, and
    both start-ups alone (an empty script, ``python3 -c pass``): best CPU of each."""
    vsl = [str(Path(sys.executable).with_name("vsl")), "run"]
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, text in [("loop.vsl", loop_script(WHOLE_ITERATIONS)), ("empty.vsl", "()\n"),
                           ("loop.py", PY_LOOP.replace("ITERATIONS", str(WHOLE_ITERATIONS)))]:
            files[name] = os.path.join(tmp, name)
            Path(files[name]).write_text(text)
        runs = {"vsl run loop.vsl": vsl + [files["loop.vsl"]],
                "python3 loop.py": [sys.executable, files["loop.py"]],
                "vsl run empty.vsl": vsl + [files["empty.vsl"]],
                "python3 -c pass": [sys.executable, "-c", "pass"]}
        times = {name: [] for name in runs}
        for _ in range(repeat):
            for name, argv in runs.items():
                times[name].append(child_cpu(argv))
    low = {name: min(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:24} {low[name]:9.3f} s   (max {max(t):.3f})")
    whole = low["vsl run loop.vsl"] / low["python3 loop.py"]
    loop = (low["vsl run loop.vsl"] - low["vsl run empty.vsl"]) / \
        (low["python3 loop.py"] - low["python3 -c pass"])
    print(f"{'whole process':24} {whole:6.2f}x   the loop alone (start-up taken off) {loop:.2f}x")


def main() -> None:
    engine = new_engine(limits=Limits(max_operations=0, max_time=0))
    script = engine.load_source(SCRIPT, "bench.vsl")
    limited = new_engine().load_source(SCRIPT, "bench.vsl")  # default limits, as in the server
    ctx = {"helo": "mx.example", "domain": "ok.example", "spf": "softfail",
           "authenticated": False, "rcpts": 3}
    words = [f"x-{i}" if i % 3 == 0 else f"word{i}" for i in range(1000)]
    calls = 4000
    loop_code, py_check = py_loop(100_000)
    check, limited_check = script.function("check", 4), limited.function("check", 4)
    senders = ["a@x.example", "b@y.example", "c@spam.example", "d@z.example"]
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
        ("4 arguments (per call)", calls,
         lambda: [check(senders[i & 3], "postmaster@here", "fail", {}) for i in range(calls)],
         lambda: [py_check(senders[i & 3], "postmaster@here", "fail", {})
                  for i in range(calls)]),
        ("4 args, default limits", calls,
         lambda: [limited_check(senders[i & 3], "postmaster@here", "fail", {})
                  for i in range(calls)],
         lambda: [py_check(senders[i & 3], "postmaster@here", "fail", {})
                  for i in range(calls)]),
        ("top-level loop 100k", 1, lambda: engine.load_source(loop_script(100_000), "loop.vsl"),
         lambda: exec(loop_code, {})),
    ]
    assert script.call("policy", ctx) == py_policy(ctx)
    assert script.call("stage", ctx).kind == py_stage(ctx).kind == "next"
    assert script.call("sum_loop", 1000) == py_sum_loop(1000)
    assert script.call("fib", 15) == py_fib(15)
    assert check("a@x.example", "me", "fail", {}) == py_check("a@x.example", "me", "fail", {})
    print(f"{'workload':24} {'vSL':>12} {'Python':>12} {'ratio':>7}")
    for name, n, vsl_fn, py_fn in workloads:
        v, p = (t / n for t in best([vsl_fn, py_fn]))
        unit, scale = ("us", 1e6) if n > 1 else ("ms", 1e3)
        print(f"{name:24} {v * scale:9.2f} {unit} {p * scale:9.2f} {unit} {v / p:6.2f}x")
    print("\nwhole processes, CPU")
    whole_processes()


if __name__ == "__main__":
    main()
