"""Crash-safety harness: real processes on loopback, killed for real.

- :class:`SinkProcess`: the receiving SMTP server, a process of its own
  (``python -m tests.support.crash sink --out FILE``, the aiosmtpd sink of
  ``tests/support/mailsink.py``). It appends each message's Message-ID to FILE, one a line,
  written and fsync'd before it answers 250; it prints its port on stdout once listening.
  With ``--tempfail-every K`` it first answers 451 to one Message-ID in K (chosen by a
  hash: the same in every run), so that delivery defers them.
- :class:`VslProcess`: ``vsl serve --config FILE [--role ROLE]`` on a fixed loopback port
  (a worker or delivery role listens on none), which can be SIGKILLed and started again
  on the same spool or broker.
- :class:`Clients`: concurrent smtplib clients, each message with a unique Message-ID; they
  remember which messages got a 250 to the final dot, and reconnect while the server is
  down (to another server's port, when given several).
- :func:`spool_message_ids`, :func:`broker_message_ids`: the Message-ID of every message
  still in a spool, or on a broker, by queue; :func:`queue_counts`, :func:`broker_counts`:
  how many wait there.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import select
import signal
import smtplib
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

from vsl.server.queue import Spool
from vsl.server.queue_amqp import AmqpQueue
from tests.support.mailsink import Sink, listening
from tests.support.smtp_tools import wait_for

ROOT = Path(__file__).resolve().parents[2]
VSL = Path(sys.executable).parent / "vsl"
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", re.I | re.M)


def message_id(data: bytes) -> str | None:
    """The Message-ID of a message (its header block only), or None."""
    head = re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0]
    found = _MESSAGE_ID.search(head)
    return found.group(1).decode() if found else None


def spool_message_ids(queue_dir: Path) -> dict[str, list[str]]:
    """Message-IDs of the messages in the spool, by queue (works beside a running server:
    a message that moves or leaves meanwhile is skipped)."""
    spool, found = Spool(queue_dir), {}
    for entry in asyncio.run(spool.list()):
        try:
            data = asyncio.run(spool.message(entry.id, entry.queue))
        except OSError:
            continue
        found.setdefault(entry.queue, []).append(message_id(data) or f"<no id {entry.id}>")
    return found


def queue_counts(queue_dir: Path, queues=("deliver", "deferred")) -> int:
    """How many envelopes the given queues hold (cheap: a directory listing)."""
    return sum(1 for q in queues for _ in (Path(queue_dir) / q).glob("*.json"))


async def _read_broker(url: str, prefix: str, read):
    """``await read(queue)`` with an AmqpQueue on ``url`` under ``prefix``, opened for it."""
    queue = AmqpQueue(url, prefix)
    await queue.open()
    try:
        return await read(queue)
    finally:
        await queue.close()


def broker_counts(url: str, prefix: str) -> dict[str, int]:
    """Ready messages per queue on the broker (messages being worked on are not counted)."""
    return asyncio.run(_read_broker(url, prefix, AmqpQueue.counts))


def broker_message_ids(url: str, prefix: str) -> dict[str, list[str]]:
    """Message-IDs of the messages ready on the broker, by queue, in one pass: each AMQP
    body's header block holds the message's (after the envelope's JSON line, and the
    hand-off's in working, neither of which has a raw newline)."""
    async def read(queue: AmqpQueue) -> dict[str, list[str]]:
        found = {}
        async with queue.link.admin_channel() as channel:
            async for physical, message in queue._held(channel, None):
                found.setdefault(queue._logical(physical, message), []).append(
                    message_id(message.body) or f"<no id {message.message_id}>")
        return found
    return asyncio.run(_read_broker(url, prefix, read))


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---- the receiving server ------------------------------------------------------------------

class _IdSink(Sink):
    """mailsink's Sink, recording only Message-IDs, durably, before the 250."""

    def __init__(self, out, tempfail_every: int = 0):
        super().__init__()
        self.out, self.tempfail_every = out, tempfail_every
        self.failed: set[str] = set()  # Message-IDs answered 451 once
        self.accept_all = True

    def tempfails(self, mid: str) -> bool:
        """Whether ``mid`` gets a 451 now: the first time, for one Message-ID in K."""
        if not self.tempfail_every or mid in self.failed or \
                zlib.crc32(mid.encode()) % self.tempfail_every:
            return False
        self.failed.add(mid)
        return True

    async def handle_DATA(self, server, session, envelope):
        mid = message_id(envelope.original_content) or "<none>"
        if self.tempfails(mid):
            return "451 4.3.0 Try again later"
        self.out.write(f"{mid}\n".encode())
        self.out.flush()
        os.fsync(self.out.fileno())
        return "250 2.0.0 Ok: stored"


async def _serve_sink(out_path: str, port: int, tempfail_every: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with open(out_path, "ab") as out:
        sink = await _IdSink(out, tempfail_every).start(port)
        print(sink.port, flush=True)
        await stop.wait()
        await sink.stop()


class SinkProcess:
    """The receiving SMTP server as a separate process (see the module docstring)."""

    def __init__(self, directory: Path, tempfail_every: int = 0):
        self.tempfail_every = tempfail_every
        self.out = directory / "received.txt"
        self.log = directory / "sink.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout: float = 15) -> "SinkProcess":
        self.out.touch()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.crash", "sink", "--out", str(self.out),
                 "--tempfail-every", str(self.tempfail_every)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the sink did not start: {line!r}\n{_tail(self.log)}")
        self.port = int(line)
        return self

    def received(self) -> list[str]:
        """The Message-ID of every message received so far, in order."""
        return self.out.read_text().split()

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


# ---- the server under test -------------------------------------------------------------

class VslProcess:
    """``vsl serve --config CONFIG --role ROLE`` listening on 127.0.0.1:``port``; each start
    logs to its own serve-N.log in ``directory``. A role that receives nothing (``worker``,
    ``delivery``) is up once its log says it started."""

    def __init__(self, config: Path, port: int, directory: Path, role: str = "all"):
        self.config, self.port, self.directory, self.role = config, port, directory, role
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.directory / f"serve-{self.starts}.log"

    def start(self, timeout: float = 15) -> None:
        self.starts += 1
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [VSL, "serve", "--config", str(self.config), "--role", self.role],
                cwd=self.directory, stdout=log, stderr=log)
        up = wait_for(lambda: self.proc.poll() is not None or self._up(), timeout)
        if self.proc.poll() is not None:
            raise RuntimeError(f"vsl serve exited ({self.proc.returncode}):\n"
                               f"{_tail(self.log)}")
        if up:
            return
        self.stop()
        raise RuntimeError(f"vsl serve did not listen within {timeout} s:\n{_tail(self.log)}")

    def _up(self) -> bool:
        if self.role in ("all", "receiver"):
            return listening(self.port)
        return b" started: " in self.log.read_bytes()

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)

    def logs(self) -> str:
        """The tail of every start's log."""
        return "\n".join(f"--- serve-{n}.log\n{_tail(self.directory / f'serve-{n}.log', 10)}"
                         for n in range(1, self.starts + 1))


