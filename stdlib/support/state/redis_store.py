"""The state in Redis: ``[state] backend = "redis"``, for several servers sharing limits.

Design: redis-py's asyncio client, with a bounded connection pool (a connection that broke is
replaced on the next command, so the store reconnects by itself when Redis is back).
Every operation is one round trip and atomic: ``SET`` (``NX PX``) for :meth:`set`, and
a Lua script for the increments (``INCRBY``, then ``PEXPIRE`` when the key has no
expiry yet, i.e. this call created it), so that no key is ever left without an expiry.
Each wait ends within ``timeout`` and within the script call's network time
(io_time_left), with StateUnavailable. The URL may hold a password: it is never put
into a message (:func:`redacted`).
"""
from __future__ import annotations

import asyncio

import redis.asyncio
import redis.exceptions

from vsl.natives import io_time_left

from . import StateStore, StateUnavailable
from .urls import redacted

MAX_CONNECTIONS = 32  # per store (one process); more callers wait for one, within timeout

_INCR = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return value
"""
_INCR_AND_GET = _INCR.replace("return value", "return {value, redis.call('GET', KEYS[2])}")


def _milliseconds(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


class RedisStore(StateStore):
    """The state in the Redis server at ``url``; each operation waits ``timeout`` seconds
    at most. Connects on first use."""

    def __init__(self, url: str, timeout: float = 1.0):
        self.where, self.timeout = redacted(url), timeout
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout)
        self._client = redis.asyncio.Redis(connection_pool=pool)
        self._incr = self._client.register_script(_INCR)
        self._incr_and_get = self._client.register_script(_INCR_AND_GET)

    def __str__(self) -> str:
        return f"redis {self.where}"

    async def _call(self, command):
        """Await ``command`` within the store's and the script call's time;
        StateUnavailable when Redis fails or is slower."""
        left = io_time_left()
        wait = self.timeout if left is None else max(min(self.timeout, left), 0)
        try:
            return await asyncio.wait_for(command, wait)
        except TimeoutError:
            raise StateUnavailable(f"redis {self.where}: no answer within {wait:.3g} s") \
                from None
        except (redis.exceptions.RedisError, OSError) as err:
            raise StateUnavailable(f"redis {self.where}: {err}") from None

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        return int(await self._call(self._incr(keys=[key], args=[amount, _milliseconds(ttl)])))

    async def incr_and_get(self, key: str, amount: int, ttl: float, other: str) -> tuple[int, int]:
        value, found = await self._call(self._incr_and_get(
            keys=[key, other], args=[amount, _milliseconds(ttl)]))
        return int(value), int(found or 0)

    async def get(self, key: str) -> str | None:
        value = await self._call(self._client.get(key))
        return None if value is None else value.decode()

    async def set(self, key: str, value: str, ttl: float, *, only_if_absent: bool = False) -> bool:
        return bool(await self._call(self._client.set(key, value, px=_milliseconds(ttl),
                                                      nx=only_if_absent)))

    async def delete(self, key: str) -> None:
        await self._call(self._client.delete(key))

    async def close(self) -> None:
        await self._client.aclose()
