"""Where ``import "path"`` points: one rule for the engine and the linter.

An import names a ``.vsl`` file inside the script directory. Anything else the path
may hold (a NUL byte, a name too long, a symlink loop, a way out of the directory) is a
:class:`VslError` without a position; the caller adds the import's position. Whether
the file is a regular one is checked when it is read (:func:`vsl.script_file.read_script`).
"""
from __future__ import annotations

from pathlib import Path

from .errors import LimitError, VslError

# Imports nest (a imports b imports c ...) at most this deep, whatever max_modules says:
# each level is a few Python stack frames while the chain loads.
MAX_IMPORT_NESTING = 64


def import_target(root: Path, rel: str) -> Path:
    """The resolved file of ``import rel`` from the script directory ``root``."""
    name = rel if rel.endswith(".vsl") else rel + ".vsl"
    try:
        target = (root / name).resolve()
    except (ValueError, OSError, RuntimeError):  # NUL byte, name too long, symlink loop
        raise VslError(f"cannot import {rel[:80]!r}: not a valid file name") from None
    if root not in target.parents:
        raise VslError(f"import '{rel}' is outside the script directory")
    return target


def check_nesting(depth: int) -> None:
    """Refuse an import ``depth`` levels below the main script."""
    if depth >= MAX_IMPORT_NESTING:
        raise LimitError(f"imports nested more than {MAX_IMPORT_NESTING} levels deep")
