"""Idle connections: the memory each costs one `vsl serve` process, the time to accept
5,000 of them, and a fresh session's latency while they are open; a bare aiosmtpd sink
holding the same connections in the same run is the baseline.

    python bench/connections.py [--connections 5000] [--rounds 2]
    python bench/connections.py --quick          # 500 connections, one round

Each server (bench/throughput.py's VslServer and SinkServer: vSL holding messages in its
spool's quarantine, a bare aiosmtpd answering 250) is started on its own and measured so:

1. warm-up: a few whole sessions (connect, EHLO, MAIL, RCPT, DATA, QUIT), then the best
   of them is the fresh-session latency of the idle server and its RSS the idle RSS;
2. N connections are opened from one asyncio process, at most --in-flight handshakes at
   a time (the listen backlog is asyncio's 100: more SYNs at once are dropped and retried
   a second later); each waits for its 220 greeting, says EHLO, reads the reply and then
   stays idle. The time from the first connect to the last greeting is the accept time;
3. with all of them open: RSS (VmRSS of /proc/PID/status) again, so RSS per connection
   = (RSS with N - idle RSS) / N; the server's CPU over step 2, per connection; and the
   best of a few fresh sessions, from another address, while the N stay open;
4. all are closed, and the RSS after that is shown too.

vSL is configured as an operator raising its limits would: `[limits] connections = N + 10`
(the default, 200, refuses the rest with 421); `connections_per_ip` stays at its
default, 20, so the clients come from N / 20 addresses of 127.1.0.0/16 (Linux answers
all of 127/8 on lo; the fresh sessions from 127.0.0.1); `command_timeout` and
`idle_session` stay at 300 s, longer than a run. This bench raises its RLIMIT_NOFILE,
which its servers inherit, to at least 2 N + 1000 (root may raise the hard limit;
otherwise the soft one goes up to the hard one): each side needs a descriptor per
connection, and the usual soft limit of 1,024 would stop the client and the sink near
1,000 (`vsl serve` raises its own soft limit to the hard one: server/open_files.py).

vSL runs with its default event loop (uvloop where installed) and, as "vSL asyncio",
with asyncio's, the sink's.

A last run of vSL with its default `[limits]` shows what the defaults do with N
connections: how many got 220 and how many 421, and the RSS.

Postfix is not run: its smtpd is a process per connection (at most `default_process_limit`,
100, at once; the rest wait in the listen queue), so 5,000 idle connections would be
5,000 smtpd processes of a few MB each.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from throughput import BenchError, SinkServer, VslServer, say, tree_cpu  # bench/

PER_IP = 20  # limits.connections_per_ip's default
HOLD_TIMEOUT = 120.0  # seconds one connection may take to be greeted and answer EHLO
MESSAGE = (b"From: bench@example.org\r\nTo: rcpt@example.test\r\nSubject: fresh\r\n\r\n"
           b"A fresh session while the idle connections stay open.\r\n")


# ---- the server process, from /proc ------------------------------------------------------

def proc_status(pid: int, key: str) -> int:
    """An integer field of /proc/PID/status (VmRSS in kB, Threads)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {key} in /proc/{pid}/status")


