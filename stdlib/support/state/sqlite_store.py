"""The state in one SQLite file: ``[state] backend = "sqlite"``, the server's default.

Design: the file is shared by every process of one machine that opens it (the workers
of ``vsl serve``, ``vsl policyd``, a second ``vsl serve``), so each operation is one
short transaction (``BEGIN IMMEDIATE``, which takes the write lock at once, and a busy
timeout, so concurrent writers queue instead of failing) in WAL mode (readers never
wait for writers). sqlite3 blocks, so a store runs its statements on one thread of its
own, with one connection opened there on first use: the event loop never waits on the
disk, and a store made before ``fork()`` (the parent of the workers) holds neither a
thread nor a connection. The file is made on first use (a server whose scripts count
nothing leaves none behind); making the store only checks that it could be. Expired rows are purged as writes go, at most
``PURGE_BATCH`` a write, so no call does unbounded work; the file survives restarts.
"""
from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from vsl.natives import io_time_left

from . import StateStore, StateUnavailable

BUSY_TIMEOUT = 5.0  # seconds a statement waits for another process's write lock
PURGE_BATCH = 16    # expired rows deleted at most by one write

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS state_expires ON state (expires);
"""
_PURGE = ("DELETE FROM state WHERE rowid IN "
          "(SELECT rowid FROM state WHERE expires <= ? LIMIT ?)")
_INCR = """
INSERT INTO state (key, value, expires) VALUES (:key, :amount, :now + :ttl)
ON CONFLICT (key) DO UPDATE SET
    value = CASE WHEN expires <= :now THEN :amount ELSE value + :amount END,
    expires = CASE WHEN expires <= :now THEN excluded.expires ELSE expires END
RETURNING value
"""
_GET = "SELECT value FROM state WHERE key = ? AND expires > ?"
_SET = """
INSERT INTO state (key, value, expires) VALUES (:key, :value, :now + :ttl)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires
"""
_SET_IF_ABSENT = _SET + " WHERE expires <= :now"


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the state file at ``path`` (made with its table when new), in WAL
    mode, in autocommit mode (each operation opens its own transaction)."""
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, never corrupt
        db.executescript(_SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


def check_openable(path: Path) -> None:
    """sqlite3.Error or OSError unless ``path`` is a state file that opens, or could be
    made: an existing file is opened (and closed at once), else its directory must be
    writable."""
    if path.exists():
        connect(path).close()
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, f"cannot make files in {path.parent}")


class SqliteStore(StateStore):
    """The state in the SQLite file at ``path``; sqlite3.Error or OSError when it cannot
    be opened or made (:func:`check_openable`)."""

    def __init__(self, path: Path, clock: Callable[[], float] | None = None):
        self.path = path
        if clock is not None:
            self.clock = clock
        check_openable(path)
        self._thread = ThreadPoolExecutor(1, "vsl-state")  # its thread starts on first use
        self._db: sqlite3.Connection | None = None  # opened in that thread

    def __str__(self) -> str:
        return f"sqlite {self.path}"

    async def _run(self, work: Callable[[sqlite3.Connection], object]):
        """``work(connection)`` on the store's thread, within the script call's network
        time (io_time_left); StateUnavailable when it fails or takes longer."""
        left = io_time_left()
        future = asyncio.get_running_loop().run_in_executor(self._thread, self._call, work)
        try:
            return await asyncio.wait_for(future, None if left is None else max(left, 0))
        except TimeoutError:
            raise StateUnavailable(f"state file {self.path}: no answer in time") from None
        except (sqlite3.Error, OSError) as err:
            raise StateUnavailable(f"state file {self.path}: {err}") from None

    def _call(self, work):
        if self._db is None:
            self._db = connect(self.path)
        return work(self._db)

    def _write(self, db: sqlite3.Connection, statement: str, params: dict):
        """One write transaction: the statement (its cursor's first row and row count),
        after purging a few expired rows."""
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(_PURGE, (params["now"], PURGE_BATCH))
            cursor = db.execute(statement, params)
            row = cursor.fetchone()
            changed = cursor.rowcount
            cursor.close()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return row, changed

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        params = {"key": key, "amount": amount, "ttl": ttl, "now": self.clock()}
        row, _ = await self._run(lambda db: self._write(db, _INCR, params))
        return int(row[0])

    async def incr_and_get(self, key: str, amount: int, ttl: float, other: str) -> tuple[int, int]:
        params = {"key": key, "amount": amount, "ttl": ttl, "now": self.clock()}

        def both(db):
            row, _ = self._write(db, _INCR, params)
            found = db.execute(_GET, (other, params["now"])).fetchone()
            return int(row[0]), int(found[0]) if found else 0

        return await self._run(both)

    async def get(self, key: str) -> str | None:
        now = self.clock()
        row = await self._run(lambda db: db.execute(_GET, (key, now)).fetchone())
        return None if row is None else str(row[0])

    async def set(self, key: str, value: str, ttl: float, *, only_if_absent: bool = False) -> bool:
        params = {"key": key, "value": value, "ttl": ttl, "now": self.clock()}
        statement = _SET_IF_ABSENT if only_if_absent else _SET
        _, changed = await self._run(lambda db: self._write(db, statement, params))
        return changed > 0

    async def delete(self, key: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM state WHERE key = ?", (key,)))

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._disconnect)
        self._thread.shutdown(wait=True)

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
