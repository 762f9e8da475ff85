"""`vsl queue` against a RabbitMQ broker (cli/queue.py over server/queue_amqp.py): a
vsl.toml with ``[queue] backend = "rabbitmq"``, each test on a prefix of its own on the
session's broker, the commands through click's runner. Reading a queue takes each
message and gives it back: nothing may be lost or doubled by it, and a message being
worked on is reported, not found."""
from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aio_pika
import pytest
from click.testing import CliRunner

from vsl.cli import main
from vsl.server import config as config_module
from vsl.server.envelope import Envelope, RecipientState
from vsl.server.queue_amqp import AmqpQueue
from vsl.server.queues import open_queue

DATA = b"Subject: hi\r\n\r\nbody\r\n"
IN_FLIGHT = "not in any queue (being delivered, or moved)"


class Broker:
    """This test's prefix on the session broker: a vsl.toml naming it, the ``vsl queue``
    command run with it, and AmqpQueues on it."""

    def __init__(self, url: str, directory: Path):
        self.url, self.prefix = url, f"a{uuid.uuid4().hex[:8]}"
        self.toml = directory / "vsl.toml"
        self.toml.write_text(f'[queue]\nbackend = "rabbitmq"\nurl_env = "VSL_TEST_AMQP_URL"\n'
                             f'prefix = "{self.prefix}"\n')

    def vsl_queue(self, *args: str):
        """``vsl queue --config vsl.toml ARGS`` (click's result: exit_code, stdout, stderr)."""
        return CliRunner().invoke(main, ["queue", "--config", str(self.toml), *args])

    async def cli(self, *args: str):
        """:meth:`vsl_queue` from inside an event loop (the command runs one of its own)."""
        return await asyncio.to_thread(self.vsl_queue, *args)

    async def opened(self) -> AmqpQueue:
        queue = AmqpQueue(self.url, self.prefix, confirm_timeout=5.0, connect_timeout=2.0)
        await queue.open()
        return queue

    def fill(self, *queues: str, sender: str = "alice@example.test") -> list[str]:
        """One message in each of ``queues``: their ids."""
        async def put_all():
            queue = await self.opened()
            try:
                return [await queue.put(envelope(sender), DATA, name) for name in queues]
            finally:
                await queue.close()
        return asyncio.run(put_all())

    def on_broker(self, work):
        """``await work(queue)`` with an AmqpQueue on this prefix, in a loop of its own."""
        async def run():
            queue = await self.opened()
            try:
                return await work(queue)
            finally:
                await queue.close()
        return asyncio.run(run())

    def counts(self) -> dict[str, int]:
        return self.on_broker(lambda queue: queue.counts())

    def listed(self) -> list[tuple[str, str]]:
        """(id, queue) of every message, sorted."""
        async def read(queue):
            return sorted((e.id, e.queue) for e in await queue.list())
        return self.on_broker(read)


def envelope(sender: str = "alice@example.test") -> Envelope:
    return Envelope(sender, [RecipientState("bob@example.test")], client_ip="192.0.2.1")


@pytest.fixture
def broker(rabbitmq, tmp_path, monkeypatch) -> Broker:
    monkeypatch.setenv("VSL_TEST_AMQP_URL", rabbitmq.url)
    return Broker(rabbitmq.url, tmp_path)


@pytest.mark.parametrize("source", ["url_env", "url_file"])
def test_vsl_toml_opens_the_broker_backend(broker, rabbitmq, tmp_path, source):
    if source == "url_file":
        secret = tmp_path / "amqp-url"
        secret.write_text(rabbitmq.url + "\n")
        secret.chmod(0o600)
        broker.toml.write_text(broker.toml.read_text().replace(
            'url_env = "VSL_TEST_AMQP_URL"', f'url_file = "{secret}"'))
    mail_queue = open_queue(config_module.load(str(broker.toml)))
    assert isinstance(mail_queue, AmqpQueue)
    assert (mail_queue.link.url, mail_queue.topology.prefix) == (rabbitmq.url, broker.prefix)


def test_counts_and_list_through_vsl_toml(broker):
    deliver, held = broker.fill("deliver", "hold")
    counts = broker.vsl_queue("counts")
    assert counts.exit_code == 0, counts.output
    rows = dict(line.split() for line in counts.stdout.splitlines()[1:7])
    assert rows == {"working": "0", "deliver": "1", "deferred": "0", "dead": "0",
                    "hold": "1", "quarantine": "0"}
    assert "messages being worked on are not counted" in counts.stdout
    assert broker.vsl_queue().stdout == counts.stdout  # counts is the default
    listing = broker.vsl_queue("list")
    assert listing.exit_code == 0, listing.output
    assert [line.split()[:2] for line in listing.stdout.splitlines()[1:3]] == \
        [[deliver, "deliver"], [held, "hold"]]
    assert "messages being worked on are not listed" in listing.stderr
    held_only = broker.vsl_queue("list", "hold").stdout.splitlines()
    assert held_only[1].split()[:2] == [held, "hold"] and len(held_only) == 3


