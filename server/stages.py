"""Running one stage function of the policy and turning its result into a decision.

A stage the script does not define, or a connection that a ``faccept`` or
``quarantine`` already decided, gives ``next``. A script error or limit never
reaches the client as a crash: it is logged with its position and the stage
answers the configured fallback reply (a temporary failure by default).

The runner needs only the policy, the thread pool for its scripts and the fallback reply:
any front end (the SMTP session, or one that builds a :class:`Context` from another
protocol's data) runs the same stages through it.
"""
from __future__ import annotations

import logging
from concurrent.futures import Executor
from time import perf_counter

from vsl.stdlib.ctx import Context, Stage, entry_points
from vsl.stdlib.status import Status
from vsl.checks import wrong_return
from vsl.errors import Pos, VslError

from . import metrics
from .logevents import event
from .policy import Policy

log = logging.getLogger("vsl.stages")
_ENTRIES = entry_points()
_SECONDS = {stage: metrics.Series("vsl_script_seconds", stage=stage.name.lower())
            for stage in Stage}


async def timed_call(script, pool: Executor, stage: Stage, ctx: Context):
    """``script``'s function of ``stage`` called with ``ctx`` off the event loop, its
    time (failed or not) in vsl_script_seconds while metrics are on."""
    if not metrics.recording():
        return await script.call_off_loop(pool, stage.function, ctx)
    started = perf_counter()
    try:
        return await script.call_off_loop(pool, stage.function, ctx)
    finally:
        _SECONDS[stage].observe(perf_counter() - started)


class StageRunner:
    """The stage decisions of one connection.

    ``faccept`` and ``quarantine`` skip every later stage: for the whole connection when
    decided before MAIL FROM, else for the current transaction only.
    """

    def __init__(self, policy: Policy, pool: Executor, fallback_reply: str):
        self.policy, self.pool, self.fallback_reply = policy, pool, fallback_reply
        self.forced: Status | None = None   # faccept: every later stage accepted
        self.quarantine: str | None = None  # quarantine(name): the message's queue
        self.session_wide = False           # the decision was made before MAIL FROM
        self.failed = False                 # the last stage's script failed
        self.decided_at: Pos | None = None  # where the script made the last stage's status

    async def run(self, ctx: Context, stage: Stage) -> Status:
        """Call ``on_<stage>(ctx)`` if the policy defines it; return the decision.

        After a faccept every stage is accepted; after a quarantine every stage goes on
        with its default reply. ``self.failed`` tells whether the script failed (the
        decision is then the fallback reply)."""
        self.failed, self.decided_at = False, None
        if self.forced is not None:
            return Status("accept")
        if self.quarantine is not None:
            return Status("next")
        script = self.policy.script
        if script is None or not script.has(stage.function):
            return Status("next")
        ctx.stage = stage
        try:
            result = await timed_call(script, self.pool, stage, ctx)
        except VslError as err:
            metrics.count("vsl_script_errors_total", stage=stage.name.lower(), kind="error")
            event(log, logging.ERROR, "script_error", "%s failed for %s: %s", stage.function,
                  ctx.client_ip, err, stage=stage.function,
                  position=str(err.pos) if err.pos else None, error=err.message)
            return self._fallback()
        if not isinstance(result, Status):
            wrong = wrong_return(script, _ENTRIES, stage.function, result)
            metrics.count("vsl_script_errors_total", stage=stage.name.lower(),
                          kind="wrong_return")
            event(log, logging.ERROR, "script_error", "%s (for %s)", wrong, ctx.client_ip,
                  stage=stage.function, error=wrong)
            return self._fallback()
        self.decided_at = result.origin
        if result.kind in ("faccept", "quarantine"):
            self.session_wide = stage < Stage.MAIL_FROM
            if result.kind == "faccept":
                self.forced = result
            else:
                self.quarantine = result.queue
                return Status("next")
        return result

    def decider(self, stage: Stage) -> str:
        """Who made ``stage``'s last decision, for the log's ``decided_by``: the fallback
        reply of a failed stage, or the stage function and where its script made the
        status (``on_rcpt_to@main.vsl:3:12``, the ``status::deny(...)`` call)."""
        if self.failed:
            return f"fallback_reply@{stage.function}"
        return f"{stage.function}@{self.decided_at}"

    def _fallback(self) -> Status:
        self.failed = True
        return Status("deny", self.fallback_reply)

    def save(self) -> tuple:
        """The decisions so far (restore() them when a stage's outcome is void)."""
        return self.forced, self.quarantine, self.session_wide

    def restore(self, saved: tuple) -> None:
        self.forced, self.quarantine, self.session_wide = saved

    def end_transaction(self) -> None:
        """RSET, or a message was queued: forget the transaction's decisions."""
        if not self.session_wide:
            self.forced = self.quarantine = None
