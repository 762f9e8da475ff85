"""TLS on the SMTP listeners: whole sessions per second, and the server's CPU per session,
of one `vsl serve` over plaintext SMTP, STARTTLS and implicit TLS (smtps), in the same run;
plaintext is the baseline the ratios are against.

    python bench/tls.py [--sessions 600] [--clients 8] [--size 10k] [--rounds 2]
    python bench/tls.py --quick          # 150 sessions, one round
    python bench/tls.py --baseline /tmp/base  # the same again, served by the checkout
                                              # /tmp/base's .venv (before/after a change)

The server is bench/throughput.py's VslServer (every message held in its spool's
quarantine, `[server] workers` at its default) with a certificate (tests/support/certs.py:
ECDSA P-256, as the tests use) and a second listener of kind `smtps`. Each session is a
whole one as a client sends it, one message per connection: connect (smtps: the TLS
handshake first), EHLO, for STARTTLS STARTTLS and EHLO again, MAIL, RCPT, DATA with a
--size message, QUIT; --clients threads of smtplib send them until --sessions are done.
The clients trust the test CA and check the certificate's address (127.0.0.1), TLS 1.3 as
negotiated. Each mode is run --rounds times, alternating, and the best round counts; before
that every mode gets a warm-up. Every message must be held at the end of a round. With
--baseline, the baseline's server runs beside, each of its rounds right after the same
round of this checkout's, and each mode's ratio to it is shown.
"""
from __future__ import annotations

import argparse
import smtplib
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

from throughput import BenchError, VslServer, free_port, say  # bench/

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.certs import make_certificates  # noqa: E402 - the tests' throw-away CA

MODES = ("plaintext", "starttls", "smtps")


class TlsVslServer(VslServer):
    """VslServer with a certificate and an smtps listener beside its SMTP one."""

    def __init__(self, work: Path, baseline: Path | None = None):
        super().__init__(work, baseline=baseline)
        self.work.mkdir(parents=True)
        self.ca, self.cert, self.key = make_certificates(self.work)
        self.smtps_port = free_port()

    def command(self) -> list[str]:
        """VslServer's, without its --listen (which would replace both listeners)."""
        command = super().command()
        at = command.index("--listen")
        return command[:at] + command[at + 2:]

    def start(self) -> None:
        """VslServer's, with the SMTP port chosen before the configuration names it."""
        self.port = free_port()
        self.scripts.mkdir()
        (self.scripts / "main.vsl").write_text(self.policy)
        (self.work / "vsl.toml").write_text(self.config())
        self.launch(self.command(), cwd=self.work)

    def config(self) -> str:
        return (f'listen = ["127.0.0.1:{self.port}", '
                f'{{ address = "127.0.0.1:{self.smtps_port}", kind = "smtps" }}]\n'
                + super().config()
                + f'\n[tls]\ncertificate = "{self.cert}"\nkey = "{self.key}"\n')


def session(server: TlsVslServer, mode: str, context: ssl.SSLContext, body: bytes) -> None:
    """One whole session in ``mode``; raises on any unexpected reply."""
    if mode == "smtps":
        smtp = smtplib.SMTP_SSL("127.0.0.1", server.smtps_port, local_hostname="client.test",
                                context=context, timeout=30)
    else:
        smtp = smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=30)
    with smtp:
        smtp.ehlo()
        if mode == "starttls":
            smtp.starttls(context=context)
            smtp.ehlo()
        if mode != "plaintext" and smtp.sock.version() != "TLSv1.3":
            raise BenchError(f"{mode}: {smtp.sock.version()}")
        refused = smtp.sendmail("bench@example.org", ["rcpt@example.test"], body)
        if refused:
            raise BenchError(f"{mode}: refused {refused}")


def run(server: TlsVslServer, mode: str, sessions: int, clients: int,
        context: ssl.SSLContext, body: bytes) -> tuple[float, float]:
    """Send ``sessions`` sessions in ``mode`` from ``clients`` threads: (sessions per
    second, server CPU milliseconds per session)."""
    server.empty()
    left, lock, errors = [sessions], threading.Lock(), []

    def client() -> None:
        while True:
            with lock:
                if not left[0] or errors:
                    return
                left[0] -= 1
            try:
                session(server, mode, context, body)
            except (OSError, smtplib.SMTPException, BenchError) as err:
                errors.append(f"{mode}: {type(err).__name__}: {err}")

    cpu, start = server.cpu(), time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed, used = time.perf_counter() - start, server.cpu() - cpu
    if errors:
        raise BenchError(errors[0])
    if server.held() != sessions:
        raise BenchError(f"{mode}: {server.held()} messages held of {sessions}")
    return sessions / elapsed, 1000 * used / sessions


def measure(servers: dict[str, TlsVslServer], args, body: bytes
            ) -> dict[str, dict[str, tuple[float, float]]]:
    """The best round of each mode on each server; the servers run side by side, each
    round alternating them, so that a change of the machine's pace meets both."""
    contexts = {name: ssl.create_default_context(cafile=str(server.ca))
                for name, server in servers.items()}
    best: dict[str, dict[str, tuple[float, float]]] = {name: {} for name in servers}
    try:
        for server in servers.values():
            server.start()
        for name, server in servers.items():
            for mode in MODES:
                run(server, mode, 20, args.clients, contexts[name], body)  # warm-up
        for _ in range(args.rounds):
            for mode in MODES:
                for name, server in servers.items():
                    rate, cpu = run(server, mode, args.sessions, args.clients, contexts[name],
                                    body)
                    if mode not in best[name] or rate > best[name][mode][0]:
                        best[name][mode] = (rate, cpu)
        for name, server in servers.items():
            if server.errors():
                raise BenchError(f"{name}: server errors:\n" + "\n".join(server.errors()[:5]))
        return best
    finally:
        for server in servers.values():
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=600)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--size", default="10k", help="message size (k: KiB)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="150 sessions, one round")
    parser.add_argument("--baseline", type=Path, help="a checkout whose .venv serves too")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.rounds = 150, 1
    size = int(args.size.rstrip("kK")) * (1024 if args.size[-1] in "kK" else 1)
    body = (b"From: bench@example.org\r\nTo: rcpt@example.test\r\nSubject: tls\r\n\r\n"
            + b"x" * 76 + b"\r\n") * max(1, size // 78)
    with tempfile.TemporaryDirectory(prefix="vsl-bench-tls-") as work:
        servers = {"vSL": TlsVslServer(Path(work))}
        if args.baseline:
            servers["base"] = TlsVslServer(Path(work), args.baseline)
        results = measure(servers, args, body)
    say(f"{args.sessions} sessions x {args.rounds} rounds, {args.clients} clients, "
        f"{args.size} messages; best round of each")
    for name, best in results.items():
        base_rate, base_cpu = best["plaintext"]
        for mode, (rate, cpu) in best.items():
            against = "" if name == "base" or "base" not in results else \
                f"   {rate / results['base'][mode][0]:4.2f}x base's rate"
            say(f"  {name:5s} {mode:10s} {rate:7.1f} sessions/s ({rate / base_rate:4.2f}x)   "
                f"server CPU {cpu:6.2f} ms/session ({cpu / base_cpu:4.2f}x){against}")


if __name__ == "__main__":
    main()
