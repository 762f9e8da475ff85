"""Connection counts shared by the workers of one ``vsl serve`` (server/workers.py), so
that ``limits.connections`` and ``limits.connections_per_ip`` hold across all of them.

Design: the parent maps shared anonymous memory before it forks, which every worker
inherits. It holds one slot per worker index: that worker's open connections in all,
and per client address hashed into ``BUCKETS`` buckets (addresses that share a bucket
count together: a collision can only refuse earlier, never admit more). Only a worker
writes its own slot, so a count is the sum over the slots, and the slot of a worker that
died is cleared by the parent (its connections died with it) before another takes it.

Admitting reads every slot and adds one to its own under an exclusive ``lockf`` lock on
an empty ``memfd`` (a file only to lock): a POSIX lock, not inherited by a fork, released
by the kernel if its holder dies (a semaphore held by a killed worker would stall every
other one). Releasing needs
no lock: a worker lowers its own count, and a reader that sees the old value only
over-counts for that instant.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import zlib

BUCKETS = 4096  # per-address counters per worker
_SLOT = 1 + BUCKETS  # a slot: the worker's total, then its buckets
_INT = 4             # bytes per counter (unsigned, native order)


def bucket(ip: str) -> int:
    """The bucket of ``ip``: the same in every process (unlike ``hash``)."""
    return 1 + zlib.crc32(ip.encode()) % BUCKETS


class SharedCounters:
    """The connections open per worker, in memory every worker maps."""

    def __init__(self, workers: int):
        self.workers = workers
        self._fd = os.memfd_create("vsl-admission", os.MFD_CLOEXEC)  # locked only
        self._map = mmap.mmap(-1, workers * _SLOT * _INT)  # MAP_SHARED: the forks see it
        self._counts = memoryview(self._map).cast("I")
        self._slots = range(0, workers * _SLOT, _SLOT)  # where each slot starts
        self.index = 0  # the worker this process is (set in the worker by :meth:`use`)

    def use(self, index: int) -> None:
        """This process is worker ``index``: its connections count in that slot."""
        self.index = index

    def admit(self, ip: str, total_limit: int, ip_limit: int) -> str | None:
        """Count a connection from ``ip`` unless a limit is reached: None, or the limit's
        name (``connections``, ``connections_per_ip``)."""
        counts, offset, at = self._counts, self.index * _SLOT, bucket(ip)
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            if sum(counts[slot] for slot in self._slots) >= total_limit:
                return "connections"
            if sum(counts[slot + at] for slot in self._slots) >= ip_limit:
                return "connections_per_ip"
            counts[offset] += 1
            counts[offset + at] += 1
            return None
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def release(self, ip: str) -> None:
        """A connection this worker admitted from ``ip`` closed."""
        offset = self.index * _SLOT
        self._counts[offset + bucket(ip)] -= 1
        self._counts[offset] -= 1

    def clear(self, index: int) -> None:
        """Forget worker ``index``'s connections (it died: they died with it)."""
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            start = index * _SLOT * _INT
            self._map[start:start + _SLOT * _INT] = bytes(_SLOT * _INT)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
