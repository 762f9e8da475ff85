"""server/queue_amqp.py's AmqpQueue against a private RabbitMQ node (tests/support/rabbitmq.py):
the session's broker, each test on a prefix of its own; the tests that stop the broker
have one of their own."""
from __future__ import annotations

import asyncio
import contextlib
import time

import aio_pika
import pytest

from vsl.server.envelope import Envelope, RecipientState
from vsl.server import queue_amqp_link
from vsl.server.queue_amqp import AmqpQueue
from vsl.server import queue_amqp
from vsl.server.queue_amqp_codec import Topology, decode, delay_level, encode
from vsl.server.queue_backend import QueueError, UnreadableEnvelope


def envelope(*addresses: str) -> Envelope:
    return Envelope("alice@example.org",
                    [RecipientState(a) for a in addresses or ("bob@example.test",)])


async def opened(queue: AmqpQueue) -> AmqpQueue:
    await queue.open()
    return queue


async def claim_soon(queue: AmqpQueue, queues=("deliver", "deferred"), timeout: float = 3.0,
                     limit: int = 10) -> list:
    """What ``claim`` hands out once the consumer has had time to receive it."""
    deadline = time.monotonic() + timeout
    while True:
        entries = await queue.claim(limit, time.time(), queues)
        if entries or time.monotonic() > deadline:
            return entries
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def raw_channel(url: str):
    """A channel of the test's own on the broker, to put there what vSL would not."""
    connection = await aio_pika.connect(url)
    async with connection:
        yield await connection.channel()


async def put_and_claim(queue: AmqpQueue, *addresses: str, data: bytes = b"x"):
    """A message put to ``deliver`` and claimed: its id and entry."""
    msg_id = await queue.put(envelope(*addresses), data, queue="deliver")
    [entry] = await claim_soon(queue)
    return msg_id, entry


def test_put_claim_complete(make_queue):
    async def main():
        queue = await opened(make_queue())
        msg_id = await queue.put(envelope(), b"Subject: hi\r\n\r\nhello\r\n", queue="deliver")
        working_id = await queue.put(envelope(), b"to run on_post_queue")
        [entry] = await claim_soon(queue)
        assert (entry.id, entry.queue, entry.envelope.id) == (msg_id, "deliver", msg_id)
        assert [e.id for e in await claim_soon(queue, ("working",))] == [working_id]
        await queue.complete(entry)
        await queue.release(entry.id)
        await queue.release(working_id)  # no transition: back in working
        await queue.close()
        queue = await opened(make_queue())
        assert (await queue.counts())["deliver"] == 0
        assert await queue.locate(working_id) == "working"
        await queue.close()
    asyncio.run(main())


def test_release_requeues_and_a_claim_is_held_once(make_queue):
    async def main():
        queue = await opened(make_queue())
        msg_id, entry = await put_and_claim(queue)
        assert await claim_soon(queue, timeout=0.3) == []
        await queue.release(entry.id)
        assert [e.id for e in await claim_soon(queue)] == [msg_id]
        await queue.close()
    asyncio.run(main())


def test_defer_comes_back_after_its_delay_and_not_before(make_queue):
    async def main():
        queue = await opened(make_queue())
        _, entry = await put_and_claim(queue)
        deferred_at = time.time()
        await queue.defer(entry, deferred_at + 1.0)  # level 0: 1 s
        await queue.release(entry.id)
        assert (await queue.counts())["deferred"] == 1
        assert await claim_soon(queue, timeout=0.7) == []
        [again] = await claim_soon(queue, timeout=3)
        assert time.time() - deferred_at >= 1.0
        assert again.envelope.next_attempt == pytest.approx(deferred_at + 1.0)
        await queue.close()
    asyncio.run(main())


