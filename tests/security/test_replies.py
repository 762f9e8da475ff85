"""Local resource problems answer 4xx, never 5xx, and no reply discloses an internal path
or a Python exception name (hardening 15 and 16)."""
from __future__ import annotations

import asyncio

import errno
import pathlib

from vsl.server.queue_backend import QueueError
from tests.support.servers import config_for, running
from tests.support.smtp_tools import Raw, all_messages, client, queued_id, wait_for

ROUTING = """
fn on_post_queue(ctx) {
    transport::maildir(ctx, "/var/mail/x", "bob@example.test");
    status::next()
}
"""
NO_SPACE = OSError(errno.ENOSPC, "No space left on device")


def send(server, body: bytes = b"Subject: t\r\n\r\nx\r\n") -> tuple[int, bytes]:
    with client(server) as smtp:
        smtp.ehlo()
        assert smtp.mail("a@example.org")[0] == 250
        assert smtp.rcpt("bob@example.test")[0] == 250
        return smtp.data(body)


def no_internals(reply: bytes, server) -> None:
    text = reply.decode("utf-8", "replace")
    for leak in ("OSError", "QueueError", "Errno", "/"):
        assert leak not in text, text


def test_a_full_disk_after_the_message_is_stored_still_answers_250(tmp_path, caplog):
    """Spool.update (on_post_queue changed the routes) fails: the message is on disk, so the
    client gets 250 and the message waits in hold for an operator."""
    with running(config_for(tmp_path, ROUTING)) as server:
        async def full(entry, data=None):
            raise QueueError("cannot write the queue: No space left on device") from NO_SPACE
        server.spool.update = full
        code, text = send(server)
        assert code == 250, (code, text)
        msg_id = queued_id(text)
        assert wait_for(lambda: asyncio.run(server.spool.locate(msg_id)) == "hold", 2)
    assert f"{msg_id}: accepted but not routed" in caplog.text, caplog.text


def test_an_unexpected_error_after_the_message_is_stored_holds_it(tmp_path, caplog):
    """Any exception in on_post_queue's routing, not only a spool error: the message is on
    disk, so the client gets 250 (a 421 would make it send a duplicate) and it is held."""
    with running(config_for(tmp_path, ROUTING)) as server:
        async def broken(entry, ctx, data):
            raise ValueError("unexpected routing bug")
        server.delivery.reroute = broken
        code, text = send(server)
        assert code == 250, (code, text)
        msg_id = queued_id(text)
        assert wait_for(lambda: asyncio.run(server.spool.locate(msg_id)) == "hold", 2)
    [record] = [r for r in caplog.records if "accepted but not routed" in r.getMessage()]
    assert record.getMessage().startswith(f"{msg_id}: accepted but not routed")
    assert record.exc_info and "unexpected routing bug" in caplog.text


def test_a_full_disk_before_the_message_is_stored_answers_452(tmp_path):
    with running(config_for(tmp_path)) as server:
        async def full(envelope, data, queue="working", msg_id=None):
            raise QueueError("cannot write the queue: No space left on device") from NO_SPACE
        server.spool.put = full
        assert send(server) == (452, b"4.3.1 Insufficient system storage")


def test_no_inode_for_a_quarantine_directory_answers_452_without_the_path(tmp_path,
                                                                         monkeypatch, caplog):
    policy = 'fn on_rcpt_to(ctx) { status::quarantine("fresh") }'
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name == "fresh":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_mkdir(self, *args, **kwargs)

    with running(config_for(tmp_path, policy)) as server:
        monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
        code, text = send(server)
        assert (code, text) == (452, b"4.3.1 Insufficient system storage")
        no_internals(text, server)
        assert all_messages(server) == []
    assert "fresh" in caplog.text  # the details are in the log


def test_an_unexpected_exception_answers_a_fixed_421_and_logs_the_details(tmp_path, caplog):
    """Whatever a handler raises, aiosmtpd's `500 Error: (Type) text` never goes out."""
    with running(config_for(tmp_path)) as server:
        def broken(*args):
            raise RuntimeError(f"secret detail {server.spool.root}")
        server.delivery.recipients = broken
        with Raw(server) as raw:
            raw.cmd("EHLO client.test")
            assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250
            assert raw.cmd("RCPT TO:<bob@example.test>")[0] == 250
            assert raw.cmd("DATA")[0] == 354
            code, text = raw.cmd("Subject: t\r\n\r\nx\r\n.")
            assert (code, text) == (421, b"4.3.0 Error: internal error")
            no_internals(text, server)
            assert raw.closed(2), "421 closes the connection"
        assert all_messages(server) == []
    assert "secret detail" in caplog.text and "RuntimeError" in caplog.text


def test_an_exception_before_the_greeting_answers_421(tmp_path, caplog):
    with running(config_for(tmp_path)) as server:
        class Broken:
            def has(self, name, arity=1):
                if name == "on_connect":
                    raise RuntimeError(f"secret detail {server.spool.root}")
                return False
        server.policy.script = Broken()
        with Raw(server) as raw:
            assert raw.greeting == (421, b"4.3.0 Error: internal error")
            assert raw.closed(2)
    assert "secret detail" in caplog.text
