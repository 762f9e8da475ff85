"""Connection counts shared by the workers of one ``vsl serve`` (server/workers.py), so
that ``limits.connections`` and ``limits.connections_per_ip`` hold across all of them.

Design: the parent maps shared anonymous memory before it forks, which every worker
inherits. It holds the total of open connections and a hash table of the client
addresses with a connection open, counted exactly per address: an entry is the address
(16 bytes: IPv4 as IPv4-mapped IPv6), its total, the entry where its probe starts, and
the count of each worker (so that the parent can clear the counts of a worker that
died: its connections died with it).

The table is open-addressed with linear probing. The start of an address's probe is
Python's ``hash`` (SipHash, keyed by the interpreter's random seed) of a secret the
parent draws and the address: every worker is forked from the parent, so has the same
seed and secret, and no client can pick addresses that pile up on one probe chain (the
secret keeps them apart even under a fixed ``PYTHONHASHSEED``). An entry is live while
its total is above 0; every live entry holds at least one of the ``connections`` open,
so a table of twice that many entries (a power of two) is never more than half full.
When an address's last connection closes, its entry is removed by shifting the entries
after it in its chain back (no tombstones), so every other address stays reachable from
its start.

Every change, admitting or releasing, holds an exclusive ``lockf`` lock on an empty
``memfd`` (a file only to lock): a POSIX lock, not inherited by a fork, released by the
kernel if its holder dies (a semaphore held by a killed worker would stall every other
one). Releasing takes it too, as removing an entry moves others.
"""
from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import socket
from array import array

_INT = 4       # bytes per counter (unsigned, native order)
_KEY = 16      # bytes per address
_TOTAL = 0     # an entry's ints: its total, the entry its probe starts at, then per worker
_HOME = 1
_COUNTS = 2
_IPV4_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:a.b.c.d


def address_key(ip: str) -> bytes:
    """The 16 bytes of ``ip`` (an IPv4 address mapped into IPv6, so both spellings of it
    count together); a text that is no address (a replayed peer's name) by its hash."""
    try:
        if ":" in ip:
            return socket.inet_pton(socket.AF_INET6, ip)
        return _IPV4_MAPPED + socket.inet_pton(socket.AF_INET, ip)
    except OSError:
        return hashlib.blake2b(ip.encode(), digest_size=_KEY).digest()


def table_size(connections: int) -> int:
    """The entries of the table for ``connections`` open at most: twice as many,
    rounded up to a power of two."""
    return 1 << max(1, 2 * connections - 1).bit_length()


