"""End to end, SMTP in to a sink: messages per second and latency through vSL on a RabbitMQ
broker (three processes: receiver, worker, delivery) and through vSL on its spool (one
`vsl serve`), in the same run.

    python bench/end_to_end.py [--clients 16] [--messages 2000] [--size 10k] [--rounds 2]
    python bench/end_to_end.py --modes rabbitmq --messages 500    # a try-out

* The policy forwards every recipient to the sink (`transport::forward` at RCPT TO) and has
  a trivial `on_post_queue`, so each message takes the whole path: the receiver's 250 after
  its queue has it (the spool's fsync, or the broker's confirm of `<prefix>.working`), the
  post-queue worker, delivery over SMTP to the sink.
* rabbitmq: a private node (tests/support/rabbitmq.py, its own epmd, ports and temporary
  directory, stopped at the end) and `vsl serve --role receiver|worker|delivery`, each
  with its own queue directory (as on three machines). spool: `vsl serve` (role all).
  Both with the default `[delivery]` settings (concurrency 40, poll_interval 1 s).
* the sink: aiosmtpd recording when each Message-ID first arrives (wall clock, as the
  client's), and how many messages arrived in all (duplicates show).
* the load: --clients threads, each sending one message per connection (as smtp-source
  does) until --messages are sent. Before the timed rounds, --warmup messages go through
  and arrive. A round is timed from its first connection to the last arrival.

Reported per round: `msg/s` end to end (messages / that time), `accept/s` (messages / time
to the last 250), latency p50 and p99 from the client's 250 to the arrival at the sink,
and from the start of the client's connection, `server CPU` (every vSL process and the
broker's Erlang VM, per message) and `other load` (everything else on the machine, in
CPUs: the clients and the sink included).
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import signal
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from throughput import (VSL, BenchError, ProcessServer, SinkServer,  # bench/, beside this
                        SINK_SERVING, clean_up, free_port, human, parse_size, say, settle,
                        start_broker, system_busy, tree_cpu)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support.rabbitmq import PrivateRabbitMQ  # noqa: E402

SENDER = "bench@example.org"
RECIPIENT = "rcpt@example.test"
POLICY = """\
fn on_rcpt_to(ctx) {
    transport::forward(ctx, "smtp://127.0.0.1:SINK?tls=none");
    status::next()
}
fn on_post_queue(ctx) { status::next() }
"""

SINK = """
import asyncio, json, os, re, signal, sys, time
from aiosmtpd.smtp import SMTP

MESSAGE_ID = re.compile(rb"^Message-ID:[ \\t]*(<[^>]*>)", re.I | re.M)
arrived, total = {}, 0

class Sink:
    async def handle_DATA(self, server, session, envelope):
        global total
        total += 1
        match = MESSAGE_ID.search(envelope.content)
        if match:
            arrived.setdefault(match[1].decode(), time.time())
        return "250 2.0.0 Ok"

def report():
    return json.dumps({"total": total, "arrived": arrived})
