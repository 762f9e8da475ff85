"""Client-side helpers for the server tests: smtplib clients, a raw line client for
garbage and timing, TLS and users-file set-up, spool inspection."""
from __future__ import annotations

import asyncio

import smtplib
import socket
import ssl
import time
from pathlib import Path

from vsl.server.config import TlsConfig
from vsl.server.smtp_users import hash_password
from tests.support.certs import make_certificates

FALLBACK = (451, b"4.3.0 Temporary local problem, try again later")


# ---- clients ---------------------------------------------------------------------------

def client(server, kind: str = "smtp", helo: str = "client.example.test",
           timeout: float = 10) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", server.port(kind), local_hostname=helo, timeout=timeout)


def ssl_client(server, context: ssl.SSLContext, kind: str = "smtps",
               helo: str = "client.example.test") -> smtplib.SMTP_SSL:
    return smtplib.SMTP_SSL("127.0.0.1", server.port(kind), local_hostname=helo,
                            context=context, timeout=10)


class Raw:
    """A line-level SMTP client on a plain socket: send anything, read whole replies."""

    def __init__(self, server_or_port, kind: str = "smtp", source: str | None = None,
                 timeout: float = 5, greet: bool = True):
        port = server_or_port if isinstance(server_or_port, int) else \
            server_or_port.port(kind)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buffer = b""
        self.greeting = self.reply() if greet else None

    def send(self, data: bytes | str) -> "Raw":
        self.sock.sendall(data.encode() if isinstance(data, str) else data)
        return self

    def line(self, timeout: float = 5) -> bytes:
        """One reply line (without CRLF); b"" at end of stream."""
        self.sock.settimeout(timeout)
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.rstrip(b"\r")

    def reply(self, timeout: float = 5) -> tuple[int, bytes]:
        """A whole (possibly multi-line) reply: (code, text of its lines joined by \\n);
        (0, b"") when the server closed the connection."""
        lines = []
        while True:
            line = self.line(timeout)
            if not line:
                if lines:
                    break
                return 0, b""
            lines.append(line)
            if line[3:4] != b"-":
                break
        code = int(lines[-1][:3]) if lines[-1][:3].isdigit() else -1
        return code, b"\n".join(l[4:] for l in lines)

    def cmd(self, text: str | bytes, timeout: float = 5) -> tuple[int, bytes]:
        text = text.encode() if isinstance(text, str) else text
        self.send(text + b"\r\n")
        return self.reply(timeout)

    def closed(self, timeout: float = 5) -> bool:
        """Whether the server closes the connection within ``timeout`` (all pending
        output is read and dropped)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                if not self.sock.recv(65536):
                    return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Raw":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- set-up ------------------------------------------------------------------------------

def tls_setup(tmp_path: Path) -> tuple[TlsConfig, ssl.SSLContext, Path]:
    """A TlsConfig with a throw-away certificate, a client context trusting its CA, and
    the CA file."""
    directory = tmp_path / "certs"
    directory.mkdir(exist_ok=True)
    ca, cert, key = make_certificates(directory)
    context = ssl.create_default_context(cafile=str(ca))
    return TlsConfig(cert, key), context, ca


def users_file(tmp_path: Path, **users: str) -> Path:
    path = tmp_path / "users"
    path.write_text("# test accounts\n\n" + "".join(
        f"{user}:{hash_password(password)}\n" for user, password in users.items()))
    return path


# ---- spool -------------------------------------------------------------------------------

def queued_id(reply_text: bytes) -> str:
    """The id in "2.0.0 Ok: queued as <id>"."""
    assert b"queued as " in reply_text, reply_text
    return reply_text.decode().rsplit(" ", 1)[1]


def all_messages(server) -> list:
    """Every message in every queue (quarantines included)."""
    return asyncio.run(server.spool.list())


def spool_files(server) -> list[Path]:
    """Every file under the spool root (tmp/ included): nothing partial may be left."""
    return [p for p in server.spool.root.rglob("*") if p.is_file()]


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def normal_session(server, rcpt: str = "bob@example.test", body: bytes = b"hello\r\n") -> str:
    """A complete, well-behaved session; returns the id of the message it queued (which is
    checked to be in the deliver queue)."""
    with client(server) as smtp:
        assert smtp.ehlo()[0] == 250
        assert smtp.mail("alice@example.org")[0] == 250
        assert smtp.rcpt(rcpt)[0] == 250
        code, text = smtp.data(b"Subject: normal\r\n\r\n" + body)
        assert code == 250, (code, text)
    msg_id = queued_id(text)
    assert wait_for(lambda: asyncio.run(server.spool.locate(msg_id)) == "deliver", 2), \
        asyncio.run(server.spool.locate(msg_id))
    return msg_id
