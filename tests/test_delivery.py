"""The delivery worker on a real spool: retries with backoff, DSNs, dead letters, mixed
recipients, connection reuse, restarts; and the server delivering what it accepts."""
from __future__ import annotations

import asyncio
import email
import logging
import os
import smtplib
import time
from dataclasses import replace
from urllib.parse import quote

import pytest

from vsl.server.config import DeliveryConfig
from vsl.server.delivery import Delivery, retry_delay
from vsl.server.envelope import Envelope, RecipientState
from vsl.server.journal import Journal
from vsl.server.queue import Spool
from vsl.server.transports.outcome import Outcome
from vsl.server.transports.pool import SessionKind
from vsl.stdlib.ctx import Context, Stage
from vsl.stdlib.support.bounce.shared import SharedClassifier
from vsl.stdlib.support.mail import Mailbox, Message
from vsl.stdlib import new_engine
from tests.support.mailsink import MESSAGE, Sink, free_port
from tests.support.servers import config_for, running
from tests.support.smtp_tools import wait_for

FAST = DeliveryConfig(retry_first=60, retry_max=150, max_age=1000, connect_timeout=2,
                      command_timeout=2, poll_interval=0.02, idle_timeout=1)
SENDER = "alice@example.test"  # a local address: its DSNs land in a Maildir


def in_tmp(tmp_path, config=FAST, **changes) -> DeliveryConfig:
    """``config`` delivering local mail to ``tmp_path``/mail, beside the test's queue."""
    return replace(config, maildir_root=tmp_path / "mail", **changes)


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path):
    """A spool, a fake clock and a worker on them (local domain: example.test)."""
    spool, clock = Spool(tmp_path / "queue"), Clock()
    return spool, clock, Delivery(spool, in_tmp(tmp_path), "mx.test", ("example.test",), clock=clock)


async def queue(spool, route, rcpts=("bob@remote.test",), sender=SENDER, **envelope):
    return await spool.put(Envelope(sender, [RecipientState(r, route) for r in rcpts],
                                    **envelope), MESSAGE, "deliver")


def dsns(tmp_path, local="alice") -> list[email.message.Message]:
    """The DSNs delivered to <local>@example.test's Maildir."""
    box = tmp_path / "mail" / "example.test" / local / "new"
    return [email.message_from_bytes(p.read_bytes()) for p in sorted(box.glob("*"))]


def report(dsn) -> list[dict]:
    """The delivery-status blocks of a DSN."""
    assert dsn.get_content_type() == "multipart/report"
    return [dict(block) for block in dsn.get_payload()[1].get_payload()]


def test_retry_schedule():
    config = DeliveryConfig()
    assert [retry_delay(config, n) for n in range(1, 8)] == [300, 600, 1200, 2400, 3600,
                                                             3600, 3600]
    assert retry_delay(config, 10_000) == 3600


def test_default_routes(tmp_path):
    spool = Spool(tmp_path / "queue")
    delivery = Delivery(spool, in_tmp(tmp_path, DeliveryConfig()), "mx.test", ("example.test",))
    box = tmp_path / "mail"
    assert delivery.default_route(Mailbox.parse("Bob@Example.TEST")) == \
        f"maildir:{box}/example.test/bob"
    assert delivery.default_route(Mailbox.parse('"../x/.y"@example.test')) == \
        f"maildir:{box}/example.test/%2E.%2Fx%2F.y"
    assert delivery.default_route(Mailbox.parse("postmaster@mx.test")) == \
        f"maildir:{box}/mx.test/postmaster"
    assert delivery.default_route(Mailbox.parse("bob@remote.test")) == "mx"
    # '..' resolved as the kernel does (make run's queue_dir = "../queue"), after a link too
    (tmp_path / "real" / "etc").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "etc")
    for root, resolved in ((tmp_path / "queue" / ".." / "mail", box),
                           (tmp_path / "link" / ".." / "mail", tmp_path / "real" / "mail")):
        untidy = replace(delivery.config, maildir_root=root)
        assert Delivery(spool, untidy, "mx.test", ("example.test",)).default_route(
            Mailbox.parse("bob@example.test")) == \
            f"maildir:{os.path.realpath(resolved)}/example.test/bob"
    relayed = Delivery(spool, in_tmp(tmp_path, DeliveryConfig(), relay="smtp://relay.test:587"),
                       "mx.test", ())
    assert relayed.default_route(Mailbox.parse("bob@remote.test")) == "smtp://relay.test:587"
    with pytest.raises(ValueError, match="maildir_root"):  # from configuration, never
        Delivery(spool, DeliveryConfig(), "mx.test", ())   # guessed from the queue's place


