"""The state in one SQLite file: ``[state] backend = "sqlite"``, the server's default.

Design: the file is shared by every process of one machine that opens it (the workers
of ``vsl serve``, ``vsl policyd``, a second ``vsl serve``), so each operation is one
short transaction (``BEGIN IMMEDIATE``, which takes the write lock at once) in WAL mode
(readers never wait for writers), ``synchronous = NORMAL`` (a commit appends to the WAL
and syncs nothing). The file is made on first use (a server whose scripts count nothing
leaves none behind); making the store only checks that it could be. Expired rows are
purged as writes go, at most ``PURGE_BATCH`` a write (a sliding window's hit, one
statement, purges one time in ``PURGE_EVERY``), so no call does unbounded work;
the file survives restarts. Time is the machine's clock (``clock``): one machine shares
one file. (A file system that refuses WAL mode gets no loop connection: every call runs
on the store's thread.)

Two connections, both opened on the store's own thread at the first call (a store made
before ``fork()``, the parent of the workers, holds neither a thread nor a connection):

- The loop's connection runs an operation on the event loop when it cannot block: its
  busy timeout is 0, so a lock held elsewhere is ``SQLITE_BUSY`` at once, never a wait,
  and it never checkpoints (``wal_autocheckpoint = 0``), so a commit costs tens of µs
  and no sync. It serves the thread (the event loop) that made the first call; calls
  from any other thread take the store's thread.
- The store's thread runs what the loop could not: an operation that met
  ``SQLITE_BUSY`` runs again there (nothing of it was written: its transaction was
  never begun or was rolled back), waiting for the lock as a busy timeout, at most
  BUSY_TIMEOUT and never past the script call's network time (io_time_left): each call
  carries its deadline to the thread, sets the busy timeout to what is left of it, and
  gives up unrun when it is already past, so calls that queued behind a lock neither
  stall the ones after them nor write after their caller was told the store was
  unavailable. The thread also checkpoints the loop's writes: a PASSIVE checkpoint every
  CHECKPOINT_WRITES of them (it never waits, and writers go on beside it); one that
  leaves more than WAL_FRAMES in the WAL (writers kept it from catching up) is followed
  by a TRUNCATE, which holds the write lock while it runs (the loop's writes meanwhile
  meet SQLITE_BUSY and queue on the thread) and empties the file. While a checkpoint
  lags CHECKPOINT_WRITES writes behind (a slow sync), every call queues behind it on the
  thread. So the WAL stays bounded, and the disk's syncs happen on the thread.
"""
from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

from . import FailureLog, StateStore, WindowCount, call_wait, window_at

BUSY_TIMEOUT = 1.0  # seconds a call waits at most for another process's write lock
PURGE_BATCH = 16    # expired rows deleted at most by one write (a window's hit: one in
PURGE_EVERY = 8     # PURGE_EVERY, which makes one row at most, deletes PURGE_BATCH)
CHECKPOINT_WRITES = 100  # writes on the loop between two checkpoints on the store's thread
WAL_FRAMES = 1000   # pages in the WAL past which a checkpoint empties it (TRUNCATE)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS state_expires ON state (expires);
"""
_PURGE = ("DELETE FROM state WHERE rowid IN "
          "(SELECT rowid FROM state WHERE expires <= ? LIMIT ?)")
# Adding :amount to a key's count: an expired key starts again from it, with a new expiry.
_ADDED = """
ON CONFLICT (key) DO UPDATE SET
    value = CASE WHEN expires <= :now THEN :amount ELSE value + :amount END,
    expires = CASE WHEN expires <= :now THEN excluded.expires ELSE expires END
