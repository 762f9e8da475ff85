"""Learned bounces: an operator's corrections and custom reasons (``vsl bounce learn``), kept
in one JSONL file that the running server re-reads when it changes.

Design: one ``{"text", "reason", "learned_at"}`` object a line (self-learning's examples
add ``source``, the registrable domain whose server answered, and ``key``, their
near-duplicate key, computed once). Learning appends a whole line and fsyncs it; forgetting
writes the kept lines to a temporary file, fsyncs it and renames it over the old one, with
the old file's owner, group and mode (refused, as a PermissionError, to a user who is
neither its owner nor root: the file would change hands). A crash therefore leaves at most
a last line cut short: a line that is no such object is skipped with a warning naming
file:line (once per change of the file: only :class:`LearnedFile` warns), and the next
append starts on a line of its own. A missing file means nothing learned. Writers (``vsl
bounce learn``, self-learning) hold an exclusive ``flock`` of ``<file>.lock``
(:func:`locked`), asked without blocking and retried a few times (once, without a pause, by
delivery's self-learning): a writer that cannot get it gives up rather than wait.

:class:`LearnedFile` is that file as a process sees it: what its ``build`` makes of the
examples (the operator's :class:`.memory.Memory`, self-learning's :class:`.memory.Neighbours`),
re-read when the file's (mtime, size, inode) changed, looked at no more than once every
``RECHECK`` seconds (between looks a call costs one clock reading). The first look is made
while the other threads wait; a later one is made by one thread while the others go on with
the memory they had, so every classification sees a whole memory and none waits for a
rebuild. ``build`` is called only when the file holds examples (so numpy is imported only
then). A look that changed the number of examples is logged at INFO, any other at DEBUG.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

log = logging.getLogger("vsl.bounce")

REASON_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
RECHECK = 1.0  # seconds between two looks at the learned file
LOCK_TRIES = 5  # attempts at the writers' lock ...
LOCK_PAUSE = 0.01  # ... seconds apart, before a writer gives up


@dataclass(frozen=True)
class Example:
    """One learned bounce: its text (a message or a reply line), the reason an operator
    gave it, and when (ISO 8601, UTC); for an automatic example, the recipient domain
    whose server answered (``source``) and its near-duplicate key (``selflearn.key``)."""

    text: str
    reason: str
    learned_at: str
    source: str = ""
    key: str = ""


def reason_problem(reason: str) -> str | None:
    """Why ``reason`` cannot name a reason, or None when it can."""
    if REASON_NAME.fullmatch(reason):
        return None
    return (f"'{reason}' is not a reason name: lowercase letters, digits and _, starting with "
            "a letter, at most 40 characters")


def example(text: str, reason: str, source: str = "", key: str = "") -> Example:
    """A new example learned now."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return Example(text, reason, now.isoformat().replace("+00:00", "Z"), source, key)


def read(path: str | Path, warn: bool = True) -> list[Example]:
    """The examples of a learned file (none when it is missing); a line that is no
    example is skipped, with a warning naming file:line when ``warn``."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            lines = list(handle)
    except FileNotFoundError:
        return []
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        found = _parse_line(line)
        if found is None and warn:
            log.warning("%s:%d: not a learned bounce (a JSON object with a text and a "
                        "reason), skipped", path, number)
        elif found is not None:
            examples.append(found)
    return examples


def _parse_line(line: str) -> Example | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or not isinstance(row.get("text"), str) or \
            not isinstance(row.get("reason"), str) or reason_problem(row["reason"]):
        return None
    return Example(row["text"], row["reason"], str(row.get("learned_at", "")),
                   str(row.get("source", "")), str(row.get("key", "")))


def append(path: str | Path, learned: Example) -> None:
    """Add one example to the file, durably; a missing file is created (0600: bounces name
    addresses), with its directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as handle:
        cut_short = handle.tell() > 0 and _last_byte(path) != b"\n"
        handle.write((b"\n" if cut_short else b"") + _line(learned))
        handle.flush()
        os.fsync(handle.fileno())


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


