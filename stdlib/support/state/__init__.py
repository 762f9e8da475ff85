"""The state that ``limit::`` and ``greylist::`` keep between sessions: one small
interface, :class:`StateStore`, that every backend implements (the embedded one in
memory here; :mod:`.sqlite_store` and :mod:`.redis_store` for the server's ``[state]``).

Keys are strings the natives build (a namespace prefix, then the script's key); values
are strings or integers. Every key has an expiry, so nothing grows without bound, and
each operation is atomic across every process that shares the store. Time is the
store's ``clock`` (wall-clock seconds, as Redis counts), which tests may replace; the
sliding windows of :meth:`StateStore.count_in_window` use the store's own time (Redis's
clock, shared by every server).
"""
from __future__ import annotations

import heapq
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

from vsl.natives import io_time_left

MAX_KEY_BYTES = 1024  # the longest key limit:: takes (longer: a script's error, with its position)
FAILURE_LOG_INTERVAL = 60.0  # seconds: a store logs why it failed at most once in this time

logger = logging.getLogger("vsl.state")


class StateUnavailable(Exception):
    """The store could not be reached or did not answer in time: the natives turn this
    into a result a script can act on (``temperror``), never into a stage failure."""


@dataclass(frozen=True)
class WindowCount:
    """What :meth:`StateStore.count_in_window` saw: the store's time, the counts of the
    window it falls in (this call's included when ``counted``) and of the previous one."""

    now: float
    current: int
    previous: int
    counted: bool


def window_at(window: int, now: float) -> tuple[int, float]:
    """The index of the ``window``-second window ``now`` falls in, and the elapsed
    fraction of it (0 <= fraction < 1)."""
    index, rest = divmod(now, window)
    return int(index), rest / window


def estimate(current: int, previous: int, elapsed: float) -> float:
    """The sliding-window estimate: this window's count, plus the previous one's weighed
    by what remains of it."""
    return current + previous * (1 - elapsed)


def fits(current: int, previous: int, elapsed: float, amount: int, limit: int) -> bool:
    """Whether ``amount`` more hits keep the :func:`estimate` within ``limit``. The Redis
    store computes the same in Lua, SQLite in SQL (the same steps in the same order)."""
    return estimate(current, previous, elapsed) + amount <= limit


def call_wait(most: float) -> float:
    """Seconds a store call may wait: ``most``, and never past the script call's network
    time (io_time_left)."""
    left = io_time_left()
    return most if left is None else max(min(most, left), 0)


class FailureLog:
    """Why a store failed, logged at warning level at most once per
    FAILURE_LOG_INTERVAL (a store that is down fails every call)."""

    def __init__(self, store: str):
        self.store, self._last = store, None

    def report(self, reason: str) -> None:
        now = time.monotonic()
        if self._last is None or now - self._last >= FAILURE_LOG_INTERVAL:
            self._last = now
            logger.warning("state %s unavailable: %s", self.store, reason)

    def unavailable(self, reason: str) -> StateUnavailable:
        """The error of a call that failed for ``reason``, reported first."""
        self.report(reason)
        return StateUnavailable(f"{self.store}: {reason}")