def test_a_message_back_early_waits_again_without_an_attempt(make_queue):
    async def main():
        queue = await opened(make_queue())
        _, entry = await put_and_claim(queue)
        deferred_at = time.time()
        await queue.defer(entry, deferred_at + 1.5)  # level 0 (1 s), then 0.5 s more
        await queue.release(entry.id)
        assert await claim_soon(queue, timeout=1.3) == []  # back at 1 s: delayed again
        [entry] = await claim_soon(queue, timeout=3)
        assert time.time() - deferred_at >= 1.5
        assert (entry.queue, entry.envelope.attempts) == ("deferred", 0)
        await queue.close()
    asyncio.run(main())


def test_a_message_put_or_moved_to_deliver_is_due_whatever_its_next_attempt(make_queue):
    async def main():
        queue = await opened(make_queue())
        later = envelope()
        later.next_attempt = time.time() + 3600
        msg_id = await queue.put(later, b"x", queue="deliver")
        [entry] = await queue.claim(5, time.time())  # no wait for the consumer to start
        assert (entry.id, entry.queue) == (msg_id, "deliver")
        started = time.monotonic()
        assert await queue.claim(5, time.time()) == []
        assert time.monotonic() - started < 0.5  # an idle claim waits briefly
        await queue.close()
    asyncio.run(main())


def test_update_stays_with_the_claim_and_moves_with_it(make_queue):
    async def main():
        queue = await opened(make_queue())
        msg_id, entry = await put_and_claim(queue, "a@example.test", "b@example.test",
                                            data=b"old")
        entry.envelope.recipients[0].status = "failed"
        await queue.update(entry, data=b"new")
        await queue.move(msg_id, "hold", "deliver")
        await queue.release(msg_id)
        held = await queue.get(msg_id)
        assert held.queue == "hold" and held.envelope.recipients[0].status == "failed"
        assert await queue.message(msg_id) == b"new"
        with pytest.raises(QueueError, match="not in deliver"):
            await queue.move(msg_id, "dead", "deliver")
        await queue.close()
    asyncio.run(main())


def test_delivered_addresses_apply_at_the_next_claim_and_restart(make_queue):
    async def main():
        queue = await opened(make_queue())
        msg_id, entry = await put_and_claim(queue, "a@example.test", "b@example.test")
        await queue.update(entry, delivered=["a@example.test"])
        await queue.release(msg_id)  # no transition: the broker has the old envelope
        [again] = await claim_soon(queue)
        assert [r.status for r in again.envelope.recipients] == ["delivered", "pending"]
        await queue.close()  # a restart: the journal is read again

        queue = await opened(make_queue())
        await queue.recover_deliveries()
        [after] = await claim_soon(queue)
        assert after.envelope.recipients[0].status == "delivered"
        await queue.close()
    asyncio.run(main())


def test_the_kept_journal_lines_are_bounded_to_the_newest_ids(make_queue, tmp_path,
                                                              monkeypatch):
    """Lines of messages another process finished are never forgotten by a transition
    here: only the KEPT_IDS newest ids stay, at a restart and as lines are added."""
    monkeypatch.setattr(queue_amqp, "KEPT_IDS", 2)
    (tmp_path / "journal").write_text("".join(f"{n:012x}-old a@example.test\n"
                                              for n in range(3)))

    async def main():
        queue = await opened(make_queue())
        await queue.recover_deliveries()
        assert sorted(queue.journal.kept) == [f"{n:012x}-old" for n in (1, 2)]
        _, entry = await put_and_claim(queue, "a@example.test", "b@example.test")
        await queue.update(entry, delivered=["a@example.test"])
        assert sorted(queue.journal.kept) == [f"{2:012x}-old", entry.id]
        await queue.close()
    asyncio.run(main())


