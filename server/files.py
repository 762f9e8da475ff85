"""File-system helpers that the spool and the local transports (Maildir, mbox) share:
private directories, and writes made durable (fsync, syncfs) before mail is acknowledged."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path


def make_private_dirs(path: str | Path) -> None:
    """Create ``path`` and every missing parent readable by their owner only (0700,
    whatever the umask: queued mail and mailboxes hold message bodies). Directories that
    already exist keep their mode."""
    missing, here = [], Path(path)
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            if not directory.is_dir():
                raise


def write_all(fd: int, data: bytes, fsync: bool = True) -> None:
    """Write all of ``data`` at ``fd`` (few system calls, each of which gives the event
    loop the GIL), then fsync it unless the caller syncs the file system afterwards."""
    with memoryview(data) as view:
        while view:
            view = view[os.write(fd, view):]
    if fsync:
        os.fsync(fd)


def write_new_file(path: str | Path, data: bytes, fsync: bool = True) -> None:
    """Create ``path`` (0600; never over an existing file) holding ``data``, written with
    :func:`write_all`; a failed write removes the file again."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_all(fd, data, fsync)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)


def sync_directory(path: str | Path) -> None:
    """Make the entries of directory ``path`` (files created or renamed there) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs_function():
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    return getattr(libc, "syncfs", None)


_SYNCFS = _syncfs_function()
HAS_SYNCFS = _SYNCFS is not None  # else: fsync each file (write_all) and directory


def sync_file_system(path: str | Path) -> None:
    """Make every write on the file system holding ``path`` durable with one syncfs(2)
    (only where :data:`HAS_SYNCFS`)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    finally:
        os.close(fd)
