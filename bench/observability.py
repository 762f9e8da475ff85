"""What observability costs: vSL's throughput with metrics and JSON logs on, against off,
in the same run (issue 18's target: under 5%).

    python bench/observability.py [--messages 3000] [--sessions 4,16] [--workers 1,2]
                                  [--rounds 3] [--record scrapes.jsonl]

Three configurations of the same `vsl serve` (bench/throughput.py's VslServer: every
message held in the spool's quarantine/hold, smtp-source as the client, one connection
per message, 10 KB messages):

* A, off: no `[metrics]`, text logs (the defaults).
* B, metrics + json: `[metrics] listen` on a free port, `[log] format = "json"`, and a
  scraper reading /metrics every second during the run (pessimistic: Prometheus scrapes
  every 15 s by default; a scrape parses every process's files).
* C, B + syslog: also `[log] syslog` to a UDP socket of this script that reads and counts
  the datagrams.
* M, metrics only, and J, JSON logs only (`--configs A,M,J`): where B's cost comes from.

Rounds alternate A, B, C, A, B, C... so that a drift of the machine hits all three alike;
the report gives per (workers, sessions) the median msg/s of each and the ratios B/A and
C/A with their range over the rounds, and the server CPU per message.

`--record FILE` then runs a minute of mixed traffic against one more B server (a policy
with a function per stage running iprev, DNSBL and SPF checks against the project's DNS
server and tests/zones, Maildir delivery, a quarter of the sessions also asking for a
recipient it refuses as a relay) and saves a scrape every 2 s (one JSON object a line:
time and the text) for docs/grafana/render.py, which draws the dashboard from them.
"""
from __future__ import annotations

import argparse
import json
import random
import smtplib
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from throughput import (ROOT, BenchError, VslServer, count_held,  # bench/
                        free_port, say, settle, smtp_source)
from vsl.server.dnsd import DnsServer  # noqa: E402 - throughput put the tree on the path

SIZE = 10_000
CONFIGS = ("A off", "B metrics+json", "C B+syslog", "M metrics", "J json")


class ObservedVsl(VslServer):
    """VslServer with the [metrics] and [log] sections of one configuration."""

    def __init__(self, work: Path, workers: int, config: str, syslog_port: int):
        super().__init__(work / config.split()[0], workers)
        self.variant, self.syslog_port = config, syslog_port
        self.name = f"vSL x{workers} {config}"
        self.metrics_port = 0

    def config(self) -> str:
        text = super().config()
        if self.variant.startswith(("B", "C", "M")):
            self.metrics_port = free_port()
            text += f'\n[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n'
        if self.variant.startswith(("B", "C", "J")):
            text += '\n[log]\nformat = "json"\n'
        if self.variant.startswith("C"):
            text += f'syslog = "udp://127.0.0.1:{self.syslog_port}"\n'
        return text


class Scraper(threading.Thread):
    """Reads /metrics every ``interval`` seconds until stopped; keeps the texts when
    recording."""

    def __init__(self, port: int, interval: float, record: list | None):
        super().__init__(daemon=True)
        self.url, self.interval, self.record = f"http://127.0.0.1:{port}/metrics", interval, record
        self.done, self.scrapes, self.failures = threading.Event(), 0, 0

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as reply:
                    text = reply.read().decode()
                self.scrapes += 1
                if self.record is not None:
                    self.record.append({"time": time.time(), "text": text})
            except OSError:
                self.failures += 1


