"""server/throttle_service.py in one process: a worker's RemoteThrottle and the service
on a socket pair, and what happens when either side is replaced."""
from __future__ import annotations

import asyncio
import time

from vsl.server.config import AuthConfig
from vsl.server.throttle_service import (OUTBOX_LIMIT, RemoteThrottle, channels,
                                         serve_throttle)

CONFIG = AuthConfig(failure_limit=2)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)


async def started(socks, restarted: bool = False) -> asyncio.Task:
    service = asyncio.ensure_future(serve_throttle(CONFIG, socks, restarted))
    await settle()
    return service


def test_failures_reported_by_two_workers_lock_the_address_out():
    async def main():
        (first_end, first), (second_end, second) = channels(2)
        service = await started([first, second])
        workers = RemoteThrottle(first_end), RemoteThrottle(second_end)
        for worker in workers:
            assert await worker.begin("192.0.2.1", "alice")
            worker.failed("192.0.2.1", "alice")
            worker.end("192.0.2.1", "alice")
        await settle()
        assert [await worker.begin("192.0.2.1", "bob") for worker in workers] == [False] * 2
        service.cancel()
    asyncio.run(main())


def test_a_replaced_worker_ends_the_logins_of_the_one_that_died():
    async def main():
        [(worker_end, theirs)] = channels(1)
        service = await started([theirs])
        dead = RemoteThrottle(worker_end)
        assert await dead.begin("192.0.2.1", "alice")
        assert await dead.begin("192.0.2.1", "alice")  # two pending: at the limit
        waiting = asyncio.ensure_future(dead.begin("192.0.2.1", "alice"))
        await settle()
        assert not waiting.done()  # it waits for them to settle
        replacement = RemoteThrottle(worker_end)  # hello: the dead worker's logins end
        waiting.cancel()
        assert await asyncio.wait_for(replacement.begin("192.0.2.1", "alice"), 2)
        service.cancel()
    asyncio.run(main())


def test_a_refusal_for_the_dead_worker_never_answers_its_replacement():
    async def main():
        (worker_end, theirs), (other_end, others) = channels(2)
        service = await started([theirs, others])
        other = RemoteThrottle(other_end)
        for login in [("192.0.2.1", "alice")] * 2 + [("192.0.2.2", "bob")] * 2:
            assert await other.begin(*login)  # both keys at the limit while pending
        dead = RemoteThrottle(worker_end)
        doomed = asyncio.ensure_future(dead.begin("192.0.2.1", "alice"))  # request 0
        await settle()
        replacement = RemoteThrottle(worker_end)  # its request ids start again at 0
        doomed.cancel()
        waiting = asyncio.ensure_future(replacement.begin("192.0.2.2", "bob"))
        await settle()
        for _ in range(2):  # a lockout: the dead worker's login is refused
            other.failed("192.0.2.1", "alice")
            other.end("192.0.2.1", "alice")
        await settle()
        assert not waiting.done()  # that refusal was not its answer
        for _ in range(2):
            other.end("192.0.2.2", "bob")
        assert await asyncio.wait_for(waiting, 2)
        service.cancel()
    asyncio.run(main())


def test_a_restarted_service_refuses_the_logins_waiting_for_the_old_one():
    async def main():
        [(worker_end, theirs)] = channels(1)
        worker = RemoteThrottle(worker_end)
        waiting = asyncio.ensure_future(worker.begin("192.0.2.1", "alice"))
        await settle()  # the request waits in the channel: no service reads it yet
        service = await started([theirs], restarted=True)
        assert await asyncio.wait_for(waiting, 2) is False
        assert await asyncio.wait_for(worker.begin("192.0.2.1", "alice"), 2)
        service.cancel()
    asyncio.run(main())


def test_a_login_the_service_does_not_answer_is_refused_at_the_deadline():
    async def main():
        [(worker_end, _theirs)] = channels(1)  # no service reads it
        worker = RemoteThrottle(worker_end, deadline=0.2)
        started_at = time.monotonic()
        assert await worker.begin("192.0.2.1", "alice") is False
        assert time.monotonic() - started_at < 1
    asyncio.run(main())


def test_a_full_channel_never_blocks_and_refuses_logins_until_it_drains():
    async def main():
        [(worker_end, theirs)] = channels(1)  # the service is down: the channel fills
        asked = []
        worker = RemoteThrottle(worker_end, start_service=lambda: asked.append(1),
                                deadline=0.2)
        assert await worker.begin("192.0.2.1", "alice") is False and asked == [1]
        for number in range(5000):  # more than a channel and the outbox hold
            worker.failed("192.0.2.1", f"user{number}")
        assert len(worker._outbox) == OUTBOX_LIMIT  # bounded, and nothing blocked
        started_at = time.monotonic()
        assert await worker.begin("192.0.2.2", "bob") is False  # at once: refused
        assert time.monotonic() - started_at < 0.1
        service = await started([theirs])  # the outbox drains: the worker starts over
        for _ in range(200):
            if not worker._outbox:
                break
            await asyncio.sleep(0.01)
        assert await asyncio.wait_for(worker.begin("192.0.2.2", "bob"), 2)
        service.cancel()
    asyncio.run(main())