RETURNING value
"""
_INCR = "INSERT INTO state (key, value, expires) VALUES (:key, :amount, :now + :ttl)" + _ADDED
# A sliding window's hit, counted only when it fits (StateStore's ``fits``: this window's
# count, plus ``weighted`` = the previous one's weighed, plus ``amount``, within ``limit``,
# the same floating-point steps in the same order): one statement, so one write
# transaction that reads the count it changes (a write statement takes the write lock
# before it reads). No row back: refused, nothing written.
_COUNT_IF_FITS = """
INSERT INTO state (key, value, expires)
SELECT :key, :amount, :now + :ttl
WHERE coalesce((SELECT CAST(value AS INTEGER) FROM state WHERE key = :key AND expires > :now), 0)
      + :weighted + :amount <= :limit""" + _ADDED
_GET = "SELECT value FROM state WHERE key = ? AND expires > ?"
_GET_INTEGERS = ("SELECT key, CAST(value AS INTEGER) FROM state "
                 "WHERE key IN (?, ?) AND expires > ?")
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


def connect_for_loop(path: Path) -> sqlite3.Connection:
    """A connection to the state file (made by :func:`connect`) that never waits: busy
    timeout 0, no automatic checkpoint. Opened on the store's thread, used on the loop."""
    db = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA wal_autocheckpoint = 0")
    except BaseException:
        db.close()
        raise
    return db


