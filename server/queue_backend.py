"""The queue backend interface: what the SMTP session, the post-queue worker, delivery and
`vsl queue` may ask of the mail queue, whatever stores it. The file spool (server/queue.py)
is one backend; a broker-backed one implements the same :class:`QueueBackend` and nothing
else changes.

The contract, for every backend:

- **Open, then use.** :meth:`~QueueBackend.open` comes before anything else; it fails only
  when the configuration can never work. A store that is away meanwhile makes each call
  raise :class:`QueueError` until it is back. :meth:`~QueueBackend.close` ends the use.
- **Durable before acknowledged.** :meth:`~QueueBackend.put`, :meth:`~QueueBackend.update`,
  :meth:`~QueueBackend.move` and :meth:`~QueueBackend.defer` return only once what they
  changed survives a crash; a message is never lost once ``put`` has returned.
  One exception: ``update`` of an entry this process has claimed may be kept with the
  claim and become durable only at that claim's next ``move``, ``defer`` or ``complete``
  (a broker's messages cannot be changed in place); a crash before it hands out the
  envelope as it was. Its ``delivered`` addresses are kept at once all the same.
- **At least once.** A crash may deliver a recipient twice, never lose one. Addresses a
  remote accepted are handed to ``update(..., delivered=...)`` the moment they are known:
  the backend keeps them across a crash from that call on, and
  :meth:`~QueueBackend.recover_deliveries` marks them delivered at the next start.
- **Claims.** :meth:`~QueueBackend.claim` hands out due work from the queues named
  (``deliver``, and ``deferred`` once its ``next_attempt`` has come; ``working`` for a
  post-queue worker), never a message this process has claimed and not yet released.
  Whoever claims a message ends with :meth:`~QueueBackend.release`, once, after
  :meth:`~QueueBackend.complete`, :meth:`~QueueBackend.defer`, ``move`` or none of them
  (then it is due again, as it was stored). A message whose ``next_attempt`` came is
  claimed with ``entry.queue == "deferred"``; callers pass ``entry.queue`` back to their
  writes. A broker's delays run on the real clock: a ``now`` ahead of it does not hand
  a deferred message out sooner.
- **Moved meanwhile.** ``vsl queue`` moves and removes messages from another process,
  even one delivery holds. :meth:`~QueueBackend.update`, :meth:`~QueueBackend.defer`
  and :meth:`~QueueBackend.complete` of an entry no longer in ``entry.queue``, and
  ``move``/``remove`` of a message no longer in the ``queue`` named, raise
  :class:`QueueError` and change nothing, even when the other process moves it at that
  very moment: the message stays where the operator put it, listed once. Addresses
  handed to such a failed ``update(..., delivered=...)`` are still kept: the message's
  next claim (or the next start's ``recover_deliveries``) marks them delivered.
- **Shared or not.** :attr:`~QueueBackend.shared` tells whether processes on other
  machines use the same queue (a broker): then a receiver, a post-queue worker and
  delivery may each run elsewhere, and ``working`` holds acknowledged mail.
- **Waiting for work.** :meth:`~QueueBackend.wait_for_work` returns when a message may
  have become due in the queues named, or after a timeout: a poll loop calls it between
  claims instead of sleeping (a wake-up may be spurious, or come only at the timeout).
- **Admin reads** (``get``, ``message``, ``list``, ``scan``, ``locate``, ``counts``) see
  what is stored. On a broker, a message in flight (claimed by a worker or delivery) is
  not seen until it is released or moved, and finding one by id reads the queue through;
  ``move``/``remove`` of one fails (QueueError "not in <queue> (being delivered, or
  moved)") and the operator tries again later. ``counts`` is keyed by the names
  ``vsl queue`` shows; a broker counts every quarantine as ``quarantine``. But
  ``message`` of a claim this process holds gives its bytes (delivery and a post-queue
  worker read what they claimed so).
- **Who calls what.** The session: ``put``, then (inline post-queue) ``move`` after
  on_post_queue, ``update``. A post-queue worker: ``claim(..., queues=("working",))``,
  ``message``, ``update``, ``move``, ``release``, ``wait_for_work``. Delivery:
  ``recover_deliveries``, ``claim``, ``message``, ``update``, ``complete``, ``defer``,
  ``move``, ``release``, ``put`` (DSNs), ``wait_for_work``. Start-up, before anything
  writes: ``open``, ``recover`` (the spool holds what is left in ``working``: there it
  means "never acknowledged"), ``startup_warnings``. ``vsl queue`` (beside a live
  server): ``scan``, ``list``, ``get``, ``message``, ``locate``, ``counts``, ``update``,
  ``move``, ``remove``, ``quarantine_warnings``. Everyone: ``open`` first, ``close``
  last.

Queues: ``working`` (received, waiting for on_post_queue), ``deliver``, ``deferred``,
``dead``, ``hold`` and ``quarantine/<name>`` (<name> as status::quarantine allows).
"""
from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from vsl.stdlib.status import is_quarantine_name

