"""The poll loop of delivery and of the post-queue worker: claim due messages of some
queues (server/queue_backend.py), work on each in a task of its own, up to a
concurrency, end every claim once its task ends, and wait for work between polls.

    claims = ClaimLoop(queue, ("working",), process, concurrency=4, poll_interval=1.0,
                       log=log)
    claims.start()              # in the event loop: forever, until stop()
    await claims.run_once()     # or: one poll, waiting for its tasks (tests)
    await claims.stop()         # tasks cancelled, their claims released

Between polls the loop waits in :meth:`QueueBackend.wait_for_work`: a message this
process queues is picked up at once, one from elsewhere within ``poll_interval``. While
every task is busy it waits instead for one to end, then claims again at once (a backlog
is worked off without waiting for the next poll).

A message claimed again within RETRY_WINDOW of its release was released without a
transition: its processing failed, and the queue (a broker requeues at once) gave it
straight back. Its task then pauses before working on it, 1, 2, 4 ... 30 s more at each
quick return, holding the claim, so a failing message is not retried at full speed (a
transition takes a message elsewhere; even the shortest delay is longer than the window).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .queue_backend import Entry, QueueBackend, QueueError

RETRY_WINDOW = 0.5  # s: back this soon after its release, a message's processing failed
FIRST_PAUSE, MAX_PAUSE = 1.0, 30.0  # s before working on such a message again


class ClaimLoop:
    """Claims messages of ``queues`` and runs ``process(entry)`` for each (see the module
    docstring). ``prepare``: awaited once before the first claim. ``clock``: the time
    ``deferred`` messages are due by."""

    def __init__(self, queue: QueueBackend, queues: tuple[str, ...],
                 process: Callable[[Entry], Awaitable[None]], concurrency: int,
                 poll_interval: float, log: logging.Logger,
                 clock: Callable[[], float] = time.time,
                 prepare: Callable[[], Awaitable[None]] | None = None):
        self.queue, self.queues, self.process = queue, queues, process
        self.concurrency, self.poll_interval = concurrency, poll_interval
        self.log, self.clock, self.prepare = log, clock, prepare
        self.active: dict[str, asyncio.Task] = {}
        self._releases: set[asyncio.Task] = set()  # claims being ended (see _done)
        self._returns: dict[str, int] = {}  # claimed id -> its quick returns so far
        # id -> (released at, returns), in release order (a claim pops its id)
        self._released_at: dict[str, tuple[float, int]] = {}
        self._task: asyncio.Task | None = None
        self._freed = asyncio.Event()  # a task ended

    def start(self) -> None:
        """Start polling (once)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop polling; the tasks are cancelled and their claims released (the work
        they cut short is due again)."""
        tasks = [t for t in (self._task, *self.active.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._released()
        self._task = None

    async def run_once(self) -> int:
        """Work on what is due now and wait for it; returns how many messages."""
        tasks = await self._claim()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._released()
        return len(tasks)

    async def _run(self) -> None:
        if self.prepare is not None:
            await self.prepare()
        while True:
            try:
                await self._claim()
            except QueueError as err:  # said plainly (a broker gone, a disk full): no bug
                self.log.error("cannot read the queue (%s): %s", ", ".join(self.queues), err)
            except Exception:  # noqa: BLE001 - the loop must outlive one bad poll
                self.log.exception("cannot read the queue (%s)", ", ".join(self.queues))
            await self._wait()

    async def _wait(self) -> None:
        """Until work may be due, or, while every task is busy, until one ends (at most
        ``poll_interval``)."""
        if len(self.active) < self.concurrency:
            await self.queue.wait_for_work(self.queues, self.poll_interval)
            return
        self._freed.clear()
        try:
            await asyncio.wait_for(self._freed.wait(), self.poll_interval)
        except asyncio.TimeoutError:
            pass

    async def _claim(self) -> list[asyncio.Task]:
        """Start working on due messages, up to ``concurrency`` at once."""
        free = self.concurrency - len(self.active)
        if free <= 0:
            return []
        entries = await self.queue.claim(free, self.clock(), queues=self.queues)
        return [self._spawn(entry) for entry in entries]

    def _spawn(self, entry: Entry) -> asyncio.Task:
        pause = self._pause(entry.id)
        work = self.process(entry) if not pause else self._after(pause, entry)
        task = asyncio.ensure_future(work)
        self.active[entry.id] = task
        task.add_done_callback(lambda _: self._done(entry.id))
        return task

    def _pause(self, msg_id: str) -> float:
        """How long to wait before working on ``msg_id`` (see the module docstring)."""
        now = time.monotonic()
        released_at, returns = self._released_at.pop(msg_id, (None, 0))
        self._forget_releases(now)
        returns = returns + 1 if released_at is not None and \
            now - released_at < RETRY_WINDOW else 0
        self._returns[msg_id] = returns
        return min(FIRST_PAUSE * 2 ** (returns - 1), MAX_PAUSE) if returns else 0.0

    def _forget_releases(self, now: float) -> None:
        """Drop the releases older than RETRY_WINDOW: the oldest first (the dict is in
        release order), stopping at the first recent one."""
        while self._released_at:
            oldest = next(iter(self._released_at))
            if now - self._released_at[oldest][0] < RETRY_WINDOW:
                return
            del self._released_at[oldest]

    async def _after(self, pause: float, entry: Entry) -> None:
        await asyncio.sleep(pause)
        await self.process(entry)

    def _done(self, msg_id: str) -> None:
        """A task ended, even cancelled before it started: its claim ends too, in a task
        of its own (a callback cannot wait)."""
        self.active.pop(msg_id, None)
        self._released_at[msg_id] = (time.monotonic(), self._returns.pop(msg_id, 0))
        self._freed.set()
        release = asyncio.ensure_future(self.queue.release(msg_id))
        self._releases.add(release)
        release.add_done_callback(self._release_ended)

    def _release_ended(self, release: asyncio.Task) -> None:
        self._releases.discard(release)
        if not release.cancelled() and release.exception() is not None:
            self.log.error("cannot end a claim: %s", release.exception())

    async def _released(self) -> None:
        """Wait for the claims being ended."""
        await asyncio.gather(*self._releases, return_exceptions=True)
