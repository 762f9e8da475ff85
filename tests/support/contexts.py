"""A ``Context`` as vSL's SMTP server would have built it by a stage, from plain data, for
tests of natives and front ends."""
from __future__ import annotations

from vsl.stdlib.ctx import Context, Stage
from vsl.stdlib.support.mail import Mailbox, Message

MESSAGE = (b"Received: from client.example by mx.example;\r\n"
           b"\tTue, 1 Jan 2030 00:00:00 +0000\r\n"
           b"From: Alice <alice@a.example>\r\n"
           b"To: bob@b.example\r\n"
           b"Subject: hello\r\n"
           b"X-Tag: one\r\n"
           b"x-tag: two\r\n"
           b"\r\n"
           b"Hi Bob,\r\ncaf\xc3\xa9\r\n")


def session(stage: Stage = Stage.PRE_QUEUE, data: bytes = MESSAGE) -> Context:
    """A context as the server would have built it by ``stage``: client 192.0.2.1 saying
    HELO client.example, alice@a.example to bob@b.example, ``data`` from on_pre_queue."""
    ctx = Context("192.0.2.1", 4242, "192.0.2.25", 25, "mx.example")
    ctx.stage = stage
    if stage >= Stage.HELO:
        ctx.helo = "client.example"
    if stage >= Stage.MAIL_FROM:
        ctx.begin_transaction(Mailbox.parse("alice@a.example"))
    if stage >= Stage.RCPT_TO:
        ctx.add_recipient(Mailbox.parse("bob@b.example"))
    if stage >= Stage.PRE_QUEUE:
        ctx.message = Message(data)
    return ctx
