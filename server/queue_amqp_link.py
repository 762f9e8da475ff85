"""The AMQP queue backend's connection to its broker (server/queue_amqp.py uses it): one
connection, kept up by a loop of this module's own, with a publishing channel (publisher
confirms) and a consuming one.

- **Connecting:** :meth:`BrokerLink.open` tries once. A refused login or vhost never heals:
  QueueError. An unreachable broker is tried again in the background, and so is a lost
  connection: one attempt a second for the first STEADY_RETRIES (a broker restart takes
  3-4 s), then with back-off (2, 4 ... 30 s). The failures are logged (on ``vsl.queue``,
  at most once a minute) by the retries (the first one a second after ``open``), never by
  the first attempt: a one-shot caller (``vsl queue``), done by then, gets one QueueError
  naming the cause, and no "retrying" line. aio-pika's robust connection is not used: its first connect, when it
  fails, keeps retrying behind the caller's back, and its restored channels would carry
  deliveries the broker has already requeued.
- **Generations:** every consuming channel has a number. A delivery received on an older
  one is void (the broker requeued it when that channel or its connection closed):
  whoever holds one checks :attr:`BrokerLink.generation` before acking.
- **A consumer the broker drops** is restored like a lost connection: the broker closes
  the consuming channel (an ack it does not know; ``consumer_timeout``, 30 min by
  default, for a delivery held longer) or cancels a consumer (its queue deleted) while
  the connection stays up. The link then opens a new consuming channel (a new generation)
  and consumes again; should that fail, it reconnects (declaring the topology again).
  What holds against ``consumer_timeout``: a delivery claim's MX attempts run at once,
  each within ``mx_attempt_timeout`` (600 s), well under 30 min. Nothing in vSL bounds
  another transport or an ``on_post_queue`` script that long: should one outlast the
  broker's limit, the broker requeues the message, its transition fails as on a lost
  connection, and it is delivered again (at least once). Such a site raises the
  broker's ``consumer_timeout``.
- **No call waits without a bound:** a memory or disk alarm blocks the whole connection
  (the broker stops reading it), so every RPC has ``connect_timeout`` (a connect, as a
  whole, CONNECT_STEPS times that), a publish has ``confirm_timeout``, and closing has
  ``connect_timeout``. An RPC cancelled by its timeout makes aiormq close its channel, so
  :meth:`BrokerLink.ready` asks on a channel of its own, never the publisher's.
- **Publishing** (:meth:`BrokerLink.send`) waits for the broker's confirm; a nack, a
  return, a timeout or a lost or closed connection is a QueueError with a plain text,
  never an exception's class name or the URL's password.
- **The topology** is declared at every connect; a queue declared earlier with other
  arguments is used as it is, with one warning.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from vsl.stdlib.support.urls import redacted

from .queue_amqp_codec import Topology
from .queue_backend import QueueError

log = logging.getLogger("vsl.queue")
LOG_EVERY = 60.0       # s between two log lines of a broker that stays unreachable
STEADY_RETRIES = 10    # attempts a second after a loss, before the back-off
MAX_BACKOFF = 30.0
CONNECT_STEPS = 3      # a whole connect (handshake, channels, declares) in connect_timeouts
MIN_VERSION = (3, 10)  # at-least-once dead-lettering of quorum queues

Receiver = Callable[[object], Awaitable[None]]  # called with each aio_pika.IncomingMessage


def retry_delay(attempt: int) -> float:
    """Seconds before reconnect attempt ``attempt`` (0: the first) of one outage."""
    if attempt < STEADY_RETRIES:
        return 1.0
    return min(2.0 ** (attempt - STEADY_RETRIES + 1), MAX_BACKOFF)


class BrokerLink:
    """One broker connection and its channels (see the module docstring)."""

    def __init__(self, url: str, topology: Topology, confirm_timeout: float = 30.0,
                 connect_timeout: float = 5.0):
        import aio_pika  # only when the backend is chosen: the spool never loads it
        import aiormq.exceptions
        from pamqp.commands import Basic
        self.aio_pika, self.errors, self.ack = aio_pika, aiormq.exceptions, Basic.Ack
        self.url, self.shown_url = url, redacted(url)
        self.topology = topology
        self.confirm_timeout, self.connect_timeout = confirm_timeout, connect_timeout
        self.connection = self.publisher = self.consumer = None
        self.generation = 0
        self.prefetch = 1
        self.receivers: dict[str, Receiver] = {}  # consumed physical queue -> its receiver
        self.warnings: list[str] = []
        self._supervisor: asyncio.Task | None = None
        self._broken = asyncio.Event()  # the connection or the consuming channel failed
        self._failure = ""  # why the last connect failed, for "not connected" errors
        self._logged_at = -LOG_EVERY

    @property
    def lost_errors(self) -> tuple[type, ...]:
        """What an ack or a nack raises once the connection is gone."""
        return (self.errors.AMQPError, RuntimeError, OSError)

    async def open(self) -> None:
        """Connect (see the module docstring for what fails and what is retried)."""
        logging.getLogger("aio_pika").setLevel(logging.WARNING)
        # aiormq logs an ERROR at each failed connect: this link says it, once a minute
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)
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
            self._failure = plain(err)
        self._supervisor = asyncio.create_task(self._keep_connected())

    async def close(self) -> None:
        """Stop reconnecting and close the connection (the broker requeues every
        delivery not acked)."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None
        connection = self.connection
        self.connection = self.publisher = self.consumer = None
        self.receivers.clear()
        await self._close_bounded(connection)

    async def consume(self, physical: str, receiver: Receiver, prefetch: int) -> None:
        """Hand every message of ``physical`` to ``receiver``, now and after reconnects."""
        self.receivers[physical] = receiver
        self.prefetch = max(prefetch, 1)
        if self.consumer is not None:
            try:
                await self.consumer.set_qos(prefetch_count=self.prefetch,
                                            timeout=self.connect_timeout)
                await self._consume(self.consumer, physical)
            except self.lost_errors as err:  # the broker went away meanwhile: the reconnect
                raise QueueError(f"queue broker {self.shown_url}: {plain(err)}") from None

    async def ready(self, physical: str) -> int:
        """How many messages ``physical`` holds ready (0 when that cannot be known now)."""
        if self.connection is None:
            return 0
        try:
            return await asyncio.wait_for(self._count_ready(physical), self.connect_timeout)
        except (asyncio.TimeoutError, QueueError, *self.lost_errors):
            return 0

    async def _count_ready(self, physical: str) -> int:
        async with self.admin_channel() as channel:
            declared = await self._passive(channel, physical)
        return declared.declaration_result.message_count

    async def existing(self, channel, physical: str):
        """``physical``, declared passively on ``channel`` (its ready count in
        ``declaration_result``); QueueError when the broker does not answer in time."""
        try:
            return await self._passive(channel, physical)
        except asyncio.TimeoutError:
            raise self._no_answer() from None

    async def _passive(self, channel, physical: str):
        return await channel.declare_queue(physical, passive=True,
                                           timeout=self.connect_timeout)

    async def send(self, message, routing_key: str) -> None:
        """Publish and wait for the broker's confirm; QueueError with a plain text when
        it does not come (refused, returned, timed out, or no connection)."""
        try:
            publisher = await self._publisher()
            confirm = await asyncio.wait_for(publisher.default_exchange.publish(
                message, routing_key=routing_key, mandatory=True), self.confirm_timeout)
        except asyncio.TimeoutError:
            raise QueueError(f"no confirm from the broker within {self.confirm_timeout:g} s "
                             "(a memory or disk alarm?)") from None
        except self.errors.DeliveryError:
            raise QueueError(f"the broker refused the message for {routing_key} "
                             "(queue full?)") from None
        except self.lost_errors as err:
            raise QueueError(f"queue broker {self.shown_url}: {plain(err)}") from None
        if not isinstance(confirm, self.ack):  # a Basic.Return: no such queue
            raise QueueError(f"the broker returned the message: no queue {routing_key}")

    async def _publisher(self):
        """The publishing channel, reopened when a refused publish (too large) or a
        missing queue closed it."""
        publisher = self.publisher
        if publisher is not None and publisher.is_closed:
            await asyncio.wait_for(publisher.reopen(), self.connect_timeout)
        if self.publisher is None:  # never connected, or lost meanwhile
            raise self._not_connected()
        return self.publisher

    def admin_channel(self) -> _ClosingChannel:
        """``async with``: a channel of its own; what it holds unacked goes back to the
        queues when it closes."""
        if self.connection is None:
            raise self._not_connected()
        return _ClosingChannel(self)

    def _no_answer(self) -> QueueError:
        return QueueError(f"queue broker {self.shown_url}: no answer within "
                          f"{self.connect_timeout:g} s (a memory or disk alarm?)")

    def _not_connected(self) -> QueueError:
        why = f" ({self._failure})" if self._failure else ""
        return QueueError(f"queue broker {self.shown_url}: not connected{why}")

    async def _close_bounded(self, closable) -> None:
        """Close a connection or a channel, giving up after ``connect_timeout`` (a
        blocked connection never answers)."""
        if closable is not None and not closable.is_closed:
            with contextlib.suppress(asyncio.TimeoutError, *self.lost_errors):
                await asyncio.wait_for(closable.close(), self.connect_timeout)

    # -- connecting ------------------------------------------------------------------------
    async def _keep_connected(self) -> None:
        attempt = 0
        while True:
            if self.connection is not None:
                await self._broken.wait()
                if await self._restore_consumer():
                    continue
                log.warning("queue broker %s: connection lost; reconnecting", self.shown_url)
                await self._drop_connection()
                attempt = 0
            await asyncio.sleep(retry_delay(attempt))
            attempt += 1
            try:
                await self._connect()
                log.info("queue broker %s: connected", self.shown_url)
            except Exception as err:  # noqa: BLE001 - logged, retried
                self._failure = plain(err)
                self._log_unreachable()

    async def _drop_connection(self) -> None:
        connection = self.connection
        self.connection = self.publisher = self.consumer = None
        await self._close_bounded(connection)

    async def _connect(self) -> None:
        limit = self.connect_timeout * CONNECT_STEPS
        try:
            await asyncio.wait_for(self._connect_once(), limit)
        except asyncio.TimeoutError:
            raise ConnectionError(f"no answer within {limit:g} s") from None
        self._failure = ""

    async def _connect_once(self) -> None:
        connection = await self.aio_pika.connect(self.url, timeout=self.connect_timeout)
        try:
            self._check_version(connection)
            publisher = await connection.channel(publisher_confirms=True)
            await self._declare(publisher)
            self._broken.clear()
            self.connection, self.publisher = connection, publisher
            consumer = await self._open_consumer()
        except BaseException:
            self.connection = self.publisher = None
            await self._close_bounded(connection)
            raise
        connection.close_callbacks.add(lambda *_: self._break_if(connection, self.connection))
        self.consumer = consumer

    async def _restore_consumer(self) -> bool:
        """After the consuming channel failed: a new one, if the connection is still up
        (True), else False."""
        old, self.consumer = self.consumer, None
        if self.connection is None or self.connection.is_closed:
            return False
        self._broken.clear()
        await self._close_bounded(old)  # requeues what it held: those claims are void
        try:
            self.consumer = await asyncio.wait_for(self._open_consumer(),
                                                   self.connect_timeout * CONNECT_STEPS)
        except Exception:  # noqa: BLE001 - the connection is reset instead
            return False
        log.warning("queue broker %s: a consumer was closed or cancelled by the broker; "
                    "consuming again", self.shown_url)
        return True

    async def _open_consumer(self):
        """A consuming channel, watched, consuming every queue received so far: a new
        generation."""
        consumer = await self.connection.channel(publisher_confirms=False)
        await consumer.set_qos(prefetch_count=self.prefetch, timeout=self.connect_timeout)
        consumer.close_callbacks.add(lambda *_: self._break_if(consumer, self.consumer))
        underlay = await consumer.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(
            lambda *_: self._break_if(consumer, self.consumer))
        self.generation += 1
        for physical in list(self.receivers):
            await self._consume(consumer, physical)
        return consumer

    def _break_if(self, failed, current) -> None:
        """Wake the supervisor when what failed is still in use (not one closed here)."""
        if failed is current:
            self._broken.set()

    async def _consume(self, consumer, physical: str) -> None:
        queue = await self._passive(consumer, physical)
        await queue.consume(self.receivers[physical], timeout=self.connect_timeout)

    def _check_version(self, connection) -> None:
        properties = connection.transport.connection.server_properties
        version = str(properties.get("version", "0"))
        numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
        if numbers < MIN_VERSION:
            raise QueueError(f"queue.url {self.shown_url}: RabbitMQ {version} is too old "
                             f"(3.10 or later dead-letters quorum queues at least once)")
        if numbers >= (4, 0):  # x-max-in-memory-length is gone: bodies stay on disk
            self.topology = Topology(self.topology.prefix, self.topology.queue_type, False)

    async def _declare(self, channel) -> None:
        """Declare every queue; one whose arguments differ (declared by another version)
        is used as it is, with a warning."""
        for name, arguments in self.topology.declarations().items():
            try:
                await channel.declare_queue(name, durable=True, arguments=arguments,
                                            timeout=self.connect_timeout)
            except self.errors.ChannelPreconditionFailed as err:
                warning = f"queue {name}: declared with other arguments, used as it is ({err})"
                if warning not in self.warnings:
                    self.warnings.append(warning)
                    log.warning("%s", warning)
                await channel.reopen()
                await self._passive(channel, name)

    def _log_unreachable(self) -> None:
        if time.monotonic() - self._logged_at >= LOG_EVERY:
            self._logged_at = time.monotonic()
            log.error("queue broker %s: unreachable (%s); retrying", self.shown_url,
                      self._failure)


class _ClosingChannel:
    """``async with``: a channel whose unacked messages are requeued when it closes."""

    def __init__(self, link: BrokerLink):
        self.link, self.channel = link, None

    async def __aenter__(self):
        try:
            self.channel = await asyncio.wait_for(
                self.link.connection.channel(publisher_confirms=False),
                self.link.connect_timeout)
        except asyncio.TimeoutError:
            raise self.link._no_answer() from None
        return self.channel

    async def __aexit__(self, *exc) -> None:
        await self.link._close_bounded(self.channel)


def plain(err: BaseException) -> str:
    """An error as text for an operator: no class name (and aio-pika masks passwords)."""
    text = str(err).strip() or "connection lost"
    return text.replace("\n", " ")[:300]
