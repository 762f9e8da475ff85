"""The ids every log line about a session or a message carries: ``session`` (new per
SMTP connection, 12 lowercase hex) and ``queue_id`` (the queue's id of the message).

They live in a ContextVar: a task copies the context it was created in, so ids set
before a session's handler task starts are seen by every await of that session, and
:class:`IdsFilter` stamps each record with them. The value is a mutable :class:`Ids`,
so a transaction setting its ``queue_id`` is seen by whatever shares the session's
context (the script threads run in a copy of it).

    with bound(envelope.session, entry.id):
        log.info("...")        # stamped session=... queue_id=...
"""
from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass
from random import getrandbits


@dataclass
class Ids:
    """The ids of what the current code works on ("" or None: none)."""

    session: str = ""
    queue_id: str | None = None


_current: ContextVar[Ids | None] = ContextVar("vsl_log_ids", default=None)


def new_session_id() -> str:
    """A fresh session id: 12 lowercase hex digits (random, not secret: the random
    module is seeded anew in a forked worker)."""
    return f"{getrandbits(48):012x}"


def current() -> Ids | None:
    """The ids bound in this context, if any."""
    return _current.get()


def start_session() -> Ids:
    """Bind a new session's ids in the current context (before its task is created)."""
    ids = Ids(new_session_id())
    _current.set(ids)
    return ids


def bound(session: str, queue_id: str | None = None):
    """Log with these ids inside the block (a context manager)."""
    return using(Ids(session, queue_id))


class using:  # noqa: N801 - a context manager used as a function
    """Log with ``ids`` inside the block: for code a session's task does not run (the
    transport's callbacks). A class: cheaper than a generator's context manager."""

    __slots__ = ("ids", "token")

    def __init__(self, ids: Ids):
        self.ids = ids

    def __enter__(self) -> None:
        self.token = _current.set(self.ids)

    def __exit__(self, *exc) -> None:
        _current.reset(self.token)


class IdsFilter(logging.Filter):
    """Stamps each record with ``session`` and ``queue_id`` (None when not bound)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = _current.get()
        if not hasattr(record, "session"):
            record.session = (ids.session or None) if ids else None
            record.queue_id = ids.queue_id if ids else None
        return True
