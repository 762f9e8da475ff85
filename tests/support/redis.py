"""A private ``redis-server`` for tests: on a free loopback port, its working directory a
temporary one, nothing saved (no RDB snapshot, no append-only file), started and stopped
by the test through its own PID.

    with PrivateRedis() as server:
        RedisStore(server.url) ...
        server.stop()    # Redis gone while the server under test runs
        server.start()   # back, on the same port

Without the Debian package the test is skipped, or fails under CI=true
(``tests/support/tools.py``).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from .crash import stop_process
from .mailsink import free_port, listening
from .smtp_tools import wait_for
from .tools import require


class PrivateRedis:
    """One redis-server process of the test's own (see the module docstring)."""

    def __init__(self):
        self.binary = require("redis-server", "redis-server")
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="vsl-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "PrivateRedis":
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.directory), "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for(lambda: self.proc.poll() is not None or listening(self.port), 10) \
                or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"redis-server did not start on port {self.port}")
        return self

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 5 s); the port stays this one's."""
        proc, self.proc = self.proc, None
        stop_process(proc)

    def __enter__(self) -> "PrivateRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
