"""The queue backend contract (server/queue_backend.py), run against every backend.

Each test speaks only the interface, so a new backend joins by one line in BACKENDS:
a function opening it on the test's storage (a directory here; a broker backend would
take a virtual host or a prefix named after it). Opening it again on the same storage
stands for a restart.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from vsl.server.envelope import Envelope, RecipientState
from vsl.server.queue import Spool
from vsl.server.queue_backend import Entry, QueueBackend, QueueError
from tests.support.memory_queue import MemoryQueue

BACKENDS = {"spool": Spool, "memory": MemoryQueue.on}
DATA = b"Subject: hi\r\n\r\nbody\r\n"
NOW = time.time()


@pytest.fixture(params=sorted(BACKENDS))
def open_backend(request, tmp_path):
    """Opens the backend on this test's storage (again: a restart); closes them all."""
    opened: list[QueueBackend] = []

    def open_one() -> QueueBackend:
        opened.append(BACKENDS[request.param](tmp_path / "queue"))
        assert isinstance(opened[-1], QueueBackend)  # every method of the interface
        return opened[-1]

    yield open_one
    for backend in opened:
        asyncio.run(backend.close())


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


def test_put_is_there_for_the_next_start(open_backend):
    async def main():
        return await open_backend().put(envelope(), DATA)

    async def restarted(msg_id):
        backend = open_backend()
        await backend.open()
        entry = await backend.get(msg_id)
        assert (entry.id, entry.queue, entry.envelope.id) == (msg_id, "working", msg_id)
        assert entry.envelope.received_at and entry.envelope.sender == "alice@example.test"
        assert await backend.message(msg_id) == DATA
        assert await backend.locate(msg_id) == "working"
        assert ids(await backend.list()) == [msg_id]
        assert await backend.scan() == (await backend.list(), [])
        assert await backend.recover() == 0 and backend.startup_warnings() == []

    asyncio.run(restarted(asyncio.run(main())))


def test_a_closed_backend_starts_again(open_backend):
    backend = open_backend()
    asyncio.run(backend.close())
    msg_id = asyncio.run(queued(backend))
    asyncio.run(backend.close())
    assert asyncio.run(backend.locate(msg_id)) == "deliver"
    assert asyncio.run(queued(backend)) != msg_id


def test_claim_hands_out_due_work_once(open_backend):
    backend = open_backend()

    async def main():
        first, second = await queued(backend), await queued(backend)
        await queued(backend, "working")
        await queued(backend, "hold")
        claimed = await backend.claim(1, NOW)
        assert ids(claimed) == [first] and claimed[0].queue == "deliver"
        assert ids(await backend.claim(5, NOW)) == [second]
        assert await backend.claim(5, NOW) == []  # every due message is claimed
        await backend.release(first)  # neither completed nor moved: due again
        assert ids(await backend.claim(5, NOW)) == [first]

    asyncio.run(main())


def test_a_worker_claims_working(open_backend):
    backend = open_backend()

    async def main():
        waiting = await queued(backend, "working")
        due = await queued(backend)  # deliver: not the worker's
        (entry,) = await backend.claim(5, NOW, queues=("working",))
        assert (entry.id, entry.queue) == (waiting, "working")
        assert await backend.message(entry.id, entry.queue) == DATA  # its claim's bytes
        assert await backend.claim(5, NOW, queues=("working",)) == []
        await backend.move(entry.id, "deliver", "working")
        await backend.release(entry.id)
        assert await backend.claim(5, NOW, queues=("working",)) == []
        assert set(ids(await backend.claim(5, NOW))) == {due, waiting}

    asyncio.run(main())


@pytest.mark.parametrize("queues", [("working",), ("deliver", "deferred")])
def test_a_claim_released_without_a_transition_comes_back_unchanged(open_backend, queues):
    backend = open_backend()

    async def main():
        msg_id = await queued(backend, queues[0])
        (entry,) = await backend.claim(1, NOW, queues)
        stored = entry.envelope.to_json()
        entry.envelope.recipients[0].status = "delivered"  # in memory only
        await backend.release(entry.id)
        (again,) = await backend.claim(1, NOW, queues)
        return (again.id, again.queue, again.envelope.to_json(),
                await backend.message(msg_id)), (msg_id, queues[0], stored, DATA)

    again, before = asyncio.run(main())
    assert again == before


def test_counts_messages_per_queue(open_backend):
    backend = open_backend()

    async def main():
        for queue in ("deliver", "deliver", "hold", "working"):
            await queued(backend, queue)
        return await backend.counts()

    counts = asyncio.run(main())
    assert {queue: n for queue, n in counts.items() if n} == \
        {"deliver": 2, "hold": 1, "working": 1}


def test_complete_takes_a_message_out(open_backend):
    backend = open_backend()

    async def main():
        entry = await claimed(backend)
        await backend.complete(entry)
        await backend.release(entry.id)
        assert await backend.claim(5, NOW) == []
        with pytest.raises(QueueError):
            await backend.get(entry.id)

    asyncio.run(main())
    assert asyncio.run(open_backend().list()) == []


def test_a_deferred_message_is_due_at_its_time(open_backend):
    backend = open_backend()

    async def main():
        entry = await claimed(backend)
        entry.envelope.attempts = 1
        await backend.defer(entry, NOW + 60)
        await backend.release(entry.id)
        assert await backend.claim(5, NOW + 59) == []
        (due,) = await backend.claim(5, NOW + 60)
        assert (due.id, due.queue) == (entry.id, "deferred")
        assert (due.envelope.next_attempt, due.envelope.attempts) == (NOW + 60, 1)

    asyncio.run(main())