@pytest.mark.parametrize("listed, written", [
    ("bücher.test", "bob@xn--bcher-kva.test"), ("bücher.test", "bob@BÜCHER.test"),
    ("xn--bcher-kva.test", "bob@bücher.test"), ("XN--BCHER-KVA.test.", "bob@Bücher.TEST"),
])
def test_a_local_idn_is_one_domain_in_either_form(tmp_path, caplog, listed, written):
    """U-labels and A-labels name one local domain: its Maildir is the one of the form
    listed first (Postfix needs both forms listed, and delivers each to its own), and a
    warning says so when both are listed."""
    delivery = Delivery(Spool(tmp_path / "queue"), in_tmp(tmp_path, DeliveryConfig()), "mx.test",
                        (listed, "bücher.test", "xn--bcher-kva.test"))
    directory = quote(listed.lower().rstrip("."))
    assert delivery.default_route(Mailbox.parse(written)) == \
        f"maildir:{tmp_path / 'mail' / directory / 'bob'}"
    assert delivery.default_route(Mailbox.parse("bob@bucher.test")) == "mx"
    other = "xn--bcher-kva.test" if directory == quote("bücher.test") else "bücher.test"
    assert f"local domains {listed.lower().rstrip('.')} and {other} are one domain" \
        in caplog.text


def test_connection_refused_defers_with_backoff(world):
    spool, clock, delivery = world
    port = free_port()

    async def main():
        msg_id = await queue(spool, f"smtp://127.0.0.1:{port}")
        delays = []
        for _ in range(3):
            assert await delivery.run_once() == 1
            assert await delivery.run_once() == 0  # not due yet
            entry = await spool.get(msg_id, "deferred")
            delays.append(entry.envelope.next_attempt - clock.now)
            clock.now = entry.envelope.next_attempt
        return entry, delays

    entry, delays = asyncio.run(main())
    assert delays == [60, 120, 150]
    (rcpt,) = entry.envelope.recipients
    assert rcpt.status == "deferred" and rcpt.attempts == 3
    assert rcpt.reply.startswith(f"451 4.4.1 cannot deliver to 127.0.0.1:{port}: ")
    assert rcpt.reason == "networkerror"  # a connection-level failure is classified too


@pytest.mark.parametrize("setup", ["rcpt_4xx", "data_4xx", "timeout_mid_data"])
def test_temporary_failures_defer(world, setup):
    spool, _, delivery = world
    delivery = Delivery(spool, replace(delivery.config, command_timeout=0.3), "mx.test", (),
                        clock=delivery.clock)

    async def main():
        async with Sink() as sink:
            sink.data_reply = "451 4.3.0 queue full" if setup == "data_4xx" else None
            sink.data_delay = 2 if setup == "timeout_mid_data" else 0
            rcpt = "temp@remote.test" if setup == "rcpt_4xx" else "bob@remote.test"
            msg_id = await queue(spool, f"smtp://127.0.0.1:{sink.port}", [rcpt])
            await delivery.run_once()
            return await spool.get(msg_id)

    entry = asyncio.run(main())
    (rcpt,) = entry.envelope.recipients
    assert entry.queue == "deferred" and rcpt.status == "deferred"
    assert rcpt.reply[:1] == "4" and asyncio.run(spool.list("deliver")) == []


def test_permanent_failure_bounces_at_once(world, tmp_path):
    spool, _, delivery = world

    async def main():
        async with Sink() as sink:
            msg_id = await queue(spool, f"smtp://127.0.0.1:{sink.port}", ["bad@remote.test"])
            await delivery.run_once()
            (dsn,) = await spool.list("deliver")
            assert await spool.list("deferred") == [] and dsn.envelope.dsn_for == msg_id
            assert dsn.envelope.sender == ""
            assert [r.address for r in dsn.envelope.recipients] == [SENDER]
            await delivery.run_once()  # the DSN itself, to the sender's Maildir
            return msg_id

    msg_id = asyncio.run(main())
    assert asyncio.run(spool.list()) == []
    (dsn,) = dsns(tmp_path)
    assert dsn["To"] == SENDER and dsn["Auto-Submitted"] == "auto-replied"
    assert report(dsn)[0]["X-Queue-ID"] == msg_id
    (fields,) = report(dsn)[1:]
    assert fields.pop("X-Vsl-Bounce-Reason").startswith("userunknown; confidence=")  # the model's
    assert fields == {"Final-Recipient": "rfc822; bad@remote.test",
                      "Action": "failed", "Status": "5.1.1",
                      "Remote-MTA": "dns; 127.0.0.1",
                      "Diagnostic-Code": "smtp; 550 5.1.1 no such user"}
    assert "Subject: hi" in dsn.get_payload()[2].get_payload()


