"""File-system helpers that the spool and the local transports (Maildir, mbox) share."""
from __future__ import annotations

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
