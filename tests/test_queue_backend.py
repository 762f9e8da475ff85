"""The queue backend contract (server/queue_backend.py), run against every backend.

Each test speaks only the interface, so a new backend joins by one line in BACKENDS:
a function opening it on the test's storage (a directory; the broker backend takes a
prefix named after it, on the session's broker). Opening it again on the same storage
stands for a restart. Each test is one event loop (``backends.run``): a broker
connection belongs to the loop it was opened in, so a restart closes the first backend
and opens the next inside it.
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import pytest

from vsl.server.envelope import Envelope, RecipientState
from vsl.server.queue import Spool
from vsl.server.queue_amqp import AmqpQueue
from vsl.server.queue_backend import Entry, QueueBackend, QueueError
from tests.support.memory_queue import MemoryQueue


def on_broker(storage: Path, request) -> AmqpQueue:
    """The AMQP backend on the session's broker (skipped without RabbitMQ, failed under
    CI=true), on a prefix named after ``storage``, its delivery journal there."""
    broker = request.getfixturevalue("rabbitmq")
    storage.mkdir(parents=True, exist_ok=True)
    prefix = "t" + hashlib.sha1(str(storage).encode()).hexdigest()[:12]
    return AmqpQueue(broker.url, prefix, storage / "delivered.journal",
                     confirm_timeout=5.0, connect_timeout=2.0)


BACKENDS = {"spool": lambda storage, request: Spool(storage),
            "memory": lambda storage, request: MemoryQueue.on(storage),
            "amqp": on_broker}
BLIND_TO_CLAIMS = {"amqp"}  # admin reads do not see messages in flight (the contract says)
DATA = b"Subject: hi\r\n\r\nbody\r\n"
NOW = time.time()


class Backends:
    """Opens the backend on one test's storage (again: a restart), in the test's one
    event loop; :meth:`run` closes them all in it."""

    def __init__(self, name: str, storage: Path, request):
        self.name, self.storage, self.request = name, storage, request
        self.opened: list[QueueBackend] = []

    async def open(self) -> QueueBackend:
        backend = BACKENDS[self.name](self.storage, self.request)
        assert isinstance(backend, QueueBackend)  # every method of the interface
        await backend.open()
        self.opened.append(backend)
        return backend

    async def restart(self, backend: QueueBackend) -> QueueBackend:
        await backend.close()
        return await self.open()

    def run(self, main):
        """``main()`` in an event loop of its own; what it returns."""
        async def run_then_close():
            try:
                return await main()
            finally:
                for backend in self.opened:
                    await backend.close()
        return asyncio.run(run_then_close())

    def need_claims_in_sight(self) -> None:
        """Skip a test of an operator acting on a message in flight where admin calls
        cannot see one (a broker: see the contract's "Admin reads";
        tests/test_amqp_admin.py checks the error an operator gets there)."""
        if self.name in BLIND_TO_CLAIMS:
            pytest.skip(f"{self.name}: admin calls do not see a message in flight")


@pytest.fixture(params=sorted(BACKENDS))
def backends(request, tmp_path) -> Backends:
    return Backends(request.param, tmp_path / "queue", request)


def envelope(*addresses: str) -> Envelope:
    return Envelope("alice@example.test",
                    [RecipientState(a) for a in addresses or ("bob@example.test",)])


async def queued(backend: QueueBackend, queue: str = "deliver", *addresses: str) -> str:
    return await backend.put(envelope(*addresses), DATA, queue)


async def claimed(backend: QueueBackend, *addresses: str) -> Entry:
    """A new message in ``deliver``, claimed."""
    msg_id = await queued(backend, "deliver", *addresses)
    (entry,) = await backend.claim(1, NOW)
    assert entry.id == msg_id
    return entry


def ids(entries) -> list[str]:
    return [e.id for e in entries]


async def claim_when_due(backend: QueueBackend, until: float, timeout: float = 5.0
                         ) -> list[Entry]:
    """What ``claim`` hands out once ``until`` has come (a broker's delay queues run on
    the real clock), polling a while."""
    await asyncio.sleep(max(until - time.time(), 0))
    deadline = time.monotonic() + timeout
    while not (due := await backend.claim(5, time.time())) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return due


def test_put_is_there_for_the_next_start(backends):
    async def main():
        first = await backends.open()
        msg_id = await first.put(envelope(), DATA)
        backend = await backends.restart(first)
        entry = await backend.get(msg_id)
        assert (entry.id, entry.queue, entry.envelope.id) == (msg_id, "working", msg_id)
        assert entry.envelope.received_at and entry.envelope.sender == "alice@example.test"
        assert await backend.message(msg_id) == DATA
        assert await backend.locate(msg_id) == "working"
        assert ids(await backend.list()) == [msg_id]
        assert await backend.scan() == (await backend.list(), [])
        assert await backend.recover() == 0 and backend.startup_warnings() == []

    backends.run(main)


def test_a_closed_backend_opens_again(backends):
    async def main():
        backend = await backends.open()
        await backend.close()
        await backend.open()
        msg_id = await queued(backend)
        await backend.close()
        await backend.open()
        assert await backend.locate(msg_id) == "deliver"
        assert await queued(backend) != msg_id

    backends.run(main)


def test_claim_hands_out_due_work_once(backends):
    async def main():
        backend = await backends.open()
        first, second = await queued(backend), await queued(backend)
        await queued(backend, "working")
        await queued(backend, "hold")
        claimed = await backend.claim(1, NOW)
        assert ids(claimed) == [first] and claimed[0].queue == "deliver"
        assert ids(await backend.claim(5, NOW)) == [second]
        assert await backend.claim(5, NOW) == []  # every due message is claimed
        await backend.release(first)  # neither completed nor moved: due again
        assert ids(await backend.claim(5, NOW)) == [first]

    backends.run(main)


def test_a_worker_claims_working(backends):
    async def main():
        backend = await backends.open()
        waiting = await queued(backend, "working")
        due = await queued(backend)  # deliver: not the worker's
        (entry,) = await backend.claim(5, NOW, queues=("working",))
        assert (entry.id, entry.queue) == (waiting, "working")
        assert await backend.claim(5, NOW, queues=("working",)) == []
        await backend.move(entry.id, "deliver", "working")
        await backend.release(entry.id)
        assert await backend.claim(5, NOW, queues=("working",)) == []
        assert set(ids(await backend.claim(5, NOW))) == {due, waiting}

    backends.run(main)


@pytest.mark.parametrize("queues", [("working",), ("deliver", "deferred")])
def test_a_claim_released_without_a_transition_comes_back_unchanged(backends, queues):
    async def main():
        backend = await backends.open()
        msg_id = await queued(backend, queues[0])
        (entry,) = await backend.claim(1, NOW, queues)
        stored = entry.envelope.to_json()
        entry.envelope.recipients[0].status = "delivered"  # in memory only
        await backend.release(entry.id)
        (again,) = await backend.claim(1, NOW, queues)
        assert (again.id, again.queue, again.envelope.to_json()) == \
            (msg_id, queues[0], stored)

    backends.run(main)


def test_counts_messages_per_queue(backends):
    async def main():
        backend = await backends.open()
        for queue in ("deliver", "deliver", "hold", "working"):
            await queued(backend, queue)
        counts = await backend.counts()
        assert {queue: n for queue, n in counts.items() if n} == \
            {"deliver": 2, "hold": 1, "working": 1}
        assert list(counts)[:5] == ["working", "deliver", "deferred", "dead", "hold"]

    backends.run(main)


def test_complete_takes_a_message_out(backends):
    async def main():
        backend = await backends.open()
        entry = await claimed(backend)
        await backend.complete(entry)
        await backend.release(entry.id)
        assert await backend.claim(5, NOW) == []
        with pytest.raises(QueueError):
            await backend.get(entry.id)
        assert await (await backends.restart(backend)).list() == []

    backends.run(main)


def test_a_deferred_message_is_due_at_its_time(backends):
    async def main():
        backend = await backends.open()
        entry = await claimed(backend)
        entry.envelope.attempts = 1
        until = time.time() + 1
        await backend.defer(entry, until)
        await backend.release(entry.id)
        assert await backend.claim(5, time.time()) == []
        (due,) = await claim_when_due(backend, until)
        assert (due.id, due.queue) == (entry.id, "deferred")
        assert (due.envelope.next_attempt, due.envelope.attempts) == (until, 1)

    backends.run(main)


def test_a_restarted_backend_finds_its_deferred_messages(backends):
    async def main():
        backend = await backends.open()
        entry = await claimed(backend)
        until = time.time() + 1
        await backend.defer(entry, until)
        backend = await backends.restart(backend)
        assert await backend.claim(5, time.time()) == []
        assert ids(await claim_when_due(backend, until)) == [entry.id]

    backends.run(main)


def test_moved_messages_are_not_due(backends):
    async def main():
        backend = await backends.open()
        held, quarantined = await queued(backend), await queued(backend)
        await backend.move(held, "hold")
        await backend.move(quarantined, "quarantine/virus", "deliver")
        assert await backend.claim(5, NOW) == []
        assert (await backend.locate(held), await backend.locate(quarantined)) == \
            ("hold", "quarantine/virus")
        with pytest.raises(QueueError):
            await backend.move(held, "nowhere")
        await backend.move(held, "deliver")
        assert ids(await backend.claim(5, NOW)) == [held]

    backends.run(main)


def test_an_update_of_a_claimed_entry_is_stored_by_its_transition(backends):
    async def main():
        backend = await backends.open()
        entry = await claimed(backend)
        entry.envelope.recipients[0].record_attempt("deferred", "451 later", None, NOW)
        await backend.update(entry, b"Subject: changed\r\n\r\n")
        await backend.move(entry.id, "hold", "deliver")
        await backend.release(entry.id)
        backend = await backends.restart(backend)
        (rcpt,) = (await backend.get(entry.id, "hold")).envelope.recipients
        assert (rcpt.status, rcpt.reply, rcpt.attempts) == ("deferred", "451 later", 1)
        assert await backend.message(entry.id) == b"Subject: changed\r\n\r\n"

    backends.run(main)


def test_an_update_of_a_message_not_claimed_is_stored_at_once(backends):
    """What `vsl queue retry` does to a message no one has claimed."""
    async def main():
        backend = await backends.open()
        entry = await backend.get(await queued(backend, "hold"))
        entry.envelope.attempts = 2
        await backend.update(entry, b"Subject: changed\r\n\r\n")
        backend = await backends.restart(backend)
        assert (await backend.get(entry.id, "hold")).envelope.attempts == 2
        assert await backend.message(entry.id) == b"Subject: changed\r\n\r\n"

    backends.run(main)


def test_deliveries_a_crash_cut_short_are_recovered(backends):
    """A remote accepted bob; the process died before the envelope said so (its
    update stored the recipients as they were): the next start marks bob delivered."""
    async def main():
        backend = await backends.open()
        entry = await claimed(backend, "bob@remote.test", "carol@remote.test")
        await backend.update(entry, delivered=["bob@remote.test"])
        backend = await backends.restart(backend)
        await backend.recover()
        await backend.recover_deliveries()
        (again,) = await backend.claim(5, NOW)
        assert (again.id, {r.address: r.status for r in again.envelope.recipients}) == \
            (entry.id, {"bob@remote.test": "delivered", "carol@remote.test": "pending"})

    backends.run(main)


def test_admin_removes_and_warns(backends):
    async def main():
        backend = await backends.open()
        msg_id = await queued(backend, "hold")
        assert backend.quarantine_warnings() == []
        with pytest.raises(QueueError):
            await backend.scan("nowhere")
        await backend.remove(msg_id)
        with pytest.raises(QueueError):
            await backend.locate(msg_id)

    backends.run(main)


@pytest.mark.parametrize("write", ["update", "update_data", "defer", "complete", "move",
                                   "remove"])
def test_a_write_to_a_message_moved_meanwhile_fails_and_changes_nothing(backends, write):
    """`vsl queue hold` (a second backend on the same storage) moves a message the
    server is delivering: the server's write fails, and the message stays held."""
    backends.need_claims_in_sight()

    async def main():
        server, operator = await backends.open(), await backends.open()
        entry = await claimed(server)
        await operator.move(entry.id, "hold", "deliver")
        entry.envelope.attempts = 3
        writes = {"update": lambda: server.update(entry),
                  "update_data": lambda: server.update(entry, b"changed"),
                  "defer": lambda: server.defer(entry, NOW + 60),
                  "complete": lambda: server.complete(entry),
                  "move": lambda: server.move(entry.id, "dead", "deliver"),
                  "remove": lambda: server.remove(entry.id, "deliver")}
        with pytest.raises(QueueError):
            await writes[write]()
        await server.release(entry.id)
        assert await server.claim(5, NOW + 60) == []
        for backend in (operator, await backends.open()):  # and after a restart
            assert [(e.id, e.queue) for e in await backend.list()] == [(entry.id, "hold")]
            assert (await backend.get(entry.id)).envelope.attempts == 0
            assert await backend.message(entry.id) == DATA

    backends.run(main)


@pytest.mark.parametrize("restart", [False, True])
def test_deliveries_to_a_message_moved_meanwhile_are_not_sent_again(backends, restart):
    """A remote accepted bob while the message was being held: the update that says so
    fails, but once released (after a restart, or not) bob is delivered, carol due."""
    backends.need_claims_in_sight()
    statuses = {"bob@remote.test": "delivered", "carol@remote.test": "pending"}

    async def main():
        server, operator = await backends.open(), await backends.open()
        entry = await claimed(server, *statuses)
        await operator.move(entry.id, "hold", "deliver")
        entry.envelope.recipients[0].record_attempt("delivered", "250 ok", None, NOW)
        with pytest.raises(QueueError):
            await server.update(entry, delivered=["bob@remote.test"])
        await server.release(entry.id)
        if restart:
            server = await backends.restart(server)
            await server.recover_deliveries()
        await operator.move(entry.id, "deliver", "hold")
        (again,) = await server.claim(5, NOW)
        assert {r.address: r.status for r in again.envelope.recipients} == statuses

    backends.run(main)