def test_a_failure_is_reported_once_whatever_fails_after_its_dsn(tmp_path, monkeypatch):
    """The failure DSN is queued and its recipients stored as bounced before anything else
    can fail (here the delay warning of the deferred one, once, which sends the message to
    hold): released, the next attempt does not report them again (it sent the same
    failure DSN once per try)."""
    spool, clock = Spool(tmp_path / "queue"), Clock()
    delivery = Delivery(spool, in_tmp(tmp_path, delay_warning=1), "mx.test", ("example.test",),
                        clock=clock)
    queue_dsn, broken = delivery._queue_dsn, []

    async def warning_fails_once(entry, recipients, data, retry_until=None):
        if retry_until is not None and not broken:
            broken.append(True)
            raise RuntimeError("a bug")
        await queue_dsn(entry, recipients, data, retry_until)

    monkeypatch.setattr(delivery, "_queue_dsn", warning_fails_once)

    async def main():
        async with Sink() as sink:
            msg_id = await queue(spool, f"smtp://127.0.0.1:{sink.port}",
                                 ["bad@remote.test", "temp@remote.test"],
                                 received_at=clock.now - 10)
            await delivery.run_once()
            await spool.move(msg_id, "deliver", "hold")  # vsl queue release
            for _ in range(3):  # the deferred one tried again, not yet expired
                await delivery.run_once()
                clock.now += 100

    asyncio.run(main())
    assert broken
    assert sorted(dsn["Subject"] for dsn in dsns(tmp_path)) == [
        "Delayed Mail (still being retried)", "Undelivered Mail Returned to Sender"]


def test_refusals_are_classified_stored_and_logged(world, caplog):
    spool, _, delivery = world
    caplog.set_level(logging.INFO, "vsl.delivery")

    async def main():
        async with Sink() as sink:
            sink.data_reply = "452 4.2.2 Mailbox full"
            msg_id = await queue(spool, f"smtp://127.0.0.1:{sink.port}",
                                 ["bob@remote.test", "bad@remote.test"], sender="")
            await delivery.run_once()
            return await spool.get(msg_id)

    entry = asyncio.run(main())
    deferred, failed = entry.envelope.recipients
    assert (deferred.status, deferred.reason) == ("deferred", "mailboxfull")
    assert (failed.status, failed.reason) == ("failed", "userunknown")
    assert 0.5 < deferred.reason_confidence <= 1 and 0.5 < failed.reason_confidence <= 1
    assert "to=<bob@remote.test>" in caplog.text and "reason=mailboxfull" in caplog.text
    assert "reason=userunknown" in caplog.text


def test_a_broken_model_does_not_break_delivery(world, tmp_path, caplog):
    """The status codes decide then (confidence 0), and it is logged once."""
    spool, clock, delivery = world
    (tmp_path / "model.npz").write_bytes(b"PK\x03\x04 not a model")
    delivery = Delivery(spool, delivery.config, "mx.test", ("example.test",), clock=clock,
                        reasons=SharedClassifier(tmp_path / "model.npz"))

    async def main():
        async with Sink() as sink:
            msg_id = await queue(spool, f"smtp://127.0.0.1:{sink.port}",
                                 ["temp@remote.test", "bad@remote.test"])
            await delivery.run_once()
            clock.now = (await spool.get(msg_id)).envelope.next_attempt
            await delivery.run_once()
            return await spool.get(msg_id)

    entry = asyncio.run(main())
    deferred, bounced = entry.envelope.recipients
    assert (deferred.status, deferred.attempts, deferred.reason_confidence) == \
        ("deferred", 2, 0.0)
    assert (bounced.status, bounced.reason, bounced.reason_confidence) == \
        ("bounced", "userunknown", 0.0)
    assert caplog.text.count("cannot load the model") == 1
    (dsn,) = dsns(tmp_path)  # delivered by the second run
    assert [block["Status"] for block in report(dsn)[1:]] == ["5.1.1"]
    assert report(dsn)[1]["X-Vsl-Bounce-Reason"] == "userunknown; confidence=0.00"


@pytest.mark.parametrize("waited, fallback", [(-1, False), (0, True)])
def test_a_message_that_has_waited_retry_first_may_go_in_plaintext(world, waited, fallback):
    """Postfix's rule for opportunistic TLS (minimal_backoff_time): a failed handshake
    falls back to plaintext only for a message that arrived retry_first ago or more
    (server/transports/pool.py carries it out)."""
    spool, clock, delivery = world
    asked = []

    async def deliver(route, sender, recipients, data, plaintext_fallback=False):
        asked.append(plaintext_fallback)
        return dict.fromkeys(recipients, Outcome("delivered", "250 2.0.0 ok"))

    async def main():
        delivery.transports.deliver = deliver
        await queue(spool, "smtp://relay.test",
                    received_at=clock.now - delivery.config.retry_first - waited)
        await delivery.run_once()
        return await spool.list()

    assert asyncio.run(main()) == [] and asked == [fallback]


