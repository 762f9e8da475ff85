"""Opening the ``[state]`` of vsl.toml: the store where one server process's ``limit::``
and ``greylist::`` keep their counts (each ``vsl serve`` worker, ``vsl policyd`` and
``vsl milter`` opens its own, once, and closes it when it stops)."""
from __future__ import annotations

import logging
import sqlite3
import stat

from vsl.stdlib.support.state import StateStore
from vsl.stdlib.support.state.sqlite_store import SqliteStore

from .config import Config, ConfigError, StateConfig, redis_url

log = logging.getLogger("vsl.server")


def open_state(config: Config) -> StateStore:
    """The store ``config.state`` names; a ConfigError naming the key when it cannot be
    opened (the SQLite file) or read (``url_file``). Redis is reached on first use: an
    unreachable one is the natives' ``temperror``, not a start-up error."""
    if config.state.backend == "redis":
        from vsl.stdlib.support.state.redis_store import DEFAULT_TIMEOUT, RedisStore  # (the client)

        return RedisStore(_url(config.state), config.state.timeout or DEFAULT_TIMEOUT)
    try:
        return SqliteStore(config.state_path)
    except (sqlite3.Error, OSError) as err:
        raise ConfigError(f"state.path: cannot open {config.state_path}: {err}") from None


def _url(state: StateConfig) -> str:
    if state.url_file is None:
        return state.url
    try:
        text = state.url_file.read_text(encoding="utf-8").strip()
        mode = state.url_file.stat().st_mode
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"state.url_file: cannot read {state.url_file}: "
                          f"{getattr(err, 'strerror', None) or err}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("state.url_file: %s can be read by others than its owner (it may hold "
                    "the Redis password): chmod 600 it", state.url_file)
    return redis_url(text, f"state.url_file ({state.url_file})")
