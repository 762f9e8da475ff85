"""The ``vsl milter`` server: the policy (linted at start, reloaded on SIGHUP or a changed
script, as in ``vsl serve``), its script threads, and one listener the MTA connects to.

    server = MilterServer(config, "inet:127.0.0.1:8891")   # or "unix:/run/vsl/milter"
    await server.start()
    await server.serve_forever()                            # until cancelled
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ..config import Config, ConfigError, parse_listen
from ..scripting import Scripting
from ..services import SessionSettings
from .connection import MilterLimits, serve_connection
from .session import MilterSession

log = logging.getLogger("vsl.milter")


def parse_socket(text: str) -> tuple[str, str | int]:
    """``inet:HOST:PORT`` -> ("inet", (host, port)); ``unix:PATH`` -> ("unix", path)."""
    kind, _, where = text.partition(":")
    if kind == "inet":
        listener = parse_listen(where, key="--listen")
        return "inet", (listener.host, listener.port)
    if kind in ("unix", "local") and where:
        return "unix", where
    raise ConfigError(f"--listen: '{text}' is not inet:HOST:PORT or unix:PATH")


class MilterServer:
    """Everything one ``vsl milter`` process runs."""

    def __init__(self, config: Config, listen: str, limits: MilterLimits = MilterLimits()):
        self.kind, self.where = parse_socket(listen)
        self.limits = limits
        self.connections = 0  # being served
        self.scripting = Scripting(config)
        self.policy = self.scripting.policy
        self.settings = SessionSettings.of(config)
        self.server: asyncio.base_events.Server | None = None
        self.address = ""  # where it listens, once started

    def session(self) -> MilterSession:
        return MilterSession(self.scripting.new_runner, self.settings)

    async def _connection(self, reader, writer) -> None:
        """Serve one MTA connection; one beyond the limit is closed at once (the MTA
        applies its ``milter_default_action``)."""
        if self.connections >= self.limits.connections:
            log.warning("more than %d milter connections: one closed", self.limits.connections)
            writer.close()
            return
        self.connections += 1
        try:
            await serve_connection(reader, writer, self.session, self.limits.idle_seconds)
        finally:
            self.connections -= 1

    async def start(self) -> None:
        """Bind the listener (a stale Unix socket is replaced)."""
        if self.kind == "unix":
            path = Path(self.where)
            if path.is_socket():
                path.unlink()
            self.server = await asyncio.start_unix_server(self._connection, path=path)
            path.chmod(0o660)  # the MTA's group may connect
            self.address = f"unix:{path}"
        else:
            host, port = self.where
            self.server = await asyncio.start_server(self._connection, host, port,
                                                     reuse_address=True)
            bound = self.server.sockets[0].getsockname()
            self.address = f"inet:{bound[0]}:{bound[1]}"
        log.info("milter listening on %s, scripts %s", self.address,
                 self.policy.directory or "(none)")

    async def serve_forever(self) -> None:
        """Serve until cancelled; reload the scripts on SIGHUP and when they change."""
        watcher = self.policy.follow_changes()
        try:
            await self.server.serve_forever()
        finally:
            watcher.cancel()
            self.server.close()
            await self.scripting.close()
