"""A soak: 100,000 messages through one `vsl serve` process, its RSS, descriptors and
threads sampled as they go; exits 1 when RSS grows past a bound after the warm-up.

    python bench/soak.py [--messages 100000] [--clients 4] [--max-growth 8]
    python bench/soak.py --quick          # 5,000 messages

The server (one process, `[server] workers = 1`) runs a policy that exercises its bounded
memories on every message, and delivers every message to a Maildir:

* bench/observability.py's mixed policy: on_connect runs iprev::check and dnsbl::check,
  on_mail_from spf::check_host, through a resolver asking tests/zones served by vSL's
  DNS server in a process of this bench
  (names outside those zones are NXDOMAIN). `[dns] cache_bytes` is 256 KiB, so the
  resolver's cache is full within the warm-up and evicts from then on;
* every message comes from a new client address (127.2.0.1, 127.2.0.2, ...: Linux answers
  all of 127/8 on lo), so each brings new PTR and DNSBL names to the cache and a new key
  to the admission table, and has a new HELO name; senders cycle over four SPF domains,
  recipients over 200 local mailboxes;
* `[metrics] listen` is on, and /metrics is scraped every 5 s, as Prometheus would;
* every recipient is local (`--hostname example.test`), so delivery writes each message
  to `mail/example.test/<user>/new` beside the spool and removes it from the spool. The
  bench removes the delivered files at every sample, so the disk holds at most a
  sample's worth of messages.

The clients (--clients asyncio tasks of this process, one session after another, one
small message a session) pause at every --sample-every messages while the bench samples
the server's VmRSS, open descriptors (/proc/PID/fd) and threads, then go on. The RSS
after the first --warmup messages is the reference: at the end, once delivery has
caught up, RSS may exceed it by at most --max-growth MiB, the open descriptors may not,
and the threads (pools that grow to their size) may not exceed the most of the first
half; otherwise the bench says what grew and exits 1.
The server's asyncio tasks cannot be counted from outside (it has no hook for that).
"""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from connections import open_fds, proc_status, raise_nofile, rss_mib, send_message  # bench/
from observability import MIXED_POLICY, SENDERS, Scraper
from throughput import ROOT, BenchError, VslServer, free_port, say, tree_cpu

MAILBOXES = 200
CACHE_BYTES = 256 * 1024
THREAD_SAMPLES = 4  # samples in the first half before threads are judged
BODY = b"Subject: soak\r\n\r\n" + b"A small message of the soak, a line of text.\r\n" * 20
# A DNS server for tests/zones in a process of its own; prints its port. It forgets the
# queries it logs, so its memory stays flat however long the soak.
DNS_SERVER = """
import sys, time
from pathlib import Path
from vsl.server.dnsd import DnsServer
server = DnsServer(sorted(Path(sys.argv[1]).glob("*.zone")))
server.start()
print(server.port, flush=True)
while True:
    time.sleep(5)
    server.queries.clear()
"""


class SoakVsl(VslServer):
    """One `vsl serve` process with the soak's policy, delivering to Maildirs."""

    def __init__(self, work: Path, dns_port: int):
        super().__init__(work)
        self.name = "vSL soak"
        self.policy = MIXED_POLICY.format(dns_port=dns_port)
        self.metrics_port = 0
        self.maildirs = self.work / "mail" / "example.test"

    def config(self) -> str:
        self.metrics_port = free_port()
        return (f"[server]\nworkers = 1\n\n[dns]\ncache_bytes = {CACHE_BYTES}\n\n"
                f'[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n')

    def take_delivered(self) -> int:
        """Remove the messages delivered so far; how many there were."""
        taken = 0
        for new in self.maildirs.glob("*/new"):
            for message in new.iterdir():
                message.unlink()
                taken += 1
        return taken

    def waiting(self) -> int:
        """Messages in the spool not delivered yet."""
        return sum(1 for name in ("deliver", "deferred", "working")
                   for _ in (self.queue / name).rglob("*.json"))


