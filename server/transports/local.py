"""Local routes: ``maildir:/dir`` and ``mbox:/file``, one copy per recipient, written in
a thread and made durable (server/files.py) before the delivery counts.

A path comes from a script (maybe built from a local part): every file is opened
:func:`confined` to the directory the route names, so a symbolic link there cannot lead
the write elsewhere."""
from __future__ import annotations

import asyncio
import errno
import fcntl
import itertools
import logging
import os
import re
import socket
import time
from typing import Callable

from vsl.stdlib.transport import Route

from ..files import make_private_dirs, sync_directory, write_all, write_new_file
from .base import Setup
from .outcome import Outcome

log = logging.getLogger("vsl.delivery")


class LocalFile:
    """A route to a file: each recipient's copy (Return-Path and Delivered-To first)
    stored by ``store(path, content, sender)`` in a thread; a file error defers. The
    reply (which a DSN to an outside sender quotes) names no local path: the log does."""

    def __init__(self, store: Callable[[str, bytes, str], None]):
        self.store = store

    async def deliver(self, route: Route, sender: str, recipients: list[str],
                      data: bytes, plaintext_fallback: bool = False) -> dict[str, Outcome]:
        return {r: await self._copy(route, sender, r, data) for r in recipients}

    async def _copy(self, route: Route, sender: str, rcpt: str, data: bytes) -> Outcome:
        try:
            await asyncio.to_thread(self.store, route.path, local_copy(sender, rcpt, data),
                                    sender)
        except OSError as err:
            log.warning("%s %s: %s", route.kind, route.path, err)
            why = os.strerror(err.errno) if err.errno else "I/O error"
            return Outcome("deferred", f"451 4.3.0 mailbox unavailable: {why}")
        return Outcome("delivered", f"250 2.0.0 delivered to {route.kind}")


def maildir(setup: Setup) -> LocalFile:
    """maildir: routes, one file per copy (:func:`write_maildir`)."""
    return LocalFile(lambda path, content, sender: write_maildir(path, content))


def mbox(setup: Setup) -> LocalFile:
    """mbox: routes, appended under a lock (:func:`append_mbox`)."""
    return LocalFile(append_mbox)


def local_copy(sender: str, rcpt: str, data: bytes) -> bytes:
    """The message as stored locally: Return-Path and Delivered-To first, LF line ends."""
    head = f"Return-Path: <{sender}>\nDelivered-To: {rcpt}\n".encode()
    return head + re.sub(rb"\r\n", b"\n", data)


_sequence = itertools.count()


def write_maildir(directory: str, content: bytes) -> str:
    """Write into ``directory``/tmp, fsync, rename into new/ and sync that directory;
    returns the file name (time.MusecPpidQn.host, unique on this host)."""
    tmp_dir, new_dir, cur_dir = (confined(directory, sub) for sub in ("tmp", "new", "cur"))
    for sub in (tmp_dir, new_dir, cur_dir):
        make_private_dirs(sub)
    now = time.time()
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
    name = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_sequence)}.{host}"
    tmp = os.path.join(tmp_dir, name)
    write_new_file(tmp, content)
    os.rename(tmp, os.path.join(new_dir, name))
    sync_directory(new_dir)
    return name


def append_mbox(path: str, content: bytes, sender: str) -> None:
    """Append a From_ line and the message (``>From `` quoting, mboxrd) under an fcntl
    lock; a failed write is cut off again, so the file never keeps half a message."""
    directory, name = os.path.split(path)
    make_private_dirs(directory)
    stamp = time.asctime(time.gmtime())
    body = re.sub(rb"(?m)^(>*From )", rb">\1", content)
    blob = f"From {sender or 'MAILER-DAEMON'} {stamp}\n".encode() + body + \
        (b"\n" if body.endswith(b"\n") else b"\n\n")
    fd = os.open(confined(directory, name),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        try:
            write_all(fd, blob)
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def confined(directory: str, name: str) -> str:
    """``directory``/``name``, checked to stay there once symbolic links are resolved
    (Maildir's tmp, new and cur; an mbox file): OSError when it leads elsewhere."""
    path = os.path.join(directory, name)
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(directory):
        raise OSError(errno.EPERM, f"{name} leaves its directory (a symbolic link)")
    return path
