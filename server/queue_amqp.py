"""The mail queue on a RabbitMQ broker: :class:`AmqpQueue` implements
server/queue_backend.py's :class:`QueueBackend` over AMQP 0-9-1 (aio-pika), so receivers,
workers and delivery processes on several machines share one queue.

Design (docs: design 16, section 3):

- **Topology and messages** are server/queue_amqp_codec.py's. Every transition publishes
  the message to its next queue, waits for the broker's confirm, and only then acks the
  delivery it came from: nothing is acked before the next queue holds it (at least once;
  a crash in between leaves two copies, never none).
- **A claim** is a delivery this process holds unacked: id -> :class:`Claim`. Consumers
  fill a local buffer and :meth:`AmqpQueue.claim` takes from it. Only the holder of a
  delivery tag can ack it, so "moved meanwhile" holds by construction. An ``update`` of a
  claimed entry stays with the claim (AMQP messages are immutable) and is published by its
  transition; addresses a remote accepted go to the local delivery journal at once and
  are applied when this process claims the message again or restarts.
- **The connection** is this module's own: one connect loop with back-off (1, 2 ... 30 s)
  that also reconnects after a loss; meanwhile ``put`` and the rest raise QueueError. A
  claim made on a lost connection is void: the broker has requeued its message.
- **Admin reads** (``list``, ``get``, ...) ``basic_get`` a queue to its end on a channel of
  their own, holding every message, then requeue them all (closing the channel would
  too): O(n), and blind to messages in flight.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from vsl.stdlib.support.state.urls import redacted

from .envelope import Envelope
from .journal import Journal
from .queue_amqp_codec import Poison, Topology, decode, delay_level, encode
from .queue_backend import Entry, QueueError, UnreadableEnvelope, check_queue, new_id

log = logging.getLogger("vsl.queue")
LOG_EVERY = 60.0       # s between two log lines of a broker that stays unreachable
MAX_BACKOFF = 30.0
MIN_VERSION = (3, 10)  # at-least-once dead-lettering of quorum queues


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

    def __init__(self, url: str, prefix: str = "vsl", journal: str | Path | None = None,
                 queue_type: str = "quorum", confirm_timeout: float = 30.0,
                 connect_timeout: float = 5.0):
        import aio_pika  # only when the backend is chosen
        import aiormq.exceptions
        self.aio_pika, self.errors = aio_pika, aiormq.exceptions
        self.url, self.shown_url = url, redacted(url)
        self.topology = Topology(prefix, queue_type)
        self.journal = Journal(Path(journal)) if journal else None
        self.confirm_timeout, self.connect_timeout = confirm_timeout, connect_timeout
        self.connection = self.publisher = self.consumer = None
        self.generation = 0
        self.claims: dict[str, Claim] = {}
        self.buffer: dict[str, list] = {}  # consumed physical queue -> messages not claimed
        self.consumed: set[str] = set()  # the physical queues claim() takes from
        self.prefetch = 1
        self.warnings: list[str] = []
        self._supervisor: asyncio.Task | None = None
        self._lost = asyncio.Event()
        self._logged_at = -LOG_EVERY

    @classmethod
    def of(cls, config) -> AmqpQueue:
        """The backend ``config.queue`` describes, with ``config``'s delivery journal."""
        queue = config.queue
        try:
            url = queue.resolved_url()
        except ValueError as err:
            raise QueueError(str(err)) from None
        return cls(url, queue.prefix, config.delivery.journal or
                   config.queue_dir / "delivered.journal", queue.queue_type,
                   queue.confirm_timeout, queue.connect_timeout)

    # -- the connection ------------------------------------------------------------------
    async def open(self) -> None:
        """Connect and declare the topology. QueueError when the broker refuses the login
        or the vhost (that never works); an unreachable broker is logged and retried in
        the background."""
        for name in ("aiormq", "aio_pika"):
            logging.getLogger(name).setLevel(logging.WARNING)
        if self._supervisor is not None:
            return
        errors = self.errors
        try:
            await self._connect()
        except (errors.ProbableAuthenticationError, errors.AuthenticationError):
            raise QueueError(f"queue.url {self.shown_url}: login refused") from None
        except (errors.ConnectionNotAllowed, errors.InvalidFrameError):
            # an unknown vhost (or one the user may not use) closes the connection
            raise QueueError(f"queue.url {self.shown_url}: login refused (vhost "
                             "unknown or not allowed)") from None
        except QueueError:
            raise
        except Exception as err:  # noqa: BLE001 - unreachable: retried in the background
            self._log_unreachable(err)
        self._supervisor = asyncio.create_task(self._keep_connected())

    async def _keep_connected(self) -> None:
        backoff = 1.0
        while True:
            if self.connection is not None:
                await self._lost.wait()
                self._forget_connection()
                backoff = 1.0
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            try:
                await self._connect()
                log.info("queue broker %s: connected", self.shown_url)
            except Exception as err:  # noqa: BLE001 - logged, retried
                self._log_unreachable(err)

    async def _connect(self) -> None:
        connection = await self.aio_pika.connect(self.url, timeout=self.connect_timeout)
        try:
            self._check_version(connection)
            publisher = await connection.channel(publisher_confirms=True)
            await self._declare(connection, publisher)
            consumer = await connection.channel(publisher_confirms=False)
            await consumer.set_qos(prefetch_count=self.prefetch)
        except BaseException:
            await connection.close()
            raise
        self._lost.clear()
        connection.close_callbacks.add(lambda *_: self._lost.set())
        self.connection, self.publisher, self.consumer = connection, publisher, consumer
        self.generation += 1
        for physical in list(self.consumed):
            await self._consume(physical)

    def _check_version(self, connection) -> None:
        properties = connection.transport.connection.server_properties
        version = str(properties.get("version", "0"))
        numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
        if numbers < MIN_VERSION:
            raise QueueError(f"queue.url {self.shown_url}: RabbitMQ {version} is too old "
                             f"(3.10 or later dead-letters quorum queues at least once)")
        if numbers >= (4, 0):
            self.topology = Topology(self.topology.prefix, self.topology.queue_type, False)

    async def _declare(self, connection, channel) -> None:
        """Declare every queue; one whose arguments differ (declared by another version)
        is used as it is, with a warning."""
        for name, arguments in self.topology.declarations().items():
            try:
                await channel.declare_queue(name, durable=True, arguments=arguments)
            except self.errors.ChannelPreconditionFailed as err:
                warning = f"queue {name}: declared with other arguments, used as it is ({err})"
                if warning not in self.warnings:
                    self.warnings.append(warning)
                    log.warning("%s", warning)
                await channel.reopen()
                await channel.declare_queue(name, passive=True)

    def _forget_connection(self) -> None:
        """The connection is gone: its deliveries are back on the broker."""
        self.connection = self.publisher = self.consumer = None
        self.buffer.clear()

    def _log_unreachable(self, err: BaseException) -> None:
        if time.monotonic() - self._logged_at >= LOG_EVERY:
            self._logged_at = time.monotonic()
            log.error("queue broker %s: unreachable (%s); retrying", self.shown_url,
                      _plain(err))

    async def close(self) -> None:
        """Stop reconnecting, requeue what this process holds, close the connection."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None
        connection = self.connection
        self._forget_connection()
        self.claims.clear()
        self.consumed.clear()
        if connection is not None and not connection.is_closed:
            await connection.close()  # unacked deliveries go back to their queues
        if self.journal is not None:
            self.journal.close()

    # -- publishing ----------------------------------------------------------------------
    async def _publish(self, envelope: Envelope, data: bytes, queue: str, msg_id: str
                       ) -> None:
        """Publish to ``queue`` and wait for the confirm; ``deferred`` is the level that
        ends at the envelope's ``next_attempt`` (or just before)."""
        message = self.aio_pika.Message(**encode(envelope, data, queue, msg_id))
        if queue == "deferred":
            level = delay_level((envelope.next_attempt or 0) - time.time())
            await self._send(message, self.topology.deferred(level)[0])
        else:
            await self._send(message, self.topology.name(queue))

    async def _send(self, message, routing_key: str) -> None:
        """Publish and wait for the broker's confirm; QueueError with a plain text when
        it does not come (refused, returned, timed out, or no connection)."""
        if self.publisher is None:
            raise QueueError(f"queue broker {self.shown_url}: not connected")
        try:
            if self.publisher.is_closed:
                await self.publisher.reopen()
            confirm = await asyncio.wait_for(self.publisher.default_exchange.publish(
                message, routing_key=routing_key, mandatory=True), self.confirm_timeout)
        except asyncio.TimeoutError:
            raise QueueError(f"no confirm from the broker within {self.confirm_timeout:g} s "
                             "(a memory or disk alarm?)") from None
        except self.errors.DeliveryError:
            raise QueueError(f"the broker refused the message for {routing_key} "
                             "(queue full?)") from None
        except (self.errors.AMQPError, RuntimeError, OSError) as err:
            raise QueueError(f"queue broker {self.shown_url}: {_plain(err)}") from None
        if type(confirm).__name__ != "Ack":  # a Basic.Return: no such queue
            raise QueueError(f"the broker returned the message: no queue {routing_key}")

    async def put(self, envelope: Envelope, data: bytes, queue: str = "working",
                  msg_id: str | None = None) -> str:
        """Publish a new message; its id, once the broker has confirmed it."""
        check_queue(queue)
        msg_id = msg_id or new_id()
        stored = Envelope.from_json(envelope.to_json())
        stored.id, stored.received_at = msg_id, stored.received_at or time.time()
        await self._publish(stored, data, queue, msg_id)
        return msg_id

    # -- claims and transitions ------------------------------------------------------------
    async def claim(self, limit: int, now: float,
                    queues: tuple[str, ...] = ("deliver", "deferred")) -> list[Entry]:
        """Up to ``limit`` messages the consumers have received, now claimed. ``deferred``
        messages reach ``deliver`` when their delay ends; one back before its
        ``next_attempt`` waits again for the rest."""
        physical = self.topology.name("working" if "working" in queues else "deliver")
        if physical not in self.consumed:
            self.consumed.add(physical)
            self.prefetch = max(limit, 1)
            if self.consumer is not None:
                await self.consumer.set_qos(prefetch_count=self.prefetch)
                await self._consume(physical)
        claimed, waiting, kept = [], self.buffer.get(physical, []), []
        while waiting and len(claimed) < limit:
            message = waiting.pop(0)
            if message.message_id in self.claims:
                kept.append(message)  # a second copy of one this process holds
            elif (entry := await self._claim_one(message, physical, now)) is not None:
                claimed.append(entry)
        waiting[:0] = kept
        return claimed

    async def _consume(self, physical: str) -> None:
        waiting = self.buffer.setdefault(physical, [])

        async def receive(message) -> None:
            waiting.append(message)
        queue = await self.consumer.declare_queue(physical, passive=True)
        await queue.consume(receive)

    async def _claim_one(self, message, physical: str, now: float) -> Entry | None:
        try:
            entry, data = self._read(physical, message)
        except UnreadableEnvelope as err:
            await self._bury(message, physical, err.why)
            return None
        if entry.queue == "deliver" and (entry.envelope.next_attempt or 0) > now:
            await self._publish(entry.envelope, data, "deferred", entry.id)  # wait again
            await message.ack()
            return None
        self._apply_kept(entry)
        self.claims[entry.id] = Claim(entry, message, entry.envelope.to_json(), data,
                                      self.generation)
        return entry

    async def _bury(self, message, physical: str, why: str) -> None:
        """A message that is no queued vSL message: to dead, with why, then acked."""
        msg_id = message.message_id or "(no id)"
        log.error("%s: not a queued message in %s (%s): moved to %s", msg_id, physical, why,
                  self.topology.name("dead"))
        headers = dict(message.headers or {}, **{"x-vsl-why": why})
        await self._send(self.aio_pika.Message(message.body, headers=headers, delivery_mode=2,
                                               message_id=message.message_id),
                         self.topology.name("dead"))
        await message.ack()

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
        if claim.done or claim.generation != self.generation:
            raise QueueError(f"{msg_id}: no longer in {claim.entry.queue} "
                             "(the broker connection was lost, or it was moved)")
        return claim

    async def _transition(self, claim: Claim, queue: str | None, envelope: bytes) -> None:
        """Publish the claimed message to ``queue`` (None: nowhere), then ack it."""
        if queue is not None:
            stored = Envelope.from_json(envelope)
            if queue != "working" and getattr(stored, "context", None) is not None:
                stored.context = None  # the hand-off is for on_post_queue only
            await self._publish(stored, claim.data, queue, claim.entry.id)
        try:
            await claim.message.ack()
        except (self.errors.AMQPError, RuntimeError, OSError) as err:
            raise QueueError(f"{claim.entry.id}: published, but its old copy stays "
                             f"({_plain(err)})") from None
        finally:
            claim.done = True
        if self.journal is not None:
            self.journal.forget(claim.entry.id)

    async def release(self, msg_id: str) -> None:
        """End a claim; a message not completed, deferred or moved is due again."""
        claim = self.claims.pop(msg_id, None)
        if claim is not None and not claim.done and claim.generation == self.generation:
            try:
                await claim.message.nack(requeue=True)
            except (self.errors.AMQPError, RuntimeError, OSError):
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
            self.journal.keep(self.journal.read())

    async def recover(self) -> int:
        """Nothing is half stored on a broker."""
        return 0

    def startup_warnings(self) -> list[str]:
        return list(self.warnings)

    def quarantine_warnings(self) -> list[str]:
        return []

    # -- administration --------------------------------------------------------------------
    async def counts(self) -> dict[str, int]:
        """Ready messages per queue (those in flight are not counted; ``deferred`` sums its
        levels, ``quarantine`` every quarantine)."""
        counts: dict[str, int] = {}
        async with self._admin_channel() as channel:
            for queue in ("working", "deliver", "deferred", "hold", "dead", "quarantine"):
                for physical in self.topology.physical(queue):
                    declared = await channel.declare_queue(physical, passive=True)
                    counts[queue] = counts.get(queue, 0) + declared.declaration_result.message_count
        return counts

    async def scan(self, queue: str | None = None
                   ) -> tuple[list[Entry], list[UnreadableEnvelope]]:
        """Messages of one queue (or all), and the unreadable ones."""
        async with self._admin_channel() as channel:
            held = await self._get_all(channel, queue)
        entries, unreadable = [], []
        for physical, message in held:
            try:
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
        return (await self._find(msg_id, queue))[1]

    async def locate(self, msg_id: str) -> str:
        return (await self._find(msg_id, None))[0].queue

    async def remove(self, msg_id: str, queue: str | None = None) -> None:
        await self._replace(msg_id, queue, None)

    async def _find(self, msg_id: str, queue: str | None) -> tuple[Entry, bytes]:
        async with self._admin_channel() as channel:
            physical, message = await self._get_one(channel, msg_id, queue)
            return self._read(physical, message)

    async def _replace(self, msg_id: str, queue: str | None, target: str | None,
                       envelope: Envelope | None = None, data: bytes | None = None) -> None:
        """Find an unclaimed message, publish it (or the edited copy) to ``target`` (None:
        nowhere), then ack the old one."""
        async with self._admin_channel() as channel:
            physical, message = await self._get_one(channel, msg_id, queue)
            entry, old_data = self._read(physical, message)
            if target is not None:
                stored = envelope or entry.envelope
                if target != "working" and getattr(stored, "context", None) is not None:
                    stored.context = None
                await self._publish(stored, old_data if data is None else data, target,
                                    msg_id)
            await message.ack()

    async def _get_one(self, channel, msg_id: str, queue: str | None):
        """The held message ``msg_id`` (QueueError when it is not on the broker's shelf)."""
        for physical, message in await self._get_all(channel, queue):
            if message.message_id == msg_id and (
                    queue is None or self.topology.logical(physical, message.headers or {})
                    == queue):
                return physical, message
        where = queue or "any queue"
        raise QueueError(f"{msg_id}: not in {where} (being delivered, or moved)")

    async def _get_all(self, channel, queue: str | None) -> list[tuple[str, object]]:
        """Every ready message of ``queue``'s physical queues, held on ``channel``."""
        if queue is not None:
            check_queue(queue)
        held = []
        for physical in self.topology.physical(queue):
            declared = await channel.declare_queue(physical, passive=True)
            while (message := await declared.get(no_ack=False, fail=False)) is not None:
                held.append((physical, message))
        return held

    def _read(self, physical: str, message) -> tuple[Entry, bytes]:
        try:
            return decode(message.body, message.headers or {}, message.message_id,
                          self.topology.logical(physical, message.headers or {}))
        except Poison as why:
            queue = self.topology.logical(physical, message.headers or {})
            raise UnreadableEnvelope(message.message_id or "(no id)", queue,
                                     f"amqp:{physical}#{message.message_id}", str(why)) from None

    def _admin_channel(self):
        """A channel of its own, closed after use: what it holds goes back to the queues."""
        if self.connection is None:
            raise QueueError(f"queue broker {self.shown_url}: not connected")
        return _ClosingChannel(self.connection)


class _ClosingChannel:
    """``async with``: a channel whose unacked messages are requeued when it closes."""

    def __init__(self, connection):
        self.connection, self.channel = connection, None

    async def __aenter__(self):
        self.channel = await self.connection.channel(publisher_confirms=False)
        return self.channel

    async def __aexit__(self, *exc) -> None:
        if not self.channel.is_closed:
            await self.channel.close()


def _plain(err: BaseException) -> str:
    """An error as text for an operator: no class name (and aio-pika masks passwords)."""
    text = str(err).strip() or "connection lost"
    return text.replace("\n", " ")[:300]
