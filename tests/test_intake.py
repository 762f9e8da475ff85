"""Intake.post_queue (server/intake.py) on its own, as a post-queue worker calls it: the
message leaves ``working`` where on_post_queue sent it, without the session's hand-off."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from vsl.server.envelope import Envelope, RecipientState
from vsl.server.intake import Intake
from vsl.server.queue_backend import QueueError
from tests.support.memory_queue import MemoryQueue

DATA = b"Subject: hi\r\n\r\nbody\r\n"


class DecidedRunner:
    """A stage runner whose on_post_queue has decided already (no script runs)."""

    def __init__(self, kind: str, quarantine: str | None = None):
        self.kind, self.quarantine, self.failed = kind, quarantine, False

    async def run(self, ctx, stage):
        return SimpleNamespace(kind=self.kind)


@pytest.mark.parametrize("runner, target", [
    (DecidedRunner("deny"), "dead"),
    (DecidedRunner("accept", quarantine="review"), "quarantine/review"),
])
def test_post_queue_moves_the_message_without_its_context(runner, target):
    queue = MemoryQueue()

    async def main():
        envelope = Envelope("a@example.test", [RecipientState("b@example.test")],
                            context={"server_ip": "192.0.2.1"})
        msg_id = await queue.put(envelope, DATA)
        (entry,) = await queue.claim(1, 0, queues=("working",))
        await Intake(queue, delivery=None).post_queue(entry, None, runner, DATA)
        await queue.release(msg_id)
        return await queue.get(msg_id), await queue.message(msg_id)

    entry, data = asyncio.run(main())
    assert (entry.queue, entry.envelope.context, data) == (target, None, DATA)


class MovesFail(MemoryQueue):
    """A queue whose moves fail (on a shared one: the broker is away for now)."""

    async def move(self, msg_id, target, queue=None):
        raise QueueError("queue broker unreachable")


@pytest.mark.parametrize("shared", [True, False])
def test_a_failed_move_is_raised_on_a_shared_queue(shared, caplog):
    """There the worker releases its claim, and the message runs again later; on the
    spool it stays in working for the next start."""
    queue = MovesFail(shared=shared)

    async def main():
        envelope = Envelope("a@example.test", [RecipientState("b@example.test")])
        msg_id = await queue.put(envelope, DATA)
        (entry,) = await queue.claim(1, 0, queues=("working",))
        post_queue = Intake(queue, delivery=None).post_queue(entry, None,
                                                             DecidedRunner("deny"), DATA)
        if shared:
            with pytest.raises(QueueError):
                await post_queue
        else:
            await post_queue
        await queue.release(msg_id)
        return await queue.get(msg_id)

    assert asyncio.run(main()).queue == "working"
    assert ("cannot move it to hold" in caplog.text) is not shared
