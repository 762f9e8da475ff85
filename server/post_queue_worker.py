"""The post-queue worker (role ``worker``): on a shared queue backend, receivers answer
250 once a message is stored in ``working`` with their hand-off (server/intake.py); this
loop claims those messages, rebuilds each one's ctx and runs on_post_queue
(:meth:`Intake.post_queue`), which moves the message where the policy sent it.

    worker = PostQueueWorker(queue, intake, scripting.new_runner, config)
    worker.start()          # in the server's event loop
    await worker.stop()     # cancelled; claims released: the messages are due again

A message whose hand-off is missing or does not load can never run on_post_queue: it
goes to ``dead``, with an error line saying why, and the loop goes on. One whose move
fails (the queue is away) is released and claimed again later.

Concurrency: up to ``[server] script_threads`` messages at once, the threads their
on_post_queue runs in; between polls the loop waits for work, at most
``[delivery] poll_interval``.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vsl.stdlib.ctx import Context
from vsl.stdlib.support.handoff import HandoffError

from . import logids
from .claim_loop import ClaimLoop
from .config import Config
from .intake import Intake, take_over
from .logevents import event
from .queue_backend import Entry, QueueBackend, QueueError
from .session import PARSE_INLINE
from .stages import StageRunner

log = logging.getLogger("vsl.post_queue")


class PostQueueWorker:
    """Runs on_post_queue for the messages of ``working`` (see the module docstring)."""

    def __init__(self, queue: QueueBackend, intake: Intake,
                 new_runner: Callable[[], StageRunner], config: Config):
        self.queue, self.intake, self.new_runner = queue, intake, new_runner
        self.limits = config.limits.header
        self.claims = ClaimLoop(queue, ("working",), self._process, config.script_threads,
                                config.delivery.poll_interval, log)

    def start(self) -> None:
        """Start claiming ``working`` (in the server's event loop)."""
        self.claims.start()

    async def stop(self) -> None:
        """Stop; the messages cut short are released, due again."""
        await self.claims.stop()

    async def _process(self, entry: Entry) -> None:
        with logids.bound(entry.envelope.session, entry.id):
            await self._post_queue(entry)

    async def _post_queue(self, entry: Entry) -> None:
        try:
            data = await self.queue.message(entry.id, entry.queue)
            runner = self.new_runner()
            try:
                ctx = await self._take_over(entry, data, runner)
            except HandoffError as err:
                event(log, logging.ERROR, "dead",
                      "%s: cannot run on_post_queue (%s): moving it to dead", entry.id, err,
                      reason=f"no hand-off: {err}")
                await self.intake.leave_working(entry, "dead")
                return
            await self.intake.post_queue(entry, ctx, runner, data)
        except (QueueError, OSError) as err:  # released: claimed again later
            log.error("%s: %s", entry.id, err)

    async def _take_over(self, entry: Entry, data: bytes, runner: StageRunner) -> Context:
        """The message's ctx; a big message is parsed in a thread (as the session does)."""
        context = entry.envelope.context
        if len(data) <= PARSE_INLINE:
            return take_over(context, data, self.limits, runner)
        return await asyncio.to_thread(take_over, context, data, self.limits, runner)