def test_max_age_fails_deferred_recipients(world, tmp_path):
    spool, clock, delivery = world

    async def main():
        await queue(spool, f"smtp://127.0.0.1:{free_port()}", received_at=clock.now - 1001)
        await delivery.run_once()
        await delivery.run_once()

    asyncio.run(main())
    assert asyncio.run(spool.list()) == []
    (dsn,) = dsns(tmp_path)
    (status,) = report(dsn)[1:]
    assert status["Status"] == "4.4.7" and status["Action"] == "failed"
    assert status["Diagnostic-Code"].startswith("X-vSL; 451 4.4.1 cannot deliver to ")
    assert "delivery time expired" in dsn.get_payload()[0].get_payload()


def test_retries_stop_at_max_age(world):
    spool, clock, delivery = world

    async def main():
        msg_id = await queue(spool, f"smtp://127.0.0.1:{free_port()}",
                             received_at=clock.now - 950)
        await delivery.run_once()
        return (await spool.get(msg_id, "deferred")).envelope.next_attempt

    assert asyncio.run(main()) == pytest.approx(clock.now + 50)  # not 60: max age first


@pytest.mark.parametrize("warning, sender, warned", [
    (100, SENDER, True), (0, SENDER, False), (100, "", False)])
def test_a_delayed_message_warns_its_sender_once(tmp_path, warning, sender, warned):
    """Attempts at +0, +60, +180, +330 s: the first past ``delay_warning`` warns (never
    with 0, never to the null sender); no later one warns again."""
    spool, clock = Spool(tmp_path / "queue"), Clock()
    delivery = Delivery(spool, in_tmp(tmp_path, delay_warning=warning), "mx.test",
                        ("example.test",), clock=clock)
    start = clock.now

    async def main():
        msg_id = await queue(spool, f"smtp://127.0.0.1:{free_port()}",
                             ["bob@remote.test", "carol@remote.test"], sender=sender,
                             received_at=clock.now)
        await delivery.run_once()
        for _ in range(3):
            clock.now = (await spool.get(msg_id, "deferred")).envelope.next_attempt
            await delivery.run_once()  # the attempt (and a DSN it queues) ...
            await delivery.run_once()  # ... the DSN delivered to alice's Maildir
        return await spool.get(msg_id, "deferred")

    entry = asyncio.run(main())
    assert entry.envelope.attempts == 4  # still waiting: a warning is not a bounce
    if not warned:
        assert dsns(tmp_path) == [] and entry.envelope.delay_warned_at is None
        return
    (dsn,) = dsns(tmp_path)
    assert dsn["Subject"] == "Delayed Mail (still being retried)"
    assert entry.envelope.delay_warned_at == pytest.approx(start + 180)
    blocks = report(dsn)[1:]
    assert [b["Final-Recipient"] for b in blocks] == ["rfc822; bob@remote.test",
                                                      "rfc822; carol@remote.test"]
    assert {b["Action"] for b in blocks} == {"delayed"}
    assert {b["Status"] for b in blocks} == {"4.4.1"}
    assert all(b["Will-Retry-Until"] for b in blocks)
    assert "you need not send it again" in " ".join(dsn.get_payload()[0].get_payload().split())


def test_an_expired_message_gets_its_failure_report_not_a_delay_warning(tmp_path):
    spool, clock = Spool(tmp_path / "queue"), Clock()
    delivery = Delivery(spool, in_tmp(tmp_path, delay_warning=100), "mx.test",
                        ("example.test",), clock=clock)

    async def main():
        await queue(spool, f"smtp://127.0.0.1:{free_port()}", received_at=clock.now - 1001)
        await delivery.run_once()
        await delivery.run_once()

    asyncio.run(main())
    (dsn,) = dsns(tmp_path)
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    assert [b["Action"] for b in report(dsn)[1:]] == ["failed"]


def test_null_sender_never_gets_a_dsn(world):
    spool, _, delivery = world

    async def main():
        async with Sink() as sink:
            msg_id = await queue(spool, f"smtp://127.0.0.1:{sink.port}", ["bad@remote.test"],
                                 sender="")
            await delivery.run_once()
            return msg_id

    msg_id = asyncio.run(main())
    assert [e.id for e in asyncio.run(spool.list())] == [msg_id]
    assert asyncio.run(spool.get(msg_id)).queue == "dead"
    assert asyncio.run(spool.get(msg_id)).envelope.recipients[0].status == "failed"


