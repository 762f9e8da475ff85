"""Test data of the dkim::, dmarc:: and arc:: tests (where it comes from: README.md) and
the helpers that feed it to the natives."""
from __future__ import annotations

from pathlib import Path

from vsl.stdlib.ctx import Context, Stage
from vsl.stdlib.support.mail import Mailbox, Message
from vsl.stdlib import new_engine

HERE = Path(__file__).parent
# Scripts of the tests are loaded as if they were a file here: relative key paths name
# the keys of this directory.
RESOLVER = """
fn resolver(port) {
    dns::resolver(#{ nameservers: [`127.0.0.1:${port}`], timeout: 0.5, cache: false })
}
"""
SIGNED_BODY = b"From: Alice <alice@dkim.test>\r\nTo: bob@example.test\r\n" \
              b"Subject: the plan\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n" \
              b"Message-ID: <1@dkim.test>\r\n\r\nMeet at noon.\r\n\r\n-- \r\nAlice\r\n"


def script(source: str):
    """Load a test script (with fn resolver(port)) as tests/authdata/test.vsl."""
    return new_engine().load_source(RESOLVER + source, str(HERE / "test.vsl"))


def message(name: str) -> bytes:
    """A message of this directory, with CRLF line ends as SMTP delivers it."""
    return (HERE / name).read_bytes().replace(b"\n", b"\r\n")


def context(data: bytes, stage: Stage = Stage.PRE_QUEUE, client_ip: str = "192.0.2.7",
            helo: str = "mail.dkim.test", sender: str = "alice@dkim.test") -> Context:
    """A ctx holding ``data`` at ``stage``, as the server makes it."""
    ctx = Context(client_ip, 40000, "192.0.2.25", 25, "mx.example.test")
    ctx.helo = helo
    ctx.begin_transaction(Mailbox.parse(sender))
    ctx.add_recipient(Mailbox.parse("bob@example.test"))
    ctx.message = Message(data)
    ctx.stage = stage
    return ctx
