"""SMTP sessions per second and the server's CPU time per session: vSL with a script on
every stage, against vSL without a script and a bare aiosmtpd server that does nothing,
under the same client load in the same run. Each server runs in its own process; the
client pipelines nothing and waits for every reply, like a real MTA.

    python bench/smtp_session.py [--sessions 600] [--concurrency 20]
    python bench/smtp_session.py --vsl before=/tmp/base/.venv/bin/vsl  # another vSL too

``--vsl NAME=PATH`` adds a column for another vSL (say, a checkout of main), without a
script, so a change is measured against it in one run; the machine's other load skews
rates more than CPU times.
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throughput import free_port, tree_cpu

ROOT = Path(__file__).resolve().parent.parent
VSL = Path(sys.executable).parent / "vsl"

POLICY = """
const TRUSTED = ["192.0.2.1"];
fn on_connect(ctx) { if ctx.client_ip in global::TRUSTED { status::faccept() } else { status::next() } }
fn on_helo(ctx) { if ctx.helo.ends_with(".invalid") { status::deny("550 5.7.1 bad helo") } else { status::next() } }
fn on_mail_from(ctx) { ctx.store("sender_domain", ctx.sender.domain); status::next() }
fn on_rcpt_to(ctx) { if ctx.rcpt.domain == "example.test" { status::accept() } else { status::next() } }
fn on_pre_queue(ctx) { ctx.append_header("X-Bench", `${ctx.get("sender_domain")}`); status::next() }
fn on_post_queue(ctx) { status::next() }
"""

BARE = """
import asyncio, sys
from aiosmtpd.smtp import SMTP
class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Sink()), "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
asyncio.run(main())
"""

MESSAGE = b"From: a@example.org\r\nTo: b@example.test\r\nSubject: bench\r\n\r\n" + \
    (b"x" * 76 + b"\r\n") * 26 + b".\r\n"


async def reply(reader) -> bytes:
    while True:
        line = await reader.readline()
        if not line or line[3:4] != b"-":
            return line


async def session(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await reply(reader)).startswith(b"220"), "no greeting"
    for command in (b"EHLO client.example.org", b"MAIL FROM:<a@example.org>",
                    b"RCPT TO:<b@example.test>", b"DATA"):
        writer.write(command + b"\r\n")
        line = await reply(reader)
        assert line[:1] in (b"2", b"3"), line
    writer.write(MESSAGE)
    assert (await reply(reader)).startswith(b"250"), "message refused"
    writer.write(b"QUIT\r\n")
    await reply(reader)
    writer.close()


async def load(port: int, sessions: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one():
        async with sem:
            await session(port)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(sessions)))
    return sessions / (time.perf_counter() - start)


def wait_port(port: int, proc, log: Path) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def measure(command: list[str], port: int, args, log: Path) -> tuple[float, float]:
    """The best rate (sessions/s) and the least server CPU time per session (µs) of
    ``args.repeat`` loads."""
    with open(log, "wb") as out:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen(command, stdout=out, stderr=out)
    try:
        wait_port(port, proc, log)
        asyncio.run(load(port, args.sessions // 10, args.concurrency))  # warm up
        runs = []
        for _ in range(args.repeat):
            cpu = tree_cpu(proc.pid)
            rate = asyncio.run(load(port, args.sessions, args.concurrency))
            runs.append((rate, (tree_cpu(proc.pid) - cpu) / args.sessions * 1e6))
        return max(rate for rate, _ in runs), min(cpu for _, cpu in runs)
    finally:
        proc.terminate()
        proc.wait(10)


def vsl_serve(vsl: Path, tmp: Path, label: str, port: int, scripts: list[str]) -> list[str]:
    return [str(vsl), "serve", "--config", str(tmp / "vsl.toml"),
            "--listen", f"127.0.0.1:{port}", *scripts,
            "--queue-dir", str(tmp / f"queue-{label}"), "--hostname", "example.test"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--vsl", action="append", default=[], metavar="NAME=PATH",
                        help="another vsl command to measure, without a script")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "scripts").mkdir()
        (tmp / "scripts" / "main.vsl").write_text(POLICY)
        (tmp / "vsl.toml").write_text("[limits]\nconnections = 10000\nconnections_per_ip = 10000\n")
        results = {}
        others = [(f"{name}, no script", f"other{i}", Path(path), [])
                  for i, (name, _, path) in enumerate(v.partition("=") for v in args.vsl)]
        for name, label, vsl, scripts in (
                ("vsl, script on every stage", "script", VSL,
                 ["--scripts", str(tmp / "scripts")]),
                ("vsl, no script", "none", VSL, []), *others):
            port = free_port()
            results[name] = measure(vsl_serve(vsl, tmp, label, port, scripts), port, args,
                                    tmp / f"{label}.log")
        port = free_port()
        results["bare aiosmtpd"] = measure([sys.executable, "-c", BARE, str(port)], port, args,
                                           tmp / "bare.log")
    base = results["bare aiosmtpd"][0]
    print(f"{args.sessions} sessions, {args.concurrency} at a time, best of {args.repeat} "
          f"(2 KB message, queued durably by vSL)")
    print(f"{'server':30} {'sessions/s':>10} {'vs bare':>8} {'CPU µs/session':>15}")
    for name, (rate, cpu) in results.items():
        print(f"{name:30} {rate:10.0f} {rate / base:8.2f} {cpu:15.0f}")
    script, plain = results["vsl, script on every stage"][0], results["vsl, no script"][0]
    print(f"policy engine cost (script vs no script): {(1 - script / plain) * 100:.0f}%")


if __name__ == "__main__":
    main()