def test_a_bounce_that_bounces_goes_to_dead(tmp_path):
    spool = Spool(tmp_path / "queue")

    async def main():
        async with Sink() as sink:
            delivery = Delivery(spool, in_tmp(tmp_path, relay=f"smtp://127.0.0.1:{sink.port}"),
                                "mx.test", ())
            msg_id = await queue(spool, f"smtp://127.0.0.1:{sink.port}", ["bad@remote.test"],
                                 sender="bad-sender@remote.test")
            await delivery.run_once()  # 550: a DSN to bad-sender@, through the relay
            await delivery.run_once()  # 550 again: nobody left to tell
            await delivery.stop()
            return msg_id

    msg_id = asyncio.run(main())
    (dead,) = asyncio.run(spool.list())
    assert dead.queue == "dead" and dead.envelope.dsn_for == msg_id
    assert dead.envelope.recipients[0].address == "bad-sender@remote.test"


def test_mixed_recipients(world, tmp_path):
    spool, clock, delivery = world

    async def main():
        async with Sink() as sink:
            msg_id = await queue(spool, f"smtp://127.0.0.1:{sink.port}",
                                 ["ok@remote.test", "temp@remote.test", "bad@remote.test"])
            await delivery.run_once()
            first = await Spool(spool.root).get(msg_id)  # as written to disk
            sink.accept_all = True
            clock.now = first.envelope.next_attempt
            await delivery.run_once()
            return first, [m.recipients for m in sink.messages]

    first, received = asyncio.run(main())
    assert first.queue == "deferred"
    assert {r.address: r.status for r in first.envelope.recipients} == {
        "ok@remote.test": "delivered", "temp@remote.test": "deferred",
        "bad@remote.test": "bounced"}
    assert received == [["ok@remote.test"], ["temp@remote.test"]]  # ok@ only once
    assert asyncio.run(spool.list()) == []
    (dsn,) = dsns(tmp_path)  # for bad@ only
    assert [b["Final-Recipient"] for b in report(dsn)[1:]] == ["rfc822; bad@remote.test"]


def test_delivered_recipients_are_not_delivered_again(world):
    spool, _, delivery = world

    async def main():
        async with Sink() as sink:
            msg_id = await queue(spool, f"smtp://127.0.0.1:{sink.port}",
                                 ["done@remote.test", "bob@remote.test"])
            entry = await spool.get(msg_id)  # a crash after done@ was delivered
            entry.envelope.recipients[0].status = "delivered"
            await spool.update(entry)
            await delivery.run_once()
            return sink.messages

    (message,) = asyncio.run(main())
    assert message.recipients == ["bob@remote.test"] and asyncio.run(spool.list()) == []


def test_routes_group_recipients_into_transactions(world, tmp_path):
    spool, _, delivery = world

    async def main():
        async with Sink() as sink:
            route = f"smtp://127.0.0.1:{sink.port}"
            await spool.put(Envelope(SENDER, [
                RecipientState("a@remote.test", route), RecipientState("b@remote.test", route),
                RecipientState("c@example.test", f"maildir:{tmp_path / 'c'}")]),
                MESSAGE, "deliver")
            await delivery.run_once()
            return sink.messages

    (message,) = asyncio.run(main())
    assert message.recipients == ["a@remote.test", "b@remote.test"]
    assert len(list((tmp_path / "c" / "new").iterdir())) == 1 and asyncio.run(spool.list()) == []


def test_a_bad_stored_route_bounces(world, tmp_path):
    spool, _, delivery = world

    async def main():
        await queue(spool, "carrier-pigeon://x")
        await delivery.run_once()
        await delivery.run_once()

    asyncio.run(main())
    (status,) = report(dsns(tmp_path)[0])[1:]
    assert status["Status"] == "5.3.5" and asyncio.run(spool.list()) == []


def test_one_connection_for_several_messages(world):
    spool, _, delivery = world
    delivery = Delivery(spool, replace(delivery.config, concurrency=1), "mx.test", ())

    async def main():
        async with Sink() as sink:
            for n in range(3):
                await queue(spool, f"smtp://127.0.0.1:{sink.port}", [f"u{n}@remote.test"])
            assert [await delivery.run_once() for _ in range(3)] == [1, 1, 1]
            await delivery.stop()
            return sink

    sink = asyncio.run(main())
    assert len(sink.messages) == 3 and sink.connections == 1


