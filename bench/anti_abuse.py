"""The cost of issue 17's anti-abuse natives, measured against baselines of the same run:

1. Per call, in µs: ``dnsbl::check`` answered from the resolver's cache (the project's DNS
   test server on loopback filled it), ``greylist::check`` and ``limit::hit`` on the memory,
   SQLite and Redis stores (Redis: a private ``redis-server``; that row is skipped, and
   said so, without one). Each is timed in one event loop, sequentially, and the cost of
   calling an empty script function the same way is subtracted.
2. SMTP sessions per second of a real ``vsl serve`` whose policy uses all three (state in
   SQLite, the default; and in Redis) against one serving the same stages without them:
   the example policy's checks (examples/anti-abuse), and issue 17's literal case, one of
   each (``dnsbl::check`` of one zone at connect, ``limit::hit`` at MAIL,
   ``greylist::check`` at RCPT). The servers run side by side and take turns, one load
   each per round.

Both report the median of alternating rounds and the range over rounds: this machine is
noisy, and alternating spreads its drift over every row.

    python bench/anti_abuse.py [--calls 2000] [--sessions 400] [--rounds 5]
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from smtp_session import VSL, free_port, load, reply, wait_port  # (bench/, beside this)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.contexts import session as rcpt_context  # noqa: E402
from tests.support.redis import PrivateRedis  # noqa: E402
from vsl.server.dnsd import DnsServer  # noqa: E402
from vsl.stdlib import new_engine  # noqa: E402
from vsl.stdlib.ctx import Stage  # noqa: E402
from vsl.stdlib.support.state import MemoryStore  # noqa: E402
from vsl.stdlib.support.state.redis_store import RedisStore  # noqa: E402
from vsl.stdlib.support.state.sqlite_store import SqliteStore  # noqa: E402

ZONES = sorted((ROOT / "tests" / "zones").glob("*.zone"))

# A known triplet passing greylisting (delay 0, passed once while warming up) takes one
# store operation (first_present: the auto-whitelist look-up, the triplet's read and its
# renewal). The rates are never reached: every hit is counted and allowed.
CALLS = """
const R = dns::resolver(#{{ nameservers: ["127.0.0.1:{port}"] }});
fn empty(ctx) {{ ctx }}
fn dnsbl_check(ctx) {{
    dnsbl::check(#{{ ip: "192.0.2.7", zones: ["bl.dnsbl.test"], dns_resolver: global::R }})
}}
fn greylist_check(ctx) {{ greylist::check(ctx, #{{ delay: 0 }}) }}
fn limit_hit(ctx) {{ limit::hit(`ip:${{ctx.client_ip}}`, #{{ rate: "1000000000/1d" }}) }}
"""
EXPECTED = {"dnsbl_check": "listed", "greylist_check": "pass", "limit_hit": "pass"}

# The throughput policies: the example policy's checks (examples/anti-abuse), with rates
# no bench reaches; issue 17's case, "a policy that uses all three", one check of each
# (one zone); and the same stages without them. Both policies check MAIL and RCPT alike.
# The bench client (127.0.0.1, one sender, one recipient) is not whitelisted: its triplet
# is greylisted once and passed once before the load (delay 0), so each session's check
# reads and renews a passed one.
MAIL_AND_RCPT_CHECKS = """
fn on_mail_from(ctx) {{
    let quota = limit::hit(`sender:${{ctx.sender}}`, #{{ rate: "1000000000/1h" }});
    if !quota.allowed {{ return status::deny("450 4.7.1 Sending rate exceeded") }}
    status::next()
}}
fn on_rcpt_to(ctx) {{
    let grey = greylist::check(ctx, #{{ delay: 0 }});
    if grey != "pass" {{ return status::deny(`451 4.7.1 ${{grey}}`) }}
    status::next()
}}
"""
CHECKS = """
const R = dns::resolver(#{{ nameservers: ["127.0.0.1:{port}"] }});
const LISTS = ["bl.dnsbl.test", "second.dnsbl.test"];
fn on_connect(ctx) {{
    let conn = limit::hit(`conn:${{ctx.client_ip}}`, #{{ rate: "1000000000/1m" }});
    if !conn.allowed {{ return status::deny("421 4.7.0 Too many connections") }}
    let lists = dnsbl::check(#{{ ip: ctx.client_ip, zones: global::LISTS,
                                dns_resolver: global::R }});
    if lists.listed {{ return status::deny(`554 5.7.1 Listed by ${{lists.zone}}`) }}
    status::next()
}}
""" + MAIL_AND_RCPT_CHECKS
ONE_OF_EACH = """
const R = dns::resolver(#{{ nameservers: ["127.0.0.1:{port}"] }});
fn on_connect(ctx) {{
    let lists = dnsbl::check(#{{ ip: ctx.client_ip, zones: ["bl.dnsbl.test"],
                                dns_resolver: global::R }});
    if lists.listed {{ return status::deny(`554 5.7.1 Listed by ${{lists.zone}}`) }}
    status::next()
}}
""" + MAIL_AND_RCPT_CHECKS
NO_CHECKS = """
fn on_connect(ctx) { status::next() }
fn on_mail_from(ctx) { status::next() }
fn on_rcpt_to(ctx) { status::next() }
"""
CONFIG = """
[limits]
connections = 10000
connections_per_ip = 10000
[state]
backend = "{backend}"
{where}
"""


def median_and_range(values: list[float]) -> str:
    """A row's median and its range over the rounds."""
    return f"{statistics.median(values):8.1f}   {min(values):.1f}–{max(values):.1f}"


# -- 1. per call ----------------------------------------------------------------------------

async def per_call(script, name: str, ctx, calls: int) -> float:
    """µs per ``name(ctx)`` call, awaited one after the other."""
    start = time.perf_counter()
    for _ in range(calls):
        await script.call_async(name, ctx)
    return (time.perf_counter() - start) / calls * 1e6


async def measure_calls(scripts: dict, calls: int, rounds: int) -> dict:
    """For each (label, function) row, the per-round µs with the empty call subtracted."""
    ctx = rcpt_context(Stage.RCPT_TO)
    rows = {("dnsbl::check, cached", "dnsbl_check", "memory"): []}
    for store in scripts:
        rows[(f"greylist::check, {store}", "greylist_check", store)] = []
        rows[(f"limit::hit, {store}", "limit_hit", store)] = []
    for (_, name, store) in rows:  # warm up: fill the cache, pass the triplet
        for _ in range(3):
            result = await scripts[store].call_async(name, ctx)
        assert result == EXPECTED[name], (name, store, result)
    empty = []
    for _ in range(rounds):
        base = await per_call(scripts["memory"], "empty", ctx, calls)
        empty.append(base)
        for (label, name, store), costs in rows.items():
            costs.append(await per_call(scripts[store], name, ctx, calls) - base)
    return {"empty script call (subtracted below)": empty,
            **{label: costs for (label, _, _), costs in rows.items()}}


async def call_costs(stores: dict, port: int, calls: int, rounds: int) -> dict:
    source = CALLS.format(port=port)
    scripts = {name: new_engine(state=store).load_source(source, "bench.vsl")
               for name, store in stores.items()}
    try:
        return await measure_calls(scripts, calls, rounds)
    finally:
        for store in stores.values():
            await store.close()


def report_calls(costs: dict, args) -> None:
    print(f"Per call: µs, median of {args.rounds} alternating rounds of {args.calls} calls "
          f"[range]; greylist::check is a known triplet passing (1 store operation)")
    print(f"{'native':40} {'µs/call':>8}   range")
    for label, values in costs.items():
        print(f"{label:40} {median_and_range(values)}")


# -- 2. SMTP sessions -----------------------------------------------------------------------

async def attempt(port: int, rcpt_reply: bytes | tuple[bytes, ...]) -> None:
    """One attempt of the bench's triplet, its RCPT answered ``rcpt_reply``; then QUIT."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reply(reader)
    for command, answer in ((b"EHLO client.example.org", b"250"),
                            (b"MAIL FROM:<a@example.org>", b"250"),
                            (b"RCPT TO:<b@example.test>", rcpt_reply), (b"QUIT", b"221")):
        writer.write(command + b"\r\n")
        line = await reply(reader)
        assert line.startswith(answer), (command, line)
    writer.close()


async def pass_greylisting(port: int) -> None:
    """The first attempt of the bench's triplet (greylisted, unless a server sharing the
    store passed it) and its retry (passed, delay 0), one after the other: every later
    check finds a triplet that passed before."""
    await attempt(port, (b"451", b"250"))
    await attempt(port, b"250")


def start_server(tmp: Path, label: str, policy: str, state: tuple[str, str],
                 stack: ExitStack) -> int:
    """A ``vsl serve`` of ``policy`` (state: backend and its path or url line); its port."""
    home = tmp / label
    (home / "scripts").mkdir(parents=True)
    (home / "scripts" / "main.vsl").write_text(policy)
    (home / "vsl.toml").write_text(CONFIG.format(backend=state[0], where=state[1]))
    port, log = free_port(), home / "serve.log"
    with open(log, "wb") as out:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen(
            [str(VSL), "serve", "--config", str(home / "vsl.toml"), "--listen",
             f"127.0.0.1:{port}", "--scripts", str(home / "scripts"), "--queue-dir",
             str(home / "queue"), "--hostname", "example.test"], stdout=out, stderr=out)
    stack.callback(proc.wait, 10)
    stack.callback(proc.terminate)
    wait_port(port, proc, log)
    return port


def session_rates(servers: dict, args) -> dict:
    """Sessions/s of each server, per round, the servers taking turns."""
    for port in servers.values():
        asyncio.run(load(port, args.sessions // 10, args.concurrency))  # warm up
    rates = {label: [] for label in servers}
    for _ in range(args.rounds):
        for label, port in servers.items():
            rates[label].append(asyncio.run(load(port, args.sessions, args.concurrency)))
    return rates


def throughput(tmp: Path, dns_port: int, redis_url: str | None, args) -> dict:
    stores = {"SQLite": ("sqlite", f'path = "{tmp / "state.sqlite"}"')}
    if redis_url:
        stores["Redis"] = ("redis", f'url = "{redis_url}"')
    variants = {"no checks": (NO_CHECKS, ("sqlite", ""))}
    for name, policy in (("example's checks", CHECKS), ("one of each", ONE_OF_EACH)):
        for store, state in stores.items():
            variants[f"{name}, {store}"] = (policy.format(port=dns_port), state)
    with ExitStack() as stack:
        servers = {label: start_server(tmp, f"serve-{i}", policy, state, stack)
                   for i, (label, (policy, state)) in enumerate(variants.items())}
        for label, port in servers.items():
            if label != "no checks":
                asyncio.run(pass_greylisting(port))
        return session_rates(servers, args)


def report_throughput(rates: dict, args) -> None:
    base = rates["no checks"]
    print(f"\nSMTP sessions/s: {args.sessions} sessions, {args.concurrency} at a time, median "
          f"of {args.rounds} alternating rounds [range]. Each session: EHLO, MAIL, RCPT, "
          "a 2 KB message, QUIT;\nthe example's checks: limit::hit at connect and MAIL, "
          "dnsbl::check of two zones (cached), greylist::check of a triplet that passed "
          "(not whitelisted);\none of each: dnsbl::check of one zone at connect, "
          "limit::hit at MAIL, greylist::check at RCPT")
    print(f"{'policy':28} {'sessions/s':>10}   {'range':14} {'vs no checks':>12}")
    for label, values in rates.items():
        ratios = [v / b for v, b in zip(values, base)]
        print(f"{label:28} {statistics.median(values):10.0f}   "
              f"{min(values):.0f}–{max(values):<10.0f} {statistics.median(ratios):12.2f}"
              f"  ({min(ratios):.2f}–{max(ratios):.2f})")
    for policy in ("example's checks", "one of each"):
        sqlite = statistics.median(v / b for v, b in zip(rates[f"{policy}, SQLite"], base))
        verdict = "holds" if 1 - sqlite < 0.10 else "does NOT hold"
        print(f"cost of {policy} with SQLite: {(1 - sqlite) * 100:.0f}% of the no-check "
              f"throughput (issue 17's target, under 10%: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vsl-bench-")))
        dns = stack.enter_context(DnsServer(ZONES))
        stores = {"memory": MemoryStore(), "SQLite": SqliteStore(tmp / "calls.sqlite")}
        redis_url = None
        if shutil.which("redis-server"):
            redis_url = stack.enter_context(PrivateRedis()).url
            stores["Redis"] = RedisStore(redis_url)
        else:
            print("redis-server is not installed (apt-get install redis-server): "
                  "no Redis rows\n")
        report_calls(asyncio.run(call_costs(stores, dns.port, args.calls, args.rounds)), args)
        report_throughput(throughput(tmp, dns.port, redis_url, args), args)


if __name__ == "__main__":
    main()
