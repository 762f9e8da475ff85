"""Where the compiled grammar may be cached: a private directory of the user's, or nowhere.

Design note. Compiling the grammar into LALR tables takes a quarter of a second, which
every ``vsl lint`` would pay; Lark can cache the tables in a file, which it reads back with
pickle. Lark's ``cache=True`` puts that file in the system's temporary directory, under a
name anyone can compute: another local user who writes it first runs code in every vsl
process that reads it. So the cache lives in ``$XDG_CACHE_HOME/vsl`` (``~/.cache/vsl``),
which is made mode 0700 and used only while it is a real directory of this user's that no
one else may write to; otherwise there is no cache and the grammar is compiled. Lark checks
the file's header (a hash of the grammar, its options, its version and Python's): a file
that does not match or does not load (damaged, or still being written by another process)
it compiles the grammar again and rewrites. (Lark writes the file in place: the hash covers
the file's name, so it cannot be written under another and renamed.)
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
import stat
import sys


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/vsl``, or ``~/.cache/vsl``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vsl"


DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_private(path: Path, dir_fd: int | None = None) -> int | None:
    """A descriptor of the directory ``path`` (relative to ``dir_fd``), made if missing,
    when it is this user's, no one else can write to it and it is not a symbolic link
    (checked on the descriptor: what is used is what was checked); None otherwise."""
    try:
        if dir_fd is None:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        else:
            _make(path, dir_fd)
        fd = os.open(path, DIRECTORY_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        return None
    return fd


def _make(name: Path, dir_fd: int) -> None:
    """Make the directory ``name`` in ``dir_fd`` unless something is there already."""
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        pass


def private_dir(path: Path) -> Path | None:
    """``path``, made if missing, when it is a private directory (:func:`open_private`)."""
    fd = open_private(path)
    if fd is None:
        return None
    os.close(fd)
    return path


def grammar_cache(grammar: str, lark_version: str, directory: Path | None = None) -> Path | None:
    """The file to cache the tables of ``grammar`` in (None: do not cache)."""
    folder = private_dir(directory or cache_dir())
    if folder is None:
        return None
    python = "%d.%d" % sys.version_info[:2]
    key = hashlib.sha256(f"{python}\0{lark_version}\0{grammar}".encode()).hexdigest()[:32]
    return folder / f"grammar-{key}.lark-cache"
