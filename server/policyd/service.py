"""The policy service: a listener speaking Postfix's policy delegation protocol, and the
policy it runs, linted at start and reloaded as ``vsl serve`` does (SIGHUP, or a changed
script).

    service = PolicyService(config, ("127.0.0.1", 10040))  # PolicyError if the scripts are bad
    await service.start()
    await service.serve_forever()                           # until cancelled
"""
from __future__ import annotations

import asyncio
import logging

from ..config import Config
from ..scripting import Scripting
from .conversation import Conversations
from .delegation import Delegation, Link
from .wire import ProtocolError, WireLimits, read_request, reply

log = logging.getLogger("vsl.policyd")
MAX_CONNECTIONS = 500  # Postfix opens one per smtpd process (default_process_limit 100)


class PolicyService:
    """Everything one ``vsl policyd`` process runs."""

    def __init__(self, config: Config, listen: tuple[str, int],
                 limits: WireLimits = WireLimits()):
        self.config, self.listen, self.limits = config, listen, limits
        self.scripting = Scripting(config)
        self.policy = self.scripting.policy
        self.delegation = Delegation(Conversations(self.scripting.new_runner, config.hostname))
        self.server: asyncio.base_events.Server | None = None
        self.links: set[asyncio.Task] = set()  # the connections being served
        self._watcher: asyncio.Task | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the port the system chose for port 0)."""
        return self.server.sockets[0].getsockname()[:2]

    async def start(self) -> None:
        host, port = self.listen
        self.server = await asyncio.start_server(self._serve_link, host, port,
                                                 limit=self.limits.line, reuse_address=True)
        log.info("policy service on %s:%d, scripts %s", *self.address,
                 self.config.scripts or "(none)")

    async def serve_forever(self) -> None:
        """Serve until cancelled; reload the scripts on SIGHUP and when they change."""
        self._watcher = self.policy.follow_changes()
        try:
            await self.server.serve_forever()
        finally:
            await self.stop()

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for link in self.links:
            link.cancel()
        await asyncio.gather(*self.links, return_exceptions=True)
        await self.scripting.close()

    async def _serve_link(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        """One policy connection: requests and replies until the peer closes it, breaks
        the protocol or is too slow (then it is closed without a reply)."""
        peer = writer.get_extra_info("peername")
        task = asyncio.current_task()
        self.links.add(task)
        try:
            if len(self.links) > MAX_CONNECTIONS:
                log.warning("%s: more than %d connections, closed", peer, MAX_CONNECTIONS)
                return
            await self._answer_requests(reader, writer)
        except ProtocolError as err:
            log.warning("%s: %s, connection closed", peer, err)
        except TimeoutError:
            log.info("%s: idle or not reading, connection closed", peer)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the peer went away, or the service stops
        finally:
            self.links.discard(task)
            writer.close()

    async def _answer_requests(self, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        link = Link()
        while (request := await read_request(reader, self.limits)) is not None:
            writer.write(reply(await self.delegation.answer(request, link)))
            async with asyncio.timeout(self.limits.reply_seconds):
                await writer.drain()
