"""The delivery worker: claims due messages from the queue backend (server/queue_backend.py:
``deliver``, and ``deferred`` when they are due), delivers each recipient over its route,
and writes each result to the envelope as soon as it is known.

    delivery = Delivery(open_queue(config), DeliveryConfig(maildir_root=Path("mail")),
                        "mx.example.com", ("example.com",))
    delivery.start()                    # in the server's event loop
    await delivery.stop()

A recipient goes ``pending`` -> ``delivered`` | ``deferred`` | ``failed``, and ``failed``
-> ``bounced`` once its DSN is queued. After each attempt: failures are reported at
once in one DSN to the sender (queued durably, null sender, before anything else
changes); a message with deferred recipients waits in ``deferred`` until its
``next_attempt`` (exponential backoff), and its sender is warned once when it has waited
``delay_warning``; past ``max_age`` those recipients fail too (4.4.7). A message
leaves the queue only when every recipient is delivered or bounced; a failure nobody
can be told about (null sender) sends it to ``dead``.
Every refusal (a 4xx/5xx reply, or a connection-level failure with its text) is classified
by the process's bounce classifier (vsl.stdlib.support.bounce.shared), in a worker thread
so that the model's first load and each classification stay off the event loop; the reason
is stored with the recipient, logged (``reason=``) and reported in the DSN; the reply is
classified as one of the recipient's domain, whose earlier replies self-learning may have
kept, and may be kept as an example of it (``[bounce] self_learning``:
support/bounce/selflearn.py). Without a usable model the status codes decide (confidence
0). Then the policy's ``on_delivery_failure``, when it has one, may fail a deferred
recipient now, retry a failed one, or quarantine the message (server/delivery_hook.py).
A crash may deliver a recipient twice (at least once), never lose one.
Recipients whose SMTP destination had no free session (the pool's BUSY_WAIT) are not
tried: when nothing else in the message waits for a retry, it is postponed (put back in
``deferred`` for 1, 2, 4 ... s, up to retry_first, its attempts uncounted), so that it does
not hold a delivery slot while a slow destination keeps its sessions.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from vsl.stdlib.dns import DnsDefaults
from vsl.stdlib.support.bounce.model import Classification
from vsl.stdlib.support.bounce.selflearn import scope
from vsl.stdlib.support.bounce.shared import SharedClassifier, shipped
from vsl.stdlib.support.mail import Mailbox, domain_key
from vsl.stdlib.transport import RELAY_KINDS, kind_of, parse_route
from vsl.errors import ScriptError

from . import logids, metrics
from .claim_loop import ClaimLoop
from .config import DeliveryConfig
from .delivery_hook import FailureHook, Refusal, queued_header, state_after
from .dsn import build_dsn
from .envelope import Envelope, RecipientState
from .logevents import event, reply_codes
from .queue_backend import Entry, QueueBackend, QueueError
from .transports import Outcome, Transports

log = logging.getLogger("vsl.delivery")
# The route label of the delivery metrics: direct SMTP (MX), a relay, LMTP, a Maildir
_ROUTE_LABELS = {"mx": "smtp", "smtp": "relay", "smtps": "relay", "lmtp": "lmtp",
                 "maildir": "maildir"}


# A message whose destination had no free session comes back after 1, 2, 4 ... s (up to
# retry_first); the postponements in a row are remembered for this many messages at most.
POSTPONE_FIRST, MAX_POSTPONEMENTS = 1.0, 100_000
# What a postponed recipient never tried shows (vsl queue show, a delay warning's DSN).
BUSY_REPLY = ("451 4.4.1 not tried yet: the sessions to its destination are all in use "
              "(delivery.destination_concurrency)")
WAITING = ("pending", "deferred")  # not done and not failed after an attempt


def retry_delay(config: DeliveryConfig, attempts: int) -> float:
    """The wait after the ``attempts``-th deferral: retry_first, doubled each time, capped."""
    return min(config.retry_first * 2 ** min(attempts - 1, 64), config.retry_max)


def answered(result: Outcome) -> str:
    """The reply as a bounce reports it, with the SMTP command it answered written the way
    Postfix does ("(in reply to RCPT TO command)"): a refusal after DATA is a filter's, one
    after RCPT TO an address's, and the classifier reads the phase from there."""
    return f"{result.reply} (in reply to {result.command} command)" if result.command \
        else result.reply


