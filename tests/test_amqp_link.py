"""server/queue_amqp_link.py's BrokerLink keeping its connection usable: a consumer
channel the broker closes or a consumer it cancels comes back; no call waits without a
bound on a blocked connection; reconnects come each second right after a loss; a caller
that closes at once gets one error and no "retrying" log. Through AmqpQueue, on the
session's broker (each test on a prefix of its own), or on a private one to alarm."""
from __future__ import annotations

import asyncio
import time

import pytest
from click.testing import CliRunner

from tests.test_queue_amqp import claim_soon, envelope, opened, raw_channel
from vsl.cli import main
from vsl.server.queue_amqp import AmqpQueue
from vsl.server.queue_amqp_codec import Topology
from vsl.server.queue_amqp_link import BrokerLink, retry_delay
from vsl.server.queue_backend import QueueError


async def put_and_claim(queue: AmqpQueue):
    held = await queue.put(envelope(), b"x", "deliver")
    [entry] = await claim_soon(queue)
    assert entry.id == held
    return entry


def test_a_consumer_channel_the_broker_closes_is_reopened(make_queue):
    async def main():
        queue = await opened(make_queue())
        entry = await put_and_claim(queue)
        consumer = await queue.link.consumer.get_underlay_channel()
        await consumer.basic_ack(delivery_tag=9999)  # unknown: the broker closes the channel
        await asyncio.sleep(0.5)
        with pytest.raises(QueueError):
            await queue.complete(entry)  # its delivery went back with the channel
        await queue.release(entry.id)
        assert [e.id for e in await claim_soon(queue, timeout=5)] == [entry.id]
        await queue.close()
    asyncio.run(main())


def test_a_consumer_the_broker_cancels_is_restored(make_queue):
    async def main():
        queue = await opened(make_queue())
        await queue.complete(await put_and_claim(queue))
        async with raw_channel(queue.link.url) as channel:
            await channel.queue_delete(f"{make_queue.prefix}.deliver")  # cancels the consumer
        deadline = time.monotonic() + 10
        while True:  # the queue is back once the link has restored its topology
            try:
                held = await queue.put(envelope(), b"after", "deliver")
                break
            except QueueError:
                assert time.monotonic() < deadline, "the queue never came back"
                await asyncio.sleep(0.2)
        assert [e.id for e in await claim_soon(queue, timeout=5)] == [held]
        await queue.close()
    asyncio.run(main())


def test_a_blocked_connection_bounds_claim_counts_close_and_puts(private_rabbitmq, tmp_path):
    async def main():
        queue = await opened(AmqpQueue(private_rabbitmq.url, "alarm", tmp_path / "journal",
                                       confirm_timeout=1.0, connect_timeout=1.0))
        await queue.complete(await put_and_claim(queue))
        await asyncio.to_thread(private_rabbitmq.ctl, "set_vm_memory_high_watermark",
                                "absolute", "50MB")
        try:
            with pytest.raises(QueueError, match="no confirm"):
                await queue.put(envelope(), b"blocked")  # the broker stops reading
            started = time.monotonic()
            assert await asyncio.wait_for(queue.claim(1, time.time()), 10) == []
            assert time.monotonic() - started < 2.5
            started = time.monotonic()
            with pytest.raises(QueueError, match="no answer within 1 s"):
                await asyncio.wait_for(queue.counts(), 10)
            assert time.monotonic() - started < 2.5
            put = asyncio.create_task(queue.put(envelope(), b"waiting"))
            await asyncio.sleep(0.2)  # its publish waits for a confirm
            started = time.monotonic()
            await asyncio.wait_for(queue.close(), 10)
            assert time.monotonic() - started < 2.5
            with pytest.raises(QueueError):
                await put
        finally:
            await asyncio.to_thread(private_rabbitmq.ctl, "set_vm_memory_high_watermark", "0.4")
    asyncio.run(main())


def test_reconnects_each_second_for_a_restart_then_backs_off():
    delays = [retry_delay(attempt) for attempt in range(16)]
    assert delays[:10] == [1.0] * 10  # a broker restart takes 3-4 s
    assert delays[10:] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_vsl_queue_with_the_broker_down_prints_one_error_and_no_retry(tmp_path, caplog,
                                                                     monkeypatch):
    from tests.support.mailsink import free_port
    monkeypatch.setenv("VSL_TEST_AMQP_URL", f"amqp://vsl:pw@127.0.0.1:{free_port()}/")
    toml = tmp_path / "vsl.toml"
    toml.write_text('[queue]\nbackend = "rabbitmq"\nurl_env = "VSL_TEST_AMQP_URL"\n')
    result = CliRunner().invoke(main, ["queue", "--config", str(toml), "counts"])
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert "not connected (" in line and "Connect call failed" in line and ":pw@" not in line
    assert not [r for r in caplog.records if r.name == "vsl.queue"]


def test_a_server_logs_the_retries_of_an_unreachable_broker(tmp_path, caplog):
    from tests.support.mailsink import free_port

    async def main() -> None:
        queue = AmqpQueue(f"amqp://vsl:pw@127.0.0.1:{free_port()}/", "gone",
                          tmp_path / "journal", connect_timeout=1.0)
        await queue.open()
        await asyncio.sleep(1.5)
        await queue.close()
    asyncio.run(main())
    [logged] = [r.getMessage() for r in caplog.records if r.name == "vsl.queue"]
    assert "unreachable" in logged and "retrying" in logged and ":pw@" not in logged


class _ClosingPublisher:
    """A publishing channel whose reopen finds the connection gone meanwhile."""

    is_closed = True

    def __init__(self, link: BrokerLink):
        self.link = link

    async def reopen(self) -> None:
        self.link.connection = self.link.publisher = None


def test_a_connection_lost_during_a_reopen_is_a_queue_error():
    link = BrokerLink("amqp://vsl:pw@127.0.0.1:1/", Topology("x", "quorum"))
    link.publisher = _ClosingPublisher(link)

    async def main():
        with pytest.raises(QueueError, match="not connected"):
            await link.send(link.aio_pika.Message(b"x"), "x.working")
    asyncio.run(main())


def test_close_during_a_put_fails_it_as_a_queue_error(make_queue):
    async def main():
        queue = await opened(make_queue())
        put = asyncio.create_task(queue.put(envelope(), b"x" * 20_000_000))
        underlay = await queue.link.publisher.get_underlay_channel()
        while not underlay.confirmations:  # its publish waits for the confirm
            await asyncio.sleep(0)
        await queue.close()
        with pytest.raises(QueueError):
            await put
    asyncio.run(main())
