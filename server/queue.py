"""The durable mail queue: an on-disk spool, one message per file plus its envelope (JSON).

    <root>/<queue>/<id>.eml     the message, exactly as received (plus trace headers)
    <root>/<queue>/<id>.json    the envelope (server/envelope.py): sender, recipients and
                                their status, history

Queues: ``working`` (received, waiting for on_post_queue), ``deliver``, ``deferred``,
``dead``, ``hold`` and ``quarantine/<name>`` (<name> as status::quarantine allows; a longer
one an older vSL made is listed and emptied, never filled). A message exists once its JSON
file does:
both files are written to ``tmp/``, made durable, then renamed into place (JSON last)
and the renames made durable, before :meth:`Spool.put` returns. Many sessions
finishing together share that work: a single writer thread commits them in batches,
with one ``syncfs`` (or one fsync per file where syncfs is missing) per batch; with
``[server] workers`` the workers share it too (server/shared_sync.py: one sync covers
every worker's batch), so throughput grows with concurrency while no caller is
answered before its own data is on disk.

An envelope that cannot be read (a newer version, a field of the wrong type, an I/O
error) is never misread: :meth:`Spool.scan` reports it, :meth:`Spool.list` skips it with a
warning in the log.

This is the file backend of :class:`~.queue_backend.QueueBackend` (the contract is
there). Claims (delivery's, or a post-queue worker's of ``working``) live in this
process: a set of claimed ids, and a heap of deferred messages by ``next_attempt``, filled
from ``deferred`` at the first claim and kept up to date by :meth:`Spool.defer`. The reads
(and ``remove``, ``recover``, ``close``) do their file work in a thread, off the event loop. Addresses a remote accepted are written to the
delivery journal (server/journal.py) before the envelope that records them is durable.

`vsl queue` moves and removes messages from another process while the server writes
them. A write aimed at a message's current queue (update, defer, complete, move, remove)
names the envelope that must still be there; it is checked and the files renamed under
an advisory lock (``flock`` on ``<root>/spool.lock``) that every such writer takes: the
writer thread once per batch, around its renames (a batch of puts only does not need
it), and :meth:`Spool.remove`. A message moved meanwhile fails that write alone, with
QueueError ("moved meanwhile"), and nothing of it is changed: the message stays where the
operator put it, and addresses a remote accepted stay in the journal until they are in
its envelope.
"""
from __future__ import annotations

import asyncio
import fcntl
import heapq
import itertools
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vsl.stdlib.status import is_quarantine_name

from .envelope import Envelope
from .files import (HAS_SYNCFS, FileSystemSync, make_private_dirs, sync_directory,
                    write_new_file)
from .journal import Journal
from .shared_sync import SharedSync
from .printable import printable
from .queue_backend import (MESSAGE_ID, QUEUES, Entry, QueueError, UnreadableEnvelope,
                            WorkSignal,
                            check_queue, new_id)

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("vsl.spool")

# A quarantine directory that is listed: today's names (is_quarantine_name), and the longer
# ones an older vSL allowed. Never hidden, so never '.' or '..'.
_LISTED_QUARANTINE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_WHY_LIMIT = 200  # characters of why an envelope is unreadable (it may quote a long value)


def is_older_quarantine(name: str) -> bool:
    """Whether quarantine/``name`` breaks today's rule but an older vSL made it (a name
    over 64 characters): listed and emptied, never filled."""
    return _LISTED_QUARANTINE.fullmatch(name) is not None and not is_quarantine_name(name)



@dataclass
class _Write:
    """Files to write and files to rename, made durable as one unit."""

    files: list[tuple[Path, bytes]]   # final path, content (written via tmp/, then renamed)
    renames: list[tuple[Path, Path]]  # existing file -> new place (after the files)
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    present: Path | None = None       # an envelope that must still be there (else: moved)


