"""Intake: an accepted message becomes a queued one. It is written to the queue with its
envelope (the recipients with the routes the stages chose), then on_post_queue decides
where it goes next: delivery, a quarantine, hold or dead (:meth:`Intake.post_queue`).

Inline, on_post_queue runs in the session that received the message, before its 250.
Handed off, the session stores with the envelope what on_post_queue needs of its ctx
(:func:`hand_off`) and answers 250 once the message is stored; a post-queue worker
(server/post_queue_worker.py), maybe on another machine, claims it from ``working``,
rebuilds the ctx (:func:`take_over`) and runs :meth:`Intake.post_queue` there."""
from __future__ import annotations

import logging
import time

from vsl.stdlib.ctx import Context, Stage
from vsl.stdlib.status import Status
from vsl.stdlib.support import handoff
from vsl.stdlib.support.handoff import HandoffError
from vsl.stdlib.support.mail import HeaderLimits

from . import logids, metrics
from .delivery import Delivery
from .envelope import Envelope
from .logevents import event
from .queue_backend import Entry, QueueBackend, QueueError
from .stages import StageRunner

log = logging.getLogger("vsl.server")


def hand_off(ctx: Context, runner: StageRunner) -> dict:
    """An envelope's ``context``: what a post-queue worker needs of the session, its ctx
    and whether a faccept skips on_post_queue. HandoffError names a stored value that
    cannot be carried."""
    return {"ctx": handoff.dump(ctx), "forced": runner.forced is not None}


def take_over(context, data: bytes, limits: HeaderLimits, runner: StageRunner) -> Context:
    """The ctx of an envelope's ``context`` (:func:`hand_off`) with its message ``data``
    parsed within ``limits``, and ``runner`` as the session left it. HandoffError when
    the context is missing or does not load."""
    if context is None:
        raise HandoffError("no hand-off from the session (queued by an inline server?)")
    if type(context) is not dict or set(context) != {"ctx", "forced"} \
            or type(context["forced"]) is not bool:
        raise HandoffError("a hand-off of the wrong form")
    ctx = handoff.load(context["ctx"], data, limits)
    if context["forced"]:
        runner.forced = Status("faccept")
    return ctx


class Intake:
    """Puts accepted messages on the queue and hands them to delivery. ``hands_off``:
    on_post_queue runs in a post-queue worker, not in the session (see the module
    docstring)."""

    def __init__(self, queue: QueueBackend, delivery: Delivery, hands_off: bool = False):
        self.queue, self.delivery, self.hands_off = queue, delivery, hands_off

    async def store(self, ctx: Context, runner: StageRunner, data: bytes, queue: str,
                    authenticated_as: str | None) -> Entry:
        """Write the message of ``ctx`` (``data``: its bytes; ``runner``: its session's)
        to ``queue``; the entry as stored (so on_post_queue's routing needs no read
        back). Raises QueueError or OSError when it could not be written, QueueError
        too when its hand-off cannot be made (the HandoffError as its cause)."""
        envelope = self._envelope(ctx, authenticated_as)
        if self.hands_off and queue == "working":
            try:
                envelope.context = hand_off(ctx, runner)
            except HandoffError as err:
                raise QueueError(f"cannot hand it to a post-queue worker: {err}") from err
        msg_id = await self.queue.put(envelope, data, queue, ctx.message_id)
        envelope.id = msg_id  # the queue keeps a copy: this one is the entry's
        return Entry(msg_id, queue, envelope)

    def _envelope(self, ctx: Context, authenticated_as: str | None) -> Envelope:
        return Envelope(
            sender=ctx.sender.address,
            recipients=self.delivery.recipients(ctx),
            helo=ctx.helo, client_ip=ctx.client_ip, client_port=ctx.client_port,
            server_name=ctx.server_name, transaction=ctx.message_id,
            authenticated_as=authenticated_as, tls=ctx.tls, received_at=time.time(),
            session=_session_id(),
        )

    async def queued(self, entry: Entry, ctx: Context, runner: StageRunner,
                     data: bytes) -> None:
        """After a message is stored (``entry`` and ``data``: as :meth:`store` wrote
        them), in the session: :meth:`post_queue`, when it went to ``working`` and is
        not handed off."""
        if entry.queue == "working" and not self.hands_off:
            await self.post_queue(entry, ctx, runner, data)

    async def post_queue(self, entry: Entry, ctx: Context, runner: StageRunner,
                         data: bytes) -> None:
        """A message in ``working`` (``entry`` and ``data``: as stored; ``ctx``: its
        session's, or one rebuilt from ``entry.envelope.context``): on_post_queue decides
        where it goes next. The message is kept whatever fails here (the client gets its
        250, as a 421 would make it send the message again): whatever fails to route it,
        a full queue or a bug (logged with its traceback), holds it for an operator. On
        a shared queue a QueueError or OSError (the broker is away for now) is raised:
        the post-queue worker releases its claim and runs it again later."""
        try:
            await self._post_queue(entry, ctx, runner, data)
        except Exception as err:  # noqa: BLE001 - stored: never answered as a failure
            transient = isinstance(err, (QueueError, OSError))
            if transient and self.queue.shared:
                raise
            event(log, logging.ERROR, "held",
                  "%s: accepted but not routed (%s): moving it to hold", entry.id, err,
                  to_queue="hold", by="server", exc_info=not transient)
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
        await self.leave_working(entry, target)
        _log_routed(entry.id, target)

    async def leave_working(self, entry: Entry, target: str) -> None:
        """Move a message of ``working`` to ``target`` without its hand-off, which
        serves on_post_queue only (on a broker, the update goes with the move)."""
        if target == "dead":
            metrics.count("vsl_messages_dead_total")
        if entry.envelope.context is not None:
            entry.envelope.context = None
            await self.queue.update(entry)
        await self.queue.move(entry.id, target, entry.queue)

    async def _hold(self, msg_id: str, queue: str) -> None:
        """Put a message in hold; if even that fails, it stays where it is: on the spool
        until the next start moves it to hold (its recover), on a shared queue until
        the worker's claim ends (then it runs again)."""
        try:
            await self.queue.move(msg_id, "hold", queue)
        except (QueueError, OSError) as err:
            until = "its claim ends" if self.queue.shared else "the next start"
            log.error("%s: cannot move it to hold (%s): it stays in %s until %s",
                      msg_id, err, queue, until)


def _session_id() -> str:
    """The log id of the session storing the message ("" outside one)."""
    ids = logids.current()
    return ids.session if ids else ""


def _log_routed(msg_id: str, target: str) -> None:
    """The event of a message on_post_queue sent elsewhere than to delivery."""
    if target.startswith("quarantine/"):
        event(log, logging.INFO, "quarantined", "%s: moved to %s by on_post_queue", msg_id,
              target, to_queue=target, by="script")
    elif target == "hold":
        event(log, logging.INFO, "held", "%s: moved to hold (on_post_queue failed)", msg_id,
              to_queue=target, by="script")
    elif target == "dead":
        event(log, logging.WARNING, "dead", "%s: denied by on_post_queue: dead", msg_id,
              reason="on_post_queue denied")
