"""The state in one SQLite file: ``[state] backend = "sqlite"``, the server's default.

Design: the file is shared by every process of one machine that opens it (the workers
of ``vsl serve``, ``vsl policyd``, a second ``vsl serve``), so each operation is one
short transaction (``BEGIN IMMEDIATE``, which takes the write lock at once, and a busy
timeout, so concurrent writers queue instead of failing) in WAL mode (readers never
wait for writers). sqlite3 blocks, so a store runs its statements on one thread of its
own, with one connection opened there on first use: the event loop never waits on the
disk, and a store made before ``fork()`` (the parent of the workers) holds neither a
thread nor a connection. The file is made on first use (a server whose scripts count
nothing leaves none behind); making the store only checks that it could be. Expired
rows are purged as writes go, at most ``PURGE_BATCH`` a write, so no call does
unbounded work; the file survives restarts.

A file another process keeps locked makes a call wait BUSY_TIMEOUT at most, and never
past the script call's network time (io_time_left): each call carries its deadline to
the store's thread, sets the busy timeout to what is left of it, and gives up unrun when
it is already past, so calls that queued behind a lock neither stall the ones after
them nor write after their caller was told the store was unavailable. Time is the
machine's clock (``clock``): one machine shares one file.
"""
from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from vsl.natives import io_time_left

from . import FailureLog, StateStore, StateUnavailable, WindowCount, fits, window_at

BUSY_TIMEOUT = 1.0  # seconds a call waits at most for another process's write lock
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
_GET_INTEGER = "SELECT CAST(value AS INTEGER) FROM state WHERE key = ? AND expires > ?"
_SET = """
INSERT INTO state (key, value, expires) VALUES (:key, :value, :now + :ttl)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires
"""
_SET_IF_ABSENT = _SET + " WHERE expires <= :now"


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the state file at ``path`` (made with its table, and its directory,
    when new), in WAL mode, in autocommit mode (each operation opens its own transaction)."""
    path.parent.mkdir(parents=True, exist_ok=True)
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
    made: an existing file is opened (and closed at once), else the nearest directory
    above it that exists must be writable (the missing ones are made on first use, as
    the spool makes its own)."""
    if path.exists():
        connect(path).close()
        return
    directory = path.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    if not directory.is_dir():
        raise OSError(errno.ENOTDIR, f"{directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, f"cannot make files in {directory}")


@contextmanager
def _transaction(db: sqlite3.Connection, now: float):
    """A write transaction (the write lock taken at once), after purging a few rows
    expired at ``now``; rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(_PURGE, (now, PURGE_BATCH))
        yield
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


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
        self._closed = False
        self._failures = FailureLog(str(self))

    def __str__(self) -> str:
        return f"sqlite {self.path}"

    async def _run(self, work: Callable[[sqlite3.Connection], object]):
        """``work(connection)`` on the store's thread, within BUSY_TIMEOUT and the script
        call's network time (io_time_left); StateUnavailable when it fails or takes
        longer, or the store is closed."""
        left = io_time_left()
        wait = BUSY_TIMEOUT if left is None else max(min(BUSY_TIMEOUT, left), 0)
        deadline = time.monotonic() + wait
        try:
            if self._closed:
                raise RuntimeError("the store is closed")
            future = asyncio.get_running_loop().run_in_executor(
                self._thread, self._call, work, deadline)
            return await asyncio.wait_for(future, wait + 0.1)  # the thread's own end, a margin
        except TimeoutError:
            reason = f"no answer within {wait:.3g} s"
        except (sqlite3.Error, OSError, RuntimeError) as err:  # RuntimeError: closed
            reason = str(err)
        self._failures.report(reason)
        raise StateUnavailable(f"state file {self.path}: {reason}")

    def _call(self, work, deadline: float):
        """On the store's thread: ``work`` with a busy timeout of what is left until
        ``deadline``; not run at all when nothing is left."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise sqlite3.OperationalError("gave up waiting for the store's thread")
        if self._db is None:
            self._db = connect(self.path)
        self._db.execute(f"PRAGMA busy_timeout = {max(int(left * 1000), 1)}")
        return work(self._db)

    def _write(self, db: sqlite3.Connection, statement: str, params: dict):
        """One write transaction: the statement (its cursor's first row and row count)."""
        with _transaction(db, params["now"]):
            cursor = db.execute(statement, params)
            row = cursor.fetchone()
            changed = cursor.rowcount
            cursor.close()
        return row, changed

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        params = {"key": key, "amount": amount, "ttl": ttl, "now": self.clock()}
        row, _ = await self._run(lambda db: self._write(db, _INCR, params))
        return int(row[0])

    async def count_in_window(self, prefix: str, window: int, amount: int,
                              limit: int) -> WindowCount:
        now = self.clock()
        index, elapsed = window_at(window, now)
        keys = f"{prefix}{index}", f"{prefix}{index - 1}"

        def counts(db) -> tuple[int, int]:
            found = [db.execute(_GET_INTEGER, (key, now)).fetchone() for key in keys]
            return tuple(row[0] if row else 0 for row in found)

        def step(db) -> WindowCount:
            if not amount:  # a read only: no transaction, no row made
                return WindowCount(now, *counts(db), counted=False)
            params = {"key": keys[0], "amount": amount, "ttl": 2 * window, "now": now}
            with _transaction(db, now):  # checked and counted in one transaction
                current, previous = counts(db)
                counted = fits(current, previous, elapsed, amount, limit)
                if counted:
                    current = int(db.execute(_INCR, params).fetchone()[0])
            return WindowCount(now, current, previous, counted)

        return await self._run(step)

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
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._thread, self._disconnect)
        self._thread.shutdown(wait=True)

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