def test_a_copy_a_transition_left_behind_is_dropped_at_claim(make_queue, caplog):
    """A completed message comes back (its ack lost, or a timed-out publish landed after
    all): dropped. A moved one's old copy too, but not the copy published onwards."""
    async def main():
        queue = await opened(make_queue())
        done_id, done = await put_and_claim(queue)
        await queue.complete(done)
        await queue.release(done_id)
        await queue.put(envelope(), b"x", queue="deliver", msg_id=done_id)
        moved_id, moved = await put_and_claim(queue)
        old = queue.claims[moved_id].message
        await queue.move(moved_id, "hold", "deliver")
        await queue.release(moved_id)
        await queue.link.send(aio_pika.Message(old.body, headers=old.headers,
                                               message_id=moved_id),
                              f"{make_queue.prefix}.deliver")
        assert await claim_soon(queue, timeout=1.0) == []
        await queue.move(moved_id, "deliver", "hold")  # an operator releases it
        [released] = await claim_soon(queue)
        assert released.id == moved_id
        await queue.complete(released)
        assert set((await queue.counts()).values()) == {0}
        await queue.close()
    asyncio.run(main())
    assert caplog.text.count("a copy left in") == 2


def test_a_full_queue_nacks_as_a_queue_error(make_queue, rabbitmq):
    rabbitmq.ctl("set_policy", "--apply-to", "queues", f"{make_queue.prefix}-full",
                 rf"^{make_queue.prefix}\.working$", '{"max-length": 1}')

    async def main():
        queue = await opened(make_queue())
        with pytest.raises(QueueError, match="refused the message") as raised:
            for _ in range(3):  # a quorum queue applies the limit one message late
                await queue.put(envelope(), b"x")
        assert "Error" not in str(raised.value)
        await queue.close()
    asyncio.run(main())


