"""Readiness of one ``vsl serve`` (``/readyz``): what must hold for it to take mail.

Each serving process marks itself ready with ``<metrics dir>/ready/<index>`` (its pid)
once its Server started and removes the mark when it stops (:func:`mark_ready`,
:func:`unmark_ready`). Each check gives what fails, one line each:
:func:`worker_problems` a worker index with no mark or a dead pid, :func:`spool_problem`
a spool whose ``tmp/`` cannot take a file, :func:`answer_problem` a broker or Redis that
does not answer within :data:`WAIT` seconds (server/exporter.py's ``problems`` runs them).
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

WAIT = 2.0  # seconds the broker and Redis have to answer


def mark_path(directory: Path, index: int) -> Path:
    return directory / "ready" / str(index)


def mark_ready(directory: Path, index: int) -> None:
    """Worker ``index`` (this process) is serving."""
    path = mark_path(directory, index)
    path.parent.mkdir(exist_ok=True)
    path.write_text(str(os.getpid()))


def unmark_ready(directory: Path, index: int) -> None:
    """Worker ``index`` stops serving (only its own mark: a new worker may have written
    one already)."""
    path = mark_path(directory, index)
    try:
        if path.read_text() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_problems(directory: Path, workers: int) -> list[str]:
    """A line for each worker index without a mark of a live process."""
    out = []
    for index in range(workers):
        try:
            pid = int(mark_path(directory, index).read_text())
        except (OSError, ValueError):
            out.append(f"worker {index}: not serving")
            continue
        if not _alive(pid):
            out.append(f"worker {index}: pid {pid} is gone")
    return out


def spool_problem(root: Path) -> str | None:
    """Why the spool's tmp/ cannot take a file, or None."""
    probe = root / "tmp" / f".ready-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as err:
        return f"spool: {root / 'tmp'} is not writable: {err.strerror or err}"
    return None


async def answer_problem(what: str, call) -> str | None:
    """Why ``await call()`` failed or took longer than :data:`WAIT`, or None."""
    try:
        await asyncio.wait_for(call(), WAIT)
    except TimeoutError:
        return f"{what}: no answer within {WAIT:g} s"
    except Exception as err:  # noqa: BLE001 - any failure is the line's reason
        return f"{what}: {err or type(err).__name__}"
    return None
