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


def sync_file_system(target: int | str | Path) -> None:
    """Make every write on the file system holding ``target`` (a path, or a descriptor
    open on it) durable with one syncfs(2) (only where :data:`HAS_SYNCFS`). A writer
    passes the descriptor it keeps (:class:`FileSystemSync`): a path is opened afresh,
    and misses a writeback error someone else has already seen."""
    if isinstance(target, int):
        _syncfs(target)
        return
    fd = os.open(target, os.O_RDONLY)
    try:
        _syncfs(fd)
    finally:
        os.close(fd)


def _syncfs(fd: int) -> None:
    if _SYNCFS(fd) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


class FileSystemSync:
    """syncfs(2) of the file system holding ``root`` through one descriptor this process
    keeps open on it.

    Why one descriptor: since Linux 5.8 syncfs reports a writeback error only to the
    descriptors opened before it happened (errseq), and to one opened later only while
    no one has seen it yet. A descriptor opened for each sync misses an error another
    process (or this one's previous sync) already saw, and the writes lost with it would
    be acknowledged. One opened before this process's first write (:meth:`before_writes`)
    and kept sees each error once: the first sync after it fails. A forked child opens
    its own (the parent's would have seen the parent's errors)."""

    def __init__(self, root: Path):
        self.root = root
        self._fd, self._pid = -1, 0

    def before_writes(self) -> None:
        """Open the descriptor, unless this process has it already."""
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.root, os.O_RDONLY), os.getpid()

    def sync(self) -> None:
        """Make what this process wrote since :meth:`before_writes` durable."""
        self.before_writes()
        sync_file_system(self._fd)

    def close(self) -> None:
        """Close the descriptor (the next write opens it again)."""
        if self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = -1, 0
