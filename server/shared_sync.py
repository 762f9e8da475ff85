"""One ``syncfs`` shared by every process writing a spool: a group commit across workers.

Design. A writer needs a sync that *started* after its writes ended. Two counters in
``<root>/sync.state`` say which: ``started`` (the generation of the last sync begun) and
``completed`` (the last one that ended). After its writes a writer reads ``started``: any
sync numbered higher began later and covers them (:meth:`SharedSync.after_writes`).
Then (:meth:`SharedSync.wait`) it takes ``<root>/sync.lock``, which whoever runs a sync
holds; once it has it, either a sync as recent as it needs completed meanwhile (another
process's, or a batch of its own process's) and it is done, or it runs the next sync
itself, for everyone who wrote before it began. So while one process syncs, the writes
of every process pile up behind the lock and the next sync covers them all.

Failures. Each process syncs through one descriptor on the spool root, opened before its
first write and kept: since Linux 5.8 syncfs reports a writeback error only to the
descriptors opened before it, and to one opened later only while no one has seen it
(server/files.py ``FileSystemSync``). A third counter, ``doubts``, counts the syncs that
failed and the root descriptors opened (a sync on a new one may not report an error
someone saw before). A writer reads it before its writes
(:meth:`SharedSync.before_writes`); another process's sync covers it only if no doubt
was counted since, else it syncs itself, on its own descriptor. That is enough: an
error that loses a writer's pages happens after its writes, so after it read
``doubts``. If no one saw it before the sync covering the writer ended, that sync
reported it (on a descriptor opened before the error, or on a later one while it was
unseen) and failed. If someone saw it first, in another sync of the spool, that sync
failed and counted a doubt before it let go of the sync lock; an outsider's syncfs that
saw it cannot hide it from a descriptor opened before it, and one opened after it
counted a doubt. Either way the writer runs its own sync, which reports the error: its
descriptor was opened before the error, and its process's syncs (one thread, one batch
at a time) have not seen it yet. So every process sees each error once and fails the
batches it covered (451). A process whose sync failed has seen that error: its next
sync succeeds, but covers no writer that noted ``doubts`` before the failure.

The sync lock and the state file's are ``flock`` locks: the kernel lets go of them when their holder dies, so a
process killed during its sync stalls nobody (its generation never completes; the next
holder starts a newer one). Only a holder of the sync lock writes ``started`` and
``completed``; every change is made under the state file's own lock, which every
reader takes too (short holds, never across a sync): no torn read can claim a sync that
did not happen. A state file lost meanwhile (read as zeros) costs extra syncs, never a
skipped one: a waiter whose generation has not completed runs a sync itself.
"""
from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from .files import sync_file_system

_COUNTERS = struct.Struct("<QQQ")  # started, completed, doubts


class SharedSync:
    """The spool's cross-process group commit (see the module docstring). Its files are
    opened before the first write in each process (a descriptor inherited over a fork
    would share its locks, and the errors it saw, with the parent)."""

    def __init__(self, root: Path):
        self.root = root
        self.syncs = 0  # syncs this object ran (for tests and benchmarks)
        self._fds: tuple[int, int, int] | None = None  # sync lock, state file, root
        self._pid = 0
        self._doubts = 0  # the doubts counted before this process's latest writes

    def before_writes(self) -> None:
        """Open the files and note the doubts so far: to call before each batch of
        writes (see the module docstring)."""
        self._files()
        self._doubts = self._read()[2]

    def sync(self) -> None:
        """Make what this process wrote since :meth:`before_writes` durable."""
        self.wait(self.after_writes())

    def after_writes(self) -> int:
        """The generation of sync that covers what this process wrote so far."""
        return self._read()[0] + 1

    def wait(self, needed: int) -> None:
        """Return once a sync of generation ``needed`` or later has completed with no
        doubt counted since :meth:`before_writes`, running it here unless another
        process's does; raise the error of a sync that fails here."""
        sync_fd, _, root_fd = self._files()
        fcntl.flock(sync_fd, fcntl.LOCK_EX)
        try:
            started, completed, doubts = self._read()
            if completed >= needed and doubts == self._doubts:
                return
            self._change(started=started + 1)  # only holders of the sync lock write these
            try:
                sync_file_system(root_fd)
            except OSError:
                self._change(doubts=1)
                raise
            self.syncs += 1
            self._change(completed=started + 1)
        finally:
            fcntl.flock(sync_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the files (the next use opens them again)."""
        if self._fds is not None and self._pid == os.getpid():
            for fd in self._fds:
                os.close(fd)
        self._fds = None

    def _read(self) -> tuple[int, int, int]:
        """(started, completed, doubts), read under the state file's lock (never half of
        a write); zeros for a state file lost or cut short."""
        state_fd = self._files()[1]
        fcntl.flock(state_fd, fcntl.LOCK_SH)
        try:
            return _counters(state_fd)
        finally:
            fcntl.flock(state_fd, fcntl.LOCK_UN)

    def _change(self, started: int | None = None, completed: int | None = None,
                doubts: int = 0) -> None:
        """Set ``started`` or ``completed`` and add ``doubts``, in one step under the
        state file's lock."""
        state_fd = self._fds[1]
        fcntl.flock(state_fd, fcntl.LOCK_EX)
        try:
            now = _counters(state_fd)
            os.pwrite(state_fd, _COUNTERS.pack(
                now[0] if started is None else started,
                now[1] if completed is None else completed, now[2] + doubts), 0)
        finally:
            fcntl.flock(state_fd, fcntl.LOCK_UN)

    def _files(self) -> tuple[int, int, int]:
        """(sync lock, state file, root), opened by this process; opening the root counts
        a doubt (a sync on it may not report an error seen before it was opened)."""
        if self._fds is None or self._pid != os.getpid():
            lock, state = (os.open(self.root / name, os.O_RDWR | os.O_CREAT, 0o600)
                           for name in ("sync.lock", "sync.state"))
            self._fds = lock, state, os.open(self.root, os.O_RDONLY)
            self._pid = os.getpid()
            self._change(doubts=1)
            self._doubts = self._read()[2]
        return self._fds


def _counters(state_fd: int) -> tuple[int, int, int]:
    """The state file's counters; zeros for one lost or cut short."""
    data = os.pread(state_fd, _COUNTERS.size, 0)
    return _COUNTERS.unpack(data) if len(data) == _COUNTERS.size else (0, 0, 0)
