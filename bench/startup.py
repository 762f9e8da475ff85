"""Start-up: how much longer than a bare ``python3 -c pass`` the ``vsl`` command takes to
show its help, to lint a 50-line script and to run a small one (measured in the same run).

Each command runs as a fresh process, best of REPEATS; CPU time (user + system, from the
children's resource usage) says more than the wall clock on a busy machine, and both are
printed. The targets (issue 19): ``vsl --help`` within 60 ms of bare Python, ``vsl lint``
of a 50-line file under 150 ms. Lint and run are timed with the script in the compiled-script
cache (written by a first run, as after any earlier lint or run of an unchanged file) and
without it (``VSL_NO_CACHE=1``: the first lint of a new text). ``--vsl PATH`` times another
installation's command (a checkout of main, for a before/after in one run) next to this
one. The commands run as
installed, from bytecode: with PYTHONDONTWRITEBYTECODE (set on some machines) every module
would be compiled from source at each start, which is not what a user waits for.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPEATS = 15
HERE_VSL = Path(sys.executable).parent / "vsl"
ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def lint_source() -> str:
    """A 50-line policy: two stages, conditions, templates."""
    lines = ["fn on_helo(ctx) {"]
    lines += [f'    if ctx.helo == "h{i}.example" {{ return status::deny("550 no {i}"); }}'
              for i in range(23)]
    lines += ["    status::next()", "}", "fn on_rcpt_to(ctx) {", "    let seen = [];"]
    lines += [f"    seen.push(`rcpt ${{ctx.rcpt}} #{i}`);" for i in range(20)]
    lines += ["    status::next()", "}"]
    return "\n".join(lines) + "\n"


def run_source() -> str:
    """A small script for ``vsl run``: a function, a loop, a template."""
    return ("fn greet(name) { `hello ${name}` }\nlet total = 0;\n"
            "for i in 0..10 { total += i; }\ngreet(`${total}`)\n")


def best_of(command: list[str], env: dict | None = None) -> tuple[float, float]:
    """The least wall-clock and the least CPU time of REPEATS runs of ``command``."""
    walls, cpus = [], []
    for _ in range(REPEATS):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=env or ENV)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return min(walls), min(cpus)


def report(label: str, vsl: Path, scripts: tuple[Path, Path], bare: tuple[float, float]) -> None:
    lint, run = (["lint", str(scripts[0])], ["run", str(scripts[1])])
    no_cache = {**ENV, "VSL_NO_CACHE": "1"}
    for what, args, env in (("--help", ["--help"], None), ("lint", lint, None),
                            ("lint, no cache", lint, no_cache), ("run", run, None),
                            ("run, no cache", run, no_cache)):
        wall, cpu = best_of([str(vsl), *args], env)
        print(f"{label:6} vsl {what:14} wall {wall * 1000:5.0f} ms "
              f"(+{(wall - bare[0]) * 1000:4.0f})  cpu {cpu * 1000:5.0f} ms "
              f"(+{(cpu - bare[1]) * 1000:4.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vsl", type=Path, help="another vsl command to time (e.g. main's)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scripts = (Path(tmp) / "main.vsl", Path(tmp) / "run.vsl")
        scripts[0].write_text(lint_source(), encoding="utf-8")
        scripts[1].write_text(run_source(), encoding="utf-8")
        for vsl in filter(None, (HERE_VSL, options.vsl)):  # warm the caches, write bytecode
            for command in ("lint", "run"):
                subprocess.run([str(vsl), command, str(scripts[command == "run"])], check=True,
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bare = best_of([sys.executable, "-c", "pass"])
        print(f"bare   python -c pass wall {bare[0] * 1000:5.0f} ms  cpu {bare[1] * 1000:5.0f} ms"
              f"  (best of {REPEATS}; + is over bare Python)")
        if options.vsl:
            report("other", options.vsl, scripts, bare)
        report("this", HERE_VSL, scripts, bare)


if __name__ == "__main__":
    main()
