"""The state that ``limit::`` and ``greylist::`` keep between sessions: one small
interface, :class:`StateStore`, that every backend implements (the embedded one in
memory here; :mod:`.sqlite_store` and :mod:`.redis_store` for the server's ``[state]``).

Keys are strings the natives build (a namespace prefix, then the script's key); values
are strings or integers. Every key has an expiry, so nothing grows without bound, and
each operation is atomic across every process that shares the store. Time is the
store's ``clock`` (wall-clock seconds, as Redis counts), which tests may replace.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Callable

MAX_KEY_BYTES = 1024  # the natives refuse longer keys (a script's error, with its position)


class StateUnavailable(Exception):
    """The store could not be reached or did not answer in time: the natives turn this
    into a result a script can act on (``temperror``), never into a stage failure."""


class StateStore(ABC):
    """Keys with values and an expiry, shared by every process that opens the same store."""

    clock: Callable[[], float] = staticmethod(time.time)

    @abstractmethod
    async def incr(self, key: str, amount: int, ttl: float) -> int:
        """Add ``amount`` to the integer at ``key`` (0 when absent or expired) and return
        the new value. A key this call creates expires in ``ttl`` seconds; an existing
        key keeps its expiry."""

    async def incr_and_get(self, key: str, amount: int, ttl: float, other: str) -> tuple[int, int]:
        """:meth:`incr` of ``key``, and the integer at ``other`` (0 when absent): what a
        sliding window counts (this window, the previous one). The backends on the network
        do both in one round trip; this default takes two."""
        value = await self.incr(key, amount, ttl)
        return value, int(await self.get(other) or 0)

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
        """Release connections and files (the server calls this when it stops)."""

    def __str__(self) -> str:
        """What the server's log says of the store (never a password)."""
        return type(self).__name__


class MemoryStore(StateStore):
    """State in this process only, gone when it ends: what ``vsl run`` and ``vsl test``
    use, and engines built without a store. At most ``max_keys`` keys: past that,
    expired keys are dropped, then the oldest."""

    def __init__(self, max_keys: int = 100_000, clock: Callable[[], float] | None = None):
        self.max_keys = max_keys
        if clock is not None:
            self.clock = clock
        self._entries: dict[str, tuple[str, float]] = {}  # key -> (value, expires at)

    def _live(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self._entries[key]
            return None
        return entry[0]

    def _put(self, key: str, value: str, expires: float) -> None:
        self._entries.pop(key, None)
        if len(self._entries) >= self.max_keys:
            now = self.clock()
            for old in [k for k, (_, at) in self._entries.items() if at <= now]:
                del self._entries[old]
            while len(self._entries) >= self.max_keys:
                del self._entries[next(iter(self._entries))]
        self._entries[key] = (value, expires)

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
