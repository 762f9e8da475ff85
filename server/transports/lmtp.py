"""LMTP routes (RFC 2033): ``lmtp://host:port`` or ``lmtp:///socket/path``, one
connection per delivery, one reply per recipient after DATA."""
from __future__ import annotations

import asyncio
import re

from vsl.stdlib.transport import Route

from ..config import DeliveryConfig
from .base import Setup
from .outcome import Outcome, Unreachable
from .smtp import dot_stuffed, transaction

MAX_REPLY = 32 * 1024  # bytes of one reply, as aiosmtplib reads an SMTP server's
REPLY_LINE = re.compile(r"[0-9]{3}(?:[ -]|$)")  # ASCII digits: "²²² x" is no reply


class LmtpDelivery:
    """lmtp:// routes: connect, LHLO, one :func:`~.smtp.transaction`, QUIT; an
    unreachable server defers."""

    def __init__(self, setup: Setup):
        self.config, self.hostname = setup.config, setup.hostname

    async def deliver(self, route: Route, sender: str, recipients: list[str],
                      data: bytes, plaintext_fallback: bool = False) -> dict[str, Outcome]:
        remote = route.path or route.host
        try:
            client = await LmtpClient.open(route, self.hostname, self.config)
        except Unreachable as err:
            return dict.fromkeys(recipients, err.outcome)
        try:
            return await transaction(client, sender, recipients, data, remote)
        finally:
            await client.close()


class LmtpClient:
    """A small LMTP client (RFC 2033): LHLO, and one reply per recipient after DATA."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float):
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.extensions: set[str] = set()

    @classmethod
    async def open(cls, route: Route, hostname: str, config: DeliveryConfig) -> "LmtpClient":
        """A connected client that has said LHLO; Unreachable when none can be opened."""
        where = route.path or f"{route.host}:{route.port}"
        try:
            connect = asyncio.open_unix_connection(route.path) if route.path else \
                asyncio.open_connection(route.host, route.port)
            client = cls(*await asyncio.wait_for(connect, config.connect_timeout),
                         config.command_timeout)
        except OSError as err:
            raise Unreachable(where, err) from None
        try:
            greeting = await client._reply()
            hello = await client.command("LHLO", hostname) if greeting[0] == 220 else greeting
        except OSError as err:
            await client.close()
            raise Unreachable(where, err) from None
        if hello[0] != 250:
            await client.close()
            raise Unreachable(where, f"{hello[0]} {hello[1]}")
        client.extensions = {line.split()[0].lower() for line in hello[1].split("\n")[1:]
                             if line.strip()}
        return client

    def supports(self, extension: str) -> bool:
        return extension.lower() in self.extensions

    async def command(self, *args: str) -> tuple[int, str]:
        self.writer.write(" ".join(args).encode() + b"\r\n")
        return await self._reply()

    async def abandon(self) -> None:
        """Nothing to do: the connection ends with the delivery."""

    async def message(self, data: bytes, count: int) -> list[tuple[int, str]]:
        """The message after DATA's 354: one reply for each of the ``count`` recipients."""
        self.writer.write(dot_stuffed(data))
        return [await self._reply() for _ in range(count)]

    async def _reply(self) -> tuple[int, str]:
        """One reply: (code, its lines' texts joined by \\n); OSError if none comes in
        ``timeout`` seconds, whole, or it is over MAX_REPLY bytes (as aiosmtplib's)."""
        try:
            return await asyncio.wait_for(self._read_reply(), self.timeout)
        except asyncio.TimeoutError:
            raise ConnectionError(f"no whole reply in {self.timeout:g} s") from None

    async def _read_reply(self) -> tuple[int, str]:
        lines, size = [], 0
        while True:
            try:
                line = await self.reader.readline()
            except ValueError:  # a line over the stream limit
                raise ConnectionError("reply line too long") from None
            size += len(line)
            if size > MAX_REPLY:
                raise ConnectionError(f"reply over {MAX_REPLY} bytes")
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if not line.endswith(b"\n") or not REPLY_LINE.match(text):
                raise ConnectionError(f"bad reply {text!r}" if line else "connection closed")
            lines.append(text[4:])
            if text[3:4] != "-":
                return int(text[:3]), "\n".join(lines)

    async def close(self) -> None:
        try:
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self.reader.read(MAX_REPLY), 1)
        except (OSError, asyncio.TimeoutError):
            pass
        self.writer.close()