class DnsProcess:
    """tests/zones served by vsl.server.dnsd in a child process."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", DNS_SERVER, str(ROOT / "tests" /
                                      "zones")], stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@dataclass
class Sample:
    messages: int
    seconds: float
    rss: float
    fds: int
    threads: int
    cpu: float

    def line(self) -> str:
        return (f"{self.messages:8d} {self.seconds:8.1f} {self.rss:8.1f} {self.fds:5d} "
                f"{self.threads:7d} {self.cpu:8.1f}")


def sample(server: SoakVsl, messages: int, start: float) -> Sample:
    pid = server.proc.pid
    return Sample(messages, time.monotonic() - start, rss_mib(pid), open_fds(pid),
                  proc_status(pid, "Threads"), tree_cpu(pid))


def source_address(index: int) -> str:
    """A new client address for every message: 127.2.0.1, ..., 127.2.0.254, 127.2.1.1..."""
    low, rest = index % 254 + 1, index // 254
    return f"127.{2 + rest // 256}.{rest % 256}.{low}"


async def send(port: int, index: int) -> None:
    await send_message(port, source_address(index), f"client{index}.example.org",
                       SENDERS[index % len(SENDERS)],
                       f"user{index % MAILBOXES}@example.test", BODY)


async def soak(server: SoakVsl, args, samples: list[Sample]) -> int:
    """Send the messages, sampling every ``args.sample_every``; how many were delivered
    (and removed) meanwhile."""
    start, delivered = time.monotonic(), 0
    samples.append(sample(server, 0, start))
    for first in range(0, args.messages, args.sample_every):
        last = min(first + args.sample_every, args.messages)
        queue = iter(range(first, last))

        async def client() -> None:
            for index in queue:
                await send(server.port, index)

        await asyncio.gather(*(client() for _ in range(args.clients)))
        delivered += server.take_delivered()
        samples.append(sample(server, last, start))
        say(samples[-1].line())
    return delivered


def drain(server: SoakVsl, timeout: float) -> int:
    """Wait until delivery has caught up; the messages delivered meanwhile."""
    deadline, delivered = time.monotonic() + timeout, 0
    while server.waiting() and time.monotonic() < deadline:
        time.sleep(0.5)
        delivered += server.take_delivered()
    time.sleep(2.0)  # the last delivery's clean-up, then a still process
    return delivered + server.take_delivered()


def verdict(samples: list[Sample], reference: Sample, end: Sample, args) -> list[str]:
    """What grew past its bound after the warm-up. Threads come from pools that grow up
    to their size when their work comes in bursts: a leak would add threads all along, so
    the end may not have more than the first half of the soak had at most (judged once
    the first half has THREAD_SAMPLES samples: a short run ends before its pools fill)."""
    problems = []
    if end.rss - reference.rss > args.max_growth:
        problems.append(f"RSS grew {end.rss - reference.rss:.1f} MiB after the warm-up "
                        f"(bound {args.max_growth} MiB)")
    if end.fds > reference.fds:
        problems.append(f"open descriptors {reference.fds} -> {end.fds}")
    first_half = [s.threads for s in samples if s.messages <= args.messages // 2]
    if len(first_half) >= THREAD_SAMPLES and end.threads > max(first_half):
        problems.append(f"threads {max(first_half)} (first half at most) -> {end.threads}")
    return problems


def report(samples: list[Sample], reference: Sample, end: Sample, args) -> None:
    first = samples[0]
    rate = args.messages / samples[-1].seconds
    print(f"\n{args.messages} messages from {args.clients} clients ({rate:.0f} msg/s, server "
          f"CPU {(samples[-1].cpu - first.cpu) / args.messages * 1000:.2f} ms/message)")
    print(f"{'':22} {'RSS MiB':>8} {'fds':>5} {'threads':>7}")
    for label, s in (("start", first), (f"after {reference.messages} (warm-up)", reference),
                     (f"end ({args.messages}, drained)", end)):
        print(f"{label:22} {s.rss:8.1f} {s.fds:5d} {s.threads:7d}")
    growth = end.rss - reference.rss
    per_10k = growth / max(args.messages - reference.messages, 1) * 10_000
    print(f"growth after the warm-up: {growth:+.1f} MiB ({per_10k:+.2f} MiB per 10,000 "
          f"messages; bound {args.max_growth} MiB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=None,
                        help="messages in all (default 100000; 5000 with --quick)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="messages before the reference sample (default 20000; 1000 "
                             "with --quick): the allocator's RSS settles within them")
    parser.add_argument("--sample-every", type=int, default=None,
                        help="messages between samples (default 5000; 500 with --quick)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (4)")
    parser.add_argument("--max-growth", type=float, default=8.0,
                        help="MiB RSS may grow after the warm-up (default 8)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="seconds delivery may take to catch up at the end (300)")
    parser.add_argument("--quick", action="store_true", help="5,000 messages")
    args = parser.parse_args()
    args.messages = args.messages or (5000 if args.quick else 100_000)
    args.warmup = args.warmup or (1000 if args.quick else 20_000)
    args.sample_every = args.sample_every or (500 if args.quick else 5000)
    if args.warmup % args.sample_every or args.warmup >= args.messages:
        parser.error("--warmup must be a multiple of --sample-every, under --messages")
    raise_nofile(4096)
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="vsl-soak-") as tmp:
        dns = DnsProcess()
        server = SoakVsl(Path(tmp), dns.port)
        try:
            server.start()
            scraper = Scraper(server.metrics_port, 5.0, None)
            scraper.start()
            say(f"{'messages':>8} {'seconds':>8} {'RSS MiB':>8} {'fds':>5} {'threads':>7} "
                f"{'CPU s':>8}")
            delivered = asyncio.run(soak(server, args, samples))
            delivered += drain(server, args.drain_timeout)
            scraper.done.set()
            end = sample(server, args.messages, 0.0)
        except BenchError as err:
            say(f"failed: {err}")
            return 1
        finally:
            server.stop()
            dns.stop()
        errors = server.errors()
    reference = next(s for s in samples if s.messages == args.warmup)
    report(samples, reference, end, args)
    problems = [f"{len(errors)} error line(s) in the server's log, the first: {errors[0]}"
                ] if errors else []
    if delivered != args.messages:
        problems.append(f"{delivered} of {args.messages} messages delivered")
    if scraper.failures:
        problems.append(f"{scraper.failures} scrape(s) of /metrics failed")
    problems += verdict(samples, reference, end, args)
    for problem in problems:
        print(f"FAIL: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
