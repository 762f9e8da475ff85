"""Intake: an accepted message becomes a queued one. It is written to the queue with its
envelope (the recipients with the routes the stages chose), then on_post_queue decides
where it goes next: delivery, a quarantine, hold or dead (:meth:`Intake.post_queue`: in
the session that received it, or in a worker that claimed it from ``working``)."""
from __future__ import annotations

import logging
import time
from dataclasses import replace

from vsl.stdlib.ctx import Context, Stage

from .delivery import Delivery
from .envelope import Envelope
from .queue_backend import Entry, QueueBackend, QueueError
from .stages import StageRunner

log = logging.getLogger("vsl.server")


class Intake:
    """Puts accepted messages on the queue and hands them to delivery."""

    def __init__(self, queue: QueueBackend, delivery: Delivery):
        self.queue, self.delivery = queue, delivery

    async def store(self, ctx: Context, data: bytes, queue: str,
                    authenticated_as: str | None) -> Entry:
        """Write the message of ``ctx`` (``data``: its bytes) to ``queue``; the entry as
        stored (so on_post_queue's routing needs no read back). Raises QueueError or
        OSError when it could not be written."""
        envelope = self._envelope(ctx, authenticated_as)
        msg_id = await self.queue.put(envelope, data, queue, ctx.message_id)
        return Entry(msg_id, queue, replace(envelope, id=msg_id))

    def _envelope(self, ctx: Context, authenticated_as: str | None) -> Envelope:
        return Envelope(
            sender=ctx.sender.address,
            recipients=self.delivery.recipients(ctx),
            helo=ctx.helo, client_ip=ctx.client_ip, client_port=ctx.client_port,
            server_name=ctx.server_name, transaction=ctx.message_id,
            authenticated_as=authenticated_as, tls=ctx.tls, received_at=time.time(),
        )

    async def queued(self, entry: Entry, ctx: Context, runner: StageRunner,
                     data: bytes) -> None:
        """After a message is stored (``entry`` and ``data``: as :meth:`store` wrote
        them), in the session: :meth:`post_queue`, when it went to ``working``."""
        if entry.queue == "working":
            await self.post_queue(entry, ctx, runner, data)

    async def post_queue(self, entry: Entry, ctx: Context, runner: StageRunner,
                         data: bytes) -> None:
        """A message in ``working`` (``entry`` and ``data``: as stored; ``ctx``: its
        session's, or one rebuilt from ``entry.envelope.context``): on_post_queue decides
        where it goes next. The message is kept whatever fails here (the client gets its
        250, as a 421 would make it send the message again): whatever fails to route it,
        a full queue or a bug (logged with its traceback), holds it for an operator."""
        try:
            await self._post_queue(entry, ctx, runner, data)
        except Exception as err:  # noqa: BLE001 - stored: never answered as a failure
            log.error("%s: accepted but not routed (%s): moving it to hold", entry.id, err,
                      exc_info=not isinstance(err, (QueueError, OSError)))
            await self._hold(entry.id, entry.queue)

    async def _post_queue(self, entry: Entry, ctx: Context, runner: StageRunner,
                          data: bytes) -> None:
        """Run on_post_queue and move the message where it decided."""
        status = await runner.run(ctx, Stage.POST_QUEUE)
        if runner.failed:
            target = "hold"  # accepted, but the policy could not route it: an operator looks
        elif runner.quarantine is not None:
            target = f"quarantine/{runner.quarantine}"
        else:
            target = "dead" if status.kind == "deny" else "deliver"
        if target == "deliver":
            await self.delivery.reroute(entry, ctx, data)
        await self._drop_context(entry)
        await self.queue.move(entry.id, target, entry.queue)

    async def _drop_context(self, entry: Entry) -> None:
        """The session's hand-off serves on_post_queue only: it does not leave
        ``working`` (on a broker, the update goes with the move)."""
        if entry.envelope.context is not None:
            entry.envelope.context = None
            await self.queue.update(entry)

    async def _hold(self, msg_id: str, queue: str) -> None:
        """Put a message in hold; if even that fails, it stays where it is until the next
        start moves it to hold (the spool's recover)."""
        try:
            await self.queue.move(msg_id, "hold", queue)
        except (QueueError, OSError) as err:
            log.error("%s: cannot move it to hold (%s): it stays in %s until the next start",
                      msg_id, err, queue)
