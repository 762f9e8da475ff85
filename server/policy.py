"""The policy: ``main.vsl`` of the script directory, linted and loaded, reloadable.

A reload (SIGHUP, or a changed ``*.vsl`` file) builds the new script completely
before swapping it in; if linting or loading fails, the old script keeps running
and the errors are logged.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from stdlib.ctx import entry_points
from vsl.engine import Engine, Script
from vsl.errors import VslError
from vsl.lint import Linter, format_full, rhai_note, script_files

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
        vsmtp = rhai_note(directory)
        if vsmtp:
            raise PolicyError(f"{directory}: no main.vsl{vsmtp}")
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

    def reload(self) -> bool:
        """Load the scripts again; on failure keep the running ones. True if swapped."""
        stamp = self._files_stamp()
        try:
            script = load_policy(self.engine, self.directory)
        except PolicyError as err:
            log.error("reload failed, keeping the running scripts:\n%s", err)
            self._stamp = stamp
            return False
        self.script, self._stamp = script, stamp
        self.generation += 1
        log.info("scripts reloaded from %s (generation %d)", self.directory, self.generation)
        return True

    def _files_stamp(self) -> tuple:
        if self.directory is None or not self.directory.is_dir():
            return ()
        return tuple(sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size)
                            for p in self.directory.rglob("*.vsl")))

    async def watch(self, interval: float = 1.0) -> None:
        """Reload whenever a script file changes (polling; runs until cancelled)."""
        while True:
            await asyncio.sleep(interval)
            if self._files_stamp() != self._stamp:
                self.reload()
