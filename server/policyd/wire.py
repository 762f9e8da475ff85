"""Postfix's policy delegation protocol on one connection: a request is ``name=value``
lines ended by an empty line; the reply is ``action=...`` and an empty line. Many
requests follow one another on the same connection.

Hostile input never gets further than here: a line longer than ``line`` bytes, a request
of more than ``attributes`` lines or ``request_bytes`` bytes, a line without ``=``, a NUL or undecodable bytes, or a
request not finished ``request_seconds`` after it began, is a :class:`ProtocolError`;
Postfix's rule for trouble is to log it and close the connection without a reply.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass


class ProtocolError(Exception):
    """The peer broke the protocol; the connection is closed without a reply."""


@dataclass(frozen=True)
class WireLimits:
    """What one connection may send (Postfix's own requests stay far below)."""
    line: int = 4096             # bytes of one name=value line
    attributes: int = 100        # lines of one request
    request_bytes: int = 16384   # bytes of one request (Postfix's are about 1 KiB)
    request_seconds: float = 10.0  # from a request's first byte to its empty line
    idle_seconds: float = 600.0  # between requests (Postfix closes after 300 s idle)
    reply_seconds: float = 10.0  # for a reply to be taken by the peer


async def read_request(reader: asyncio.StreamReader, limits: WireLimits) -> dict | None:
    """The next request's attributes (a repeated name keeps its first value), or None when
    the peer closed the connection between requests."""
    async with asyncio.timeout(limits.idle_seconds):
        first = await _line(reader)
    if first is None:
        return None
    attributes: dict[str, str] = {}
    try:
        async with asyncio.timeout(limits.request_seconds):
            line, size = first, 0
            while line:
                size += len(line.encode("utf-8")) + 1
                if len(attributes) >= limits.attributes or size > limits.request_bytes:
                    raise ProtocolError(f"more than {limits.attributes} attributes or "
                                        f"{limits.request_bytes} bytes in a request")
                name, value = _attribute(line)
                attributes.setdefault(name, value)
                line = await _line(reader)
                if line is None:
                    raise ProtocolError("connection closed within a request")
    except TimeoutError:
        raise ProtocolError(f"request not finished within {limits.request_seconds:g} s") \
            from None
    return attributes


async def _line(reader: asyncio.StreamReader) -> str | None:
    """One line without its end (\\n or \\r\\n); None at the end of the stream. The reader's
    own limit (``asyncio.start_server(limit=...)``) bounds its length."""
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as err:
        if err.partial:
            raise ProtocolError("connection closed within a line") from None
        return None
    except asyncio.LimitOverrunError:
        raise ProtocolError("line too long") from None
    if b"\0" in raw:
        raise ProtocolError("NUL in a line")
    try:
        return raw.rstrip(b"\r\n").decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("a line is not UTF-8") from None


def _attribute(line: str) -> tuple[str, str]:
    name, sep, value = line.partition("=")
    if not sep or not name:
        raise ProtocolError("a line is not name=value")
    return name, value


def reply(action: str) -> bytes:
    """The bytes answering a request with ``action`` (one line: no line break in it)."""
    return f"action={action}\n\n".encode("utf-8", "surrogateescape")
