"""A spool that cannot take a message makes the server answer 4xx, never 250."""
from __future__ import annotations

import asyncio

import resource
import shutil
import smtplib
import subprocess
import sys
from pathlib import Path

from vsl.server.queue import Spool
from tests.support.mailsink import free_port, listening
from tests.support.servers import config_for, running
from tests.support.smtp_tools import wait_for

VSL = Path(sys.executable).parent / "vsl"


def send(port: int, body: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("a@example.org")
        smtp.rcpt("bob@example.test")
        return smtp.data(body)



def test_full_disk_gives_451(tmp_path):
    """Files may not grow past 8 KB in the server process (RLIMIT_FSIZE, as on a full
    disk): a big message is refused with 451, a small one still gets through."""
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [VSL, "serve", "--listen", f"127.0.0.1:{port}", "--queue-dir", str(tmp_path / "q"),
         "--hostname", "example.test"], stdout=log, stderr=log,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192)))
    try:
        wait_for(lambda: listening(port), 10, 0.1)
        code, text = send(port, b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 200)
        assert (code, text) == (451, b"4.3.0 Error: queue file write error")
        assert send(port, b"Subject: small\r\n\r\nhi\r\n")[0] == 250
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    entries = asyncio.run(Spool(tmp_path / "q").list())
    assert len(entries) == 1  # only the small one; nothing of the big one remains
    assert not list((tmp_path / "q" / "tmp").iterdir())
    assert "message not queued" in (tmp_path / "serve.log").read_text()


def test_unwritable_spool_gives_451_and_recovers(tmp_path):
    with running(config_for(tmp_path)) as server:
        spool_tmp = server.spool.root / "tmp"
        shutil.rmtree(spool_tmp)
        spool_tmp.write_bytes(b"")  # the spool cannot write its temporary files
        assert send(server.port(), b"Subject: t\r\n\r\nx\r\n")[0] == 451
        spool_tmp.unlink()
        spool_tmp.mkdir()
        assert send(server.port(), b"Subject: t\r\n\r\nx\r\n")[0] == 250
        assert len(asyncio.run(server.spool.list())) == 1
