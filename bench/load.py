"""Load time: how long `Engine.load` takes for a large policy, phase by phase, against
CPython compiling the same logic written in Python (measured in the same run).

The policy has 100 stage-like functions of 50 lines each (5,100 lines); the Python
twin has the same functions, statement for statement. Best of 3 runs each, in CPU time
(wall clock on a busy machine says more about the other processes), as everything here.
Then the growth: the same policy with a quarter of the functions against the whole, and a
one-line script of 2,500 backtick templates against one of 20,000 (interpolations far
along a long line); loading is linear when Nx the source takes about Nx the time. And the parse tree of the
policy as vsl makes it against Lark's own parser (positions on), in the same run. Every
load here compiles (an engine's compiled-script cache is off unless asked for) but the
last: the policy loaded again from the cache, as a restart or reload of an unchanged policy
does (vsl/script_cache.py).
"""
from __future__ import annotations

import builtins
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lark import Lark  # noqa: E402

from vsl import syntax  # noqa: E402
import vsl.build as build_module  # noqa: E402
import vsl.engine as engine_module  # noqa: E402
from vsl.compile import ModuleCompiler  # noqa: E402
from vsl.script_cache import ScriptCache, Store  # noqa: E402
from vsl.stdlib import new_engine  # noqa: E402

FUNCTIONS, CONDITIONS = 100, 46  # 46 if-lines + 4 make 50 lines a function
TEMPLATES = 2_500  # backtick templates of the smaller one-line script


def vsl_source(functions: int = FUNCTIONS) -> str:
    out = []
    for f in range(functions):
        out += [f"fn on_f{f}(ctx) {{", "    let s = 0;"]
        out += [f'    if ctx.helo == "k{i}" && ctx.rcpts > {i} {{ s += {i}; }} '
                f'else if ctx.domain in ["a", "b"] {{ s -= 1; }}' for i in range(CONDITIONS)]
        out += ["    s", "}", ""]
    return "\n".join(out)


def template_source(templates: int) -> str:
    """One line of ``let s = `${a}`;`` statements."""
    return "let a = 1; " + "let s = `${a}`; " * templates


def python_source() -> str:
    out = []
    for f in range(FUNCTIONS):
        out += [f"def on_f{f}(ctx):", "    s = 0"]
        for i in range(CONDITIONS):
            out += [f'    if ctx.get("helo") == "k{i}" and ctx.get("rcpts") > {i}:',
                    f"        s += {i}",
                    '    elif ctx.get("domain") in ("a", "b"):', "        s -= 1"]
        out += ["    return s", ""]
    return "\n".join(out)


def timed_phases() -> dict[str, float]:
    """Wrap the engine's phases to time them; returns the dict they add to."""
    phases: dict[str, float] = {}

    def wrap(owner, name, label):
        original = getattr(owner, name, None) or getattr(builtins, name)

        def timed(*args, **kwargs):
            start = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                phases[label] = phases.get(label, 0.0) + time.process_time() - start
        setattr(owner, name, timed)

    wrap(build_module, "parse", "parse")
    wrap(engine_module, "resolve", "resolve")
    wrap(ModuleCompiler, "compile", "generate")
    wrap(engine_module, "compile", "CPython compile")  # (shadows the builtin there)
    return phases


def main() -> None:
    vsl_text, py_text = vsl_source(), python_source()
    phases = timed_phases()
    vsl_times, py_times, best_phases = [], [], {}
    for _ in range(3):
        phases.clear()
        start = time.process_time()
        script = new_engine().load_source(vsl_text, "load.vsl")
        vsl_times.append(time.process_time() - start)
        if vsl_times[-1] == min(vsl_times):
            best_phases = dict(phases)
        start = time.process_time()
        namespace: dict = {}
        exec(compile(py_text, "load.py", "exec"), namespace)  # noqa: S102 - our own text
        py_times.append(time.process_time() - start)
    ctx = {"helo": "k3", "rcpts": 10, "domain": "x"}
    assert script.call("on_f7", ctx) == namespace["on_f7"](ctx) == 3
    lines = vsl_text.count("\n") + 1
    v, p = min(vsl_times), min(py_times)
    print(f"{lines} lines: vSL load {v:.2f} s, CPython compile of the same logic {p:.2f} s, "
          f"ratio {v / p:.1f}x")
    for label, seconds in best_phases.items():
        print(f"  {label:16} {seconds:6.2f} s")
    _print_cached_load(vsl_text, v)
    _print_parser_ratio(vsl_text)
    _print_growth("policy", vsl_source(FUNCTIONS // 4), vsl_text)
    _print_growth("one-line templates", template_source(TEMPLATES),
                  template_source(8 * TEMPLATES))


def _print_cached_load(text: str, compiled: float) -> None:
    """The policy loaded from the compiled-script cache (a fresh one, filled first): CPU
    time, best of 3, against ``compiled``, the load that compiles."""
    with tempfile.TemporaryDirectory() as folder:
        cache = ScriptCache(Store(Path(folder)))

        def load() -> None:
            engine = new_engine()
            engine.cache = cache
            engine.load_source(text, "load.vsl")
        load()
        cached = min(_cpu_time(load) for _ in range(3))
    print(f"from the cache: {cached:.3f} s ({compiled / cached:.0f}x faster)")


def _print_parser_ratio(text: str) -> None:
    """The parse tree as vsl makes it (the lean driver and tree callbacks) against Lark's
    own parser with ``propagate_positions``, as vsl used it before: CPU time, best of 3."""
    grammar = syntax.GRAMMAR.read_text(encoding="utf-8")
    lark_own = Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True,
                    lexer_callbacks={"NAME": syntax._reject_reserved})
    ours = min(_cpu_time(lambda: syntax.parse_tree(text, "load.vsl")) for _ in range(3))
    theirs = min(_cpu_time(lambda: lark_own.parse(text)) for _ in range(3))
    print(f"parse tree: vsl {ours:.2f} s, Lark's own parser {theirs:.2f} s, "
          f"{theirs / ours:.1f}x faster")


def _cpu_time(work) -> float:
    start = time.process_time()
    work()
    return time.process_time() - start


def _print_growth(label: str, small_text: str, large_text: str) -> None:
    """How many times the CPU time of loading ``small_text`` it takes to load ``large_text``."""
    small = min(_cpu_load_time(small_text) for _ in range(3))
    large = min(_cpu_load_time(large_text) for _ in range(3))
    print(f"growth, {label}: {len(large_text) / len(small_text):.1f}x the source loads in "
          f"{large / small:.1f}x the CPU time ({small:.2f} s -> {large:.2f} s)")


def _cpu_load_time(text: str) -> float:
    return _cpu_time(lambda: new_engine().load_source(text, "load.vsl"))


if __name__ == "__main__":
    main()
