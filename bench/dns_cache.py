"""DNS look-ups per second through a script: cold (every look-up reaches the DNS server)
against warm (answered by the resolver's cache), measured in the same run against the
project's test DNS server on 127.0.0.1."""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vsl.server.dnsd import DnsServer  # noqa: E402
from vsl.stdlib import new_engine  # noqa: E402

SCRIPT = """
const WARM = dns::resolver(#{{ nameservers: ["127.0.0.1:{port}"] }});
const COLD = dns::resolver(#{{ nameservers: ["127.0.0.1:{port}"], cache: false }});
fn warm(name) {{ global::WARM.lookup(name, "A") }}
fn cold(name) {{ global::COLD.lookup(name, "A") }}
"""
N = 2000
CONCURRENCY = 50


async def rate(script, fn: str) -> float:
    names = [f"h{i % 100}.wild.example.test" for i in range(N)]
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(name):
        async with sem:
            return await script.call_async(fn, name)

    start = time.perf_counter()
    results = await asyncio.gather(*(one(n) for n in names))
    assert all(r == ["203.0.113.9"] for r in results)
    return N / (time.perf_counter() - start)


def main() -> None:
    with DnsServer(sorted((ROOT / "tests" / "zones").glob("*.zone"))) as server:
        script = new_engine().load_source(SCRIPT.format(port=server.port), "bench.vsl")

        async def run():
            await rate(script, "warm")  # fill the cache
            return await rate(script, "cold"), await rate(script, "warm")

        cold, warm = asyncio.run(run())
    print(f"{'resolver':10} {'lookups/s':>12}")
    print(f"{'cold':10} {cold:12,.0f}")
    print(f"{'warm':10} {warm:12,.0f}")
    print(f"warm / cold: {warm / cold:.1f}x")


if __name__ == "__main__":
    main()