""" + SINK_SERVING


# ---- the sink and vSL ---------------------------------------------------------------------

class Sink(SinkServer):
    """The sink, recording arrival times by Message-ID."""

    script = SINK

    def arrivals(self) -> tuple[int, dict[str, float]]:
        """Messages received in all, and when each Message-ID first arrived."""
        data = json.loads(self.dumped())
        return data["total"], data["arrived"]


class VslRole(ProcessServer):
    """One `vsl serve --role ROLE` process, with a queue directory of its own."""

    def __init__(self, work: Path, role: str, port: int):
        self.role, self.port = role, port
        self.work = work
        self.log = work / f"{role}.log"
        self.name = f"vSL {role}"

    def start(self) -> None:
        command = [str(VSL), "serve", "--config", str(self.work / "vsl.toml"),
                   "--listen", f"127.0.0.1:{self.port}", "--scripts",
                   str(self.work / "scripts"), "--queue-dir", str(self.work / self.role),
                   "--hostname", "example.test", "--role", self.role]
        # made here: over the broker, vSL does not create its queue directory, and the
        # delivery journal in it then fails every delivery after the remote's 250
        (self.work / self.role).mkdir()
        if self.role in ("receiver", "all"):
            self.launch(command, cwd=self.work)
        else:
            self.spawn(command, cwd=self.work)

    def errors(self) -> list[str]:
        return [f"{self.role}: {line}" for line in
                self.log.read_text(errors="replace").splitlines()
                if " ERROR " in line or "Traceback" in line]


class Deployment:
    """vSL accepting on ``port`` and delivering to the sink: one process (spool) or three
    roles on a private broker (rabbitmq)."""

    def __init__(self, mode: str, work: Path, sink_port: int):
        self.mode = mode
        self.work = work / mode
        self.sink_port = sink_port
        self.port = free_port()
        self.broker: PrivateRabbitMQ | None = None
        roles = ["receiver", "worker", "delivery"] if mode == "rabbitmq" else ["all"]
        self.processes = [VslRole(self.work, role, self.port) for role in roles]

    def start(self) -> None:
        (self.work / "scripts").mkdir(parents=True)
        (self.work / "scripts" / "main.vsl").write_text(
            POLICY.replace("SINK", str(self.sink_port)))
        config = "[limits]\nconnections = 1000\nconnections_per_ip = 1000\n"
        if self.mode == "rabbitmq":
            self.broker = start_broker()
            config += f'\n[queue]\nbackend = "rabbitmq"\nurl = "{self.broker.url}"\n'
        (self.work / "vsl.toml").write_text(config)
        for process in self.processes:
            process.start()

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        if self.broker is not None:
            self.broker.close()
            self.broker = None

    def cpu(self) -> float:
        pids = [p.proc.pid for p in self.processes if p.proc is not None]
        if self.broker is not None and self.broker.proc is not None:
            pids.append(self.broker.proc.pid)
        return sum(tree_cpu(pid) for pid in pids)

    def errors(self) -> list[str]:
        return [line for process in self.processes for line in process.errors()]


# ---- load -----------------------------------------------------------------------------------

@dataclass
class Sent:
    """One message: its Message-ID, when its connection started and when the 250 came."""

    message_id: str
    started: float
    accepted: float


@dataclass
class Round:
    """One timed round of a mode: what was sent, when it arrived, what it cost."""

    mode: str
    number: int
    messages: int
    sent: list[Sent] = field(default_factory=list)
    arrived: dict[str, float] = field(default_factory=dict)
    duplicates: int = 0
    server_cpu: float = 0.0
    other_cpu: float = 0.0
    error: str | None = None

    @property
    def seconds(self) -> float:
        return max(self.arrived[s.message_id] for s in self.sent) - self.sent_from

    @property
    def sent_from(self) -> float:
        return min(s.started for s in self.sent)

    def accept_seconds(self) -> float:
        return max(s.accepted for s in self.sent) - self.sent_from

    def latencies(self, since: str) -> list[float]:
        return sorted(self.arrived[s.message_id] - getattr(s, since) for s in self.sent)


def message(message_id: str, size: int) -> bytes:
    headers = (f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: end to end\r\n"
               f"Message-ID: {message_id}\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    return headers + line * max(1, size // len(line))


def send_all(port: int, tag: str, count: int, clients: int, size: int,
             timeout: float) -> list[Sent]:
    """Send ``count`` messages from ``clients`` threads, one connection each; BenchError at
    the first failure."""
    numbers = iter(range(count))
    lock = threading.Lock()
    sent: list[Sent] = []
    failures: list[str] = []

    def client() -> None:
        while not failures:
            with lock:
                number = next(numbers, None)
            if number is None:
                return
            message_id = f"<{number}.{tag}@bench.example.org>"
            started = time.time()
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as smtp:
                    smtp.sendmail(SENDER, [RECIPIENT], message(message_id, size))
                    accepted = time.time()
            except (OSError, smtplib.SMTPException) as err:
                failures.append(f"{message_id}: {err}")
                return
            with lock:
                sent.append(Sent(message_id, started, accepted))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise BenchError(f"{len(failures)} message(s) refused, first: {failures[0]}")
    return sent


def wait_arrivals(sink: Sink, ids: list[str], timeout: float) -> tuple[int, dict[str, float]]:
    """The sink's total and arrival times once every id arrived; BenchError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        total, arrived = sink.arrivals()
        missing = sum(i not in arrived for i in ids)
        if not missing:
            return total, arrived
        if time.monotonic() > deadline:
            raise BenchError(f"{missing} of {len(ids)} messages had not arrived after "
                             f"{timeout:.0f}s")
        time.sleep(0.2)


def run_round(deployment: Deployment, sink: Sink, result: Round, args) -> None:
    total_before, _ = sink.arrivals()
    cpu, busy, began = deployment.cpu(), system_busy(), time.monotonic()
    result.sent = send_all(deployment.port, f"{deployment.mode}{result.number}",
                           result.messages, args.clients, args.size, args.timeout)
    total, arrived = wait_arrivals(sink, [s.message_id for s in result.sent], args.timeout)
    result.server_cpu = deployment.cpu() - cpu
    result.arrived = {s.message_id: arrived[s.message_id] for s in result.sent}
    result.duplicates = total - total_before - result.messages
    result.other_cpu = (max(0.0, system_busy() - busy - result.server_cpu) /
                        (time.monotonic() - began))


