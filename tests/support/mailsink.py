"""Receiving servers for the delivery tests, run in the test's own event loop on 127.0.0.1:
an aiosmtpd sink (SMTP, STARTTLS or implicit TLS) and a tiny LMTP server.

Both answer each recipient by its local part: ``temp...`` gets 451/452, ``bad...`` 550,
anything else is accepted."""
from __future__ import annotations

import asyncio
import itertools
import random
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aiosmtpd.smtp import SMTP, AuthResult


MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nline one\r\n.starts with a dot\r\n"


FIRST_PORT = 20000


def _ports_below_ephemeral() -> Iterator[int]:
    """Ports from a random start up to the kernel's ephemeral range, in turn (none twice
    until all were given), or nothing where that range starts too low."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    if low <= FIRST_PORT + 1000:
        return
    start = random.randrange(FIRST_PORT, low)
    yield from itertools.cycle(itertools.chain(range(start, low), range(FIRST_PORT, start)))


_PORTS = _ports_below_ephemeral()


def free_port() -> int:
    """A loopback port nothing listens on (connections to it are refused).

    It lies below the kernel's ephemeral range, so that no outgoing connection takes it
    before the test's server binds it: a RabbitMQ node failed to start on a port picked by
    ``bind(0)`` that a client connection had taken meanwhile. Each call gives another port."""
    for port in itertools.islice(_PORTS, 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port`` now."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    tls: bool


def _refusal(address: str, temp: str) -> str | None:
    local = address.partition("@")[0]
    if local.startswith("temp"):
        return temp
    if local.startswith("bad"):
        return "550 5.1.1 no such user"
    return None


class _Protocol(SMTP):
    def __init__(self, sink: "Sink", **kwargs):
        super().__init__(sink, hostname="sink.test", enable_SMTPUTF8=True, **kwargs)
        self.sink = sink

    def connection_made(self, transport) -> None:
        if self.transport is None:  # not the STARTTLS upgrade
            self.sink.connections += 1
            self.sink.protocols.append(self)
        super().connection_made(transport)


class Sink:
    """An aiosmtpd server recording what it receives.

    ``data_reply``: the answer to every message instead of 250; ``data_delay``: seconds
    to wait before answering (a hang mid-DATA); ``accept_all``: no recipient refused."""

    def __init__(self, tls: ssl.SSLContext | None = None, implicit_tls: bool = False,
                 users: dict[str, str] | None = None, auth_in_clear: bool = False):
        self.tls, self.implicit_tls = tls, implicit_tls
        # AUTH: user -> password; offered only over TLS unless auth_in_clear (aiosmtpd takes
        # the handler's attributes named auth_* for mechanisms: none may be named so)
        self.users, self.offer_auth_in_clear = users, auth_in_clear
        self.logins: list[tuple[str, bool]] = []  # every AUTH attempt: (user, accepted)
        self.messages: list[Received] = []
        self.connections = 0
        self.protocols: list[_Protocol] = []
        self.data_reply: str | None = None
        self.data_delay = 0.0
        self.accept_all = False
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> "Sink":
        loop = asyncio.get_running_loop()
        starttls = None if self.implicit_tls else self.tls
        self.server = await loop.create_server(
            lambda: _Protocol(self, tls_context=starttls, loop=loop,
                              authenticator=self._authenticate if self.users else None,
                              auth_require_tls=not self.offer_auth_in_clear),
            "127.0.0.1", port,
            ssl=self.tls if self.implicit_tls else None)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def drop_connections(self) -> None:
        """Close every open connection (a server timing out idle clients)."""
        for protocol in self.protocols:
            if protocol.transport is not None:
                protocol.transport.close()

    async def stop(self) -> None:
        self.drop_connections()
        self.server.close()
        await self.server.wait_closed()

    async def __aenter__(self) -> "Sink":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def _authenticate(self, server, session, envelope, mechanism, login) -> AuthResult:
        user, password = login.login.decode(), login.password.decode()
        accepted = self.users.get(user) == password
        self.logins.append((user, accepted))
        return AuthResult(success=accepted, handled=False)  # aiosmtpd sends the reply

    # -- aiosmtpd handler hooks ------------------------------------------------------------
    async def handle_RCPT(self, server, session, envelope, address, options):
        refusal = _refusal(address, "451 4.2.0 try again later")
        if refusal and not self.accept_all:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(self.data_delay)
        if self.data_reply:
            return self.data_reply
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                      envelope.original_content,
                                      self.implicit_tls or session.ssl is not None))
        return "250 2.0.0 Ok: queued"


class LmtpServer:
    """A tiny LMTP server (RFC 2033): after DATA, one reply per accepted recipient;
    ``temp...`` recipients are accepted at RCPT and refused (452) after DATA."""

    def __init__(self):
        self.messages: list[Received] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self, path: str | None = None) -> "LmtpServer":
        if path:
            self.server = await asyncio.start_unix_server(self._client, path)
        else:
            self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        def say(*lines: str) -> None:
            writer.write("".join(f"{line}\r\n" for line in lines).encode())

        say("220 lmtp.test LMTP ready")
        sender, rcpts = "", []
        while line := (await reader.readline()).decode().rstrip("\r\n"):
            verb = line[:4].upper()
            if verb == "LHLO":
                say("250-lmtp.test", "250-8BITMIME", "250 PIPELINING")
            elif verb == "MAIL":
                sender, rcpts = line[10:].split(">")[0], []
                say("250 2.1.0 Ok")
            elif verb == "RCPT":
                address = line[9:].split(">")[0]
                refusal = _refusal(address, temp="")  # temp... is refused after DATA
                if not refusal:
                    rcpts.append(address)
                say(refusal or "250 2.1.5 Ok")
            elif verb == "DATA":
                say("354 go ahead")
                data = b""
                while (chunk := await reader.readline()) != b".\r\n":
                    data += chunk[1:] if chunk.startswith(b".") else chunk
                self.messages.append(Received(sender, rcpts, data, False))
                say(*(_refusal(r, "452 4.2.2 mailbox full") or f"250 2.0.0 <{r}> delivered"
                      for r in rcpts))
            elif verb == "QUIT":
                say("221 2.0.0 bye")
                break
            else:
                say("250 2.0.0 Ok")
        writer.close()
