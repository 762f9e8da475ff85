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

Both are ``flock`` locks: the kernel lets go of them when their holder dies, so a
process killed during its sync stalls nobody (its generation never completes; the next
holder starts a newer one). Only a holder of the sync lock writes the counters, under
the state file's own lock, which a writer reading ``started`` takes too (short holds,
never across a sync): no torn read can claim a sync that did not happen. A state file lost meanwhile (read as zeros) costs extra syncs, never a
skipped one: a waiter whose generation has not completed runs a sync itself.
"""
from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from .files import sync_file_system

_COUNTERS = struct.Struct("<QQ")  # started, completed


class SharedSync:
    """The spool's cross-process group commit (see the module docstring). Its files are
    opened on first use in each process (a descriptor inherited over a fork would share
    its locks with the parent)."""

    def __init__(self, root: Path):
        self.root = root
        self.syncs = 0  # syncs this object ran (for tests and benchmarks)
        self._fds: tuple[int, int] | None = None
        self._pid = 0

    def after_writes(self) -> int:
        """The generation of sync that covers what this process wrote so far (read
        under the state file's lock: never half of a write made by a sync's holder)."""
        state_fd = self._files()[1]
        fcntl.flock(state_fd, fcntl.LOCK_SH)
        try:
            return self._read()[0] + 1
        finally:
            fcntl.flock(state_fd, fcntl.LOCK_UN)

    def wait(self, needed: int) -> None:
        """Return once a sync of generation ``needed`` or later has completed, running it
        here unless another process's does."""
        sync_fd = self._files()[0]
        fcntl.flock(sync_fd, fcntl.LOCK_EX)
        try:
            started, completed = self._read()  # only holders of the sync lock write them
            if completed >= needed:
                return
            self._store(started + 1, completed)
            sync_file_system(self.root)
            self.syncs += 1
            self._store(started + 1, started + 1)
        finally:
            fcntl.flock(sync_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the files (the next use opens them again)."""
        if self._fds is not None and self._pid == os.getpid():
            for fd in self._fds:
                os.close(fd)
        self._fds = None

    def _read(self) -> tuple[int, int]:
        """(started, completed); zeros for a state file lost or cut short."""
        data = os.pread(self._files()[1], _COUNTERS.size, 0)
        return _COUNTERS.unpack(data) if len(data) == _COUNTERS.size else (0, 0)

    def _store(self, started: int, completed: int) -> None:
        """Write the counters, under the state file's lock (see after_writes)."""
        state_fd = self._files()[1]
        fcntl.flock(state_fd, fcntl.LOCK_EX)
        try:
            os.pwrite(state_fd, _COUNTERS.pack(started, completed), 0)
        finally:
            fcntl.flock(state_fd, fcntl.LOCK_UN)

    def _files(self) -> tuple[int, int]:
        """(sync lock, state file), opened by this process."""
        if self._fds is None or self._pid != os.getpid():
            self._fds = tuple(os.open(self.root / name, os.O_RDWR | os.O_CREAT, 0o600)
                              for name in ("sync.lock", "sync.state"))
            self._pid = os.getpid()
        return self._fds