class StateStore(ABC):
    """Keys with values and an expiry, shared by every process that opens the same store."""

    clock: Callable[[], float] = staticmethod(time.time)

    @abstractmethod
    async def incr(self, key: str, amount: int, ttl: float) -> int:
        """Add ``amount`` to the integer at ``key`` (0 when absent or expired) and return
        the new value. A key this call creates expires in ``ttl`` seconds; an existing
        key keeps its expiry."""

    async def count_in_window(self, prefix: str, window: int, amount: int,
                              limit: int) -> WindowCount:
        """One atomic step of a sliding-window counter at the store's time: the counts at
        ``prefix`` + the index of this ``window``-second window and of the previous one
        (integers, 0 when absent); when ``amount`` more :func:`fits` in ``limit``, they are
        added to this window's count (kept 2 windows). ``amount`` 0 only reads.

        This default is atomic only for a store whose calls never wait (MemoryStore):
        the stores shared between processes do it in one step of their own."""
        now = self.clock()
        index, elapsed = window_at(window, now)
        current = int(await self.get(f"{prefix}{index}") or 0)
        previous = int(await self.get(f"{prefix}{index - 1}") or 0)
        counted = amount > 0 and fits(current, previous, elapsed, amount, limit)
        if counted:
            current = await self.incr(f"{prefix}{index}", amount, 2 * window)
        return WindowCount(now, current, previous, counted)

    async def first_present(self, keys: Sequence[str]) -> tuple[int, str] | None:
        """The first of ``keys`` that is present, as its position and value (None when
        none is), looked up in one step: one call or script in the shared stores."""
        for position, key in enumerate(keys):
            value = await self.get(key)
            if value is not None:
                return position, value
        return None

    async def get_or_add(self, key: str, value: str, ttl: float) -> str | None:
        """The value at ``key``; when it is absent, ``value`` is stored there for ``ttl``
        seconds and None returned. One step in the shared stores: of processes that
        call it at once, one stores its value and the others get it."""
        found = await self.get(key)
        if found is not None:
            return found
        if await self.set(key, value, ttl, only_if_absent=True):
            return None
        return await self.get(key) or value  # stored by another process (and gone again)

    @abstractmethod
    async def get(self, key: str) -> str | None:
        """The value at ``key`` as a string, or None when absent or expired."""

    @abstractmethod
    async def set(self, key: str, value: str, ttl: float, *, only_if_absent: bool = False) -> bool:
        """Store ``value`` at ``key`` for ``ttl`` seconds; with ``only_if_absent``, only
        when the key is absent or expired. True when the value was stored."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Forget ``key`` (nothing happens when it is absent)."""

    async def close(self) -> None:
        """Release connections and files (the server calls this when it stops); later
        calls raise StateUnavailable."""

    def __str__(self) -> str:
        """What the server's log says of the store (never a password)."""
        return type(self).__name__


class MemoryStore(StateStore):
    """State in this process only, gone when it ends: what ``vsl run`` and ``vsl test``
    use, and engines built without a store. At most ``max_keys`` keys: past that, the
    keys that expire first are dropped (the expired ones among them), found in a heap by
    expiry, so a full store costs O(log n) a write, not a scan."""

    def __init__(self, max_keys: int = 100_000, clock: Callable[[], float] | None = None):
        self.max_keys = max_keys
        if clock is not None:
            self.clock = clock
        self._entries: dict[str, tuple[str, float]] = {}  # key -> (value, expires at)
        self._expiries: list[tuple[float, str]] = []  # a heap; stale when the entry changed

    def _live(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self._entries[key]
            return None
        return entry[0]

    def _put(self, key: str, value: str, expires: float) -> None:
        old = self._entries.pop(key, None)
        while len(self._entries) >= self.max_keys:
            self._evict_first()
        self._entries[key] = (value, expires)
        if old is None or old[1] != expires:
            heapq.heappush(self._expiries, (expires, key))
            if len(self._expiries) > 2 * self.max_keys:
                self._compact()

    def _evict_first(self) -> None:
        """Drop the key that expires first (heap entries of changed keys are skipped)."""
        expires, key = heapq.heappop(self._expiries)
        entry = self._entries.get(key)
        if entry is not None and entry[1] == expires:
            del self._entries[key]

    def _compact(self) -> None:
        """Rebuild the heap from the live entries (amortised over max_keys writes)."""
        self._expiries = [(expires, key) for key, (_, expires) in self._entries.items()]
        heapq.heapify(self._expiries)

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        current = self._live(key)
        value = (int(current) if current is not None else 0) + amount
        expires = self._entries[key][1] if current is not None else self.clock() + ttl
        self._put(key, str(value), expires)
        return value

    async def get(self, key: str) -> str | None:
        return self._live(key)

    async def set(self, key: str, value: str, ttl: float, *, only_if_absent: bool = False) -> bool:
        if only_if_absent and self._live(key) is not None:
            return False
        self._put(key, value, self.clock() + ttl)
        return True

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)
