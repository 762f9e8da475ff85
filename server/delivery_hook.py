"""``on_delivery_failure``: the policy's say on a recipient a remote refused (issue 14).

Delivery calls the hook for each recipient refused with a 4xx or 5xx reply (a remote's, or
the one vSL writes for a connection that failed), after the bounce classifier judged it,
in the script pool like a stage that is not quick. The script sees, read-only
(stdlib/ctx.py ``Context.delivery_failure``): ``ctx.message_id`` (the queue id),
``ctx.sender``, ``ctx.recipient``, ``ctx.reply`` (.code .text), ``ctx.bounce`` (the
``bounce::classify`` result), ``ctx.attempt``, ``ctx.age`` (seconds since queued) and the
message's headers (``ctx.get_header``). What it returns decides:

============================  =========================  ================================
returned                      on a 4xx reply             on a 5xx reply
============================  =========================  ================================
``status::next()`` (default)  retried on schedule        failed, with a DSN
``status::deny()``            failed now, with a DSN     failed, with a DSN
``status::accept()``          retried on schedule        retried on schedule
``status::quarantine(name)``  the message goes to ``quarantine/<name>`` (recipients as
                              the default left them; ``vsl queue release`` resumes)
============================  =========================  ================================

No hook, a script error or limit (logged with its position), or any other value (logged,
naming the allowed ones) gives the default. A retry never goes beyond the queue's
``max_age``. Each decision is logged in one line (queue id, recipient, reason, decision).
"""
from __future__ import annotations

import logging
from concurrent.futures import Executor
from dataclasses import dataclass

from vsl.checks import wrong_return
from vsl.errors import VslError
from vsl.stdlib.ctx import Context, Stage, entry_points
from vsl.stdlib.status import Status
from vsl.stdlib.support.bounce.model import Classification
from vsl.stdlib.support.mail import HeaderLimitError, Mailbox, Message
from vsl.stdlib.support.result import BounceResult

from . import metrics
from .policy import Policy
from .stages import timed_call

log = logging.getLogger("vsl.delivery")
HOOK = Stage.DELIVERY_FAILURE.function
_ENTRIES = entry_points()
DECISIONS = ("next", "deny", "accept", "quarantine")  # what the hook may return
_DEFAULT = Status("next")


@dataclass(frozen=True)
class Refusal:
    """What delivery knows of one refused recipient when the hook runs."""

    queue_id: str
    sender: str     # "" for the null sender
    recipient: str
    reply: str      # "550 5.1.1 ..."
    verdict: Classification
    attempt: int    # 1 on the first try
    age: float      # seconds since the message was queued


class FailureHook:
    """Runs the policy's ``on_delivery_failure`` (when it has one) for a refusal."""

    def __init__(self, policy: Policy, pool: Executor):
        self.policy, self.pool = policy, pool

    def wanted(self) -> bool:
        """Whether the running policy defines the hook (else delivery skips it)."""
        script = self.policy.script
        return script is not None and script.has(HOOK)

    async def decide(self, refusal: Refusal, message: Message | None) -> Status:
        """The hook's decision for ``refusal`` (``message``: the queued message's header,
        None when it cannot be read), one of DECISIONS; ``next`` when it fails. Logged."""
        decision = await self._run(refusal, message)
        log.info("%s: to=<%s> %s: reason=%s decision=%s", refusal.queue_id,
                 refusal.recipient, HOOK, refusal.verdict.reason, decision.vsl_display())
        return decision

    async def _run(self, refusal: Refusal, message: Message | None) -> Status:
        script = self.policy.script  # once: a reload may swap it meanwhile
        if script is None or not script.has(HOOK):
            return _DEFAULT
        try:
            result = await timed_call(script, self.pool, Stage.DELIVERY_FAILURE,
                                      failure_context(refusal, message))
        except VslError as err:
            _count_error("error")
            log.error("%s: %s failed for <%s>: %s", refusal.queue_id, HOOK, refusal.recipient,
                      err)
            return _DEFAULT
        problem = wrong_return(script, _ENTRIES, HOOK, result) or \
            _not_a_decision(result)
        if problem:
            _count_error("wrong_return")
            log.error("%s: %s (for <%s>)", refusal.queue_id, problem, refusal.recipient)
            return _DEFAULT
        return result


def _count_error(kind: str) -> None:
    metrics.count("vsl_script_errors_total", stage="delivery_failure", kind=kind)


_STATE_AFTER = {"deny": "failed", "accept": "deferred"}  # decision -> the recipient's state


def state_after(decision: Status, state: str) -> str:
    """A refused recipient's state (``deferred`` or ``failed``) once the hook decided."""
    return _STATE_AFTER.get(decision.kind, state)


def failure_context(refusal: Refusal, message: Message | None) -> Context:
    """The hook's ctx for ``refusal``."""
    return Context.delivery_failure(
        queue_id=refusal.queue_id, sender=Mailbox.parse(f"<{refusal.sender}>"),
        recipient=Mailbox.parse(refusal.recipient), message=message, reply=refusal.reply,
        bounce=BounceResult(refusal.verdict), attempt=refusal.attempt, age=int(refusal.age))


def queued_header(data: bytes) -> Message | None:
    """The queued message as the hook reads it (None when its header cannot be read)."""
    try:
        return Message(data)
    except HeaderLimitError:
        return None


def _not_a_decision(status: Status) -> str | None:
    if status.kind in DECISIONS:
        return None
    allowed = ", ".join(f"status::{kind}()" for kind in DECISIONS[:-1])
    return f"{HOOK} returned status::{status.vsl_display()}: it may return {allowed} or " \
           "status::quarantine(name)"