@contextmanager
def spool_lock(root: Path):
    """The spool's advisory lock, held by whoever checks a message is still in its queue
    and then renames or deletes its files (see the module docstring). Opened anew each
    time: a descriptor shared with a forked process would share its lock too."""
    fd = os.open(root / "spool.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # lets go of the lock


def moved_meanwhile(queue: str) -> QueueError:
    """The error of a write aimed at a message no longer in ``queue``."""
    return QueueError(f"moved meanwhile: no longer in {queue}")


class _Committer:
    """One writer thread committing batches of writes with a single sync each, shared
    with the other processes writing the spool when ``shared`` (server/shared_sync.py).
    Its syncfs goes through one descriptor per process, opened before the first write
    (server/files.py ``FileSystemSync`` says why)."""

    def __init__(self, root: Path, shared: bool):
        self.root = root
        self.tmp = root / "tmp"
        self.file_system = SharedSync(root) if shared else FileSystemSync(root)
        self.pending: list[_Write] = []
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.batches = 0  # for tests and benchmarks
        self.tmp_prefix, self.tmp_serial = secrets.token_hex(4), itertools.count()
        self.closing = False

    def submit(self, files: list[tuple[Path, bytes]],
               renames: list[tuple[Path, Path]] = (),
               present: Path | None = None) -> asyncio.Future:
        """Commit ``files`` and ``renames`` as one unit; with ``present``, only if that
        envelope is still there when the unit is renamed into place."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self.cond:
            self.pending.append(_Write(files, list(renames), future, loop, present))
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="vsl-spool",
                                               daemon=True)
                self.thread.start()
            self.cond.notify_all()  # the writer, not close(), must wake: notify all
        return future

    def close(self) -> None:
        """Stop the writer thread once every submitted write is done (a write submitted
        meanwhile too: the thread, or a new one, takes it before this returns)."""
        last = None
        with self.cond:
            self.closing = True
            self.cond.notify_all()
            while self.thread is not None:
                last = self.thread
                self.cond.wait()
            self.closing = False
        if last is not None:
            last.join()  # gone for good (server/workers.py forks after this)

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.pending:
                    if self.closing:
                        self.file_system.close()  # the next thread opens it again
                        self.thread = None  # under the lock: the next submit starts one
                        self.cond.notify_all()  # close() waits for this
                        return
                    self.cond.wait()
                batch, self.pending = self.pending, []
            self.batches += 1
            try:
                outcomes = self._commit(batch)
            except Exception as err:  # noqa: BLE001 - the writer thread must never die
                outcomes = [(write, OSError(str(err))) for write in batch]
            for write, error in outcomes:
                outcome = _write_error(error) if isinstance(error, OSError) else error
                try:
                    write.loop.call_soon_threadsafe(_settle, write.future, outcome)
                except RuntimeError:  # its event loop has closed: nobody waits for it
                    pass

    def _commit(self, batch: list[_Write]) -> list[tuple[_Write, Exception | None]]:
        """Write every unit's files, sync once, rename, sync once. A unit whose files
        cannot be written, or whose message was moved meanwhile, fails alone (its
        files are removed); a failing sync or rename fails every unit of the batch that
        got that far."""
        written, results = [], []
        if HAS_SYNCFS:
            self.file_system.before_writes()
        for write in batch:
            moves: list[tuple[Path, Path]] = []
            try:
                for final, content in write.files:
                    tmp = self.tmp / f"{final.name}.{self.tmp_prefix}{next(self.tmp_serial)}"
                    moves.append((tmp, final))
                    write_new_file(tmp, content, fsync=not HAS_SYNCFS)
                written.append((write, moves))
            except OSError as err:
                _discard(moves)
                results.append((write, err))
        try:
            self._sync([])
            checked = any(write.present for write, _ in written)
            with spool_lock(self.root) if checked else nullcontext():
                outcomes, renames = self._place(written)
            self._sync({path.parent for pair in renames for path in pair})
        except OSError as err:
            for _, moves in written:
                _discard(moves)
            return results + [(write, err) for write, _ in written]
        return results + outcomes

    def _place(self, written: list[tuple[_Write, list[tuple[Path, Path]]]]
               ) -> tuple[list[tuple[_Write, QueueError | None]], list[tuple[Path, Path]]]:
        """Rename each unit into place, files first, unless its message was moved
        meanwhile (then its files are removed): each unit's outcome, and the renames."""
        outcomes, renames = [], []
        for write, moves in written:
            if write.present and not write.present.exists():
                _discard(moves)
                queue = write.present.parent.relative_to(self.root).as_posix()
                outcomes.append((write, moved_meanwhile(queue)))
                continue
            for source, target in (*moves, *write.renames):
                os.replace(source, target)
                renames.append((source, target))
            outcomes.append((write, None))
        return outcomes, renames

    def _sync(self, directories) -> None:
        """Make written data (and renames in ``directories``) durable."""
        if HAS_SYNCFS:
            self.file_system.sync()
        else:
            for directory in directories:
                sync_directory(directory)


def _discard(moves: list[tuple[Path, Path]]) -> None:
    for tmp, _ in moves:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the directory itself is what failed: nothing was left there


def _write_error(error: OSError) -> QueueError:
    """A failed write as the spool reports it; the OSError (its errno) stays its cause."""
    failure = QueueError(f"cannot write the queue: {error.strerror or error}")
    failure.__cause__ = error
    return failure


def _settle(future: asyncio.Future, error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class Spool:
    """The on-disk queue (see the module docstring). ``journal``: the delivery journal's
    path (default: ``delivered.journal`` in ``root``); ``shared_sync``: share each sync with
    the other processes writing the spool (server/shared_sync.py)."""

    shared = False  # one machine's directory

    def __init__(self, root: str | os.PathLike, journal: str | os.PathLike | None = None,
                 shared_sync: bool = False):
        self.root = Path(root)
        make_private_dirs(self.root)
        for queue in (*QUEUES, "tmp", "quarantine"):
            make_private_dirs(self.root / queue)
        self.journal = Journal(Path(journal) if journal else self.root / "delivered.journal")
        self._committer = _Committer(self.root, shared_sync)
        self._made: set[Path] = set()  # queue directories put() created (or found)
        self._warned: dict[str | None, set[str]] = {}  # unreadable envelopes logged, by list()
        self._claimed: set[str] = set()
        self._deferred: list[tuple[float, str]] | None = None  # heap of (next_attempt, id)
        self._work = WorkSignal()  # puts and moves of this process

    @classmethod
    def of(cls, config: Config) -> Spool:
        """The spool of ``config``: its queue directory and delivery journal; with several
        workers, their syncs shared."""
        return cls(config.queue_dir, config.journal_path, shared_sync=config.workers > 1)

    async def open(self) -> None:
        """Nothing to connect: the directories exist from the constructor on."""

    async def close(self) -> None:
        """Stop the writer thread and close the journal (a later write opens them again)."""
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        self._committer.close()
        self.journal.close()

    # -- paths -----------------------------------------------------------
    def _paths(self, queue: str, msg_id: str, new: bool = False) -> tuple[Path, Path]:
        """A message's files in ``queue``: one a message may be in, or (``new``) one it
        may go to."""
        if not MESSAGE_ID.fullmatch(msg_id):
            raise QueueError(f"'{msg_id}' is not a message id")
        directory = self.root / (check_queue(queue) if new else self._existing_queue(queue))
        return directory / f"{msg_id}.eml", directory / f"{msg_id}.json"

    def _existing_queue(self, name: str) -> str:
        """A queue messages may be read or taken from: a valid name, or an older
        quarantine that exists."""
        older = name.removeprefix("quarantine/")
        if older != name and is_older_quarantine(older) and (self.root / name).is_dir():
            return name
        return check_queue(name)

    async def locate(self, msg_id: str) -> str:
        """The queue currently holding a message."""
        return await asyncio.to_thread(self._locate, msg_id)

    def _locate(self, msg_id: str) -> str:
        for queue in self.queues():
            if self._paths(queue, msg_id)[1].exists():
                return queue
        raise QueueError(f"no message {msg_id} in the queue")

    def queues(self) -> list[str]:
        """Every queue, quarantines included (older ones too)."""
        quarantines = sorted(f"quarantine/{p.name}" for p in self._quarantine_directories()
                             if _LISTED_QUARANTINE.fullmatch(p.name))
        return [*QUEUES, *quarantines]

    def _quarantine_directories(self) -> list[Path]:
        return [p for p in (self.root / "quarantine").iterdir() if p.is_dir()]

    def quarantine_warnings(self) -> list[str]:
        """What an operator should know of quarantine directories whose names break the
        rule: an older one (listed, can be emptied), or one that is no queue (ignored)."""
        warnings = []
        for directory in sorted(self._quarantine_directories()):
            name = printable(directory.name)
            if is_older_quarantine(directory.name):
                warnings.append(f"quarantine/{name}: name longer than 64 characters (an "
                                "older vSL's): listed, and its messages can be moved out "
                                "(vsl queue move ID QUEUE); nothing new goes in")
            elif not is_quarantine_name(directory.name):
                warnings.append(f"quarantine/{name}: not a quarantine name: ignored, the "
                                "files there are in no queue")
        return warnings

    def startup_warnings(self) -> list[str]:
        """Directories open to other users, then misnamed quarantines."""
        return [*(f"spool {directory} is readable by others (mode {mode:04o}): chmod 700 it"
                  for directory, mode in self.open_to_others()),
                *(f"spool: {warning}" for warning in self.quarantine_warnings())]

    def open_to_others(self) -> list[tuple[Path, int]]:
        """The spool's directories (root and queues) other users may enter or read, with
        their modes: queued mail holds message bodies and who logged in."""
        found = []
        for directory in (self.root, *(self.root / q for q in (*self.queues(), "tmp"))):
            mode = stat.S_IMODE(directory.stat().st_mode)
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                found.append((directory, mode))
        return found

    # -- operations ------------------------------------------------------
    async def put(self, envelope: Envelope, data: bytes, queue: str = "working",
                  msg_id: str | None = None) -> str:
        """Store a new message durably, under ``msg_id`` (from :func:`new_id`) or a new
        id; returns the id once it is on disk (``envelope`` itself is not changed: the
        stored one has the id and, when missing, the time)."""
        msg_id = msg_id or new_id()
        eml, meta = self._paths(queue, msg_id, new=True)
        if eml.parent not in self._made:
            make_private_dirs(eml.parent)
            self._made.add(eml.parent)
        envelope = replace(envelope, id=msg_id, received_at=envelope.received_at or time.time())
        await self._committer.submit([(eml, data), (meta, envelope.to_json())])
        self._work.notify(queue)
        return msg_id

    async def get(self, msg_id: str, queue: str | None = None) -> Entry:
        """A message's envelope (UnreadableEnvelope when it cannot be read)."""
        return await asyncio.to_thread(self._get, msg_id, queue)

    def _get(self, msg_id: str, queue: str | None = None) -> Entry:
        queue = queue or self._locate(msg_id)
        meta = self._paths(queue, msg_id)[1]
        try:
            envelope = Envelope.from_json(meta.read_bytes())
        except FileNotFoundError:
            raise QueueError(f"no message {msg_id} in queue {queue}") from None
        except OSError as err:
            raise UnreadableEnvelope(msg_id, queue, str(meta), err.strerror or str(err)) from None
        except (ValueError, RecursionError) as err:  # not JSON, or not an envelope
            raise UnreadableEnvelope(msg_id, queue, str(meta), str(err)[:_WHY_LIMIT]) from None
        return Entry(msg_id, queue, envelope)

    async def message(self, msg_id: str, queue: str | None = None) -> bytes:
        """The message bytes."""
        return await asyncio.to_thread(self._message, msg_id, queue)

    def _message(self, msg_id: str, queue: str | None) -> bytes:
        queue = queue or self._locate(msg_id)
        try:
            return self._paths(queue, msg_id)[0].read_bytes()
        except FileNotFoundError:
            raise QueueError(f"no message {msg_id} in queue {queue}") from None

    async def list(self, queue: str | None = None) -> list[Entry]:
        """Messages of one queue (or all), oldest first. An unreadable envelope is skipped
        with a warning in the log, once while it stays unreadable."""
        entries, unreadable = await self.scan(queue)
        self._warn_unreadable(queue, unreadable)
        return entries

    async def scan(self, queue: str | None = None
                   ) -> tuple[list[Entry], list[UnreadableEnvelope]]:
        """Messages of one queue (or all), oldest first, and those whose envelope cannot
        be read."""
        return await asyncio.to_thread(self._scan, queue)

    def _scan(self, queue: str | None) -> tuple[list[Entry], list[UnreadableEnvelope]]:
        entries, unreadable = [], []
        for name in ([self._existing_queue(queue)] if queue else self.queues()):
            entries += self._readable(name, unreadable)
        return entries, unreadable

    def _readable(self, queue: str, unreadable: list[UnreadableEnvelope],
                  skip: set[str] = frozenset()) -> Iterator[Entry]:
        """The messages of ``queue`` but ``skip``, oldest first, each envelope read only
        when the next is asked for; those that cannot be read go to ``unreadable``."""
        for meta in sorted((self.root / queue).glob("*.json")):
            if meta.stem in skip:
                continue
            try:
                yield self._get(meta.stem, queue)
            except UnreadableEnvelope as err:
                unreadable.append(err)
            except QueueError:
                continue  # removed or moved meanwhile

    async def counts(self) -> dict[str, int]:
        """Messages (envelopes) per queue, quarantines included."""
        return await asyncio.to_thread(self._counts)

    def _counts(self) -> dict[str, int]:
        return {queue: sum(1 for _ in (self.root / queue).glob("*.json"))
                for queue in self.queues()}

    def _warn_unreadable(self, queue: str | None, unreadable: list[UnreadableEnvelope],
                         every: bool = True) -> None:
        """Log each unreadable envelope the last listing of ``queue`` did not find
        (``every``: the listing read every envelope, so those it did not find are
        forgotten; a claim reads only the oldest)."""
        warned = self._warned.get(queue, set())
        for err in unreadable:
            if err.where not in warned:
                log.warning("%s: unreadable envelope %s: %s (skipped: fix, hold or remove it)",
                            err.msg_id, err.where, printable(err.why))
        found = {err.where for err in unreadable}
        self._warned[queue] = found if every else warned | found

    async def update(self, entry: Entry, data: bytes | None = None,
                     delivered: list[str] = ()) -> None:
        """Rewrite a message's envelope (and its bytes, when given) durably, in its
        current queue; the message file is replaced before the envelope. ``delivered``
        goes to the journal at once, before the envelope is durable; when the envelope
        cannot be written (moved meanwhile, a full disk), the journal keeps them until
        the message is claimed again, or the next start."""
        eml, meta = self._paths(entry.queue, entry.id)
        files = [(eml, data)] if data is not None else []
        recorded = self.journal.record(entry.id, list(delivered))
        try:
            await self._committer.submit([*files, (meta, entry.envelope.to_json())],
                                         present=meta)
        except QueueError:
            if recorded:
                self.journal.retain(entry.id, set(delivered))
            raise
        finally:
            if recorded:
                self.journal.settled()

    async def move(self, msg_id: str, target: str, queue: str | None = None) -> None:
        """Move a message to another queue, durably (message file first, envelope last:
        :meth:`recover` completes a move a crash interrupted). The envelope is not read:
        one that cannot be read moves too (an operator sets it aside in hold)."""
        source = queue or await self.locate(msg_id)
        src_eml, src_meta = self._paths(source, msg_id)
        if not src_meta.exists():
            raise moved_meanwhile(source)
        if source == check_queue(target):
            return
        dst_eml, dst_meta = self._paths(target, msg_id, new=True)
        make_private_dirs(dst_eml.parent)
        await self._committer.submit([], [(src_eml, dst_eml), (src_meta, dst_meta)],
                                     present=src_meta)
        self._work.notify(target)

    async def remove(self, msg_id: str, queue: str | None = None) -> None:
        """Delete a message (delivered, or removed by the operator); QueueError when it
        is no longer in ``queue``."""
        await asyncio.to_thread(self._remove, msg_id, queue)

    def _remove(self, msg_id: str, queue: str | None) -> None:
        queue = queue or self._locate(msg_id)
        eml, meta = self._paths(queue, msg_id)
        with spool_lock(self.root):
            if not meta.exists():
                raise moved_meanwhile(queue)
            meta.unlink()
            eml.unlink(missing_ok=True)

    async def recover(self) -> int:
        """At start-up: finish moves a crash interrupted, drop files that were never
        acknowledged (temporary files, a message file without an envelope anywhere),
        then hold what is left in ``working``. Returns how many files were dropped."""
        dropped = await asyncio.to_thread(self._recover_files)
        await self._hold_unacknowledged()
        return dropped

    async def _hold_unacknowledged(self) -> None:
        """A message still in ``working`` was stored when the server stopped, but its 250
        (sent after on_post_queue) was not: its client will send it again. It goes to
        ``hold``: neither lost nor delivered twice; an operator may release it."""
        for entry in await self.list("working"):
            log.warning("%s: never acknowledged to its client (stopped before on_post_queue "
                        "ended): moved to hold; `vsl queue release %s` delivers it",
                        entry.id, entry.id)
            await self.move(entry.id, "hold", "working")

    def _recover_files(self) -> int:
        dropped = 0
        for tmp in (self.root / "tmp").iterdir():
            tmp.unlink(missing_ok=True)
            dropped += 1
        envelopes = {meta.stem: meta for queue in self.queues()
                     for meta in (self.root / queue).glob("*.json")}
        for queue in self.queues():
            for eml in (self.root / queue).glob("*.eml"):
                meta = envelopes.get(eml.stem)
                if meta is None:
                    eml.unlink(missing_ok=True)
                    dropped += 1
                elif meta.parent != eml.parent:  # a move stopped half-way: finish it
                    os.replace(eml, meta.with_suffix(".eml"))
        return dropped

    # -- delivery's claims ---------------------------------------------------------------
    async def claim(self, limit: int, now: float,
                    queues: tuple[str, ...] = ("deliver", "deferred")) -> list[Entry]:
        """Up to ``limit`` due messages of ``queues``, none claimed already, in the order
        named: all of a queue, or for ``deferred`` those whose ``next_attempt`` is
        ``now`` or earlier (by the heap). Journal lines kept for a message are applied
        to it before it is claimed."""
        due: list[Entry] = []
        for queue in queues:
            if queue == "deferred":
                due += await self._due_deferred(limit - len(due), now)
            elif limit > len(due):
                due += await self._unclaimed(queue, limit - len(due))
        claimed = []
        for entry in due:
            try:
                await self._apply_kept(entry)
            except QueueError as err:  # the spool cannot be written: a later claim retries
                log.error("%s: %s", entry.id, err)
                continue
            claimed.append(entry)
        self._claimed.update(entry.id for entry in claimed)  # all or none: one caller at a time
        return claimed

    async def _unclaimed(self, queue: str, limit: int) -> list[Entry]:
        """Up to ``limit`` messages of ``queue`` not claimed (before or while it is read:
        one released meanwhile is stale), oldest first. Only their envelopes are read:
        reading a backlog's every envelope at each claim made delivery fall behind a
        busy receiver (7.5 ms of CPU a message, 30 messages a second)."""
        unreadable: list[UnreadableEnvelope] = []
        oldest = self._readable(self._existing_queue(queue), unreadable, set(self._claimed))
        entries = await asyncio.to_thread(lambda: list(itertools.islice(oldest, limit)))
        self._warn_unreadable(queue, unreadable, every=False)
        return [e for e in entries if e.id not in self._claimed]

    async def _due_deferred(self, limit: int, now: float) -> list[Entry]:
        """Up to ``limit`` deferred messages whose time has come, off the heap (filled
        from the queue at the first claim)."""
        if self._deferred is None:
            self._deferred = [(e.envelope.next_attempt or 0, e.id) for e in
                              await self.list("deferred")]
            heapq.heapify(self._deferred)
        due = []
        while len(due) < limit and self._deferred and self._deferred[0][0] <= now:
            msg_id = heapq.heappop(self._deferred)[1]
            try:
                entry = self._get(msg_id, "deferred")
            except QueueError:
                continue  # delivered, moved or removed meanwhile
            if msg_id not in self._claimed and (entry.envelope.next_attempt or 0) <= now:
                due.append(entry)  # (a later next_attempt has its own heap item)
        return due

    async def release(self, msg_id: str) -> None:
        """End a claim (see :meth:`claim`)."""
        self._claimed.discard(msg_id)

    async def wait_for_work(self, queues: tuple[str, ...], timeout: float) -> None:
        """Until this process puts or moves a message into ``queues``, or ``timeout``
        seconds (another process's, such as `vsl queue release`, waits for it)."""
        await self._work.wait(queues, timeout)

    async def complete(self, entry: Entry) -> None:
        """Delivered or bounced to the last recipient: the message is deleted."""
        await self.remove(entry.id, entry.queue)

    async def defer(self, entry: Entry, until: float) -> None:
        """Store the envelope with ``next_attempt = until``, move it to ``deferred``,
        and remember when it is due."""
        entry.envelope.next_attempt = until
        await self.update(entry)
        await self.move(entry.id, "deferred", entry.queue)
        if self._deferred is not None:
            heapq.heappush(self._deferred, (until, entry.id))

    # -- the delivery journal ------------------------------------------------------------
    async def recover_deliveries(self) -> None:
        """Mark delivered what the journal says a remote accepted before a crash. An
        entry that cannot be applied (an unreadable envelope) is logged and kept in the
        journal, through every compaction, until the envelope reads again: then that
        recipient is not sent twice."""
        unapplied = {}
        for msg_id, addresses in self.journal.read().items():
            try:
                await self._replay(msg_id, addresses)
            except Exception as err:  # noqa: BLE001 - one bad envelope must not stop the rest
                log.error("%s: cannot record deliveries from the journal: %s", msg_id, err)
                unapplied[msg_id] = addresses
        self.journal.keep(unapplied)

    async def _replay(self, msg_id: str, addresses: set[str]) -> None:
        try:
            entry = await self.get(msg_id)
        except UnreadableEnvelope:
            raise  # not removed: the journal keeps it until the envelope is fixed
        except QueueError:
            return  # delivered and removed, or removed by the operator
        await self._mark_delivered(entry, addresses)

    async def _mark_delivered(self, entry: Entry, addresses: set[str]) -> None:
        undone = [r for r in entry.envelope.recipients
                  if r.address in addresses and r.status in ("pending", "deferred")]
        for rcpt in undone:
            rcpt.status = "delivered"
        if undone:
            log.info("%s: %d recipient(s) delivered before a restart", entry.id, len(undone))
            await self.update(entry)

    async def _apply_kept(self, entry: Entry) -> None:
        """Journal lines kept while ``entry``'s envelope was unreadable, now applied."""
        addresses = self.journal.kept.get(entry.id)
        if addresses:
            await self._mark_delivered(entry, addresses)
            self.journal.forget(entry.id)
