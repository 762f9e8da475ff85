"""The poll loop of delivery and the post-queue worker (server/claim_loop.py): a backlog
larger than its concurrency is worked off without waiting for the next poll."""
from __future__ import annotations

import asyncio
import logging
import time

from vsl.server.claim_loop import ClaimLoop
from vsl.server.envelope import Envelope, RecipientState
from tests.support.memory_queue import MemoryQueue


def test_a_task_ending_while_all_were_busy_claims_the_next_at_once():
    queue = MemoryQueue()
    done: list[str] = []

    async def process(entry):
        await asyncio.sleep(0.05)
        await queue.complete(entry)
        done.append(entry.id)

    async def scenario() -> float:
        envelope = Envelope("a@example.test", [RecipientState("b@example.test")])
        ids = [await queue.put(envelope, b"x", "deliver") for _ in range(3)]
        claims = ClaimLoop(queue, ("deliver",), process, concurrency=1, poll_interval=5,
                           log=logging.getLogger("test"))
        start = time.monotonic()
        claims.start()
        while len(done) < len(ids):
            await asyncio.sleep(0.01)
        await claims.stop()
        return time.monotonic() - start

    assert asyncio.run(scenario()) < 2  # not one poll_interval (5 s) per message


def test_a_message_failing_without_a_transition_is_not_retried_at_full_speed():
    queue = MemoryQueue()
    attempts: list[float] = []

    async def process(entry):  # fails: neither completed, deferred nor moved
        attempts.append(time.monotonic())

    async def scenario() -> None:
        envelope = Envelope("a@example.test", [RecipientState("b@example.test")])
        await queue.put(envelope, b"x", "deliver")
        claims = ClaimLoop(queue, ("deliver",), process, concurrency=4, poll_interval=0.01,
                           log=logging.getLogger("test"))
        claims.start()
        await asyncio.sleep(3.5)
        await claims.stop()

    asyncio.run(scenario())
    assert 3 <= len(attempts) <= 4  # at 0, then after pauses of 1 and 2 s
