"""Opening the ``[state]`` of vsl.toml: the store where one server process's ``limit::``
and ``greylist::`` keep their counts (each ``vsl serve`` worker, ``vsl policyd`` and
``vsl milter`` opens its own, once, and closes it when it stops)."""
from __future__ import annotations

import sqlite3

from vsl.stdlib.support.state import StateStore
from vsl.stdlib.support.state.sqlite_store import SqliteStore
from vsl.stdlib.support.urls import redis_url_problem

from .config import Config, ConfigError, StateConfig, checked_url, read_secret


def open_state(config: Config) -> StateStore:
    """The store ``config.state`` names; a ConfigError naming the key when it cannot be
    opened (the SQLite file) or read (``url_file``). Redis is reached on first use: an
    unreachable one is the natives' ``temperror``, not a start-up error."""
    if config.state.backend == "redis":
        from vsl.stdlib.support.state.redis_store import DEFAULT_TIMEOUT, RedisStore  # (the client)

        return RedisStore(redis_url(config.state), config.state.timeout or DEFAULT_TIMEOUT)
    try:
        return SqliteStore(config.state_path)
    except (sqlite3.Error, OSError) as err:
        raise ConfigError(f"state.path: cannot open {config.state_path}: {err}") from None


def redis_url(state: StateConfig) -> str:
    """The Redis URL of ``[state]`` (from url or url_file)."""
    if state.url_file is None:
        return state.url
    text = read_secret(state.url_file, "state.url_file", "the Redis password")
    return checked_url(text, f"state.url_file ({state.url_file})", redis_url_problem)