def test_show_and_eml(broker):
    (msg_id,) = broker.fill("deliver")
    shown = broker.vsl_queue("show", msg_id)
    assert shown.exit_code == 0 and f"id:        {msg_id}" in shown.stdout
    assert "queue:     deliver" in shown.stdout
    assert broker.vsl_queue("show", "--eml", msg_id).stdout_bytes == DATA


def test_hold_release_retry_move_remove(broker):
    first, deferred = broker.fill("deliver", "deferred")
    assert broker.vsl_queue("hold", first).stdout == f"{first}: deliver -> hold\n"
    assert broker.vsl_queue("release", first).stdout == f"{first}: hold -> deliver\n"
    retried = broker.vsl_queue("retry", "--all")
    assert retried.exit_code == 0 and f"{deferred}: deferred -> deliver" in retried.stdout
    assert broker.vsl_queue("move", first, "quarantine/review").exit_code == 0
    assert sorted(broker.listed()) == sorted([(first, "quarantine/review"),
                                              (deferred, "deliver")])
    assert broker.on_broker(lambda q: q.get(deferred)).envelope.next_attempt is None
    assert broker.vsl_queue("remove", first).stdout == \
        f"{first}: removed from quarantine/review\n"
    assert broker.listed() == [(deferred, "deliver")]


def test_retry_all_reads_the_deferred_messages_once(broker, monkeypatch):
    """Each is retried as listed: no lookup by id (on a broker, a read of the queue)."""
    deferred = broker.fill("deferred", "deferred")

    async def no_lookup(*_):
        raise AssertionError("looked up again")
    monkeypatch.setattr(AmqpQueue, "locate", no_lookup)
    monkeypatch.setattr(AmqpQueue, "get", no_lookup)
    retried = broker.vsl_queue("retry", "--all")
    assert retried.exit_code == 0, retried.output
    assert sorted(retried.stdout.splitlines()) == sorted(f"{msg_id}: deferred -> deliver"
                                                         for msg_id in deferred)


def test_moving_into_working_is_refused(broker):
    """There it would have no hand-off, and a worker would send it to dead."""
    [msg_id] = broker.fill("hold")
    moved = broker.vsl_queue("move", msg_id, "working")
    assert moved.exit_code == 1 and "move it to deliver or hold" in moved.stdout
    assert broker.listed() == [(msg_id, "hold")]


def test_an_unreadable_message_can_be_held_moved_and_removed(broker):
    """As the listing says: fix, hold or remove each."""
    unreadable = aio_pika.Message(b"{not json\nx", headers={"x-vsl-format": 1},
                                  message_id="bad")
    broker.on_broker(lambda q: q.link.send(unreadable, f"{broker.prefix}.working"))
    assert broker.vsl_queue("hold", "bad").stdout == "bad: working -> hold\n"
    assert broker.vsl_queue("move", "bad", "quarantine/fix").stdout == \
        "bad: hold -> quarantine/fix\n"
    assert "unreadable envelope" in broker.vsl_queue("list", "quarantine/fix").stdout
    assert broker.vsl_queue("move", "bad", "deferred").exit_code == 1
    assert broker.vsl_queue("remove", "bad").stdout == "bad: removed from quarantine/fix\n"
    assert "the queue is empty" in broker.vsl_queue("list").stdout


def test_a_message_being_worked_on_is_reported_not_found(broker):
    async def main():
        server = await broker.opened()
        msg_id = await server.put(envelope(), DATA, "deliver")
        [entry] = await server.claim(5, time.time())
        for command in (("hold", msg_id), ("remove", msg_id), ("show", msg_id)):
            result = await broker.cli(*command)
            assert result.exit_code == 1 and IN_FLIGHT in result.output, result.output
        assert "the queue is empty" in (await broker.cli("list")).stdout
        await server.close()  # the broker gives it back to its queue
        assert (await broker.cli("hold", msg_id)).stdout == f"{msg_id}: deliver -> hold\n"
        return entry.id

    msg_id = asyncio.run(main())
    assert broker.listed() == [(msg_id, "hold")]


def test_list_stops_at_its_limit_and_reading_loses_nothing(broker):
    ids = broker.fill("deliver", "hold", "hold", "dead", "quarantine/virus", "working")
    counts, listed = broker.counts(), broker.listed()
    limited = broker.vsl_queue("list", "--limit", "2")
    assert limited.exit_code == 0 and len(limited.stdout.splitlines()) == 4
    assert "stopped after 2 messages (--limit)" in limited.stderr
    assert "stopped" not in broker.vsl_queue("list").stderr
    for msg_id in ids:
        assert broker.vsl_queue("show", msg_id).exit_code == 0
    assert broker.vsl_queue("hold", ids[0]).exit_code == 0
    assert broker.counts() == counts | {"deliver": 0, "hold": 3}
    assert broker.listed() == sorted([(i, q) for i, q in listed if i != ids[0]] +
                                     [(ids[0], "hold")])


def test_control_characters_in_envelopes_come_out_escaped(broker):
    (msg_id,) = broker.fill("hold", sender="evil\x1b[2J\r@example.test")
    for args in (("list",), ("show", msg_id), ("list", "--json")):
        out = broker.vsl_queue(*args).stdout
        assert "\x1b" not in out and "\r" not in out
        assert "\\x1b[2J" in out or "\\u001b[2J" in out
