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


def private_dir(path: Path) -> Path | None:
    """``path``, made if missing, when it is a directory of this user's that no one else
    can write to (and not a symbolic link); None otherwise."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() \
            or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    return path


def grammar_cache(grammar: str, lark_version: str, directory: Path | None = None) -> Path | None:
    """The file to cache the tables of ``grammar`` in (None: do not cache)."""
    folder = private_dir(directory or cache_dir())
    if folder is None:
        return None
    python = "%d.%d" % sys.version_info[:2]
    key = hashlib.sha256(f"{python}\0{lark_version}\0{grammar}".encode()).hexdigest()[:32]
    return folder / f"grammar-{key}.lark-cache"
