"""The AMQP queue backend's connection to its broker (server/queue_amqp.py uses it): one
connection, kept up by a loop of this module's own, with a publishing channel (publisher
confirms) and a consuming one.

- **Connecting:** :meth:`BrokerLink.open` tries once. A refused login or vhost never heals:
  QueueError. An unreachable broker is logged (on ``vsl.queue``, at most once a minute)
  and tried again in the background with back-off (1, 2, 4 ... 30 s); a lost connection
  is reconnected the same way. aio-pika's robust connection is not used: its first
  connect, when it fails, keeps retrying behind the caller's back, and its restored
  channels would carry deliveries the broker has already requeued.
- **Generations:** every connection has a number. A delivery received on an older one
  is void (the broker requeued it when the connection dropped): whoever holds one checks
  :attr:`BrokerLink.generation` before acking.
- **Publishing** (:meth:`BrokerLink.send`) waits for the broker's confirm, under
  ``confirm_timeout`` (a memory alarm blocks a publish without an error); a nack, a
  return, a timeout or a lost connection is a QueueError with a plain text, never an
  exception's class name or the URL's password.
- **The topology** is declared at every connect; a queue declared earlier with other
  arguments is used as it is, with one warning.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from vsl.stdlib.support.urls import redacted

from .queue_amqp_codec import Topology
from .queue_backend import QueueError

log = logging.getLogger("vsl.queue")
LOG_EVERY = 60.0       # s between two log lines of a broker that stays unreachable
MAX_BACKOFF = 30.0
MIN_VERSION = (3, 10)  # at-least-once dead-lettering of quorum queues

Receiver = Callable[[object], Awaitable[None]]  # called with each aio_pika.IncomingMessage


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
        self._lost = asyncio.Event()
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
            self._log_unreachable(err)
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
        if connection is not None and not connection.is_closed:
            await connection.close()

    async def consume(self, physical: str, receiver: Receiver, prefetch: int) -> None:
        """Hand every message of ``physical`` to ``receiver``, now and after reconnects."""
        self.receivers[physical] = receiver
        self.prefetch = max(prefetch, 1)
        if self.consumer is not None:
            await self.consumer.set_qos(prefetch_count=self.prefetch)
            await self._consume(physical)

    async def ready(self, physical: str) -> int:
        """How many messages ``physical`` holds ready (0 when that cannot be known now)."""
        if self.publisher is None:
            return 0
        try:
            declared = await (await self._publisher()).declare_queue(physical, passive=True)
        except self.lost_errors:
            return 0
        return declared.declaration_result.message_count

    async def send(self, message, routing_key: str) -> None:
        """Publish and wait for the broker's confirm; QueueError with a plain text when
        it does not come (refused, returned, timed out, or no connection)."""
        if self.publisher is None:
            raise QueueError(f"queue broker {self.shown_url}: not connected")
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
        if self.publisher.is_closed:
            await self.publisher.reopen()
        return self.publisher

    def admin_channel(self) -> _ClosingChannel:
        """``async with``: a channel of its own; what it holds unacked goes back to the
        queues when it closes."""
        if self.connection is None:
            raise QueueError(f"queue broker {self.shown_url}: not connected")
        return _ClosingChannel(self.connection)

    # -- connecting ------------------------------------------------------------------------
    async def _keep_connected(self) -> None:
        backoff = 1.0
        while True:
            if self.connection is not None:
                await self._lost.wait()
                log.warning("queue broker %s: connection lost; reconnecting", self.shown_url)
                self.connection = self.publisher = self.consumer = None
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
            await self._declare(publisher)
            consumer = await connection.channel(publisher_confirms=False)
            await consumer.set_qos(prefetch_count=self.prefetch)
        except BaseException:
            await connection.close()
            raise
        self._lost.clear()
        connection.close_callbacks.add(lambda *_: self._lost.set())
        self.connection, self.publisher, self.consumer = connection, publisher, consumer
        self.generation += 1
        for physical in list(self.receivers):
            await self._consume(physical)

    async def _consume(self, physical: str) -> None:
        queue = await self.consumer.declare_queue(physical, passive=True)
        await queue.consume(self.receivers[physical])

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
                await channel.declare_queue(name, durable=True, arguments=arguments)
            except self.errors.ChannelPreconditionFailed as err:
                warning = f"queue {name}: declared with other arguments, used as it is ({err})"
                if warning not in self.warnings:
                    self.warnings.append(warning)
                    log.warning("%s", warning)
                await channel.reopen()
                await channel.declare_queue(name, passive=True)

    def _log_unreachable(self, err: BaseException) -> None:
        if time.monotonic() - self._logged_at >= LOG_EVERY:
            self._logged_at = time.monotonic()
            log.error("queue broker %s: unreachable (%s); retrying", self.shown_url,
                      plain(err))


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


def plain(err: BaseException) -> str:
    """An error as text for an operator: no class name (and aio-pika masks passwords)."""
    text = str(err).strip() or "connection lost"
    return text.replace("\n", " ")[:300]