def test_broker_down_fails_fast_then_reconnects_and_voids_claims(private_rabbitmq, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(queue_amqp_link, "MAX_BACKOFF", 1.0)  # retry every second

    async def main():
        queue = await opened(AmqpQueue(private_rabbitmq.url, "down", tmp_path / "journal",
                                       confirm_timeout=5.0, connect_timeout=2.0))
        held, entry = await put_and_claim(queue, data=b"before")
        await asyncio.to_thread(private_rabbitmq.stop)
        started = time.monotonic()
        with pytest.raises(QueueError) as raised:
            await queue.put(envelope(), b"while down")
        assert time.monotonic() - started < 1.0
        assert "secret" not in str(raised.value)
        await asyncio.to_thread(private_rabbitmq.start)
        deadline = time.monotonic() + 10
        while True:
            try:
                await queue.put(envelope(), b"after")
                break
            except QueueError:
                assert time.monotonic() < deadline, "no reconnect within 10 s"
                await asyncio.sleep(0.2)
        assert (await queue.counts())["working"] == 1
        with pytest.raises(QueueError, match="connection was lost"):
            await queue.complete(entry)  # the claim died with its connection
        await queue.release(entry.id)
        assert [e.id for e in await claim_soon(queue)] == [held]
        await queue.close()
    asyncio.run(main())


def test_wrong_password_or_vhost_is_fatal_and_redacted(rabbitmq, tmp_path):
    async def main(url: str) -> str:
        with pytest.raises(QueueError, match="login refused") as raised:
            await AmqpQueue(url, "login", tmp_path / "journal").open()
        return str(raised.value)
    text = asyncio.run(main(rabbitmq.url_with(password="wrong-pw")))
    assert "vsl:***@127.0.0.1" in text and "wrong-pw" not in text
    assert "vhost" in asyncio.run(main(rabbitmq.url_with(vhost="nope")))


def test_unreachable_broker_at_open_is_retried_not_fatal(tmp_path, caplog):
    from tests.support.mailsink import free_port

    async def main():
        queue = AmqpQueue(f"amqp://vsl:pw@127.0.0.1:{free_port()}/", "gone",
                          tmp_path / "journal", connect_timeout=1.0)
        await queue.open()
        await asyncio.sleep(1.5)  # the first retry logs the failure
        with pytest.raises(QueueError, match="not connected"):
            await queue.put(envelope(), b"x")
        await queue.close()
    asyncio.run(main())
    [logged] = [r.getMessage() for r in caplog.records if r.name == "vsl.queue"]
    assert "unreachable" in logged and "vsl:***@" in logged and ":pw@" not in logged


def test_poison_in_working_goes_to_dead_with_why(make_queue, rabbitmq):
    async def main():
        queue = await opened(make_queue())
        async with raw_channel(rabbitmq.url) as channel:
            for body, headers in ((b"no newline", {"x-vsl-format": 1}),
                                  (b"{not json\nx", {"x-vsl-format": 1}),
                                  (envelope().to_json() + b"\nx", {"x-vsl-format": 9})):
                await channel.default_exchange.publish(
                    aio_pika.Message(body, headers=headers, message_id="poison"),
                    routing_key=f"{make_queue.prefix}.working")
            good = await queue.put(envelope(), b"good")
            assert [e.id for e in await claim_soon(queue, ("working",))] == [good]
            dead = await channel.declare_queue(f"{make_queue.prefix}.dead", passive=True)
            whys = []
            while (message := await dead.get(fail=False, timeout=2)) is not None:
                whys.append(message.headers["x-vsl-why"])
                await message.ack()
        assert len(whys) == 3 and "no envelope line" in whys[0] and "format" in whys[2]
        await queue.close()
    asyncio.run(main())


def test_counts_quarantine_and_admin_reads(make_queue):
    async def main():
        queue = await opened(make_queue())
        first = await queue.put(envelope(), b"one", queue="deliver")
        virus = await queue.put(envelope(), b"two", queue="quarantine/virus")
        held = await queue.put(envelope(), b"three", queue="hold")
        assert await queue.counts() == {"working": 0, "deliver": 1, "deferred": 0,
                                        "hold": 1, "dead": 0, "quarantine": 1}
        assert await queue.locate(virus) == "quarantine/virus"
        assert [e.id for e in await queue.list("quarantine/virus")] == [virus]
        assert await queue.list("quarantine/other") == []
        assert [e.id for e in await queue.list()] == [first, virus, held]
        assert (await queue.get(first, "deliver")).envelope.recipients[0].address == \
            "bob@example.test"
        assert await queue.message(held) == b"three"
        await queue.move(virus, "deliver", "quarantine/virus")
        await queue.remove(held, "hold")
        assert await queue.counts() == {"working": 0, "deliver": 2, "deferred": 0,
                                        "hold": 0, "dead": 0, "quarantine": 0}
        with pytest.raises(QueueError, match="not in hold"):
            await queue.get(held, "hold")
        await queue.close()
    asyncio.run(main())


def test_scan_reports_an_unreadable_envelope_where_it_is(make_queue, rabbitmq):
    async def main():
        queue = await opened(make_queue())
        async with raw_channel(rabbitmq.url) as channel:
            await channel.default_exchange.publish(
                aio_pika.Message(b"[]\nx", headers={"x-vsl-format": 1}, message_id="bad"),
                routing_key=f"{make_queue.prefix}.hold")
        entries, [unreadable] = await queue.scan("hold")
        assert entries == [] and isinstance(unreadable, UnreadableEnvelope)
        assert unreadable.where == f"amqp:{make_queue.prefix}.hold#bad"
        await queue.close()
    asyncio.run(main())


def test_a_queue_declared_with_other_arguments_is_used_with_a_warning(make_queue, rabbitmq):
    async def main():
        async with raw_channel(rabbitmq.url) as channel:
            await channel.declare_queue(f"{make_queue.prefix}.hold", durable=True)  # classic
        queue = await opened(make_queue())
        [warning] = queue.startup_warnings()
        assert f"{make_queue.prefix}.hold" in warning and "other arguments" in warning
        assert "delete it" in warning
        held = await queue.put(envelope(), b"x", queue="hold")
        assert await queue.locate(held) == "hold"
        await queue.close()
    asyncio.run(main())


def test_admin_reads_and_releases_never_bury_ready_mail(make_queue):
    """On 3.10 quorum queues each get+requeue and each release counts as a delivery."""
    async def main():
        queue = await opened(make_queue())
        msg_id = await queue.put(envelope(), b"x", queue="deliver")
        for _ in range(25):
            await queue.list("deliver")
        for _ in range(25):
            [entry] = await claim_soon(queue)
            await queue.release(entry.id)
        await queue.close()  # its consumer would hold the message again
        queue = await opened(make_queue())
        assert await queue.locate(msg_id) == "deliver"
        await queue.close()
    asyncio.run(main())


def test_a_message_delivered_too_often_goes_to_dead(make_queue, monkeypatch, caplog):
    monkeypatch.setattr(queue_amqp, "CRASH_LOOP_LIMIT", 3)

    async def main():
        queue = await opened(make_queue())
        msg_id = await queue.put(envelope(), b"x", queue="deliver")
        for _ in range(3):  # a crash loop: claimed, never finished
            [entry] = await claim_soon(queue)
            await queue.release(entry.id)
        assert await claim_soon(queue, timeout=0.3) == []
        assert await queue.locate(msg_id) == "dead"
        await queue.close()
    asyncio.run(main())
    assert "delivered 3 times" in caplog.text


def test_a_header_of_the_wrong_form_is_ignored(make_queue, rabbitmq):
    async def main():
        queue = await opened(make_queue())
        async with raw_channel(rabbitmq.url) as channel:
            for msg_id, queue_name, headers in (
                    ("junk-death", "deliver", {"x-death": "junk"}),
                    ("junk-table", "deliver", {"x-death": ["junk", {"queue": 7}]}),
                    ("junk-name", "quarantine", {"x-vsl-quarantine": 5})):
                await channel.default_exchange.publish(
                    aio_pika.Message(envelope().to_json() + b"\nx", message_id=msg_id,
                                     headers={"x-vsl-format": 1, **headers}),
                    routing_key=f"{make_queue.prefix}.{queue_name}")
        entries, unreadable = await queue.scan()
        assert sorted((e.id, e.queue) for e in entries) == [
            ("junk-death", "deliver"), ("junk-name", "quarantine/"),
            ("junk-table", "deliver")] and unreadable == []
        assert sorted(e.id for e in await claim_soon(queue)) == ["junk-death", "junk-table"]
        await queue.close()
    asyncio.run(main())


def test_a_message_failing_its_claim_is_buried_and_the_consumer_goes_on(
        make_queue, monkeypatch, caplog):
    real = queue_amqp.decode

    def failing(body, headers, msg_id, queue):
        if msg_id == "bad":
            raise AttributeError("a bug")
        return real(body, headers, msg_id, queue)
    monkeypatch.setattr(queue_amqp, "decode", failing)

    async def main():
        queue = await opened(make_queue(prefetch=1))
        await queue.put(envelope(), b"x", queue="deliver", msg_id="bad")
        good = await queue.put(envelope(), b"y", queue="deliver")
        assert [e.id for e in await claim_soon(queue)] == [good]
        monkeypatch.setattr(queue_amqp, "decode", real)
        assert await queue.locate("bad") == "dead"
        await queue.close()
    asyncio.run(main())
    assert "bad: cannot be claimed" in caplog.text


def test_a_refused_publish_leaves_the_backend_usable(make_queue, rabbitmq):
    rabbitmq.ctl("eval", "application:set_env(rabbit, max_message_size, 4096).")
    try:
        async def main():
            queue = await opened(make_queue())
            with pytest.raises(QueueError) as raised:
                await queue.put(envelope(), b"x" * 8192)
            assert "Error" not in str(raised.value) and "secret" not in str(raised.value)
            assert await queue.locate(await queue.put(envelope(), b"small")) == "working"
            await queue.close()
        asyncio.run(main())
    finally:
        rabbitmq.ctl("eval", "application:set_env(rabbit, max_message_size, 134217728).")


def test_a_returned_message_is_a_queue_error(make_queue, rabbitmq):
    async def main():
        queue = await opened(make_queue())
        rabbitmq.ctl("delete_queue", f"{make_queue.prefix}.hold")  # an operator's mistake
        with pytest.raises(QueueError, match=f"no queue {make_queue.prefix}.hold"):
            await queue.put(envelope(), b"x", queue="hold")
        await queue.close()
    asyncio.run(main())


@pytest.mark.parametrize("seconds, level", [(0, 0), (0.5, 0), (1, 0), (1.9, 0), (2, 1),
                                            (3.9, 1), (4, 2), (3600, 11), (1e9, 16)])
def test_delay_level_is_the_largest_power_of_two_not_after(seconds, level):
    assert delay_level(seconds) == level


@pytest.mark.parametrize("concurrency, size, prefetch", [
    (20, 25 << 20, 20), (20, 127 << 20, 4), (20, 1 << 30, 1), (0, 1, 1)])
def test_prefetch_holds_at_most_prefetch_bytes_of_the_largest_messages(concurrency, size,
                                                                        prefetch):
    assert queue_amqp.prefetch_for(concurrency, size) == prefetch
    assert prefetch == 1 or prefetch * size <= queue_amqp.PREFETCH_BYTES


def test_topology_arguments():
    declared = Topology("p").declarations()
    assert len(declared) == 5 + 17
    assert declared["p.deliver"] | declared["p.working"] == declared["p.deliver"]
    assert declared["p.deliver"]["x-dead-letter-routing-key"] == "p.dead"
    assert "x-delivery-limit" not in declared["p.deliver"]
    assert declared["p.deferred.3"]["x-message-ttl"] == 8000
    assert declared["p.deferred.3"]["x-dead-letter-routing-key"] == "p.deliver"
    assert all(args["x-max-in-memory-length"] == 0 and args["x-queue-type"] == "quorum"
               for args in declared.values())
    classic = Topology("p", "classic").declarations()
    assert not any(key in args for args in classic.values() for key in
                   ("x-delivery-limit", "x-dead-letter-strategy", "x-max-in-memory-length"))


def test_a_message_round_trips_through_its_amqp_form():
    sent = envelope("a@example.test")
    fields = encode(sent, b"line 1\nline 2\n", "quarantine/virus", "id-1")
    copy = fields["headers"].pop("x-vsl-copy")
    assert fields["headers"] == {"x-vsl-format": 1, "x-vsl-quarantine": "virus"}
    assert copy != encode(sent, b"", "deliver", "id-1")["headers"]["x-vsl-copy"]
    entry, data = decode(fields["body"], fields["headers"], "id-1", "quarantine/virus")
    assert (entry.id, entry.envelope, data) == ("id-1", sent, b"line 1\nline 2\n")


def test_a_due_deferred_message_not_yet_claimed_is_in_deferred(make_queue):
    """Back in P.deliver from its delay queue, it is listed, found and moved as deferred
    (as the spool keeps it there until claimed): `vsl queue retry` finds it either way."""
    async def main():
        queue = await opened(make_queue())
        _, entry = await put_and_claim(queue)
        await queue.defer(entry, time.time() + 1.0)  # level 0: 1 s
        await queue.close()  # no consumer: it stays in P.deliver once due
        queue = await opened(make_queue())
        deadline = time.monotonic() + 5
        while (await queue.counts())["deliver"] == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert [e.id for e in await queue.list("deferred")] == [entry.id]
        assert await queue.list("deliver") == []
        assert await queue.locate(entry.id) == "deferred"
        await queue.move(entry.id, "deliver", "deferred")
        assert await queue.locate(entry.id) == "deliver"
        [again] = await queue.claim(5, time.time())
        assert (again.id, again.queue) == (entry.id, "deliver")
        await queue.close()
    asyncio.run(main())