def is_busy(err: sqlite3.Error) -> bool:
    """Whether ``err`` is SQLITE_BUSY (of any kind): the file is locked elsewhere."""
    return (getattr(err, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


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
        self._db: sqlite3.Connection | None = None  # the thread's, opened there
        self._loop_db: sqlite3.Connection | None = None  # the loop's, opened there too
        self._loop_thread: int | None = None  # the thread the loop's connection serves
        self._loop_writes = 0  # since the last checkpoint
        self._checkpoint = None  # the Future of the checkpoint under way, if any
        self._closed = False
        self._hits = 0  # windows' hits since the last purge of theirs
        self._failures = FailureLog(str(self))

    def __str__(self) -> str:
        return f"sqlite {self.path}"

    async def _run(self, work: Callable[[sqlite3.Connection], object]):
        """``work(connection)``, on the loop when the file is not locked, else on the
        store's thread within BUSY_TIMEOUT and the script call's network time
        (io_time_left); StateUnavailable when it fails or takes longer, or the store is
        closed."""
        wait = call_wait(BUSY_TIMEOUT)
        try:
            if self._closed:
                raise RuntimeError("the store is closed")
            if wait > 0 and self._serves_this_thread() and not self._checkpoint_lags():
                try:
                    return self._on_loop(work)
                except sqlite3.OperationalError as err:
                    if not is_busy(err):
                        raise
            return await self._on_thread(work, wait)
        except TimeoutError:
            reason = f"no answer within {wait:.3g} s"
        except (sqlite3.Error, OSError, RuntimeError) as err:  # RuntimeError: closed
            reason = str(err)
        raise self._failures.unavailable(reason)

    def _serves_this_thread(self) -> bool:
        """Whether the loop's connection is open and serves the calling thread (the one
        that made the first call)."""
        if self._loop_thread is None:
            self._loop_thread = threading.get_ident()
        return self._loop_db is not None and self._loop_thread == threading.get_ident()

    def _checkpoint_lags(self) -> bool:
        """Whether the loop wrote CHECKPOINT_WRITES more while a checkpoint is still under
        way: calls then queue behind it on the store's thread, so the WAL stays bounded
        however slow the disk's syncs."""
        return self._loop_writes >= CHECKPOINT_WRITES and self._checkpoint is not None \
            and not self._checkpoint.done()

    def _on_loop(self, work):
        """``work`` on the loop's connection (SQLITE_BUSY at once when the file is locked);
        every CHECKPOINT_WRITES writes, a checkpoint is handed to the store's thread."""
        db = self._loop_db
        changes = db.total_changes
        result = work(db)
        if db.total_changes != changes:
            self._loop_writes += 1
            if self._loop_writes >= CHECKPOINT_WRITES and \
                    (self._checkpoint is None or self._checkpoint.done()):
                self._loop_writes = 0
                self._checkpoint = self._thread.submit(self._checkpoint_wal)
        return result

    async def _on_thread(self, work, wait: float):
        """``work`` on the store's thread, within ``wait`` seconds."""
        future = asyncio.get_running_loop().run_in_executor(
            self._thread, self._call, work, time.monotonic() + wait)
        return await asyncio.wait_for(future, wait + 0.1)  # the thread's own end, a margin

    def _call(self, work, deadline: float):
        """On the store's thread: ``work`` with a busy timeout of what is left until
        ``deadline``; not run at all when nothing is left."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise sqlite3.OperationalError("gave up waiting for the store's thread")
        self._connect()
        self._db.execute(f"PRAGMA busy_timeout = {max(int(left * 1000), 1)}")
        return work(self._db)

    def _connect(self) -> None:
        """On the store's thread: open both connections, the first time (the loop's only
        in WAL mode, which a file system without shared memory refuses: a commit of
        another mode syncs the disk)."""
        if self._db is None:
            self._db = connect(self.path)
            if self._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                self._loop_db = connect_for_loop(self.path)

    def _checkpoint_wal(self) -> None:
        """On the store's thread: copy the WAL into the file without waiting (PASSIVE);
        when writers kept more than WAL_FRAMES in it, empty it (TRUNCATE, waiting for the
        write lock BUSY_TIMEOUT at most). A failure waits for the next one."""
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            _, frames, _ = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames > WAL_FRAMES:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as err:
            self._failures.report(f"checkpoint: {err}")

    def _purge_now_and_then(self, db: sqlite3.Connection, now: float) -> None:
        """Before one window's hit in PURGE_EVERY: delete PURGE_BATCH expired rows at most
        (more than the hits in between can have made)."""
        self._hits = (self._hits + 1) % PURGE_EVERY
        if self._hits == 0:
            db.execute(_PURGE, (now, PURGE_BATCH))

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

        def counts(db) -> tuple[int, int]:  # both windows' in one statement
            found = dict(db.execute(_GET_INTEGERS, (*keys, now)).fetchall())
            return found.get(keys[0], 0), found.get(keys[1], 0)

        def step(db) -> WindowCount:
            current, previous = counts(db)  # the previous window's count no longer grows
            if not amount:  # a read only: no transaction, no row made
                return WindowCount(now, current, previous, counted=False)
            self._purge_now_and_then(db, now)
            rows = db.execute(_COUNT_IF_FITS, {
                "key": keys[0], "amount": amount, "ttl": 2 * window, "now": now,
                "weighted": previous * (1 - elapsed), "limit": limit}).fetchall()
            if not rows:  # refused: the counts as they are now
                return WindowCount(now, *counts(db), counted=False)
            return WindowCount(now, int(rows[0][0]), previous, counted=True)

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

    async def first_present(self, keys: Sequence[str]) -> tuple[int, str] | None:
        now = self.clock()

        def lookup(db) -> tuple[int, str] | None:  # reads only
            for position, key in enumerate(keys):
                row = db.execute(_GET, (key, now)).fetchone()
                if row is not None:
                    return position, str(row[0])
            return None

        return await self._run(lookup)

    async def get_or_add(self, key: str, value: str, ttl: float) -> str | None:
        now = self.clock()

        def get_or_add(db) -> str | None:  # a read; a transaction only when it is absent
            row = db.execute(_GET, (key, now)).fetchone()
            if row is None:
                with _transaction(db, now):
                    row = db.execute(_GET, (key, now)).fetchone()
                    if row is None:
                        db.execute(_SET, {"key": key, "value": value, "ttl": ttl, "now": now})
            return None if row is None else str(row[0])

        return await self._run(get_or_add)

    async def delete(self, key: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM state WHERE key = ?", (key,)))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._thread, self._disconnect)
        self._thread.shutdown(wait=True)

    def _disconnect(self) -> None:
        """On the store's thread: close both connections (the last one to close
        checkpoints the WAL into the file)."""
        for db in (self._loop_db, self._db):
            if db is not None:
                db.close()
        self._db = self._loop_db = None
