"""The server's own metrics, moved by real traffic: a `vsl serve` subprocess (workers 1
and 2, --metrics-listen) with a policy that has every SMTP stage and lets the default
rule relay-deny other domains; smtplib clients send K accepted messages with J refused
recipients among them, one STARTTLS session fails its AUTH on the submission listener,
another's client refuses the certificate, two on the smtps listener fail their handshake
(plaintext, and a client that refuses the certificate), one client resets and one is
timed out.
Scrapes before and after must differ by exactly what the traffic did, the connections
gauge must be back to 0, delivery to the Maildir must be counted, and no label value may
hold an IP address or an address. A SIGHUP reloads the scripts once in every worker."""
from __future__ import annotations

import re
import signal
import smtplib
import socket
import ssl
import struct
import subprocess
from pathlib import Path

import pytest

from tests.support import scrape
from tests.support.certs import make_certificates
from tests.support.crash import VSL, stop_process
from tests.support.mailsink import free_port
from tests.support.smtp_tools import users_file, wait_for

K, J = 3, 2  # accepted messages; refused recipients (one in each of the first J messages)
STAGES = ("connect", "helo", "auth", "mail_from", "rcpt_to", "pre_queue", "post_queue")
POLICY = "".join(f"fn on_{stage}(ctx) {{ status::next() }}\n" for stage in STAGES)
_IP = re.compile(r"\d{1,3}(\.\d{1,3}){3}|[0-9a-f]*:[0-9a-f]*:[0-9a-f:]*")


class Served:
    """`vsl serve` with an SMTP, a submission and an smtps listener, TLS, a users file (alice),
    local domain local.test delivered to Maildirs, and its metrics on ``port``."""

    def __init__(self, directory: Path, workers: int):
        self.directory, self.workers = directory, workers
        self.smtp_port, self.submission_port, self.port = free_port(), free_port(), free_port()
        self.smtps_port = free_port()
        (directory / "scripts").mkdir()
        (directory / "scripts" / "main.vsl").write_text(POLICY)
        ca, cert, key = make_certificates(directory)
        self.ca = ca
        (directory / "vsl.toml").write_text(f"""\
listen = ["127.0.0.1:{self.smtp_port}",
          {{ address = "127.0.0.1:{self.submission_port}", kind = "submission" }},
          {{ address = "127.0.0.1:{self.smtps_port}", kind = "smtps" }}]

[server]
hostname = "mx.test"
local_domains = ["local.test"]
scripts = "scripts"
queue_dir = "queue"
workers = {workers}

[limits]
command_timeout = 1

[tls]
certificate = "{cert}"
key = "{key}"

[auth]
users_file = "{users_file(directory, alice='secret')}"

[delivery]
maildir_root = "mail"
poll_interval = 0.05
""")
        self.log = directory / "serve.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [VSL, "serve", "--config", str(directory / "vsl.toml"),
                 "--metrics-listen", f"127.0.0.1:{self.port}"],
                cwd=directory, stdout=log, stderr=log)
        ready = wait_for(lambda: self.proc.poll() is not None or
                         scrape.get(self.port, "/readyz")[0] == 200, timeout=30)
        assert ready and self.proc.poll() is None, self.log.read_text()

    def samples(self) -> dict[tuple, float]:
        return scrape.samples(self.port)


@pytest.fixture(params=[1, 2], ids=["workers1", "workers2"])
def served(request, tmp_path):
    server = Served(tmp_path, request.param)
    yield server
    stop_process(server.proc)


def send_messages(port: int) -> None:
    """K messages to user<n>@local.test; the first J also to a remote recipient."""
    for n in range(K):
        remote = [f"someone{n}@remote.test"] if n < J else []
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as smtp:
            refused = smtp.sendmail("sender@clients.test", [f"user{n}@local.test", *remote],
                                    b"Subject: metrics\r\n\r\nhello\r\n")
        assert {address: reply[0] for address, reply in refused.items()} == \
            dict.fromkeys(remote, 554)


def fail_auth(port: int, ca: Path) -> None:
    """STARTTLS, then AUTH PLAIN with a wrong password: 535."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=str(ca)))
        smtp.ehlo()
        smtp.user, smtp.password = "alice", "wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.auth("PLAIN", smtp.auth_plain)  # once (login() would try LOGIN too)
        assert refused.value.smtp_code == 535


def fail_tls(port: int) -> None:
    """STARTTLS with a client that does not trust the server's certificate."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as smtp:
        with pytest.raises(ssl.SSLCertVerificationError):
            smtp.starttls(context=ssl.create_default_context())