def rss_mib(pid: int) -> float:
    return proc_status(pid, "VmRSS") / 1024


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_nofile(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE (its children inherit it) to ``wanted``, or as
    far as allowed; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass  # not root: the hard limit stays
    target = wanted if hard == resource.RLIM_INFINITY else min(max(soft, wanted), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


# ---- the client ----------------------------------------------------------------------

async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """One whole (maybe multi-line) SMTP reply; its last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        if line[3:4] != b"-":
            return line


async def command(reader, writer, line: bytes, expect: bytes) -> None:
    writer.write(line + b"\r\n")
    reply = await read_reply(reader)
    if not reply.startswith(expect):
        raise BenchError(f"{line.split()[0].decode()}: {reply.decode(errors='replace').strip()}")


async def send_message(port: int, source: str, helo: str, sender: str, recipient: str,
                       body: bytes) -> None:
    """One whole session from ``source``: greeting, EHLO, MAIL, RCPT, DATA, QUIT."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   local_addr=(source, 0))
    try:
        greeting = await read_reply(reader)
        if not greeting.startswith(b"220"):
            raise BenchError(f"greeting: {greeting.decode(errors='replace').strip()}")
        await command(reader, writer, b"EHLO " + helo.encode(), b"250")
        await command(reader, writer, f"MAIL FROM:<{sender}>".encode(), b"250")
        await command(reader, writer, f"RCPT TO:<{recipient}>".encode(), b"250")
        await command(reader, writer, b"DATA", b"354")
        await command(reader, writer, body + b".", b"250")
        await command(reader, writer, b"QUIT", b"221")
    finally:
        writer.close()


async def fresh_session(port: int) -> float:
    """Seconds one whole session takes, from 127.0.0.1."""
    start = time.perf_counter()
    await send_message(port, "127.0.0.1", "fresh.example.org", "bench@example.org",
                       "rcpt@example.test", MESSAGE)
    return time.perf_counter() - start


def source_address(index: int) -> str:
    """The address of the index-th connection: PER_IP connections from each."""
    host = index // PER_IP
    return f"127.1.{host // 250}.{host % 250 + 1}"


@dataclass
class Held:
    """The connections opened and what their greetings were."""

    writers: list = field(default_factory=list)
    greeted: list[float] = field(default_factory=list)  # seconds from connect to 220
    refused: int = 0  # greeted with something else (421: a limit)
    failed: list[str] = field(default_factory=list)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()


async def hold_one(port: int, index: int, held: Held) -> None:
    """Open a connection, wait for its greeting, say EHLO and keep it open (idle)."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(HOLD_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source_address(index), 0))
            greeting = await read_reply(reader)
            if not greeting.startswith(b"220"):
                held.refused += 1
                writer.close()
                return
            held.greeted.append(time.perf_counter() - start)
            held.writers.append(writer)
            await command(reader, writer, b"EHLO idle.example.org", b"250")
    except (OSError, TimeoutError, BenchError) as err:
        held.failed.append(f"{type(err).__name__}: {err}")


async def hold(port: int, count: int, in_flight: int, held: Held) -> float:
    """Open ``count`` connections, ``in_flight`` handshakes at a time; the seconds until
    the last is greeted and has its EHLO answered."""
    gate = asyncio.Semaphore(in_flight)

    async def gated(index: int) -> None:
        async with gate:
            await hold_one(port, index, held)

    start = time.perf_counter()
    await asyncio.gather(*(gated(i) for i in range(count)))
    return time.perf_counter() - start


# ---- a server's measurement ----------------------------------------------------------------

class LimitedVsl(VslServer):
    """vSL with ``[limits] connections`` for ``connections`` (None: the default
    ``[limits]``), one process, on ``event_loop``."""

    def __init__(self, work: Path, connections: int | None, event_loop: str = "auto"):
        super().__init__(work / ("defaults" if connections is None else "raised"),
                         event_loop=event_loop)
        self.connections = connections
        self.name = "vSL defaults" if connections is None else \
            "vSL" + ("" if event_loop == "auto" else f" {event_loop}")

    def config(self) -> str:
        limits = "" if self.connections is None else \
            f"\n[limits]\nconnections = {self.connections}\n"
        return f'[server]\nworkers = 1\nevent_loop = "{self.event_loop}"\n' + limits


@dataclass
class Measure:
    name: str
    idle_rss: float = 0.0
    loaded_rss: float = 0.0
    closed_rss: float = 0.0
    accept_seconds: float = 0.0
    greet_p50: float = 0.0
    greet_max: float = 0.0
    cpu_per_connection: float = 0.0
    fresh_idle: float = 0.0
    fresh_loaded: float = 0.0
    greeted: int = 0
    refused: int = 0
    fds: int = 0

    def per_connection_kib(self) -> float:
        return (self.loaded_rss - self.idle_rss) * 1024 / max(self.greeted, 1)


async def best_fresh(port: int, tries: int) -> float:
    return min([await fresh_session(port) for _ in range(tries)])


async def measure(server, args, strict: bool) -> Measure:
    """Steps 1-4 of the module's docstring against a started server. Not ``strict``
    (the default limits): connections may be refused or reset, and no fresh session is
    tried while they are open (it would be refused too)."""
    pid, result = server.proc.pid, Measure(server.name)
    result.fresh_idle = await best_fresh(server.port, args.fresh)
    await asyncio.sleep(0.5)
    result.idle_rss = rss_mib(pid)
    held, cpu = Held(), tree_cpu(pid)
    try:
        result.accept_seconds = await hold(server.port, args.connections, args.in_flight,
                                           held)
        result.cpu_per_connection = (tree_cpu(pid) - cpu) / args.connections
        if held.failed and strict:
            raise BenchError(f"{server.name}: {len(held.failed)} connection(s) failed, "
                             f"first: {held.failed[0]}")
        await asyncio.sleep(1.0)  # the last EHLO replies, then a still process
        result.loaded_rss, result.fds = rss_mib(pid), open_fds(pid)
        result.greeted, result.refused = len(held.greeted), held.refused + len(held.failed)
        if held.greeted:
            result.greet_p50 = statistics.median(held.greeted)
            result.greet_max = max(held.greeted)
        if strict:
            result.fresh_loaded = await best_fresh(server.port, args.fresh)
    finally:
        held.close()
    await asyncio.sleep(2.0)
    result.closed_rss = rss_mib(pid)
    return result


def run_server(server, args) -> Measure:
    server.start()
    try:
        return asyncio.run(measure(server, args, server.name != "vSL defaults"))
    finally:
        server.stop()
        problems = server.errors()
        if problems:
            say(f"   {server.name} logged {len(problems)} error line(s): {problems[0]}")


# ---- report ------------------------------------------------------------------------------

def report(rounds: dict[str, list[Measure]], args, nofile: int) -> None:
    print(f"\n{args.connections} idle connections (greeting + EHLO each), {args.in_flight} "
          f"handshakes in flight, RLIMIT_NOFILE {nofile}; {args.rounds} round(s), "
          "RSS per connection = (RSS loaded - RSS idle) / N")
    print(f"{'server':14} {'idle RSS':>9} {'loaded':>9} {'closed':>9} {'KiB/conn':>9} "
          f"{'accept s':>9} {'greet p50':>10} {'max':>7} {'CPU/conn':>9} "
          f"{'fresh idle':>11} {'loaded':>8} {'fds':>6}")
    for name, measures in rounds.items():
        for m in measures:
            print(f"{name:14} {m.idle_rss:7.1f}MB {m.loaded_rss:7.1f}MB {m.closed_rss:7.1f}MB "
                  f"{m.per_connection_kib():9.1f} {m.accept_seconds:9.2f} "
                  f"{m.greet_p50 * 1000:8.1f}ms {m.greet_max * 1000:5.0f}ms "
                  f"{m.cpu_per_connection * 1e6:7.0f}us {m.fresh_idle * 1000:9.1f}ms "
                  f"{m.fresh_loaded * 1000:6.1f}ms {m.fds:6d}")
    print()
    report_ratios(rounds)
    for m in rounds.get("vSL defaults", []):
        print(f"vSL with its default [limits] (connections = 200, connections_per_ip = 20): "
              f"{m.greeted} greeted, {m.refused} refused with a 421, RSS "
              f"{m.loaded_rss:.1f} MB")


def report_ratios(rounds: dict[str, list[Measure]]) -> None:
    """Each vSL against the sink, the best of the rounds of each."""
    if "sink" not in rounds:
        return
    sink = best(rounds["sink"])
    for name in ("vSL", "vSL asyncio"):
        if name in rounds:
            vsl = best(rounds[name])
            print(f"{name} / aiosmtpd sink: RSS per connection {vsl[0] / sink[0]:.2f}x, "
                  f"accept time {vsl[1] / sink[1]:.2f}x, fresh session while loaded "
                  f"{vsl[2] / sink[2]:.2f}x; {name}'s fresh session loaded / idle "
                  f"{vsl[2] / vsl[3]:.2f}x")


def best(measures: list[Measure]) -> tuple[float, float, float, float]:
    """The least KiB per connection, accept time, fresh session loaded and idle."""
    return (min(m.per_connection_kib() for m in measures),
            min(m.accept_seconds for m in measures),
            min(m.fresh_loaded for m in measures), min(m.fresh_idle for m in measures))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=None,
                        help="idle connections held (default 5000; 500 with --quick)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of vSL then the sink (default 2; 1 with --quick)")
    parser.add_argument("--in-flight", type=int, default=100,
                        help="connection handshakes at a time (default 100, the backlog)")
    parser.add_argument("--fresh", type=int, default=5,
                        help="fresh sessions per measurement, the best counts (default 5)")
    parser.add_argument("--servers", default="vsl,vsl-asyncio,sink,defaults",
                        help="which, comma-separated (default vsl,vsl-asyncio,sink,"
                             "defaults)")
    parser.add_argument("--quick", action="store_true", help="500 connections, one round")
    args = parser.parse_args()
    args.connections = args.connections or (500 if args.quick else 5000)
    args.rounds = args.rounds or (1 if args.quick else 2)
    nofile = raise_nofile(2 * args.connections + 1000)
    if nofile < args.connections + 100:
        parser.error(f"RLIMIT_NOFILE is {nofile}: too few descriptors for "
                     f"{args.connections} connections")
    wanted = [s.strip() for s in args.servers.split(",")]
    rounds: dict[str, list[Measure]] = {}
    with tempfile.TemporaryDirectory(prefix="vsl-connections-") as tmp:
        try:
            for round_ in range(args.rounds):
                servers = [LimitedVsl(Path(tmp) / str(round_), args.connections + 10, loop)
                           for loop, key in (("auto", "vsl"), ("asyncio", "vsl-asyncio"))
                           if key in wanted]
                servers += [SinkServer(Path(tmp) / str(round_))] if "sink" in wanted else []
                if "defaults" in wanted and round_ == args.rounds - 1:
                    servers.append(LimitedVsl(Path(tmp) / str(round_), None))
                for server in servers:
                    measured = run_server(server, args)
                    rounds.setdefault(measured.name, []).append(measured)
                    say(f"   round {round_ + 1} {measured.name}: "
                        f"{measured.per_connection_kib():.1f} KiB/connection, accepted in "
                        f"{measured.accept_seconds:.2f} s")
        except BenchError as err:
            say(f"failed: {err}")
            return 1
    report(rounds, args, nofile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