def rewrite(path: str | Path, examples: list[Example]) -> None:
    """Replace the file's examples with ``examples``, atomically, keeping the file's owner,
    group and mode (a PermissionError when the effective user is neither its owner nor
    root)."""
    path = Path(path)
    old = _owned_status(path)
    fd, temporary = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if old is not None:
                _take_over(handle.fileno(), old)
            handle.write(b"".join(_line(kept) for kept in examples))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _owned_status(path: Path) -> os.stat_result | None:
    """The file's status (None when it is missing), after checking that this user may
    write it again as its owner (or is root)."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    if os.geteuid() not in (0, found.st_uid):
        raise PermissionError(errno.EPERM, f"owned by uid {found.st_uid}: run this as its "
                                           "owner, rewriting would change its owner", str(path))
    return found


def _take_over(fd: int, old: os.stat_result) -> None:
    """Give the file open at ``fd`` the owner, group and permission bits of ``old``."""
    if os.geteuid() == 0:
        os.fchown(fd, old.st_uid, old.st_gid)
    os.fchmod(fd, old.st_mode & 0o7777)


def _line(learned: Example) -> bytes:
    """The example's JSON line (an operator's without the automatic fields)."""
    row = {name: value for name, value in asdict(learned).items()
           if value or name not in ("source", "key")}
    return json.dumps(row, ensure_ascii=False).encode("utf-8", "surrogateescape") + b"\n"


class Busy(OSError):
    """Another writer holds a learned file's lock (see :func:`locked`)."""


class locked:
    """An exclusive flock of ``<path>.lock`` (0600), held for a with block; asked ``tries``
    times ``LOCK_PAUSE`` apart without blocking, then :class:`Busy`."""

    def __init__(self, path: str | Path, tries: int = LOCK_TRIES, sleep=time.sleep):
        path = Path(path)
        self.path = path.with_name(path.name + ".lock")
        self._tries, self._sleep = tries, sleep

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a", opener=lambda name, flags: os.open(name, flags, 0o600))
        for attempt in range(self._tries):
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if attempt < self._tries - 1:
                    self._sleep(LOCK_PAUSE)
        self.handle.close()
        raise Busy(errno.EWOULDBLOCK, "another process is writing it", str(self.path))

    def __exit__(self, *exc):
        self.handle.close()  # releases the lock


class LearnedFile:
    """A learned file as the running process sees it (see the module docstring)."""

    def __init__(self, path: str | Path, build: Callable[[list[Example]], object],
                 clock=time.monotonic, recheck: float = RECHECK):
        self.path = Path(path)
        self._build = build
        self.generation = 0  # counts the re-reads that changed the memory
        self._clock, self._recheck = clock, recheck
        self._lock = threading.Lock()
        self._next_look = float("-inf")
        self._signature = None
        self._memory = None
        self._count = 0  # examples at the last look

    def memory(self):
        """What ``build`` made of the file's examples (None: nothing learned, or the file
        cannot be read: logged); never raises, never waits for a rebuild but the first."""
        if self._clock() >= self._next_look:
            first = self.generation == 0
            if self._lock.acquire(blocking=first):
                try:
                    if self._clock() >= self._next_look:
                        self._look()
                        self._next_look = self._clock() + self._recheck
                finally:
                    self._lock.release()
        return self._memory

    @property
    def last(self):
        """What ``build`` made at the last look, without looking again."""
        return self._memory

    def _look(self) -> None:
        signature = self._stat()
        if signature == self._signature:
            return
        try:
            examples = read(self.path)
            self._memory = self._build(examples) if examples else None
        except Exception:  # noqa: BLE001 - a classification must never break its caller
            log.exception("bounce classifier: cannot use the learned bounces of %s (until it "
                          "changes)", self.path)
            examples, self._memory = [], None
        self._signature = signature
        self.generation += 1
        level = logging.INFO if len(examples) != self._count else logging.DEBUG
        self._count = len(examples)
        log.log(level, "bounce classifier: %d learned example(s) from %s", len(examples),
                self.path)

    def _stat(self) -> tuple | None:
        try:
            found = self.path.stat()
        except OSError:
            return None
        return found.st_mtime_ns, found.st_size, found.st_ino