def recipient_domain(address: str) -> str:
    """The domain of a recipient's address as delivered, lowercased."""
    return address.rpartition("@")[2].lower().rstrip(".")


def _per_domain(route: str) -> bool:
    """Whether a route's recipients go in one transaction per domain (MX), not per route."""
    kind = kind_of(route)
    return kind is not None and kind.per_domain


class Delivery:
    """Delivers the queue's messages (see the module docstring). ``config.maildir_root``
    is required (server/config.py ``Config.resolved_delivery`` fills in its default)."""

    def __init__(self, queue: QueueBackend, config: DeliveryConfig, hostname: str,
                 local_domains, resolver=None, clock: Callable[[], float] = time.time,
                 dns_defaults: DnsDefaults = DnsDefaults(),
                 reasons: SharedClassifier | None = None, hook: FailureHook | None = None):
        if config.maildir_root is None:
            raise ValueError("delivery needs a maildir_root")
        self.queue, self.config, self.clock = queue, config, clock
        self.hostname = config.hostname or hostname
        # domain_key -> the spelling listed first, which names the domain's Maildir directory
        listed = [d.lower().rstrip(".") for d in (*local_domains, hostname)]
        self.local_domains = {domain_key(d): d for d in reversed(listed)}
        for name in dict.fromkeys(listed):
            kept = self.local_domains[domain_key(name)]
            if kept != name:  # Postfix needed both forms listed, and kept two mailboxes
                log.warning("local domains %s and %s are one domain (U-labels and A-labels): "
                            "the mail of both goes to the Maildir directory of %s",
                            kept, name, kept)
        # absolute, without '..' parts (as a maildir: route must be), each resolved as the
        # kernel does: after a symbolic link, '..' is the parent of where it points
        self.maildir_root = Path(os.path.realpath(config.maildir_root))
        self.relay = str(parse_route(config.relay, RELAY_KINDS)) if config.relay \
            else "mx"
        self.transports = Transports(config, self.hostname, resolver, dns_defaults)
        self.reasons = reasons or shipped()
        self.hook = hook  # the policy's on_delivery_failure (None: the default decisions)
        self.postponements: dict[str, int] = {}  # message id -> postponed in a row (_postpone)
        self.claims = ClaimLoop(queue, ("deliver", "deferred"), self._process,
                                config.concurrency, config.poll_interval, log, clock,
                                prepare=self._recover_deliveries)

    # -- routes --------------------------------------------------------------------------
    def default_route(self, mailbox: Mailbox) -> str:
        """Without transport::, local domains go to a Maildir, the rest to relay or MX."""
        domain = self.local_domains.get(domain_key(mailbox.domain))
        if domain is None:
            return self.relay
        return f"maildir:{self.maildir_root / _safe(domain) / _safe(mailbox.local_part.lower())}"

    def recipients(self, ctx) -> list[RecipientState]:
        """The envelope's recipient records for ``ctx``'s recipients, with their routes."""
        return [RecipientState(r.address, ctx.route_for(r) or self.default_route(r))
                for r in ctx.all_recipients()]

    async def reroute(self, entry: Entry, ctx, queued: bytes) -> None:
        """After on_post_queue: store the routes it chose and the message it changed
        (``entry`` and ``queued``: the envelope and bytes as stored; nothing is written
        when nothing changed)."""
        recipients = self.recipients(ctx)
        data = ctx.message.to_bytes()
        data = None if data == queued else data
        if recipients != entry.envelope.recipients or data is not None:
            entry.envelope.recipients = recipients
            await self.queue.update(entry, data)

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start claiming due messages (when enabled)."""
        if self.config.enabled:
            self.claims.start()

    async def stop(self) -> None:
        """Stop; deliveries cut short are tried again by the next worker."""
        await self.claims.stop()
        await self.transports.close()

    async def run_once(self) -> int:
        """Deliver what is due now and wait for it; returns how many messages."""
        return await self.claims.run_once()

    async def _recover_deliveries(self) -> None:
        try:
            await self.queue.recover_deliveries()
        except Exception:  # noqa: BLE001 - a journal problem must not stop delivery
            log.exception("delivery: cannot recover the deliveries a stop cut short")

    async def _process(self, entry: Entry) -> None:
        with logids.bound(entry.envelope.session, entry.id):
            await self._deliver_logged(entry)

    async def _deliver_logged(self, entry: Entry) -> None:
        try:
            await self._deliver(entry)
        except QueueError as err:  # the queue cannot be written: the next poll retries
            log.error("%s: %s", entry.id, err)
        except Exception:  # noqa: BLE001 - a bug must not stop other deliveries
            event(log, logging.ERROR, "held", "%s: delivery failed; moving it to hold",
                  entry.id, to_queue="hold", by="server", exc_info=True)
            try:
                await self.queue.move(entry.id, "hold", entry.queue)
            except QueueError as err:
                log.error("%s: %s", entry.id, err)

    # -- one message ---------------------------------------------------------------------
    async def _deliver(self, entry: Entry) -> None:
        if entry.queue == "deferred" and entry.id not in self.postponements:
            metrics.count("vsl_delivery_retries_total")
        data = await self.queue.message(entry.id, entry.queue)
        groups = defaultdict(list)  # one transaction per route (and domain, for MX)
        for rcpt in entry.envelope.recipients:
            if rcpt.status in WAITING:
                domain = recipient_domain(rcpt.address)
                groups[rcpt.route, domain if _per_domain(rcpt.route) else ""].append(rcpt)
        postponed: set[str] = set()
        results = await asyncio.gather(*(self._deliver_group(entry, route, rcpts, data,
                                                             postponed)
                                         for (route, _), rcpts in groups.items()),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        quarantine = next((name for name in results if name), None)
        if quarantine:
            await self.queue.move(entry.id, f"quarantine/{quarantine}", entry.queue)
            event(log, logging.INFO, "quarantined",
                  "%s: moved to quarantine/%s by on_delivery_failure", entry.id, quarantine,
                  to_queue=f"quarantine/{quarantine}", by="script")
        else:
            await self._settle(entry, data, postponed)

    async def _deliver_group(self, entry: Entry, route: str, rcpts: list[RecipientState],
                             data: bytes, postponed: set[str]) -> str | None:
        """Deliver ``rcpts`` over ``route`` and store their results (those not tried, the
        destination busy, go to ``postponed``, unchanged); the quarantine
        on_delivery_failure asked for, if any."""
        addresses = [r.address for r in rcpts]
        started = time.perf_counter()
        try:
            outcomes = await self.transports.deliver(parse_route(route),
                                                     entry.envelope.sender, addresses, data,
                                                     self._has_waited(entry))
        except ScriptError as err:  # a route the queue holds but that does not parse
            outcomes = dict.fromkeys(addresses, Outcome("failed", f"554 5.3.5 {err.message}"))
        busy = {a for a in addresses if outcomes[a].status == "postponed"}
        postponed |= busy
        for rcpt in rcpts:
            if rcpt.address in busy and rcpt.status == "pending":  # its line in the queue
                rcpt.reply = BUSY_REPLY
        rcpts = [r for r in rcpts if r.address not in busy]
        if not rcpts:
            return None
        metrics.observe("vsl_delivery_seconds", time.perf_counter() - started,
                        route=route_label(route))
        reasons = await self._reasons(outcomes)
        now = self.clock()
        for rcpt in rcpts:
            result, why = outcomes[rcpt.address], reasons.get(rcpt.address)
            reason, confidence = (why.reason, round(why.confidence, 2)) if why else (None, None)
            rcpt.record_attempt(result.status, result.reply, result.remote_mta, now,
                                reason, confidence)
            _log_attempt(entry, rcpt, route, result, reason, now)
        await self.queue.update(entry, delivered=[r.address for r in rcpts
                                                  if r.status == "delivered"])
        return await self._ask_policy(entry, rcpts, reasons, data)

    def _has_waited(self, entry: Entry) -> bool:
        """Whether the message arrived ``retry_first`` ago or more, so that an SMTP
        session whose opportunistic TLS fails may carry it in plaintext (Postfix's rule
        for its ``may`` level, with minimal_backoff_time: server/transports/pool.py)."""
        arrived = entry.envelope.received_at
        return arrived is not None and self.clock() - arrived >= self.config.retry_first

    async def _ask_policy(self, entry: Entry, rcpts: list[RecipientState],
                          verdicts: dict[str, Classification], data: bytes) -> str | None:
        """on_delivery_failure for each refused recipient of ``rcpts`` (those with a
        verdict), its decision applied to the recipient's state and stored; the quarantine
        it asked for, if any (the first)."""
        refused = [r for r in rcpts if r.address in verdicts]
        if not refused or self.hook is None or not self.hook.wanted():
            return None
        message, quarantine, changed = queued_header(data), None, False
        age = self.clock() - entry.envelope.received_at
        for rcpt in refused:
            decision = await self.hook.decide(
                Refusal(entry.id, entry.envelope.sender, rcpt.address, rcpt.reply,
                        verdicts[rcpt.address], rcpt.attempts, age), message)
            state = state_after(decision, rcpt.status)
            changed, rcpt.status = changed or state != rcpt.status, state
            quarantine = quarantine or decision.queue
        if changed:
            await self.queue.update(entry)
        return quarantine

    async def _reasons(self, outcomes: dict[str, Outcome]) -> dict[str, Classification]:
        """Why each refused recipient was refused (none for a delivered one; by the status
        codes, confidence 0, when the model cannot be used), classified in a worker thread."""
        refused = {address: answered(result) for address, result in outcomes.items()
                   if result.status in ("deferred", "failed") and result.reply}
        return await asyncio.to_thread(self._classify, refused) if refused else {}

    def _classify(self, refused: dict[str, str]) -> dict[str, Classification]:
        """``refused``: address -> the reply that refused it, classified as a reply of the
        recipient's domain; the first reply of each source (``selflearn.scope``: the
        registrable domain) may teach self-learning (one lesson at most per source and
        attempt)."""
        verdicts, taught = {}, set()
        for address, reply in refused.items():
            domain = recipient_domain(address)
            source = scope(domain)
            verdicts[address] = self.reasons.classify_text(reply, source=domain,
                                                           learn=source not in taught)
            taught.add(source)
        return verdicts

    async def _settle(self, entry: Entry, data: bytes, postponed: set[str]) -> None:
        """After an attempt: report failures, then defer, postpone, bury or remove the
        message."""
        envelope, now = entry.envelope, self.clock()
        recipients = envelope.recipients
        times_postponed = self.postponements.pop(entry.id, 0)
        if now - envelope.received_at >= self.config.max_age:
            for rcpt in recipients:
                if rcpt.status in WAITING:  # pending: postponed, never tried
                    rcpt.status, rcpt.expired = "failed", True
        failed = [r for r in recipients if r.status == "failed"]
        if failed and envelope.sender:
            await self._queue_dsn(entry, failed, data)
            for rcpt in failed:
                rcpt.status = "bounced"
            # stored at once: whatever fails next (the warning below, the queue), the
            # next attempt must not report these again
            await self.queue.update(entry)
        waiting = [r for r in recipients if r.status in WAITING]
        if waiting and self._delay_warning_due(envelope, now):
            await self._queue_dsn(entry, waiting, data,
                                  retry_until=envelope.received_at + self.config.max_age)
            envelope.delay_warned_at = now  # made durable by _defer or _postpone
        if any(r.address not in postponed for r in waiting):
            await self._defer(entry, now)
        elif waiting:
            await self._postpone(entry, times_postponed)
        elif any(r.status == "failed" for r in recipients):
            metrics.count("vsl_messages_dead_total")
            event(log, logging.WARNING, "dead",
                  "%s: undeliverable and nobody to tell (null sender): dead", entry.id,
                  reason="null sender")
            await self.queue.update(entry)
            await self.queue.move(entry.id, "dead", entry.queue)
        else:
            await self.queue.complete(entry)

    async def _postpone(self, entry: Entry, times: int) -> None:
        """Put the message back for a while, its attempts uncounted: a destination had
        no free session (``destination_concurrency``) for a second. It comes back after
        1, 2, 4 ... seconds, longer each time in a row (``times`` before), up to
        ``retry_first``: a destination that stays busy is slow, and its backlog must not
        keep taking slots to wait in."""
        self.postponements[entry.id] = times + 1
        while len(self.postponements) > MAX_POSTPONEMENTS:  # ids another process settled
            del self.postponements[next(iter(self.postponements))]
        metrics.count("vsl_delivery_postponed_total")
        log.log(logging.DEBUG if times else logging.INFO,
                "%s: postponed: a destination has no free session", entry.id)
        await self.queue.defer(entry, self.clock() + min(POSTPONE_FIRST * 2 ** min(times, 16),
                                                max(self.config.retry_first, POSTPONE_FIRST)))

    async def _defer(self, entry: Entry, now: float) -> None:
        envelope = entry.envelope
        envelope.attempts += 1
        await self.queue.defer(entry, min(now + retry_delay(self.config, envelope.attempts),
                                          envelope.received_at + self.config.max_age))

    def _delay_warning_due(self, envelope: Envelope, now: float) -> bool:
        """One warning per message, once it has waited ``delay_warning`` (0: never)."""
        wait = self.config.delay_warning
        return bool(wait and envelope.sender and envelope.delay_warned_at is None and
                    now - envelope.received_at >= wait)

    async def _queue_dsn(self, entry: Entry, recipients: list[RecipientState], data: bytes,
                         retry_until: float | None = None) -> None:
        """Queue the DSN for failed ``recipients`` (durably, before the caller marks them
        bounced), or with ``retry_until`` the warning that they are delayed."""
        sender = Mailbox.parse(entry.envelope.sender)
        dsn = build_dsn(self.hostname, entry.envelope, recipients, data, self.clock(),
                        retry_until)
        envelope = Envelope("", [RecipientState(sender.address, self.default_route(sender))],
                            dsn_for=entry.id, received_at=self.clock(),
                            session=entry.envelope.session)
        dsn_id = await self.queue.put(envelope, dsn, "deliver")
        kind = "failure" if retry_until is None else "delay"
        metrics.count("vsl_dsn_sent_total", kind=kind)
        event(log, logging.INFO, "dsn", "%s: %s DSN %s to <%s> for %d recipient(s)", entry.id,
              kind, dsn_id, sender.address, len(recipients), kind=kind, to=sender.address,
              nrcpt=len(recipients))


_EVENTS = {"delivered": "delivered", "deferred": "deferred", "failed": "bounced"}


def _log_attempt(entry: Entry, rcpt: RecipientState, route: str, result: Outcome,
                 reason: str | None, now: float) -> None:
    """One recipient's delivery attempt: the event delivered, deferred or bounced."""
    code, enhanced = reply_codes(result.reply or "")
    _count_attempt(route_label(route), result.status, reason)
    event(log, logging.INFO, _EVENTS.get(result.status, result.status),
          "%s: to=<%s> via %s: %s (%s)%s", entry.id, rcpt.address, route, result.status,
          result.reply, f" reason={reason}" if reason else "",
          recipient=rcpt.address, route=route.partition(":")[0], relay=result.remote_mta,
          code=code, enhanced=enhanced, reply=result.reply, **{"class": reason},
          delay=round(now - entry.envelope.received_at, 3)
          if entry.envelope.received_at is not None else None, attempt=rcpt.attempts)


def route_label(route: str) -> str:
    """A route's label in the delivery metrics (never its host or path)."""
    return _ROUTE_LABELS.get(route.partition(":")[0], "other")


def _count_attempt(route: str, status: str, reason: str | None) -> None:
    """One recipient's attempt in vsl_delivery_attempts_total (and, refused, in
    vsl_delivery_failures_total by its bounce class)."""
    metrics.count("vsl_delivery_attempts_total", route=route, result=status)
    if status != "delivered":
        metrics.count("vsl_delivery_failures_total", route=route, **{"class": reason or "none"})


def _safe(name: str) -> str:
    """An address part as one path component: no '/', no leading dot, never empty."""
    text = quote(name, safe="+=-_.,") or '%22%22'
    return "%2E" + text[1:] if text.startswith(".") else text