def write_config(tmp_path: Path, port: int, hostname: str, sections: str,
                 workers: int = 1, limits: str = "connections_per_ip = 50\n") -> Path:
    """A vsl.toml for a `vsl serve` subprocess: a script accepting every recipient, a
    loopback listener on ``port``, the spool in ``tmp_path``, ``limits`` (the [limits]
    lines), then ``sections`` (TOML)."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "main.vsl").write_text("fn on_rcpt_to(ctx) { status::accept() }\n")
    config = tmp_path / "vsl.toml"
    config.write_text(f"""\
listen = ["127.0.0.1:{port}"]

[server]
hostname = "{hostname}"
scripts = "scripts"
queue_dir = "queue"
workers = {workers}

[limits]
{limits}
{sections}""")
    return config


def relay_section(sink_port: int, concurrency: int) -> str:
    """``[delivery]`` relaying everything to the sink on ``sink_port``, ``concurrency``
    messages at once; deliveries polled often and retried after 1 s."""
    return f"""\
[delivery]
relay = "smtp://127.0.0.1:{sink_port}?tls=none"
poll_interval = 0.05
concurrency = {concurrency}
retry_first = 1
retry_max = 2
connect_timeout = 5
command_timeout = 10
idle_timeout = 2
"""


def stop_process(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 5 s; returns once the process is gone."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# ---- clients ---------------------------------------------------------------------------

class Clients:
    """``threads`` concurrent clients sending to 127.0.0.1:``ports`` (one port, or several:
    each session picks one at random) until ``target`` messages got a 250 to the final
    dot. A session sends 1 to 8 messages; every message (a retry too) has a new
    Message-ID. Errors (the server killed, refused connections) only mean that message
    was not acknowledged; the client reconnects, after a refused connection to the next
    port."""

    def __init__(self, ports: int | tuple[int, ...], target: int, threads: int = 8,
                 seed: int = 0, tag: str = "crash", timeout: float = 10):
        self.ports = (ports,) if isinstance(ports, int) else tuple(ports)
        self.target, self.seed, self.tag = target, seed, tag
        self.timeout = timeout
        self.lock = threading.Lock()
        self.attempted: list[str] = []        # MAIL FROM sent (at least tried)
        self.acked: dict[str, str] = {}       # Message-ID -> the server's queue id
        self.outcomes: Counter = Counter()    # what the others got
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True,
                                         name=f"crash-client-{n}") for n in range(threads)]

    def start(self) -> "Clients":
        for thread in self.threads:
            thread.start()
        return self

    @property
    def acked_count(self) -> int:
        return len(self.acked)

    def done(self) -> bool:
        return self.stopping.is_set() or len(self.acked) >= self.target

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def stop(self) -> None:
        self.stopping.set()
        self.join(self.timeout + 5)

    def _run(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        seq, port = 0, rng.randrange(len(self.ports))
        while not self.done():
            try:
                smtp = smtplib.SMTP("127.0.0.1", self.ports[port], local_hostname="client.test",
                                    timeout=self.timeout)
            except (smtplib.SMTPException, OSError) as err:
                self._count(f"connect: {type(err).__name__}")
                port = (port + 1) % len(self.ports)
                time.sleep(0.02)
                continue
            port = rng.randrange(len(self.ports))  # the next session's
            try:
                if smtp.ehlo()[0] != 250:
                    self._count("ehlo refused")
                    continue
                for _ in range(rng.randint(1, 8)):
                    if self.done():
                        break
                    seq += 1
                    mid = f"<{self.tag}.{n}.{seq}@clients.test>"
                    with self.lock:
                        self.attempted.append(mid)
                    if not self._send(smtp, mid, n, rng):
                        break
                smtp.quit()
            except Exception as err:  # noqa: BLE001 - the server was killed: a new session
                self._count(type(err).__name__)
            finally:
                smtp.close()

    def _send(self, smtp: smtplib.SMTP, mid: str, n: int, rng: random.Random) -> bool:
        """One transaction; whether the session can go on."""
        code, _ = smtp.mail(f"sender{n}@clients.test")
        if code != 250:
            self._count(f"MAIL {code}")
            return False
        code, _ = smtp.rcpt(f"rcpt{n}@remote.test")
        if code != 250:
            self._count(f"RCPT {code}")
            return False
        body = b"".join(b"line %d of %s\r\n" % (i, mid.encode())
                        for i in range(rng.randint(1, 40)))
        code, text = smtp.data(f"From: <sender{n}@clients.test>\r\nTo: <rcpt{n}@remote.test>"
                               f"\r\nMessage-ID: {mid}\r\nSubject: crash test\r\n\r\n"
                               .encode() + body)
        if code != 250:
            self._count(f"DATA {code}")
            return False
        with self.lock:
            self.acked[mid] = text.decode().rsplit(" ", 1)[-1]
        return True

    def _count(self, what: str) -> None:
        with self.lock:
            self.outcomes[what] += 1


# ---- command line ------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.crash")
    commands = parser.add_subparsers(dest="command", required=True)
    sink = commands.add_parser("sink", help="receiving SMTP server recording Message-IDs")
    sink.add_argument("--out", required=True, help="file to append Message-IDs to")
    sink.add_argument("--port", type=int, default=0, help="default: a free port (printed)")
    sink.add_argument("--tempfail-every", type=int, default=0, metavar="K",
                      help="answer 451 first to one Message-ID in K (0: never)")
    args = parser.parse_args(argv)
    if args.command == "sink":
        asyncio.run(_serve_sink(args.out, args.port, args.tempfail_every))


if __name__ == "__main__":
    main()