def test_a_busy_destination_postpones_its_mail_and_lets_other_mail_go(world, tmp_path):
    """Two delivery slots, a slow relay that takes one session (destination_concurrency
    1) and three messages for it queued before a local one: the relay's second and third
    wait a second each, then are put back untried (no attempt counted, due again in a
    second) instead of waiting in a slot, so the local message is delivered while the
    relay still reads the first."""
    spool, clock, delivery = world
    delivery = Delivery(spool, replace(delivery.config, concurrency=2, destination_concurrency=1,
                                       command_timeout=10),
                        "mx.test", ("example.test",), clock=clock)

    async def main():
        async with Sink() as sink:
            sink.data_delay = 5
            for n in range(3):  # ids sort by the millisecond: claimed in this order
                await queue(spool, f"smtp://127.0.0.1:{sink.port}", [f"u{n}@remote.test"])
                await asyncio.sleep(0.005)
            await queue(spool, "maildir:" + str(tmp_path / "box"), ["bob@example.test"])
            delivery.start()
            try:
                await asyncio.wait_for(_until(lambda: list((tmp_path / "box").glob("new/*"))),
                                       4)
                received_by_then = len(sink.messages)
            finally:
                await delivery.stop()
            return received_by_then, await spool.list()

    received_by_then, left = asyncio.run(main())
    assert received_by_then == 0
    postponed = [e for e in left if e.queue == "deferred"]
    assert len(postponed) == 2
    for entry in postponed:
        assert entry.envelope.attempts == 0
        assert [(r.status, r.attempts) for r in entry.envelope.recipients] == [("pending", 0)]
        assert entry.envelope.next_attempt == pytest.approx(clock.now + 1)


@pytest.mark.parametrize("sender", [SENDER, ""])
def test_a_recipient_postponed_past_max_age_fails(world, tmp_path, sender):
    """A recipient never tried because its destination stayed busy still expires at
    max_age: 4.4.7 to the sender, saying why; from the null sender, to dead at once."""
    spool, clock, delivery = world
    delivery = Delivery(spool, replace(delivery.config, destination_concurrency=1,
                                       command_timeout=10),
                        "mx.test", ("example.test",), clock=clock)

    async def main():
        async with Sink() as sink:
            relay = f"smtp://127.0.0.1:{sink.port}"
            old = await queue(spool, relay, ["u1@remote.test"], sender=sender,
                              received_at=clock.now - delivery.config.max_age - 1)
            async with delivery.transports.pool.session("127.0.0.1", sink.port,
                                                        SessionKind()):  # the one session
                await delivery.run_once()
            queues = {e.id: e.queue for e in await spool.list()}
            await delivery.run_once()  # the DSN
            return old, queues

    old, queues = asyncio.run(main())
    if sender:
        assert old not in queues
        (status,) = report(dsns(tmp_path)[0])[1:]
        assert status["Status"] == "4.4.7" and "all in use" in status["Diagnostic-Code"]
    else:
        assert queues[old] == "dead"


async def _until(found):
    while not found():
        await asyncio.sleep(0.02)


def test_a_new_worker_resumes_deferred_messages(tmp_path):
    port, clock = free_port(), Clock()

    async def main():
        first = Delivery(Spool(tmp_path / "queue"), in_tmp(tmp_path), "mx.test", (),
                         clock=clock)
        msg_id = await queue(first.queue, f"smtp://127.0.0.1:{port}")
        await first.run_once()
        await first.stop()
        assert await first.queue.locate(msg_id) == "deferred"
        async with Sink() as sink:
            await sink.stop()
            await sink.start(port)
            clock.now += 60
            second = Delivery(Spool(tmp_path / "queue"), in_tmp(tmp_path), "mx.test", (),
                              clock=clock)
            assert await second.run_once() == 1
            await second.stop()
            return second.queue, sink.messages

    spool, messages = asyncio.run(main())
    assert asyncio.run(spool.list()) == []
    assert [m.recipients for m in messages] == [["bob@remote.test"]]


def test_the_worker_polls_the_queue(world):
    spool, _, delivery = world

    async def main():
        async with Sink() as sink:
            delivery.start()
            await queue(spool, f"smtp://127.0.0.1:{sink.port}")
            for _ in range(200):
                if sink.messages and not await spool.list():
                    break
                await asyncio.sleep(0.02)
            await delivery.stop()
            return sink.messages

    assert len(asyncio.run(main())) == 1 and asyncio.run(spool.list()) == []


# ---- the server delivering what it accepts ------------------------------------------------

def with_delivery(config, **settings):
    """``config`` with a [delivery] section."""
    return replace(config, delivery=replace(FAST, **settings))


ROUTING = """
fn on_rcpt_to(ctx) {
    if ctx.rcpt.local_part == "fwd" {
        transport::forward(ctx, "smtp://127.0.0.1:PORT?tls=none");
    }
    status::next()
}
"""


def test_server_routes_and_delivers(tmp_path):
    with running(config_for(tmp_path / "rx")) as receiver:
        script = ROUTING.replace("PORT", str(receiver.port()))
        with running(with_delivery(config_for(tmp_path, script))) as server:
            with smtplib.SMTP("127.0.0.1", server.port(), timeout=10) as smtp:
                smtp.sendmail("alice@example.org", ["bob@example.test", "fwd@example.test"],
                              MESSAGE)
            box = tmp_path / "mail" / "example.test" / "bob" / "new"
            assert wait_for(lambda: not asyncio.run(server.spool.list()) and list(box.iterdir()))
        assert wait_for(lambda: asyncio.run(receiver.spool.list("deliver")))
        (forwarded,) = asyncio.run(receiver.spool.list("deliver"))
    assert [r.address for r in forwarded.envelope.recipients] == ["fwd@example.test"]
    (stored,) = box.iterdir()
    assert stored.read_bytes().startswith(b"Return-Path: <alice@example.org>\n"
                                          b"Delivered-To: bob@example.test\nReceived: ")