class SyslogSink(threading.Thread):
    """A UDP socket counting the datagrams it receives."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.port, self.received = self.sock.getsockname()[1], 0

    def run(self) -> None:
        while True:
            try:
                self.sock.recv(65536)
            except OSError:
                return
            self.received += 1


MIXED_POLICY = """
const R = dns::resolver(#{{ nameservers: ["127.0.0.1:{dns_port}"] }});
fn on_connect(ctx) {{
    iprev::check(#{{ ip: ctx.client_ip, dns_resolver: global::R }});
    dnsbl::check(#{{ ip: ctx.client_ip, zones: ["bl.dnsbl.test"], dns_resolver: global::R }});
    status::next()
}}
fn on_helo(ctx) {{ status::next() }}
fn on_mail_from(ctx) {{
    spf::check_host(#{{ ip: ctx.client_ip, helo: ctx.helo, mail_from: ctx.sender,
                       dns_resolver: global::R }});
    status::next()
}}
fn on_rcpt_to(ctx) {{ status::next() }}
fn on_pre_queue(ctx) {{ status::next() }}
"""
SENDERS = ("a@pass.spf.test", "b@softfail.spf.test", "c@neutral.spf.test", "d@fail.spf.test")
ZONES = sorted((ROOT / "tests" / "zones").glob("*.zone"))


class MixedVsl(ObservedVsl):
    """A B server delivering to Maildirs, with a function at each stage and checks
    (iprev, DNSBL, SPF) asking the project's DNS server (tests/zones)."""

    def __init__(self, work: Path, dns_port: int):
        super().__init__(work, 1, CONFIGS[1], 0)
        self.policy = MIXED_POLICY.format(dns_port=dns_port)


def mixed_traffic(port: int, until: float) -> None:
    """Sessions until ``until``: a message (0.5, 5 or 50 KB) to a local recipient, a
    quarter of them also asking for a remote one (refused: 554 5.7.1 relay access
    denied)."""
    line = "x" * 76 + "\r\n"
    while time.monotonic() < until:
        body = "Subject: mixed\r\n\r\n" + line * (random.choice((500, 5000, 50000)) // 78)
        recipients = ["user@example.test"] + (["someone@elsewhere.example"]
                                              if random.random() < 0.25 else [])
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.org",
                          timeout=30) as client:
            client.sendmail(random.choice(SENDERS), recipients, body)


def record_mixed(work: Path, seconds: float, record: list) -> None:
    """``seconds`` of mixed_traffic from 4 clients against a MixedVsl, scraped every 2 s."""
    dns = DnsServer(ZONES)
    dns.start()
    server = MixedVsl(work / "mixed", dns.port)
    server.start()
    try:
        scraper = Scraper(server.metrics_port, 2.0, record)
        scraper.start()
        until = time.monotonic() + seconds
        clients = [threading.Thread(target=mixed_traffic, args=(server.port, until))
                   for _ in range(4)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        time.sleep(4)  # the last deliveries, and two more scrapes
        scraper.done.set()
        scraper.join()
    finally:
        server.stop()
        dns.stop()


def one_run(server: ObservedVsl, sessions: int, args) -> tuple[float, float]:
    """(msg/s, server CPU seconds per message) of one smtp-source run."""
    server.empty()
    settle(args.settle, args.quiet_wait, args.noisy)
    scraper = Scraper(server.metrics_port, args.scrape_interval, None) \
        if server.metrics_port else None
    if scraper:
        scraper.start()
    cpu = server.cpu()
    seconds, _ = smtp_source(server.port, sessions, SIZE, args.messages, args.timeout)
    used = server.cpu() - cpu
    if scraper:
        scraper.done.set()
        scraper.join()
        if scraper.failures:
            raise BenchError(f"{server.name}: {scraper.failures} scrape(s) failed")
    held = count_held(server, args.messages)
    if held != args.messages:
        raise BenchError(f"{server.name}: {held} held of {args.messages} sent")
    return args.messages / seconds, used / args.messages


def bench(work: Path, workers: int, args, sink: SyslogSink) -> dict:
    """{(config, sessions): [(rate, cpu per message) per round]} for one workers value."""
    servers = [ObservedVsl(work / f"x{workers}", workers, c, sink.port) for c in args.configs]
    results: dict = {}
    try:
        for server in servers:
            server.start()
            smtp_source(server.port, max(args.sessions), SIZE, args.warmup, args.timeout)
            count_held(server, args.warmup)
        for round_ in range(args.rounds):
            for sessions in args.sessions:
                for server in servers:
                    results.setdefault((server.variant, sessions), []).append(
                        one_run(server, sessions, args))
                    rate = results[(server.variant, sessions)][-1][0]
                    say(f"   round {round_ + 1} x{workers} {sessions:2d} sessions "
                        f"{server.variant:16s} {rate:6.0f} msg/s")
    finally:
        for server in servers:
            server.stop()
            problems = server.errors()
            if problems:
                say(f"   {server.name} logged {len(problems)} error line(s): {problems[0]}")
    return results


def report(workers: int, results: dict, args) -> None:
    say(f"\n== workers = {workers}: median msg/s (server CPU ms/message); ratio to A "
        "[range over rounds]")
    for sessions in args.sessions:
        base = results[(args.configs[0], sessions)]
        cells = []
        for config in args.configs:
            runs = results[(config, sessions)]
            rate = statistics.median(r for r, _ in runs)
            cpu = statistics.median(c for _, c in runs) * 1000
            cell = f"{config.split()[0]} {rate:6.0f} ({cpu:.2f} ms)"
            if config != args.configs[0]:
                ratios = [r / b for (r, _), (b, _) in zip(runs, base)]
                cell += (f" {statistics.median(ratios):.3f}x "
                         f"[{min(ratios):.3f}-{max(ratios):.3f}]")
            cells.append(cell)
        say(f"   {sessions:2d} sessions: " + " | ".join(cells))


def configs(text: str) -> list[str]:
    """"A,B,C" -> the configurations named by those letters, in that order."""
    named = {config[0]: config for config in CONFIGS}
    try:
        return [named[letter.strip()] for letter in text.split(",")]
    except KeyError as err:
        raise argparse.ArgumentTypeError(f"unknown configuration {err} (A, B, C, M, J)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--sessions", type=lambda t: [int(x) for x in t.split(",")],
                        default=[4, 16])
    parser.add_argument("--workers", type=lambda t: [int(x) for x in t.split(",")],
                        default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default="A,B,C", type=configs,
                        help="letters of the configurations, the baseline first (A,B,C,M,J)")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--quiet-wait", type=float, default=20.0)
    parser.add_argument("--noisy", type=float, default=0.3)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--record", type=Path,
                        help="then record a minute of mixed traffic's scrapes (JSONL) here")
    parser.add_argument("--record-seconds", type=float, default=60.0)
    args = parser.parse_args()
    sink = SyslogSink()
    sink.start()
    with tempfile.TemporaryDirectory(prefix="vsl-observability-") as tmp:
        for workers in args.workers:
            try:
                report(workers, bench(Path(tmp), workers, args, sink), args)
            except BenchError as err:
                say(f"   workers = {workers} not measured: {err}")
                return 1
        say(f"\nsyslog datagrams received by the sink: {sink.received}")
        if args.record:
            record: list = []
            record_mixed(Path(tmp), args.record_seconds, record)
            args.record.write_text("".join(json.dumps(s) + "\n" for s in record))
            say(f"{len(record)} scrapes of mixed traffic saved to {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