def test_a_restarted_backend_finds_its_deferred_messages(open_backend):
    async def defer_one():
        backend = open_backend()
        entry = await claimed(backend)
        await backend.defer(entry, NOW + 60)
        return entry.id

    msg_id = asyncio.run(defer_one())

    async def after_restart():
        backend = open_backend()
        assert await backend.claim(5, NOW) == []
        return ids(await backend.claim(5, NOW + 60))

    assert asyncio.run(after_restart()) == [msg_id]


def test_moved_messages_are_not_due(open_backend):
    backend = open_backend()

    async def main():
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

    asyncio.run(main())


def test_update_stores_the_envelope_and_the_message(open_backend):
    backend = open_backend()

    async def main():
        entry = await claimed(backend)
        entry.envelope.recipients[0].record_attempt("deferred", "451 later", None, NOW)
        await backend.update(entry, b"Subject: changed\r\n\r\n")
        return entry.id

    msg_id = asyncio.run(main())
    backend = open_backend()
    (rcpt,) = asyncio.run(backend.get(msg_id)).envelope.recipients
    assert (rcpt.status, rcpt.reply, rcpt.attempts) == ("deferred", "451 later", 1)
    assert asyncio.run(backend.message(msg_id)) == b"Subject: changed\r\n\r\n"


def test_deliveries_a_crash_cut_short_are_recovered(open_backend):
    """A remote accepted bob; the process died before the envelope said so (its
    update stored the recipients as they were): the next start marks bob delivered."""
    async def crash():
        backend = open_backend()
        entry = await claimed(backend, "bob@remote.test", "carol@remote.test")
        await backend.update(entry, delivered=["bob@remote.test"])
        return entry.id

    msg_id = asyncio.run(crash())

    async def restart():
        backend = open_backend()
        await backend.recover()
        await backend.recover_deliveries()
        (entry,) = await backend.claim(5, NOW)
        return entry.id, {r.address: r.status for r in entry.envelope.recipients}

    assert asyncio.run(restart()) == (msg_id, {"bob@remote.test": "delivered",
                                               "carol@remote.test": "pending"})


def test_admin_removes_and_warns(open_backend):
    backend = open_backend()
    msg_id = asyncio.run(queued(backend, "hold"))
    assert backend.quarantine_warnings() == []
    with pytest.raises(QueueError):
        asyncio.run(backend.scan("nowhere"))
    asyncio.run(backend.remove(msg_id))
    with pytest.raises(QueueError):
        asyncio.run(backend.locate(msg_id))


@pytest.mark.parametrize("write", ["update", "update_data", "defer", "complete", "move",
                                   "remove"])
def test_a_write_to_a_message_moved_meanwhile_fails_and_changes_nothing(open_backend, write):
    """`vsl queue hold` (a second backend on the same storage) moves a message the
    server is delivering: the server's write fails, and the message stays held."""
    server, operator = open_backend(), open_backend()

    async def main():
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
        return entry.id

    msg_id = asyncio.run(main())
    for backend in (operator, open_backend()):  # and after a restart
        assert [(e.id, e.queue) for e in asyncio.run(backend.list())] == [(msg_id, "hold")]
        assert asyncio.run(backend.get(msg_id)).envelope.attempts == 0
        assert asyncio.run(backend.message(msg_id)) == DATA


@pytest.mark.parametrize("restart", [False, True])
def test_deliveries_to_a_message_moved_meanwhile_are_not_sent_again(open_backend, restart):
    """A remote accepted bob while the message was being held: the update that says so
    fails, but once released (after a restart, or not) bob is delivered, carol due."""
    server, operator = open_backend(), open_backend()
    statuses = {"bob@remote.test": "delivered", "carol@remote.test": "pending"}

    async def main():
        nonlocal server
        entry = await claimed(server, *statuses)
        await operator.move(entry.id, "hold", "deliver")
        entry.envelope.recipients[0].record_attempt("delivered", "250 ok", None, NOW)
        with pytest.raises(QueueError):
            await server.update(entry, delivered=["bob@remote.test"])
        await server.release(entry.id)
        if restart:
            await server.close()
            server = open_backend()
            await server.recover_deliveries()
        await operator.move(entry.id, "deliver", "hold")
        (again,) = await server.claim(5, NOW)
        return {r.address: r.status for r in again.envelope.recipients}

    assert asyncio.run(main()) == statuses


def test_a_put_or_move_into_the_queues_waited_for_wakes_the_wait(open_backend):
    backend = open_backend()

    async def waited(queues, change=None) -> float:
        """How long wait_for_work(queues, 0.5 s) waited while ``change`` ran."""
        start = time.monotonic()
        await asyncio.gather(backend.wait_for_work(queues, 0.5), *[change()] if change else [])
        return time.monotonic() - start

    async def soon(operation):
        await asyncio.sleep(0.05)
        await operation

    async def scenario():
        held = await queued(backend, "hold")
        return (await waited(("hold",)),  # put while nobody waited: the next wait returns
                await waited(("working",)),  # nothing: the timeout
                await waited(("working",), lambda: soon(queued(backend, "working"))),
                await waited(("deliver", "deferred"),
                             lambda: soon(backend.move(held, "deliver", "hold"))))

    put_before, nothing, put, moved = asyncio.run(scenario())
    assert put_before < 0.4 and nothing >= 0.49 and 0.04 < put < 0.4 and 0.04 < moved < 0.4
