"""A real `vsl serve` subprocess for the log tests: its stderr (the log) in a file of its
own, one SMTP session with a reject, a script log() line and a queued message delivered
to a Maildir."""
from __future__ import annotations

import smtplib
import subprocess
from contextlib import contextmanager
from pathlib import Path

from tests.support import crash
from tests.support.crash import VSL, stop_process
from tests.support.mailsink import free_port, listening
from tests.support.smtp_tools import wait_for

# on_rcpt_to logs structured data (vSMTP's style) and refuses "nobody"
SCRIPT = '''fn on_rcpt_to(ctx) {
    log("info", "[netsec@vsmtp mechanism=\\"iprev\\" ip=\\"192.0.2.1\\"] iprev checked");
    log("info", "[not valid sd] kept in the text");
    if ctx.rcpt.local_part == "nobody" { return status::deny("550 5.1.1 no such user"); }
    status::next()
}
'''


def write_config(tmp_path: Path, port: int, log_section: str, workers: int = 1) -> Path:
    """vsl.toml (tests/support/crash.py's) with :data:`SCRIPT`: local domain mx.test
    delivered to Maildirs under ``tmp_path``/mail, then ``log_section`` (TOML)."""
    config = crash.write_config(tmp_path, port, "mx.test", f"""\
[delivery]
maildir_root = "{tmp_path / 'mail'}"
poll_interval = 0.05

{log_section}""", workers)
    (tmp_path / "scripts" / "main.vsl").write_text(SCRIPT)
    return config


@contextmanager
def serving(tmp_path: Path, log_section: str, workers: int = 1):
    """Run `vsl serve`; yields (port, the path of its stderr)."""
    port = free_port()
    config = write_config(tmp_path, port, log_section, workers)
    stderr = tmp_path / "stderr.log"
    with open(stderr, "wb") as err, open(tmp_path / "stdout.log", "wb") as out:
        proc = subprocess.Popen([VSL, "serve", "--config", str(config)], cwd=tmp_path,
                                stdout=out, stderr=err)
    try:
        assert wait_for(lambda: proc.poll() is not None or listening(port), 15), \
            stderr.read_text()
        assert proc.poll() is None, stderr.read_text()
        yield port, stderr
    finally:
        stop_process(proc)


def session(port: int, helo: str = "client.test") -> str:
    """One session: a RCPT refused by the script, one relay-denied, one message queued
    for bob@mx.test; returns the message's queue id."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo(helo)
        smtp.mail("alice@example.org")
        assert smtp.rcpt("nobody@mx.test")[0] == 550
        assert smtp.rcpt("victim@elsewhere.test")[0] == 554
        assert smtp.rcpt("bob@mx.test")[0] == 250
        code, reply = smtp.data(b"Subject: hi\r\n\r\nhello\r\n")
        assert code == 250, reply
        return reply.decode().rsplit(" ", 1)[1]


def delivered(tmp_path: Path) -> bool:
    """Whether bob@mx.test's Maildir holds a message."""
    return any((tmp_path / "mail").glob("mx.test/bob/new/*"))
