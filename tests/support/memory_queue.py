"""A second queue backend, in memory: :class:`MemoryQueue` implements
server/queue_backend.py's :class:`QueueBackend` from its docstrings alone (not from the
file spool), so the contract tests and the server running on it show the interface is
complete.

Design: what the contract calls durable (each message's queue, envelope and bytes, and
the addresses handed to ``update(..., delivered=...)``) lives in a :class:`MemoryStore`;
what dies with a process (its claims) lives in the :class:`MemoryQueue`. Opening a new
MemoryQueue on the same store is a restart after a crash. Envelopes are stored as their
JSON, so a change a caller makes to an :class:`Entry` is stored only by ``update`` or
``defer``, as on a real backend.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from vsl.server.config import Config
from vsl.server.envelope import Envelope
from vsl.server.queue_backend import (QUEUES, Entry, QueueError, UnreadableEnvelope,
                                      WorkSignal, check_queue, new_id)


@dataclass
class Stored:
    """One message as the store keeps it."""

    queue: str
    envelope: bytes  # Envelope.to_json()
    data: bytes


@dataclass
class MemoryStore:
    """What survives a restart: the messages, and the addresses remotes accepted."""

    messages: dict[str, Stored] = field(default_factory=dict)  # in the order put
    delivered: dict[str, set[str]] = field(default_factory=dict)


STORES: dict[Path, MemoryStore] = {}  # by the storage a backend is opened on


class MemoryQueue:
    """The mail queue, in memory (see the module docstring). ``shared``: as a broker,
    the store stands for one that processes on other machines use too (tests of roles
    build several servers over one store)."""

    def __init__(self, store: MemoryStore | None = None, shared: bool = False):
        self.store = store if store is not None else MemoryStore()
        self.shared = shared
        self.claimed: set[str] = set()
        self.work = WorkSignal()  # puts and moves through this MemoryQueue

    @classmethod
    def on(cls, storage: Path) -> MemoryQueue:
        """A backend on the store named ``storage`` (again: a restart, or a second
        process such as `vsl queue` beside the server)."""
        return cls(STORES.setdefault(Path(storage), MemoryStore()))

    @classmethod
    def of(cls, config: Config) -> MemoryQueue:
        """The backend of :func:`vsl.server.queues.open_queue`: on the store named after
        ``config.queue_dir``."""
        return cls.on(config.queue_dir)

    # -- intake and delivery ---------------------------------------------------------
    async def put(self, envelope: Envelope, data: bytes, queue: str = "working",
                  msg_id: str | None = None) -> str:
        """Store a new message; its id."""
        check_queue(queue)
        msg_id = msg_id or new_id()
        if msg_id in self.store.messages:
            raise QueueError(f"{msg_id}: already queued")
        stored = Envelope.from_json(envelope.to_json())
        stored.id, stored.received_at = msg_id, stored.received_at or time.time()
        self.store.messages[msg_id] = Stored(queue, stored.to_json(), data)
        self.work.notify(queue)
        return msg_id

    async def claim(self, limit: int, now: float,
                    queues: tuple[str, ...] = ("deliver", "deferred")) -> list[Entry]:
        """Up to ``limit`` due messages of ``queues``, unclaimed ones only, now claimed."""
        due = []
        for queue in queues:
            entries = [e for e in await self.list(queue) if e.id not in self.claimed]
            if queue == "deferred":
                entries = sorted((e for e in entries if (e.envelope.next_attempt or 0) <= now),
                                 key=lambda e: e.envelope.next_attempt or 0)
            due += entries
        self.claimed.update(e.id for e in due[:limit])
        for entry in due[:limit]:
            await self._apply_delivered(entry)
        return due[:limit]

    async def release(self, msg_id: str) -> None:
        """End a claim."""
        self.claimed.discard(msg_id)

    async def complete(self, entry: Entry) -> None:
        """The message leaves the queue."""
        self._drop(entry.id, entry.queue)

    async def defer(self, entry: Entry, until: float) -> None:
        """Store the envelope with ``next_attempt = until``, in ``deferred``."""
        entry.envelope.next_attempt = until
        await self.update(entry)
        await self.move(entry.id, "deferred", entry.queue)

    async def update(self, entry: Entry, data: bytes | None = None,
                     delivered: list[str] = ()) -> None:
        """Store the envelope (and the bytes); keep the ``delivered`` addresses (even
        when the message was moved meanwhile: its next claim applies them)."""
        if delivered:
            self.store.delivered.setdefault(entry.id, set()).update(delivered)
        stored = self._find(entry.id, entry.queue)
        stored.envelope = entry.envelope.to_json()
        if data is not None:
            stored.data = data

    async def move(self, msg_id: str, target: str, queue: str | None = None) -> None:
        """Move a message to another queue."""
        check_queue(target)
        self._find(msg_id, queue).queue = target
        self.work.notify(target)

    async def recover_deliveries(self) -> None:
        """Mark delivered the kept addresses of the messages still queued. Those of an
        unreadable envelope stay kept until it reads again."""
        for msg_id, addresses in list(self.store.delivered.items()):
            try:
                entry = await self.get(msg_id)
            except UnreadableEnvelope:
                continue
            except QueueError:  # completed or removed meanwhile
                del self.store.delivered[msg_id]
                continue
            await self._apply_delivered(entry)

    async def _apply_delivered(self, entry: Entry) -> None:
        """Mark delivered the kept addresses of ``entry``, which then stop being kept."""
        addresses = self.store.delivered.pop(entry.id, set())
        for rcpt in entry.envelope.recipients:
            if rcpt.address in addresses and not rcpt.done:
                rcpt.status = "delivered"
        if addresses:
            await self.update(entry)

    async def wait_for_work(self, queues: tuple[str, ...], timeout: float) -> None:
        """Until this MemoryQueue puts or moves a message into ``queues``, or
        ``timeout`` seconds."""
        await self.work.wait(queues, timeout)

    async def open(self) -> None:
        """Nothing to connect to."""

    async def recover(self) -> int:
        """Nothing in memory is ever half stored: nothing to finish or drop. Unless the
        store is shared (there ``working`` holds acknowledged mail, maybe a worker's
        elsewhere), what is left in ``working`` was never acknowledged (as in the
        spool): it goes to hold."""
        if self.shared:
            return 0
        for entry in await self.list("working"):
            await self.move(entry.id, "hold", "working")
        return 0

    def startup_warnings(self) -> list[str]:
        """Only what :meth:`quarantine_warnings` says."""
        return self.quarantine_warnings()

    async def close(self) -> None:
        """No thread or file to let go of."""

    # -- administration ----------------------------------------------------------------
    async def get(self, msg_id: str, queue: str | None = None) -> Entry:
        """A message's envelope."""
        return self._entry(msg_id, queue)

    async def message(self, msg_id: str, queue: str | None = None) -> bytes:
        """A message's bytes."""
        return self._find(msg_id, queue).data

    async def list(self, queue: str | None = None) -> list[Entry]:
        """Readable messages, oldest first."""
        return (await self.scan(queue))[0]

    async def scan(self, queue: str | None = None
                   ) -> tuple[list[Entry], list[UnreadableEnvelope]]:
        """Messages, oldest first (in the order put when received at once), and the
        unreadable ones."""
        if queue is not None:
            check_queue(queue)
        entries, unreadable = [], []
        for msg_id, stored in list(self.store.messages.items()):
            if queue in (None, stored.queue):
                try:
                    entries.append(self._entry(msg_id))
                except UnreadableEnvelope as err:
                    unreadable.append(err)
        entries.sort(key=lambda e: e.envelope.received_at or 0)
        return entries, unreadable

    async def locate(self, msg_id: str) -> str:
        """The queue holding a message."""
        return self._find(msg_id).queue

    async def remove(self, msg_id: str, queue: str | None = None) -> None:
        """Delete a message."""
        self._drop(msg_id, queue)

    async def counts(self) -> dict[str, int]:
        """Messages per queue, each queue of QUEUES listed."""
        counts = dict.fromkeys(QUEUES, 0)
        for stored in self.store.messages.values():
            counts[stored.queue] = counts.get(stored.queue, 0) + 1
        return counts

    def quarantine_warnings(self) -> list[str]:
        """Memory holds every quarantine: nothing to warn of."""
        return []

    # -- the store ---------------------------------------------------------------------
    def _entry(self, msg_id: str, queue: str | None = None) -> Entry:
        """The stored message's envelope, as an Entry (UnreadableEnvelope, QueueError)."""
        stored = self._find(msg_id, queue)
        try:
            return Entry(msg_id, stored.queue, Envelope.from_json(stored.envelope))
        except ValueError as err:
            raise UnreadableEnvelope(msg_id, stored.queue, f"memory:{stored.queue}#{msg_id}",
                                     str(err)) from None

    def _find(self, msg_id: str, queue: str | None = None) -> Stored:
        """The stored message (in ``queue``, when given), or QueueError."""
        stored = self.store.messages.get(msg_id)
        if stored is None or queue not in (None, stored.queue):
            raise QueueError(f"{msg_id}: not in {queue or 'the queue'}")
        return stored

    def _drop(self, msg_id: str, queue: str | None) -> None:
        self._find(msg_id, queue)
        del self.store.messages[msg_id]
        self.store.delivered.pop(msg_id, None)