class SharedCounters:
    """The connections open, in all and per client address, in memory every worker
    maps. ``connections``: ``limits.connections`` (the table is sized for it)."""

    def __init__(self, workers: int, connections: int):
        self._fd = os.memfd_create("vsl-admission", os.MFD_CLOEXEC)  # locked only
        self._secret = os.urandom(16)  # drawn before the fork: the same in every worker
        self._mask = table_size(connections) - 1
        self._width = _COUNTS + workers  # ints per entry
        size = self._mask + 1
        ints = (1 + size * self._width) * _INT
        self._map = mmap.mmap(-1, ints + size * _KEY)  # MAP_SHARED: forks see it
        view = memoryview(self._map)
        self._ints = view[:ints].cast("I")  # the total, then the entries
        self._keys = view[ints:]
        self.index = 0  # the worker this process is (set in the worker by :meth:`use`)

    def use(self, index: int) -> None:
        """This process is worker ``index``: its connections count in its slot."""
        self.index = index

    def admit(self, ip: str, total_limit: int, ip_limit: int) -> str | None:
        """Count a connection from ``ip`` unless a limit is reached: None, or the limit's
        name (``connections``, ``connections_per_ip``)."""
        key = address_key(ip)
        ints = self._ints
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            if ints[0] >= total_limit:
                return "connections"
            entry, home = self._find(key)
            if entry is None:  # no free entry: more open than the table was sized for
                return "connections"
            at = self._offset(entry)
            if ints[at + _TOTAL] >= ip_limit:
                return "connections_per_ip"
            if not ints[at + _TOTAL]:
                self._claim(entry, key, home)
            self._add(at, 1)
            return None
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def release(self, ip: str) -> None:
        """A connection this worker admitted from ``ip`` closed."""
        key = address_key(ip)
        ints = self._ints
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            entry, _home = self._find(key)
            at = None if entry is None else self._offset(entry)
            if at is None or not ints[at + _COUNTS + self.index]:
                return  # forgotten by a clear after a torn change (see clear)
            self._add(at, -1)
            if not ints[at + _TOTAL]:
                self._remove(entry)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def clear(self, index: int) -> None:
        """Forget worker ``index``'s connections (it died: they died with it). The table
        is rebuilt from each worker's own counts, so a worker killed in the middle of a
        change (between the statements of an add or a move) leaves nothing torn behind:
        totals are counted again, and an address found twice keeps the larger counts
        (a move cut short leaves a copy; counting too much refuses early, never admits
        more)."""
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            self._rebuild(index)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    # -- the table, under the lock ---------------------------------------------------------
    def _offset(self, entry: int) -> int:
        """Where entry ``entry`` starts in the ints."""
        return 1 + entry * self._width

    def _find(self, key: bytes) -> tuple[int | None, int]:
        """The entry of ``key``, or the free entry where it would go (None when the table
        has neither), and the entry where its probe starts."""
        ints, keys, mask = self._ints, self._keys, self._mask
        width = self._width
        home = entry = hash(self._secret + key) & mask  # keyed: see the module's note
        for _ in range(mask + 1):
            if not ints[1 + entry * width + _TOTAL] \
                    or keys[entry * _KEY:(entry + 1) * _KEY] == key:
                return entry, home
            entry = (entry + 1) & mask
        return None, home

    def _claim(self, entry: int, key: bytes, home: int) -> None:
        """Make the free ``entry`` the entry of ``key`` (its counts are all 0)."""
        self._keys[entry * _KEY:(entry + 1) * _KEY] = key
        self._ints[self._offset(entry) + _HOME] = home

    def _add(self, at: int, step: int) -> None:
        """Count ``step`` connections of this worker in the entry at offset ``at``."""
        ints = self._ints
        ints[0] += step
        ints[at + _TOTAL] += step
        ints[at + _COUNTS + self.index] += step

    def _remove(self, hole: int) -> None:
        """Empty entry ``hole``, moving back each later entry of its chain whose probe
        passes the hole, so that none becomes unreachable."""
        ints, mask, entry = self._ints, self._mask, hole
        while True:
            entry = (entry + 1) & mask
            at = self._offset(entry)
            if not ints[at + _TOTAL]:
                break
            if (entry - ints[at + _HOME]) & mask >= (entry - hole) & mask:
                self._move(entry, hole)
                hole = entry
        self._empty(hole)

    def _move(self, source: int, target: int) -> None:
        """Copy entry ``source`` (counts and key) over entry ``target``."""
        at, width = self._offset(source), self._width
        self._ints[self._offset(target):self._offset(target) + width] = \
            self._ints[at:at + width]
        self._keys[target * _KEY:(target + 1) * _KEY] = \
            self._keys[source * _KEY:(source + 1) * _KEY]

    def _empty(self, entry: int) -> None:
        """Zero the counts of ``entry``: it is free."""
        at = self._offset(entry)
        self._ints[at:at + self._width] = array("I", bytes(self._width * _INT))

    def _live(self) -> list[int]:
        """The entries in use."""
        ints = self._ints
        return [entry for entry in range(self._mask + 1)
                if ints[self._offset(entry) + _TOTAL]]

    def _rebuild(self, dead: int) -> None:
        """Insert the entries in use again, without worker ``dead``'s counts, their totals
        and the grand total counted from the workers' columns (an entry whose total is 0
        holds no count, so only the entries in use need emptying)."""
        width, live = self._width, self._live()
        kept: dict[bytes, list[int]] = {}
        for entry in live:
            at = self._offset(entry)
            counts = self._ints[at + _COUNTS:at + width].tolist()
            counts[dead] = 0
            key = bytes(self._keys[entry * _KEY:(entry + 1) * _KEY])
            seen = kept.get(key, [0] * len(counts))
            kept[key] = [max(a, b) for a, b in zip(seen, counts)]
        for entry in live:
            self._empty(entry)
        self._ints[0] = 0
        for key, counts in kept.items():
            if not any(counts):
                continue
            entry, home = self._find(key)
            self._claim(entry, key, home)
            at = self._offset(entry)
            self._ints[at + _TOTAL] = sum(counts)
            self._ints[at + _COUNTS:at + width] = array("I", counts)
            self._ints[0] += sum(counts)
