"""One MTA connection: milter packets in, responses out.

Packets are cut and decoded by purepythonmilter (a length over 64 KiB, an unknown
command or malformed data is a protocol violation); every command goes to the
connection's :class:`MilterSession` in order, and its responses are written back before
the next command is read. Anything the MTA sends that cannot be decoded closes the
connection (logged): the MTA then applies its ``milter_default_action``. So does a
connection that sends nothing, or takes no response, for
:attr:`MilterLimits.idle_seconds`.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from purepythonmilter.api.models import MilterServerConnectionID
from purepythonmilter.protocol import commands
from purepythonmilter.protocol.exceptions import ProtocolViolation
from purepythonmilter.protocol.packet import PacketDecoder, encode_payload
from purepythonmilter.protocol.payload import PayloadDecoder

from .session import MilterSession

log = logging.getLogger("vsl.milter")

READ_SIZE = 65536 + 4  # one whole packet of the largest size


@dataclass(frozen=True)
class MilterLimits:
    """What the MTA's connections may take (as ``vsl policyd``'s)."""
    idle_seconds: float = 600.0  # between commands: Postfix waits up to smtpd_timeout
    #                              (300 s) for its client, and keeps the connection meanwhile
    connections: int = 500       # served at once: Postfix opens one per smtpd process


class Malformed(Exception):
    """The MTA sent what is not a milter command."""


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           new_session: Callable[[], MilterSession],
                           idle_seconds: float) -> None:
    """Answer the MTA's commands until it quits, hangs up or stays idle too long."""
    session = new_session()
    try:
        await _commands(reader, writer, session, idle_seconds)
    except Malformed as err:
        log.warning("closing a milter connection: %s", err)
    except TimeoutError:
        log.info("closing a milter connection: idle or not reading for %g s", idle_seconds)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        session.close()
        writer.close()


async def _commands(reader, writer, session: MilterSession, idle_seconds: float) -> None:
    """Commands in, responses out; TimeoutError when the MTA sends nothing, or takes
    nothing, for ``idle_seconds``."""
    connection = MilterServerConnectionID.generate()
    packets = PacketDecoder(connection_id=connection)
    payloads = PayloadDecoder(connection_id=connection)
    while True:
        async with asyncio.timeout(idle_seconds):
            data = await reader.read(READ_SIZE)
        if not data:
            return
        for command in _decoded(packets, payloads, data):
            for response in await session.handle(command):
                writer.write(encode_payload(response.encode()))
            async with asyncio.timeout(idle_seconds):
                await writer.drain()
            if session.done:
                return


def _decoded(packets: PacketDecoder, payloads: PayloadDecoder, data: bytes):
    """The commands ``data`` completes (raises Malformed)."""
    try:
        for payload in list(packets.decode(data)):
            command_class, raw = payloads.decode(payload)
            yield _command(command_class, raw)
    except (ProtocolViolation, Exception) as err:  # noqa: BLE001 - whatever the bytes
        raise Malformed(f"malformed milter data ({type(err).__name__})") from None


def _command(command_class, raw: bytes):
    """The command of ``raw``. The library decodes macro values and the connecting
    client's host name as strict UTF-8; Postfix sends the bytes it has (a Latin-1
    ``{auth_authen}`` or certificate subject), so those are read again with U+FFFD for
    each bad byte rather than drop the connection."""
    try:
        return command_class(data_raw=raw)
    except ProtocolViolation as err:
        if not isinstance(err.__cause__, UnicodeDecodeError) or \
                command_class not in (commands.DefineMacro, commands.Connect):
            raise
    if command_class is commands.Connect:  # only the host name is text: the rest is binary
        host, nul, rest = raw.partition(b"\x00")
        return command_class(data_raw=_valid_utf8(host) + nul + rest)
    return command_class(data_raw=_valid_utf8(raw))


def _valid_utf8(data: bytes) -> bytes:
    return data.decode("utf-8", "replace").encode("utf-8")
