"""What the engine's path costs a stage that awaits natives: µs per ``script.call_async``
of a plain function, of one that could wait but awaits nothing, of one awaiting a native
that returns at once, and of ``limit::hit`` (memory store) and ``dnsbl::check`` answered
from the resolver's cache (the project's DNS test server on loopback filled it).

The rows take turns, one batch of calls each per round; each row is the median of the
rounds and their range (this machine is noisy: alternating spreads its drift).

    python bench/native_await.py [--calls 5000] [--rounds 7]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.contexts import session as rcpt_context  # noqa: E402
from vsl.natives import Namespace  # noqa: E402
from vsl.server.dnsd import DnsServer  # noqa: E402
from vsl.stdlib import new_engine  # noqa: E402
from vsl.stdlib.ctx import Stage  # noqa: E402

bench = Namespace("bench", "natives of this benchmark")


@bench.native
async def nothing():
    """nothing(): returns at once, without suspending."""


SCRIPT = """
const R = dns::resolver(#{{ nameservers: ["127.0.0.1:{port}"] }});
fn plain(ctx) {{ ctx }}
fn awaits_nothing(ctx) {{ if ctx.client_ip == "" {{ bench::nothing() }} ctx }}
fn trivial_native(ctx) {{ bench::nothing() }}
fn limit_hit(ctx) {{ limit::hit(`ip:${{ctx.client_ip}}`, #{{ rate: "1000000000/1d" }}) }}
fn dnsbl_check(ctx) {{
    dnsbl::check(#{{ ip: "192.0.2.7", zones: ["bl.dnsbl.test"], dns_resolver: global::R }})
}}
"""
ROWS = {"plain stage call": "plain", "stage that awaits nothing": "awaits_nothing",
        "awaits a trivial native": "trivial_native", "limit::hit, memory store": "limit_hit",
        "dnsbl::check, cached": "dnsbl_check"}


async def per_call(script, name: str, ctx, calls: int) -> float:
    """µs per ``name(ctx)`` call, awaited one after the other."""
    start = time.perf_counter()
    for _ in range(calls):
        await script.call_async(name, ctx)
    return (time.perf_counter() - start) / calls * 1e6


async def measure(port: int, calls: int, rounds: int) -> dict[str, list[float]]:
    """Each row's µs per call, per round."""
    engine = new_engine()
    engine.register(bench)
    script = engine.load_source(SCRIPT.format(port=port), "bench.vsl")
    ctx = rcpt_context(Stage.RCPT_TO)
    assert await script.call_async("dnsbl_check", ctx) == "listed"  # fills the cache
    costs = {label: [] for label in ROWS}
    for _ in range(rounds):
        for label, name in ROWS.items():
            costs[label].append(await per_call(script, name, ctx, calls))
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with DnsServer(sorted((ROOT / "tests" / "zones").glob("*.zone"))) as dns:
        costs = asyncio.run(measure(dns.port, args.calls, args.rounds))
    print(f"µs per call, median of {args.rounds} alternating rounds of {args.calls} calls; "
          "the ratio is to the stage that awaits nothing (the engine's await path alone)")
    print(f"{'call':28} {'µs/call':>8}   {'range':13} {'ratio':>6}")
    base = statistics.median(costs["stage that awaits nothing"])
    for label, values in costs.items():
        print(f"{label:28} {statistics.median(values):8.2f}   "
              f"{min(values):.2f}–{max(values):<8.2f} {statistics.median(values) / base:6.2f}")


if __name__ == "__main__":
    main()