from .envelope import Envelope

QUEUES = ("working", "deliver", "deferred", "dead", "hold")
MESSAGE_ID = re.compile(r"[0-9a-f]{12}-[0-9a-f]{12}")  # what new_id() makes


def new_id() -> str:
    """A unique, time-sortable message id (the queue id of the logs), for every backend."""
    return f"{int(time.time() * 1000):012x}-{secrets.token_hex(6)}"


class QueueError(Exception):
    """The queue cannot do what was asked (unknown message or queue, disk full, ...)."""


class UnreadableEnvelope(QueueError):
    """A message whose envelope cannot be read: not JSON, a newer version, a field of the
    wrong type, or an I/O error. It stays in place for an operator. ``where``: its file,
    or ``amqp:<queue>#<id>`` on a broker."""

    def __init__(self, msg_id: str, queue: str, where: str, why: str):
        super().__init__(f"{msg_id}: unreadable envelope: {why}")
        self.msg_id, self.queue, self.where, self.why = msg_id, queue, where, why


def check_queue(name: str) -> str:
    """A valid queue name (one of QUEUES or quarantine/<name>)."""
    if name in QUEUES or (name.startswith("quarantine/") and
                          is_quarantine_name(name.removeprefix("quarantine/"))):
        return name
    raise QueueError(f"unknown queue '{name}' (queues: {', '.join(QUEUES)}, quarantine/NAME)")


@dataclass
class Entry:
    """A queued message's envelope, as stored."""

    id: str
    queue: str
    envelope: Envelope

    @property
    def age(self) -> float:
        return time.time() - (self.envelope.received_at or time.time())