def fail_smtps(port: int) -> None:
    """On the smtps listener: a client that speaks plaintext, and one that does not trust
    the server's certificate; each connection is closed before any SMTP."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plaintext:
        plaintext.sendall(b"EHLO client.test\r\n")
        assert plaintext.recv(100) == b""
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.test", timeout=10,
                         context=ssl.create_default_context())


def cut_short(port: int) -> None:
    """One client resets the connection after the greeting; another says nothing and is
    timed out (421)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as reset:
        assert reset.recv(100).startswith(b"220 ")
        reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
        assert b"421 4.4.2" in silent.recv(200) + silent.recv(200)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0) - before.get(key, 0)


def test_traffic_moves_exactly_its_metrics(served):
    before = served.samples()
    send_messages(served.smtp_port)
    fail_auth(served.submission_port, served.ca)
    fail_tls(served.smtp_port)
    fail_smtps(served.smtps_port)
    cut_short(served.smtp_port)
    assert wait_for(lambda: delta(before, served.samples(), "vsl_delivery_attempts_total",
                                  route="maildir", result="delivered") == K, timeout=20)
    assert wait_for(lambda: served.samples()[("vsl_connections_current", ())] == 0 and
                    delta(before, served.samples(), "vsl_tls_failures_total") == 3)
    after = served.samples()

    def moved(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    assert moved("vsl_smtp_replies_total", stage="rcpt", code="554", enhanced="5.7.1") == J
    assert moved("vsl_smtp_replies_total", stage="rcpt", code="250", enhanced="2.1.5") == K
    assert moved("vsl_smtp_replies_total", stage="data", code="250", enhanced="2.0.0") == K
    assert moved("vsl_smtp_replies_total", stage="data", code="354", enhanced="none") == K
    # EHLO's reply is counted once, not once per line; QUIT's 221 answers no stage
    assert moved("vsl_smtp_replies_total", stage="helo", code="250", enhanced="none") == \
        K + 3
    assert moved("vsl_smtp_replies_total", stage="other", code="221", enhanced="2.0.0") >= K
    assert moved("vsl_smtp_replies_total", stage="data", code="221", enhanced="2.0.0") == 0
    assert moved("vsl_smtp_replies_total", stage="connect", code="220", enhanced="none") == \
        K + 4
    assert moved("vsl_smtp_replies_total", stage="connect", code="421", enhanced="4.4.2") == 1
    assert moved("vsl_smtp_replies_total", stage="auth", code="535", enhanced="5.7.8") == 1
    assert moved("vsl_smtp_rejects_total", stage="rcpt", decider="server") == J
    assert moved("vsl_connections_opened_total", listener="smtp") == K + 3
    assert moved("vsl_connections_opened_total", listener="submission") == 1
    assert moved("vsl_tls_sessions_total", version="TLSv1.3") == 1
    assert moved("vsl_tls_failures_total") == 3  # one STARTTLS, two smtps
    assert moved("vsl_connections_opened_total", listener="smtps") == 0  # no session began
    log = served.log.read_text()
    for why in ("wrong version number", "tlsv1 alert unknown ca"):
        assert f"SSL_accept error from unknown[127.0.0.1]: {why}" in log, why
    assert "internal error" not in log and "Traceback" not in log
    assert moved("vsl_auth_total", mechanism="PLAIN", result="failure") == 1
    assert moved("vsl_messages_received_total") == K
    assert moved("vsl_messages_queued_total", queue="working") == K
    assert moved("vsl_message_size_bytes_count") == K
    assert moved("vsl_message_size_bytes_sum") > K * len(b"Subject: metrics\r\n")
    runs = {"connect": K + 4, "helo": K + 3, "auth": 1, "mail_from": K, "rcpt_to": K + J,
            "pre_queue": K, "post_queue": K}
    assert {stage: moved("vsl_script_seconds_count", stage=stage) for stage in STAGES} == runs
    assert moved("vsl_delivery_seconds_count", route="maildir") == K
    assert after[("vsl_connections_current", ())] == 0
    assert not any(name.startswith(("vsl_script_errors", "vsl_messages_not_queued"))
                   for name, _ in after)
    values = [value for _, labels in after for _, value in labels]
    assert values and not [v for v in values if "@" in v or _IP.fullmatch(v)]


def test_a_reload_is_counted_in_every_worker(served):
    before = served.samples()
    served.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: delta(before, served.samples(), "vsl_script_reloads_total",
                                  result="ok") == served.workers, timeout=10)
