"""CPU time per admitted and released connection in the counts the workers share
(server/shared_counters.py), with 2 and 8 workers and 200 connections open from 100
addresses (half IPv4, half IPv6), against the same module at another git revision in
the same run (``--base REV``, main by default), the two measured alternately, the best
of several repeats.

    python bench/admission.py --base main
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import ipaddress
import random
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE = "server/shared_counters.py"  # its imports are the standard library's alone
CONNECTIONS = 1000  # limits.connections
HELD = 200          # connections open meanwhile
ROUNDS = 20_000     # admit+release pairs per measurement
REPEATS = 7


def load(path: Path, name: str):
    """The module in ``path``, imported as ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(module, workers: int) -> float:
    """µs of CPU per admit+release with ``module``'s SharedCounters."""
    counters_class = module.SharedCounters
    sized = len(inspect.signature(counters_class).parameters) > 1  # by the connections
    counters = counters_class(*((workers, CONNECTIONS) if sized else (workers,)))
    rnd = random.Random(19)
    addresses = [str(ipaddress.IPv6Address(rnd.getrandbits(128))) for _ in range(50)] + \
        [str(ipaddress.IPv4Address(rnd.getrandbits(32))) for _ in range(50)]
    for n in range(HELD):
        counters.use(n % workers)
        counters.admit(addresses[n % 100], CONNECTIONS, 50)
    counters.use(workers - 1)
    pool = [rnd.choice(addresses) for _ in range(ROUNDS)]
    start = time.process_time()
    for ip in pool:
        counters.admit(ip, CONNECTIONS, 50)
        counters.release(ip)
    return (time.process_time() - start) / ROUNDS * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="the git revision to compare with")
    args = parser.parse_args()
    source = subprocess.run(["git", "show", f"{args.base}:{MODULE}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py") as file:
        file.write(source)
        file.flush()
        sides = {"this": load(ROOT / MODULE, "counters_this"),
                 "base": load(Path(file.name), "counters_base")}
    print(f"{'workers':>7} {'this µs':>10} {'base µs':>10} {'this/base':>10}")
    for workers in (2, 8):
        times: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(REPEATS):
            for side, module in sides.items():
                times[side].append(measure(module, workers))
        this, base = min(times["this"]), min(times["base"])
        print(f"{workers:>7} {this:10.2f} {base:10.2f} {this / base:9.2f}x")


if __name__ == "__main__":
    main()