def test_routes_chosen_in_on_post_queue_are_stored(tmp_path):
    spool = Spool(tmp_path / "queue")
    delivery = Delivery(spool, in_tmp(tmp_path), "mx.test", ("example.test",))
    script = new_engine().load_source(
        'fn on_post_queue(ctx) { transport::lmtp(ctx, "lmtp://127.0.0.1:24"); '
        'status::next() }', "pq.vsl")
    ctx = Context("192.0.2.1", 4242, "192.0.2.25", 25, "mx.test")
    ctx.stage = Stage.MAIL_FROM
    ctx.begin_transaction(Mailbox.parse(SENDER))
    ctx.add_recipient(Mailbox.parse("bob@example.test"))
    ctx.message = Message(MESSAGE)

    async def main():
        msg_id = await spool.put(Envelope(SENDER, delivery.recipients(ctx)), MESSAGE)
        before = (await spool.get(msg_id)).envelope.recipients[0].route
        ctx.stage = Stage.POST_QUEUE
        script.call("on_post_queue", ctx)
        await delivery.reroute(await spool.get(msg_id), ctx, MESSAGE)
        return before, (await spool.get(msg_id)).envelope.recipients[0].route

    before, after = asyncio.run(main())
    assert before == f"maildir:{tmp_path / 'mail' / 'example.test' / 'bob'}"
    assert after == "lmtp://127.0.0.1:24"


def test_the_journal_keeps_a_crash_from_sending_a_recipient_again(world):
    """A remote accepted bob, then the process died before the envelope said so: the
    journal line, written at once, makes the next start send to carol only."""
    spool, _, delivery = world

    async def main():
        async with Sink() as sink:
            msg_id = await queue(spool, f"smtp://127.0.0.1:{sink.port}",
                                 ["bob@remote.test", "carol@remote.test"])
            Journal(spool.root / "delivered.journal").record(msg_id, ["bob@remote.test"])
            await spool.recover_deliveries()
            assert Journal(spool.root / "delivered.journal").read() == {}
            await delivery.run_once()
            return sink.messages

    (received,) = asyncio.run(main())
    assert received.recipients == ["carol@remote.test"] and asyncio.run(spool.list()) == []


def test_journal_lines_torn_by_a_crash_are_skipped(tmp_path):
    journal = Journal(tmp_path / "j")
    assert journal.record("A1", ["a@x.test", "b@x.test"]) and not journal.record("A2", [])
    with open(tmp_path / "j", "a") as torn:
        torn.write("A3")
    assert journal.read() == {"A1": {"a@x.test", "b@x.test"}}


def test_a_settled_journal_is_emptied_once_large(tmp_path):
    journal = Journal(tmp_path / "j", compact_at=10)
    journal.record("A1", ["a@x.test"])
    journal.record("A2", ["b@x.test"])
    journal.settled()
    assert set(journal.read()) == {"A1", "A2"}  # A2's envelope is not written yet
    journal.settled()
    assert journal.read() == {}
    journal.close()


def test_a_journal_entry_that_cannot_be_applied_does_not_stop_delivery(world, tmp_path):
    spool, _, delivery = world
    (spool.root / "hold").mkdir(parents=True, exist_ok=True)
    (spool.root / "hold" / "0123456789ab-0123456789ab.json").write_text("{not json")
    Journal(spool.root / "delivered.journal").record("0123456789ab-0123456789ab", ["a@x.test"])

    async def main():
        async with Sink() as sink:
            await queue(spool, f"smtp://127.0.0.1:{sink.port}")
            delivery.start()
            assert await asyncio.to_thread(wait_for, lambda: sink.messages)
            await delivery.stop()

    asyncio.run(main())
    assert "0123456789ab-0123456789ab" in Journal(spool.root / "delivered.journal").read()
    # kept for the next start: an unreadable envelope is not a removed message


def unreadable_with_journal(spool, route) -> tuple[str, bytes]:
    """A message to bob and carol whose envelope is made unreadable after a crash left
    ``<id> bob`` in the journal: (its id, the envelope's good bytes, for the fix)."""
    msg_id = asyncio.run(queue(spool, route, ["bob@remote.test", "carol@remote.test"]))
    envelope = spool.root / "deliver" / f"{msg_id}.json"
    good = envelope.read_bytes()
    envelope.write_text("{not json")
    Journal(spool.root / "delivered.journal").record(msg_id, ["bob@remote.test"])
    return msg_id, good


