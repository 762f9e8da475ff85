"""The state in Redis: ``[state] backend = "redis"``, for several servers sharing limits.

Design: redis-py's asyncio client, with a bounded connection pool (a connection that broke is
replaced on the next command, so the store reconnects by itself when Redis is back).
Every operation is one round trip and atomic: ``SET`` (``NX PX``) for :meth:`set`, and
Lua scripts for the increments (``INCRBY``, then ``PEXPIRE`` when the key has no
expiry yet, i.e. this call created it), so that no key is ever left without an expiry.
A sliding window (:meth:`count_in_window`) is one script too: it takes the time from
Redis (``TIME``), so every server counts in the same windows whatever its own clock
says, reads both counts, and increments only when the hit fits, so no process ever sees
a refused hit counted. :meth:`first_present` and :meth:`get_or_add` are one script each
as well (``GET`` each key until one is there; ``GET``, then
``SET PX`` when absent). Each wait ends within ``timeout`` and within the script call's
network time (io_time_left), with StateUnavailable. The URL may hold a password: it is
never put into a message (:func:`redacted`).
"""
from __future__ import annotations

import asyncio
from typing import Sequence

import redis.asyncio
import redis.exceptions

from . import FailureLog, StateStore, WindowCount, call_wait
from ..urls import redacted

MAX_CONNECTIONS = 32  # per store (one process); more callers wait for one, within timeout
DEFAULT_TIMEOUT = 1.0  # seconds an operation may take

_INCR = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return value
"""
# KEYS[1]: the prefix; ARGV: window (s), amount, limit. The keys are the prefix and the
# window's index (Redis's clock), so they are built here (a standalone Redis: no cluster).
# Returns {seconds, microseconds, current, previous, counted (1 or 0)}; the fit is
# state.fits written in Lua.
_COUNT_IN_WINDOW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local window, amount, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local index = math.floor(now / window)
local elapsed = (now - index * window) / window
local current_key = KEYS[1] .. string.format('%d', index)
local current = tonumber(redis.call('GET', current_key) or '0')
local previous = tonumber(redis.call('GET', KEYS[1] .. string.format('%d', index - 1)) or '0')
if current == nil or previous == nil then
    return redis.error_reply('a count that is not an integer under ' .. KEYS[1])
end
local counted = 0
if amount > 0 and current + previous * (1 - elapsed) + amount <= limit then
    current = redis.call('INCRBY', current_key, amount)
    if redis.call('PTTL', current_key) < 0 then
        redis.call('PEXPIRE', current_key, 2 * window * 1000)
    end
    counted = 1
end
return {time[1], time[2], current, previous, counted}
"""

# KEYS: the keys in order. Returns {position
# (from 0), value} of the first present key, or nil.
_FIRST_PRESENT = """
for i, key in ipairs(KEYS) do
    local value = redis.call('GET', key)
    if value then return {i - 1, value} end
end
return nil
"""
# KEYS[1]: the key; ARGV: the value, its time to live in ms. Returns the value there, or
# nil when there was none and ARGV[1] is stored.
_GET_OR_ADD = """
local value = redis.call('GET', KEYS[1])
if value then return value end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return nil
"""


def _decoded(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _milliseconds(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


class RedisStore(StateStore):
    """The state in the Redis server at ``url``; each operation waits ``timeout`` seconds
    at most. Connects on first use."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT):
        self.where, self.timeout = redacted(url), timeout
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout)
        self._client = redis.asyncio.Redis(connection_pool=pool)
        self._incr = self._client.register_script(_INCR)
        self._count_in_window = self._client.register_script(_COUNT_IN_WINDOW)
        self._first_present = self._client.register_script(_FIRST_PRESENT)
        self._get_or_add = self._client.register_script(_GET_OR_ADD)
        self._closed = False
        self._failures = FailureLog(str(self))

    def __str__(self) -> str:
        return f"redis {self.where}"

    async def _call(self, command, convert=lambda answer: answer):
        """``convert`` of what ``command()`` answers, within the store's and the script
        call's time; StateUnavailable when Redis fails, is slower, answers what does not
        convert, or the store is closed."""
        wait = call_wait(self.timeout)
        try:
            if self._closed:
                raise redis.exceptions.ConnectionError("the store is closed")
            return convert(await asyncio.wait_for(command(), wait))
        except TimeoutError:
            reason = f"no answer within {wait:.3g} s"
        except (redis.exceptions.RedisError, OSError, ValueError, TypeError) as err:
            reason = str(err)  # ValueError, TypeError: an answer that does not convert
        raise self._failures.unavailable(reason)

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        return await self._call(
            lambda: self._incr(keys=[key], args=[amount, _milliseconds(ttl)]), int)

    async def count_in_window(self, prefix: str, window: int, amount: int,
                              limit: int) -> WindowCount:
        def window_count(answer) -> WindowCount:
            seconds, microseconds, current, previous, counted = answer
            return WindowCount(int(seconds) + int(microseconds) / 1e6, int(current),
                               int(previous), bool(counted))

        return await self._call(
            lambda: self._count_in_window(keys=[prefix], args=[window, amount, limit]), window_count)

    async def first_present(self, keys: Sequence[str]) -> tuple[int, str] | None:
        def found(answer) -> tuple[int, str] | None:
            return None if answer is None else (int(answer[0]), answer[1].decode())

        return await self._call(
            lambda: self._first_present(keys=list(keys)), found)

    async def get(self, key: str) -> str | None:
        return await self._call(lambda: self._client.get(key), _decoded)

    async def get_or_add(self, key: str, value: str, ttl: float) -> str | None:
        return await self._call(
            lambda: self._get_or_add(keys=[key], args=[value, _milliseconds(ttl)]), _decoded)

    async def set(self, key: str, value: str, ttl: float, *, only_if_absent: bool = False) -> bool:
        return await self._call(lambda: self._client.set(
            key, value, px=_milliseconds(ttl), nx=only_if_absent), bool)

    async def delete(self, key: str) -> None:
        await self._call(lambda: self._client.delete(key))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.aclose(close_connection_pool=True)