def bench_mode(mode: str, work: Path, sink: Sink, args, rounds: list[Round]) -> None:
    say(f"== {mode}: starting")
    deployment = Deployment(mode, work, sink.port)
    try:
        deployment.start()
        if args.warmup:
            warm = send_all(deployment.port, f"{mode}warm", args.warmup, args.clients,
                            args.size, args.timeout)
            wait_arrivals(sink, [s.message_id for s in warm], args.timeout)
        for number in range(1, args.rounds + 1):
            result = Round(mode, number, args.messages)
            rounds.append(result)
            settle(args.settle, args.quiet_wait, args.noisy)
            try:
                run_round(deployment, sink, result, args)
            except BenchError as err:
                result.error = str(err)
            say(f"   round {number}: " + (f"FAILED: {result.error}" if result.error else
                                          f"{result.messages / result.seconds:.0f} msg/s"))
        problems = deployment.errors()
        if problems:
            say(f"   {mode} logged {len(problems)} error line(s), first: {problems[0]}")
    except BenchError as err:
        say(f"   {mode} not measured: {err}")
        rounds.append(Round(mode, 0, args.messages, error=str(err).splitlines()[0]))
    finally:
        deployment.stop()


# ---- output ---------------------------------------------------------------------------------

def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of sorted ``values`` (nearest rank)."""
    return values[min(len(values) - 1, max(0, round(fraction * len(values)) - 1))]


def report(rounds: list[Round], args) -> None:
    print(f"\n{args.messages} messages of {human(args.size)} per round from {args.clients} "
          f"clients (one connection per message); {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}")
    print(f"{'mode':9} {'round':>5} {'msg/s':>6} {'accept/s':>8} {'seconds':>7} "
          f"{'p50 from 250':>12} {'p99 from 250':>12} {'p50 from start':>14} "
          f"{'p99 from start':>14} {'server CPU':>12} {'other load':>10} {'dupl':>4}")
    for r in rounds:
        if r.error:
            print(f"{r.mode:9} {r.number:5d}   failed: {r.error}")
            continue
        from_250, from_start = r.latencies("accepted"), r.latencies("started")
        noisy = "  (!)" if r.other_cpu > args.noisy else ""
        print(f"{r.mode:9} {r.number:5d} {r.messages / r.seconds:6.0f} "
              f"{r.messages / r.accept_seconds():8.0f} {r.seconds:7.1f} "
              f"{ms(percentile(from_250, 0.5)):>12} {ms(percentile(from_250, 0.99)):>12} "
              f"{ms(percentile(from_start, 0.5)):>14} {ms(percentile(from_start, 0.99)):>14} "
              f"{r.server_cpu / r.messages * 1000:6.2f} ms/msg {r.other_cpu:6.2f} CPU "
              f"{r.duplicates:4d}{noisy}")
    if any(not r.error and r.other_cpu > args.noisy for r in rounds):
        print(f"(!) everything else (the clients and the sink included) used more than "
              f"{args.noisy} CPU during the round")
    rates = {mode: [r.messages / r.seconds for r in rounds if r.mode == mode and not r.error]
             for mode in args.modes}
    if all(rates.values()) and {"spool", "rabbitmq"} <= set(rates):
        ratio = statistics.median(rates["rabbitmq"]) / statistics.median(rates["spool"])
        print(f"rabbitmq/spool, median msg/s end to end: {ratio:.2f}")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


# ---- main -----------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="spool,rabbitmq",
                        help="comma-separated: spool, rabbitmq (default both)")
    parser.add_argument("--clients", type=int, default=16,
                        help="concurrent SMTP clients (default 16)")
    parser.add_argument("--messages", type=int, default=2000,
                        help="messages per round (default 2000)")
    parser.add_argument("--size", type=parse_size, default=10 * 1024,
                        help="message size (default 10k)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per mode (2)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="messages sent through after the start, not timed (200)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds of rest before each round (2)")
    parser.add_argument("--noisy", type=float, default=0.5,
                        help="flag rounds during which everything else used more CPUs' "
                             "worth than this (0.5: the clients and the sink count)")
    parser.add_argument("--quiet-wait", type=float, default=30,
                        help="before a round, wait up to this many seconds for the "
                             "machine's load to fall under --noisy (30)")
    parser.add_argument("--timeout", type=float, default=300,
                        help="bound on sending a round and on its arrivals, in s (300)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (logs, configs)")
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in ("spool", "rabbitmq") for m in args.modes):
        parser.error("--modes: choose among spool, rabbitmq")

    work = Path(tempfile.mkdtemp(prefix="vsl-end-to-end-", dir="/tmp"))
    sink = Sink(work)
    atexit.register(sink.stop)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, _frame: sys.exit(128 + number))
    say(f"work directory: {work}")
    rounds: list[Round] = []
    try:
        sink.start()
        for mode in args.modes:
            bench_mode(mode, work, sink, args, rounds)
    finally:
        sink.stop()
        clean_up(work, args.keep)
    report(rounds, args)
    return 1 if any(r.error for r in rounds) else 0


if __name__ == "__main__":
    sys.exit(main())
