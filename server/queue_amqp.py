"""The mail queue on a RabbitMQ broker: :class:`AmqpQueue` implements
server/queue_backend.py's :class:`QueueBackend` over AMQP 0-9-1 (aio-pika), so receivers,
workers and delivery processes on several machines share one queue.

Design (docs: design 16, section 3):

- **Topology and messages** are server/queue_amqp_codec.py's. Every transition publishes
  the message to its next queue, waits for the broker's confirm, and only then acks the
  delivery it came from: nothing is acked before the next queue holds it (at least once;
  a crash in between leaves two copies, never none).
- **A claim** is a delivery this process holds unacked: id -> :class:`Claim`. Consumers
  (prefetch ``prefetch``: ``delivery.concurrency``, fewer when that many messages of
  ``limits.message_size`` would pass PREFETCH_BYTES) fill a local buffer and
  :meth:`AmqpQueue.claim` takes from it, waiting briefly for deliveries when it is
  empty. A message whose delay ended comes back through ``P.deliver`` with an
  ``x-death`` header: it is in ``deferred`` there (claimed, listed, moved as such), as
  the spool keeps a due message in ``deferred``. Only the holder of a delivery tag can
  ack it, so "moved meanwhile" holds by construction. An ``update`` of a claimed entry
  stays with the claim (AMQP messages are immutable) and is published by its
  transition; addresses a remote accepted go to the local delivery journal at once and
  are applied when this process claims the message again or restarts (the lines of the
  KEPT_IDS newest ids are kept).
- **What a claim refuses:** a message that fails to be claimed (a header of the wrong
  form, a bug) is buried in ``dead`` with ``x-vsl-why``, never left unacked; so is one
  delivered CRASH_LOOP_LIMIT times (its ``x-delivery-count``), the crash-loop backstop,
  as the queues have no broker delivery limit (admin reads count as deliveries). A copy
  a transition of this process left behind is dropped (:meth:`AmqpQueue._finish`).
- **The connection** is server/queue_amqp_link.py's: reconnected with back-off, while
  ``put`` and the rest raise QueueError. A claim made on a lost connection is void: the
  broker has requeued its message.
- **Admin reads** (``list``, ``get``, ...) ``basic_get`` a queue on a channel of their
  own, holding each message, to its end (``scan``: at most ``limit``; finding an id:
  up to it), then close the channel, which requeues them all: O(n), and blind to
  messages in flight.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .envelope import Envelope
from .journal import Journal
from .queue_amqp_codec import (COPY, CRASH_LOOP_LIMIT, REDECLARE, Poison, Topology, decode,
                               delay_level, delayed, delivery_count, encode)
from .queue_amqp_link import BrokerLink, plain
from .queue_backend import (QUEUES, Entry, QueueError, UnreadableEnvelope, WorkSignal,
                            check_queue, new_id)

log = logging.getLogger("vsl.queue")
CLAIM_WAIT_READY = 1.0  # s a claim waits for deliveries the broker reports ready for it
CLAIM_WAIT_IDLE = 0.05  # s it waits otherwise (a message just put or released may be coming)
PREFETCH_BYTES = 512 << 20  # a consumer's unacked deliveries may hold at most this much
FINISHED_IDS = 10_000  # transitions this process remembers, to drop the copies they left
KEPT_IDS = 10_000  # messages whose journal lines this process keeps: the newest ids (a
                   # message another process finished is never claimed here again)


@dataclass
class Claim:
    """A delivery this process holds: what its transition will publish."""

    entry: Entry
    message: object        # aio_pika.IncomingMessage
    envelope: bytes        # the envelope as last updated
    data: bytes
    generation: int        # the connection it came on
    done: bool = False     # completed, deferred or moved: release() has nothing to requeue


class AmqpQueue:
    """The mail queue on a RabbitMQ broker (see the module docstring)."""

    shared = True

    def __init__(self, url: str, prefix: str = "vsl", journal: str | Path | None = None,
                 queue_type: str = "quorum", confirm_timeout: float = 30.0,
                 connect_timeout: float = 5.0, prefetch: int = 20):
        self.link = BrokerLink(url, Topology(prefix, queue_type), confirm_timeout,
                               connect_timeout)
        self.journal = Journal(Path(journal)) if journal else None
        self.prefetch = max(prefetch, 1)  # deliveries each consumer may hold unacked
        self.claims: dict[str, Claim] = {}
        self.buffer: dict[str, list] = {}  # physical queue -> (generation, message) received
        self.arrived: dict[str, asyncio.Event] = {}  # physical queue -> set at each delivery
        self.work = WorkSignal()  # a consumer received a message
        self.finished: dict[str, str | None] = {}  # see _finish

    @classmethod
    def of(cls, config) -> AmqpQueue:
        """The backend ``config.queue`` describes, with ``config``'s delivery journal."""
        queue = config.queue
        try:
            url = queue.resolved_url()
        except ValueError as err:
            raise QueueError(str(err)) from None
        return cls(url, queue.prefix, config.journal_path, queue.queue_type,
                   queue.confirm_timeout, queue.connect_timeout,
                   prefetch_for(config.delivery.concurrency, config.limits.message_size))

    # -- the connection ------------------------------------------------------------------
    @property
    def topology(self) -> Topology:
        return self.link.topology

    async def open(self) -> None:
        """Connect and declare the topology (QueueError only when the broker refuses the
        login or the vhost; an unreachable broker is retried in the background)."""
        if self.journal is not None:
            self.journal.path.parent.mkdir(parents=True, exist_ok=True)
        await self.link.open()

    async def close(self) -> None:
        """Close the connection: the broker requeues what this process holds."""
        await self.link.close()
        self.claims.clear()
        self.buffer.clear()
        self.arrived.clear()
        if self.journal is not None:
            self.journal.close()

    # -- publishing ----------------------------------------------------------------------
    async def _publish(self, envelope: Envelope, data: bytes, queue: str, msg_id: str
                       ) -> None:
        """Publish to ``queue`` and wait for the confirm; ``deferred`` is the level that
        ends at the envelope's ``next_attempt`` (or just before)."""
        message = self.link.aio_pika.Message(**encode(envelope, data, queue, msg_id))
        if queue == "deferred":
            level = delay_level((envelope.next_attempt or 0) - time.time())
            await self.link.send(message, self.topology.deferred(level)[0])
        else:
            await self.link.send(message, self.topology.name(queue))

    async def put(self, envelope: Envelope, data: bytes, queue: str = "working",
                  msg_id: str | None = None) -> str:
        """Publish a new message; its id, once the broker has confirmed it."""
        check_queue(queue)
        msg_id = msg_id or new_id()
        stored = replace(envelope, id=msg_id, received_at=envelope.received_at or time.time())
        await self._publish(stored, data, queue, msg_id)
        return msg_id

    # -- claims and transitions ------------------------------------------------------------
    async def claim(self, limit: int, now: float,
                    queues: tuple[str, ...] = ("deliver", "deferred")) -> list[Entry]:
        """Up to ``limit`` messages the consumer of ``queues`` has received, now claimed.

        The first claim starts the consumer. A claim finding nothing received waits for
        deliveries: up to CLAIM_WAIT_READY while the broker reports messages ready and
        this process may hold more (until it has received what it can take), otherwise
        CLAIM_WAIT_IDLE, as a message just put or released may be on its way. So an idle
        claim costs one passive declare and that short wait. ``deferred`` messages reach
        ``deliver`` when their delay ends; one back before its ``next_attempt`` (after
        ``now``) waits again for the rest."""
        physical = self._consumed(queues)
        waiting = await self._receiving(physical)
        if not waiting:
            await self._await_deliveries(physical, limit)
        claimed, kept = [], []
        try:
            while waiting and len(claimed) < limit:
                generation, message = waiting.pop(0)
                if generation != self.link.generation:
                    continue  # received on a lost connection: the broker has requeued it
                if message.message_id in self.claims:
                    kept.append((generation, message))  # a second copy of one held here
                    continue
                entry = await self._claim_safely(message, physical, now)
                if entry is not None:
                    claimed.append(entry)
        finally:
            waiting[:0] = kept
        return claimed

    async def _claim_safely(self, message, physical: str, now: float) -> Entry | None:
        """:meth:`_claim_one`, whatever the message holds: one that cannot be re-delayed
        or buried now is requeued; one that fails otherwise (a header of the wrong form,
        a bug) is buried, so it never stays unacked on this process's prefetch."""
        try:
            return await self._claim_one(message, physical, now)
        except QueueError as err:
            log.warning("%s: left in %s for now: %s", message.message_id, physical, err)
        except Exception as err:  # noqa: BLE001 - the consumer goes on
            log.exception("%s: cannot be claimed from %s", message.message_id, physical)
            with contextlib.suppress(Exception):
                await self._bury(message, physical, f"cannot be claimed: {err!r}")
                return None
        await self._requeue(message)
        return None

    def _consumed(self, queues: tuple[str, ...]) -> str:
        """The physical queue a claim of ``queues`` consumes."""
        return self.topology.name("working" if "working" in queues else "deliver")

    async def _receiving(self, physical: str) -> list:
        """The buffer ``physical``'s consumer fills (started on the first call)."""
        if physical not in self.buffer:
            waiting = self.buffer[physical] = []
            arrived = self.arrived[physical] = asyncio.Event()

            logical = "working" if physical == self.topology.name("working") else "deliver"

            async def receive(message) -> None:
                waiting.append((self.link.generation, message))
                arrived.set()
                self.work.notify(logical)
            await self.link.consume(physical, receive, self.prefetch)
        return self.buffer[physical]

    async def _await_deliveries(self, physical: str, limit: int) -> None:
        """Wait for the consumer to receive what it can take now (see :meth:`claim`)."""
        held = sum(1 for claim in self.claims.values()
                   if not claim.done and self._consumed((claim.entry.queue,)) == physical)
        wanted = min(limit, await self.link.ready(physical), self.prefetch - held)
        deadline = time.monotonic() + (CLAIM_WAIT_READY if wanted > 0 else CLAIM_WAIT_IDLE)
        waiting, arrived = self.buffer[physical], self.arrived[physical]
        while len(waiting) < max(wanted, 1):
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                return

    async def _claim_one(self, message, physical: str, now: float) -> Entry | None:
        if self._left_behind(message):
            log.warning("%s: a copy left in %s by a transition this process made: dropped",
                        message.message_id, physical)
            await self._ack(message, message.message_id)
            return None
        try:
            entry, data = self._read(physical, message)
        except UnreadableEnvelope as err:
            await self._bury(message, physical, err.why)
            return None
        deliveries = delivery_count(message.headers or {})
        if deliveries >= CRASH_LOOP_LIMIT:
            await self._bury(message, physical, f"delivered {deliveries} times: a crash "
                             "loop? (move it back once its cause is fixed)")
            return None
        if entry.queue == "deferred" and (entry.envelope.next_attempt or 0) > now:
            await self._publish(entry.envelope, data, "deferred", entry.id)  # wait again
            await self._ack(message, entry.id)
            return None
        self._apply_kept(entry)
        self.claims[entry.id] = Claim(entry, message, entry.envelope.to_json(), data,
                                      self.link.generation)
        return entry

    def _logical(self, physical: str, message) -> str:
        """The queue a message is in: its physical queue's, but ``deferred`` for one a
        delay queue dead-lettered to ``deliver`` (due, as the spool's deferred messages
        are until claimed)."""
        headers = message.headers or {}
        queue = self.topology.logical(physical, headers)
        if queue == "deliver" and delayed(headers, self.topology.prefix):
            return "deferred"
        return queue

    async def _bury(self, message, physical: str, why: str) -> None:
        """A message that is no queued vSL message: to dead, with why, then acked."""
        msg_id = message.message_id or "(no id)"
        log.error("%s: not a queued message in %s (%s): moved to %s", msg_id, physical, why,
                  self.topology.name("dead"))
        headers = dict(message.headers or {}, **{"x-vsl-why": why})
        copy = self.link.aio_pika.Message(message.body, headers=headers, delivery_mode=2,
                                          message_id=message.message_id)
        await self.link.send(copy, self.topology.name("dead"))
        await self._ack(message, msg_id)

    async def _ack(self, message, msg_id: str) -> None:
        """Ack a delivery whose message was published onwards (QueueError when the
        connection is lost: the broker requeues it, so two copies stay)."""
        try:
            await message.ack()
        except self.link.lost_errors as err:
            raise QueueError(f"{msg_id}: published, but its old copy stays "
                             f"({plain(err)})") from None

    def _apply_kept(self, entry: Entry) -> None:
        """Mark delivered what the journal kept for ``entry``."""
        addresses = self.journal.kept.get(entry.id, ()) if self.journal else ()
        for rcpt in entry.envelope.recipients:
            if rcpt.address in addresses and not rcpt.done:
                rcpt.status = "delivered"

    def _holding(self, msg_id: str, queue: str | None = None) -> Claim | None:
        """The live claim of ``msg_id``, None when this process does not hold it."""
        claim = self.claims.get(msg_id)
        if claim is None or (queue is not None and claim.entry.queue != queue):
            return None
        if claim.done or claim.generation != self.link.generation:
            raise QueueError(f"{msg_id}: no longer in {claim.entry.queue} "
                             "(the broker connection was lost, or it was moved)")
        return claim

    async def _transition(self, claim: Claim, queue: str | None, envelope: bytes) -> None:
        """Publish the claimed message to ``queue`` (None: nowhere), then ack it."""
        if queue is not None:
            await self._publish(Envelope.from_json(envelope), claim.data, queue,
                                claim.entry.id)
        copy = (claim.message.headers or {}).get(COPY)
        if queue is None or isinstance(copy, str):  # (one without a token: not told apart)
            self._finish(claim.entry.id, None if queue is None else copy)
        try:
            await self._ack(claim.message, claim.entry.id)
        finally:
            claim.done = True
        if self.journal is not None:
            self.journal.forget(claim.entry.id)

    def _finish(self, msg_id: str, copy: str | None) -> None:
        """Remember a transition (the last FINISHED_IDS): ``msg_id`` completed (``copy``
        None), or its copy ``copy`` published onwards. Should its ack be lost (the
        connection), or a publish that timed out land after all, the copy left behind is
        dropped when this process claims it. Another process claims it as it is: the
        window design 16 section 3.7 documents."""
        self.finished.pop(msg_id, None)
        self.finished[msg_id] = copy
        if len(self.finished) > FINISHED_IDS:
            del self.finished[next(iter(self.finished))]

    def _left_behind(self, message) -> bool:
        """Whether ``message`` is a copy a transition of this process left (see
        :meth:`_finish`)."""
        if message.message_id not in self.finished:
            return False
        copy = self.finished[message.message_id]
        return copy is None or copy == (message.headers or {}).get(COPY)

    async def wait_for_work(self, queues: tuple[str, ...], timeout: float) -> None:
        """Until a consumer of ``queues`` receives a message, or ``timeout`` seconds."""
        await self.work.wait(queues, timeout)

    async def release(self, msg_id: str) -> None:
        """End a claim; a message not completed, deferred or moved is due again."""
        claim = self.claims.pop(msg_id, None)
        if claim is not None and not claim.done and claim.generation == self.link.generation:
            await self._requeue(claim.message)

    async def _requeue(self, message) -> None:
        """Give a delivery back to its queue (due again at once)."""
        try:
            await message.nack(requeue=True)
        except self.link.lost_errors:
            pass  # the connection is gone: the broker has requeued it

    async def complete(self, entry: Entry) -> None:
        """The message leaves the queue (acked)."""
        claim = self._holding(entry.id, entry.queue)
        if claim is None:
            raise QueueError(f"{entry.id}: not claimed by this process")
        await self._transition(claim, None, b"")

    async def defer(self, entry: Entry, until: float) -> None:
        """To the deferred level that ends at ``until`` (or just before), then acked."""
        claim = self._holding(entry.id, entry.queue)
        if claim is None:
            raise QueueError(f"{entry.id}: not claimed by this process")
        entry.envelope.next_attempt = until
        await self._transition(claim, "deferred", entry.envelope.to_json())

    async def update(self, entry: Entry, data: bytes | None = None,
                     delivered: list[str] = ()) -> None:
        """Kept with the claim until its transition (an unclaimed message is replaced
        in its queue); ``delivered`` goes to the journal at once."""
        if delivered and self.journal is not None and self.journal.record(entry.id,
                                                                           list(delivered)):
            self.journal.retain(entry.id, set(delivered))
            _keep_newest(self.journal.kept)
            self.journal.settled()
        claim = self._holding(entry.id, entry.queue)
        if claim is None:
            await self._replace(entry.id, entry.queue, entry.queue, entry.envelope, data)
            return
        claim.envelope = entry.envelope.to_json()
        claim.data = claim.data if data is None else data

    async def move(self, msg_id: str, target: str, queue: str | None = None) -> None:
        """To ``target``, durably (confirmed), then the old copy is acked."""
        check_queue(target)
        claim = self._holding(msg_id, queue)
        if claim is None:
            await self._replace(msg_id, queue, target)
            return
        await self._transition(claim, target, claim.envelope)

    async def recover_deliveries(self) -> None:
        """Load the journal: its addresses are applied as this process claims them."""
        if self.journal is not None:
            self.journal.keep(_keep_newest(self.journal.read()))

    async def recover(self) -> int:
        """Nothing is half stored on a broker."""
        return 0

    def startup_warnings(self) -> list[str]:
        """The link's, each queue declared with other arguments with what to do."""
        return [f"{warning}; {REDECLARE}" for warning in self.link.warnings]

    def quarantine_warnings(self) -> list[str]:
        return []

    # -- administration --------------------------------------------------------------------
    async def counts(self) -> dict[str, int]:
        """Ready messages per queue, by the names ``vsl queue`` shows (the spool's, in its
        order). Messages in flight (claimed by a worker or delivery) are not counted;
        ``deferred`` sums its delay queues (a due message back in ``P.deliver`` counts in
        ``deliver``), and ``quarantine`` counts every quarantine (one broker queue);
        telling those apart means reading them, as ``list`` does."""
        counts: dict[str, int] = {}
        async with self.link.admin_channel() as channel:
            for queue in (*QUEUES, "quarantine"):
                for physical in self.topology.physical(queue):
                    declared = await self.link.existing(channel, physical)
                    ready = declared.declaration_result.message_count
                    counts[queue] = counts.get(queue, 0) + ready
        return counts

    async def scan(self, queue: str | None = None, limit: int | None = None
                   ) -> tuple[list[Entry], list[UnreadableEnvelope]]:
        """Messages of one queue (or all), oldest first, and the unreadable ones; at most
        ``limit`` read (in queue order: each one read costs its whole body)."""
        entries, unreadable = [], []
        async with self.link.admin_channel() as channel:
            async for physical, message in self._held(channel, queue, limit):
                try:  # the body is dropped once read: the channel holds the delivery
                    entries.append(self._read(physical, message)[0])
                except UnreadableEnvelope as err:
                    unreadable.append(err)
        entries.sort(key=lambda e: e.envelope.received_at or 0)
        return [e for e in entries if queue is None or e.queue == queue], unreadable

    async def list(self, queue: str | None = None) -> list[Entry]:
        return (await self.scan(queue))[0]

    async def get(self, msg_id: str, queue: str | None = None) -> Entry:
        return (await self._find(msg_id, queue))[0]

    async def message(self, msg_id: str, queue: str | None = None) -> bytes:
        claim = self._holding(msg_id, queue)
        if claim is not None:
            return claim.data
        return (await self._find(msg_id, queue))[1]

    async def locate(self, msg_id: str) -> str:
        """Its queue (an unreadable message's too: it can be held, moved or removed)."""
        async with self.link.admin_channel() as channel:
            physical, message = await self._get_one(channel, msg_id, None)
            return self._logical(physical, message)

    async def remove(self, msg_id: str, queue: str | None = None) -> None:
        await self._replace(msg_id, queue, None)

    async def _find(self, msg_id: str, queue: str | None) -> tuple[Entry, bytes]:
        async with self.link.admin_channel() as channel:
            physical, message = await self._get_one(channel, msg_id, queue)
            return self._read(physical, message)

    async def _replace(self, msg_id: str, queue: str | None, target: str | None,
                       envelope: Envelope | None = None, data: bytes | None = None) -> None:
        """Find an unclaimed message, publish it (or the edited copy) to ``target`` (None:
        nowhere), then ack the old one. An unreadable message moves as it is."""
        async with self.link.admin_channel() as channel:
            physical, message = await self._get_one(channel, msg_id, queue)
            if target is not None and envelope is None:
                await self._forward(physical, message, target)
            elif target is not None:
                old_data = self._read(physical, message)[1]
                await self._publish(envelope, old_data if data is None else data, target,
                                    msg_id)
            await message.ack()

    async def _forward(self, physical: str, message, target: str) -> None:
        """Publish a held message unchanged to ``target`` (an unreadable one as it is: an
        operator may hold it, or move it where a fixed vSL reads it)."""
        try:
            entry, data = self._read(physical, message)
        except UnreadableEnvelope:
            if target == "deferred":
                raise QueueError("an unreadable envelope cannot be deferred") from None
            headers = {k: v for k, v in (message.headers or {}).items()
                       if k != "x-vsl-quarantine"}
            if target.startswith("quarantine/"):
                headers["x-vsl-quarantine"] = target.removeprefix("quarantine/")
            copy = self.link.aio_pika.Message(message.body, headers=headers, delivery_mode=2,
                                              message_id=message.message_id)
            await self.link.send(copy, self.topology.name(target))
            return
        await self._publish(entry.envelope, data, target, entry.id)

    async def _get_one(self, channel, msg_id: str, queue: str | None):
        """The held message ``msg_id``, read up to it (QueueError when it is not on the
        broker's shelf)."""
        async with contextlib.aclosing(self._held(channel, queue)) as held:
            async for physical, message in held:
                if message.message_id == msg_id and (
                        queue is None or self._logical(physical, message) == queue):
                    return physical, message
        where = queue or "any queue"
        raise QueueError(f"not in {where} (being delivered, or moved)")

    async def _held(self, channel, queue: str | None, limit: int | None = None):
        """Each ready message of ``queue``'s physical queues (``deferred``: its delay
        queues and ``deliver``), at most ``limit``, held on ``channel``: closing it
        requeues them all."""
        if queue is not None:
            check_queue(queue)
        count = 0
        due = [self.topology.name("deliver")] if queue == "deferred" else []
        for physical in self.topology.physical(queue) + due:
            declared = await self.link.existing(channel, physical)
            while limit is None or count < limit:
                message = await declared.get(no_ack=False, fail=False)
                if message is None:
                    break
                count += 1
                yield physical, message

    def _read(self, physical: str, message) -> tuple[Entry, bytes]:
        """The entry and bytes of a message read from ``physical`` (UnreadableEnvelope,
        with where it is, when it is no queued vSL message)."""
        queue = self._logical(physical, message)
        try:
            return decode(message.body, message.headers or {}, message.message_id, queue)
        except Poison as why:
            where = f"amqp:{physical}#{message.message_id}"
            raise UnreadableEnvelope(message.message_id or "(no id)", queue, where,
                                     str(why)) from None


def prefetch_for(concurrency: int, message_size: int) -> int:
    """A consumer's prefetch: ``concurrency`` deliveries, fewer when that many messages
    of the largest size (``message_size`` bytes) would hold more than PREFETCH_BYTES in
    this process; at least 1."""
    return max(min(concurrency, PREFETCH_BYTES // max(message_size, 1)), 1)


def _keep_newest(kept: dict[str, set[str]]) -> dict[str, set[str]]:
    """``kept`` (journal lines by message id) cut to its KEPT_IDS newest ids (vSL's ids
    sort by time), in place."""
    for msg_id in sorted(kept)[:max(len(kept) - KEPT_IDS, 0)]:
        del kept[msg_id]
    return kept
