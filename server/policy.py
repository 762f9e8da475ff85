"""The policy: ``main.vsl`` of the script directory, linted and loaded, reloadable.

A reload (SIGHUP, or a changed ``*.vsl`` file) builds the new script completely
before swapping it in; if linting or loading fails, the old script keeps running
and the errors are logged. Linting and loading run in a worker thread, one reload at
a time, so the event loop keeps serving sessions (with the old script) meanwhile.
The file watcher survives every failure: a later good edit is loaded.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from vsl.stdlib.ctx import entry_points
from vsl.engine import Engine, Script
from vsl.errors import VslError
from vsl.lint import Linter, foreign_note, format_full, script_files

from . import metrics

log = logging.getLogger("vsl.policy")


class PolicyError(Exception):
    """The scripts do not lint or load; the message is the lint output."""


def load_policy(engine: Engine, directory: Path | None) -> Script | None:
    """Lint every script of ``directory`` and load its main.vsl (None: no policy)."""
    if directory is None:
        return None
    if not directory.is_dir():
        raise PolicyError(f"{directory}: not a directory")
    main = directory / "main.vsl"
    if not main.exists():
        if any(directory.rglob("*.vsl")):
            raise PolicyError(f"{directory}: has scripts but no main.vsl")
        foreign = foreign_note(directory, entry_points().foreign_scripts)
        if foreign:
            raise PolicyError(f"{directory}: no main.vsl{foreign}")
        return None
    linter = Linter(engine, entry_points())
    findings = [d for f in script_files([directory]) for d in linter.lint_file(f)]
    errors = [d for d in findings if d.severity == "error"]
    for warning in (d for d in findings if d.severity == "warning"):
        log.warning("%s", warning)
    if errors:
        raise PolicyError(format_full(errors, linter.sources))
    try:
        return engine.load(main)
    except VslError as err:
        raise PolicyError(str(err)) from None


class Policy:
    """Holds the current script; :meth:`reload` swaps it atomically."""

    def __init__(self, engine: Engine, directory: Path | None):
        self.engine = engine
        self.directory = directory
        self.script = load_policy(engine, directory)
        self.generation = 0
        self._stamp = self._files_stamp()
        self._one_at_a_time = asyncio.Lock()
        self._pending: set[asyncio.Task] = set()  # reloads asked for by SIGHUP

    def reload(self) -> bool:
        """Load the scripts again; on failure keep the running ones. True if swapped;
        counted in vsl_script_reloads_total."""
        swapped = self._load_again()
        metrics.count("vsl_script_reloads_total", result="ok" if swapped else "failed")
        return swapped

    def _load_again(self) -> bool:
        self._stamp = self._files_stamp()  # a failed load is not tried again until an edit
        try:
            script = load_policy(self.engine, self.directory)
        except PolicyError as err:
            log.error("reload failed, keeping the running scripts:\n%s", err)
            return False
        except Exception:  # noqa: BLE001 - a bug must not stop the watcher or the server
            log.exception("reload failed, keeping the running scripts")
            return False
        self.script = script
        self.generation += 1
        log.info("scripts reloaded from %s (generation %d)", self.directory, self.generation)
        return True

    async def reload_in_thread(self) -> bool:
        """:meth:`reload` in a worker thread (one at a time): sessions go on with the
        running script until the new one is ready."""
        async with self._one_at_a_time:
            return await asyncio.to_thread(self.reload)

    def request_reload(self) -> None:
        """Start a reload in the background (the SIGHUP handler; needs a running loop)."""
        task = asyncio.ensure_future(self.reload_in_thread())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def follow_changes(self, on_sighup: Callable[[], None] | None = None) -> asyncio.Task:
        """Reload on SIGHUP (when serving in the main thread; ``on_sighup`` called first)
        and whenever a script changes: the watcher's task, to cancel when serving ends."""
        def sighup() -> None:
            if on_sighup is not None:
                on_sighup()
            self.request_reload()

        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, sighup)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (uvloop: ValueError), or no signals here
        return asyncio.ensure_future(self.watch())

    def _files_stamp(self) -> tuple:
        """(path, mtime, size) of every script; one removed meanwhile is left out."""
        if self.directory is None or not self.directory.is_dir():
            return ()
        stamps = []
        try:
            paths = sorted(self.directory.rglob("*.vsl"))
        except OSError:  # a folder removed while it was listed: look again next time
            return ()
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue
            stamps.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(stamps)

    async def watch(self, interval: float = 1.0) -> None:
        """Reload whenever a script file changes (polling; runs until cancelled)."""
        while True:
            await asyncio.sleep(interval)
            if self._files_stamp() != self._stamp:
                await self.reload_in_thread()