class WorkSignal:
    """Wakes a backend's :meth:`~QueueBackend.wait_for_work` when this process puts or
    moves a message into a queue waited for. A queue notified while nobody waited on it
    wakes the next wait at once: a put while the waiter was claiming is not missed. (Each
    notification wakes the waits of that moment, or else the next one only.)"""

    def __init__(self):
        self._waiters: list[tuple[tuple[str, ...], asyncio.Future]] = []
        self._pending: set[str] = set()  # notified with no wait on them

    def notify(self, queue: str) -> None:
        """A message may have become due in ``queue`` (from any thread)."""
        waiting = [future for queues, future in self._waiters if queue in queues]
        if not waiting:
            self._pending.add(queue)
        for future in waiting:
            future.get_loop().call_soon_threadsafe(_wake, future)

    async def wait(self, queues: tuple[str, ...], timeout: float) -> None:
        """Until ``queues`` are notified, or ``timeout`` seconds."""
        if not self._pending.isdisjoint(queues):
            self._pending.difference_update(queues)
            return
        waiter = (tuple(queues), asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter[1], timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiters.remove(waiter)


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


@runtime_checkable
class QueueBackend(Protocol):
    """The mail queue (see the module docstring for the contract)."""

    shared: bool  # used by processes on other machines too (a broker), not only this one

    # -- life cycle ----------------------------------------------------------------------
    async def open(self) -> None:
        """Connect or prepare, before the first use. QueueError only when the
        configuration can never work; a store that is away is retried meanwhile."""

    async def recover(self) -> int:
        """At start-up, before anything writes: finish or drop what a stop cut short;
        returns how many unacknowledged items were dropped. Where ``working`` means
        "no 250 yet" (the spool), what is left there goes to ``hold``."""

    def startup_warnings(self) -> list[str]:
        """At start-up, after :meth:`recover`: what an operator should fix (lines for the
        log)."""

    async def close(self) -> None:
        """Let go of connections, threads and files (a later call starts them again)."""

    # -- intake and delivery ---------------------------------------------------------
    async def put(self, envelope: Envelope, data: bytes, queue: str = "working",
                  msg_id: str | None = None) -> str:
        """Store a new message durably; returns its id once it is stored."""

    async def claim(self, limit: int, now: float,
                    queues: tuple[str, ...] = ("deliver", "deferred")) -> list[Entry]:
        """Up to ``limit`` due messages of ``queues`` (in that order; one of ``deferred``
        once its ``next_attempt`` is ``now`` or earlier: ``now`` on the clock the
        caller's :meth:`defer` times are on), none already claimed by this process, each
        now claimed, with addresses kept from a failed :meth:`update` marked delivered."""

    async def release(self, msg_id: str) -> None:
        """End a claim: a message not completed, deferred or moved is due again."""

    async def complete(self, entry: Entry) -> None:
        """Every recipient is delivered or bounced: the message leaves the queue
        (QueueError when it is no longer in ``entry.queue``)."""

    async def defer(self, entry: Entry, until: float) -> None:
        """Store the envelope with ``next_attempt = until`` and move the message to
        ``deferred``: :meth:`claim` hands it out again once ``until`` has come."""

    async def update(self, entry: Entry, data: bytes | None = None,
                     delivered: list[str] = ()) -> None:
        """Store a message's envelope (and its bytes, when given) durably, in its queue
        (QueueError when it is no longer in ``entry.queue``); of an entry this process
        has claimed, possibly only at the claim's next transition (see the module
        docstring). ``delivered``: addresses a remote has just accepted, kept across a
        crash from this call on, even when it fails (see :meth:`recover_deliveries` and
        :meth:`claim`)."""

    async def move(self, msg_id: str, target: str, queue: str | None = None) -> None:
        """Move a message to another queue (hold, dead, quarantine/<name>, ...), durably
        (QueueError when it is no longer in ``queue``)."""

    async def recover_deliveries(self) -> None:
        """Before the first claim: mark delivered what remotes accepted before a crash
        whose envelope update did not finish."""

    async def wait_for_work(self, queues: tuple[str, ...], timeout: float) -> None:
        """Return when a message may have become due in ``queues``, or after ``timeout``
        seconds (a backend that cannot tell: always after the timeout)."""

    # -- administration (may not see messages in flight on a broker) -------------------
    async def get(self, msg_id: str, queue: str | None = None) -> Entry:
        """A message's envelope (:class:`UnreadableEnvelope` when it cannot be read)."""

    async def message(self, msg_id: str, queue: str | None = None) -> bytes:
        """A message's bytes."""

    async def list(self, queue: str | None = None) -> list[Entry]:
        """Messages of one queue (or all), oldest first; unreadable ones are skipped."""

    async def scan(self, queue: str | None = None
                   ) -> tuple[list[Entry], list[UnreadableEnvelope]]:
        """Messages of one queue (or all), oldest first, and the unreadable ones."""

    async def locate(self, msg_id: str) -> str:
        """The queue holding a message."""

    async def remove(self, msg_id: str, queue: str | None = None) -> None:
        """Delete a message (removed by the operator; QueueError when it is no longer
        in ``queue``)."""

    async def counts(self) -> dict[str, int]:
        """Messages per queue name, as the backend can count them (a broker: those not
        in flight)."""

    def quarantine_warnings(self) -> list[str]:
        """What an operator should know of quarantines the backend cannot fill."""