def test_journal_entries_kept_for_an_unreadable_envelope_outlive_compaction(tmp_path):
    """recover() keeps bob's line; delivering another message then compacted the journal
    (settled() emptied it) and, once the operator fixed the envelope, bob got the mail
    again at the next start."""
    spool, clock = Spool(tmp_path / "queue"), Clock()

    async def start() -> Delivery:
        delivery = Delivery(spool, in_tmp(tmp_path), "mx.test", ("example.test",),
                            clock=clock)
        spool.journal.compact_at = 1  # every settled write compacts
        await spool.recover_deliveries()
        return delivery

    async def main():
        async with Sink() as sink:
            route = f"smtp://127.0.0.1:{sink.port}"
            msg_id, good = await asyncio.to_thread(unreadable_with_journal, spool, route)
            delivery = await start()
            await queue(spool, route, ["dave@remote.test"])
            await delivery.run_once()  # dave's journal line settled: a compaction
            assert Journal(spool.root / "delivered.journal").read() == \
                {msg_id: {"bob@remote.test"}}
            await delivery.stop()
            (spool.root / "deliver" / f"{msg_id}.json").write_bytes(good)  # the fix
            delivery = await start()
            await delivery.run_once()
            await delivery.stop()
            return [m.recipients for m in sink.messages]

    assert asyncio.run(main()) == [["dave@remote.test"], ["carol@remote.test"]]
    assert Journal(spool.root / "delivered.journal").read() == {}
    assert asyncio.run(spool.list()) == []


def test_an_envelope_fixed_while_running_gets_its_kept_journal_entries(world):
    """The fix comes while the worker runs: its next look at the queue marks bob
    delivered from the kept journal entry before sending to carol."""
    spool, _, delivery = world

    async def main():
        async with Sink() as sink:
            msg_id, good = await asyncio.to_thread(
                unreadable_with_journal, spool, f"smtp://127.0.0.1:{sink.port}")
            await spool.recover_deliveries()
            await delivery.run_once()  # unreadable: skipped
            (spool.root / "deliver" / f"{msg_id}.json").write_bytes(good)
            await delivery.run_once()
            return [m.recipients for m in sink.messages]

    assert asyncio.run(main()) == [["carol@remote.test"]]


def test_a_message_held_during_its_delivery_stays_held_and_keeps_what_was_delivered(
        world, caplog):
    """`vsl queue hold` moves the message while a remote accepts ok@ and defers temp@:
    the worker's update fails and is logged, the message stays held (listed once), and
    once released only temp@ is sent."""
    spool, clock, delivery = world
    deliver = delivery.transports.deliver

    async def held_meanwhile(route, *args):
        await asyncio.to_thread(lambda: asyncio.run(Spool(spool.root).move(msg_id, "hold")))
        return await deliver(route, *args)

    async def main():
        nonlocal msg_id
        async with Sink() as sink:
            msg_id = await queue(spool, f"smtp://127.0.0.1:{sink.port}",
                                 ["ok@remote.test", "temp@remote.test"])
            delivery.transports.deliver = held_meanwhile
            await delivery.run_once()
            held = [(e.id, e.queue) for e in await Spool(spool.root).list()]
            delivery.transports.deliver, sink.accept_all = deliver, True
            await Spool(spool.root).move(msg_id, "deliver", "hold")  # `vsl queue release`
            await delivery.run_once()
            return held, [m.recipients for m in sink.messages]

    msg_id = None
    held, received = asyncio.run(main())
    assert held == [(msg_id, "hold")]
    assert f"{msg_id}: moved meanwhile: no longer in deliver" in caplog.text
    assert received == [["ok@remote.test"], ["temp@remote.test"]]  # ok@ only once
    assert asyncio.run(spool.list()) == []


def test_a_stop_right_after_a_claim_ends_the_claim(tmp_path):
    """Tasks cancelled before their first step still release their message: the next
    delivery worker of that queue delivers it."""
    async def scenario():
        spool = Spool(tmp_path / "queue")
        route = f"maildir:{tmp_path / 'mail' / 'bob'}"
        msg_id = await spool.put(Envelope("a@example.test", [RecipientState("bob@example.test",
                                                                             route)]),
                                 MESSAGE, "deliver")
        first = Delivery(spool, in_tmp(tmp_path), "mx.test", ("example.test",))
        await first.claims._claim()
        await first.stop()
        second = Delivery(spool, in_tmp(tmp_path), "mx.test", ("example.test",))
        delivered = await second.run_once()
        await spool.close()
        return msg_id, delivered

    msg_id, delivered = asyncio.run(scenario())
    assert delivered == 1
    assert list((tmp_path / "mail" / "bob" / "new").iterdir())
