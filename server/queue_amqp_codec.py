"""What the AMQP queue backend (server/queue_amqp.py) puts on the broker: the queue names
and arguments of one prefix, and one queued message as one AMQP message.

Topology (prefix ``P``): quorum queues ``P.working``, ``P.deliver``, ``P.hold``,
``P.dead``, ``P.quarantine`` (every quarantine, its name in header ``x-vsl-quarantine``)
and ``P.deferred.<k>`` for k = 0..16, each holding messages ``2^k`` s before
dead-lettering them to ``P.deliver``. ``P.working`` and ``P.deliver`` have no delivery
limit: on 3.10 quorum queues every admin read (get, then requeue) and every release adds
one to ``x-delivery-count``, so a broker limit would bury ready mail. The crash-loop
backstop is vSL's: a claim buries a message delivered :data:`CRASH_LOOP_LIMIT` times
(server/queue_amqp.py). Queues declared by an older vSL keep their ``x-delivery-limit``
(the broker never changes a queue's arguments): :data:`REDECLARE` says how to drop it.
Every route is the default exchange, routing key = queue name.

A message's body is the envelope's JSON (one line: ``Envelope.to_json`` writes no raw
newline), ``\\n``, then the message bytes; its properties carry the id and the format,
and header :data:`COPY` a token new at each publish: the copy a transition left behind
(its ack lost with the connection) is told from the message published onwards.
"""
from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass

from .envelope import Envelope
from .queue_backend import Entry

FORMAT = 1
CONTENT_TYPE = "application/vnd.vsl.queued"
DELAY_LEVELS = range(17)  # P.deferred.<k> holds a message 2^k s (1 s to 18 h)
CRASH_LOOP_LIMIT = 1000   # deliveries of one message before a claim buries it in dead
REDECLARE = ("to use this vSL's arguments, stop the receivers, let the queue drain (or "
             "shovel its messages elsewhere), delete it, then start vSL: it declares it anew")
COPY = "x-vsl-copy"       # header: a token new at each publish
QUARANTINE = "quarantine/"
PLAIN_QUEUES = ("working", "deliver", "hold", "dead", "quarantine")


class Poison(ValueError):
    """A message on the broker that is not a queued vSL message (the text says why)."""


@dataclass(frozen=True)
class Topology:
    """The queue names and arguments of one prefix."""

    prefix: str
    queue_type: str = "quorum"
    max_in_memory: bool = True  # x-max-in-memory-length 0 (quorum queues before 4.0)

    def name(self, queue: str) -> str:
        """The physical queue of logical ``queue`` (not ``deferred``: see :meth:`deferred`)."""
        return f"{self.prefix}.{'quarantine' if queue.startswith(QUARANTINE) else queue}"

    def physical(self, queue: str | None) -> list[str]:
        """The physical queues holding logical ``queue`` (None: every queue)."""
        if queue is None:
            return [self.name(q) for q in PLAIN_QUEUES] + self.deferred()
        return self.deferred() if queue == "deferred" else [self.name(queue)]

    def deferred(self, level: int | None = None) -> list[str]:
        levels = DELAY_LEVELS if level is None else [level]
        return [f"{self.prefix}.deferred.{k}" for k in levels]

    def logical(self, physical: str, headers: dict) -> str:
        """The logical queue of a message read from ``physical``."""
        queue = physical.removeprefix(self.prefix + ".")
        if queue.startswith("deferred."):
            return "deferred"
        if queue == "quarantine":
            name = headers.get("x-vsl-quarantine", "")
            return QUARANTINE + (name if isinstance(name, str) else "")
        return queue

    def declarations(self) -> dict[str, dict]:
        """Every physical queue and its arguments."""
        dead = self._dead_letter(self.name("dead"))
        queues = {self.name(q): self._base() for q in ("hold", "dead", "quarantine")}
        for q in ("working", "deliver"):  # dead: what a policy's length limit drops
            queues[self.name(q)] = {**self._base(), **dead}
        for k, name in zip(DELAY_LEVELS, self.deferred()):
            queues[name] = {**self._base(), **self._dead_letter(self.name("deliver")),
                            "x-message-ttl": (1 << k) * 1000}
        return queues

    def _base(self) -> dict:
        args = {"x-queue-type": self.queue_type}
        if self.queue_type == "quorum" and self.max_in_memory:
            args["x-max-in-memory-length"] = 0
        return args

    def _dead_letter(self, target: str) -> dict:
        args = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": target}
        if self.queue_type == "quorum":  # at-least-once needs reject-publish overflow
            args |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
        return args


def delivery_count(headers: dict) -> int:
    """How often the broker has delivered a message before (quorum queues count it)."""
    count = headers.get("x-delivery-count", 0)
    return count if type(count) is int else 0


def delayed(headers: dict, prefix: str) -> bool:
    """Whether a message was dead-lettered by one of ``prefix``'s delay queues (header
    ``x-death``: a list of tables; anything else, as a publisher may write, is ignored)."""
    deaths = headers.get("x-death")
    return isinstance(deaths, list) and any(
        isinstance(death, dict) and isinstance(death.get("queue"), str)
        and death["queue"].startswith(prefix + ".deferred.") for death in deaths)


def delay_level(seconds: float) -> int:
    """The deferred level to wait in: the largest k with 2^k <= ``seconds`` (0 below 1 s)."""
    return min(max(int(seconds), 1).bit_length() - 1, DELAY_LEVELS[-1])


def encode(envelope: Envelope, data: bytes, queue: str, msg_id: str) -> dict:
    """The keyword arguments of ``aio_pika.Message`` for one queued message. The
    session's hand-off (``context``) is for on_post_queue: it stays only in ``working``."""
    if queue != "working" and envelope.context is not None:
        envelope = dataclasses.replace(envelope, context=None)
    headers = {"x-vsl-format": FORMAT, COPY: secrets.token_hex(8)}
    if queue.startswith(QUARANTINE):
        headers["x-vsl-quarantine"] = queue.removeprefix(QUARANTINE)
    return dict(body=envelope.to_json() + b"\n" + data, message_id=msg_id, headers=headers,
                delivery_mode=2, content_type=CONTENT_TYPE, timestamp=time.time())


def decode(body: bytes, headers: dict, msg_id: str | None, queue: str) -> tuple[Entry, bytes]:
    """The entry and the message bytes of one AMQP message; :class:`Poison` when it is not
    a queued message this vSL reads."""
    if headers.get("x-vsl-format") != FORMAT:
        raise Poison(f"unknown format {headers.get('x-vsl-format')!r} (x-vsl-format)")
    line, newline, data = body.partition(b"\n")
    if not newline:
        raise Poison("no envelope line")
    try:
        envelope = Envelope.from_json(line)
    except (ValueError, UnicodeDecodeError) as err:
        raise Poison(str(err)) from None
    msg_id = msg_id or envelope.id
    if not msg_id:
        raise Poison("no message id")
    return Entry(msg_id, queue, envelope), data
