"""A tiny HTTP/1.1 server for Prometheus and health checks (no framework).

GET or HEAD ``/metrics`` (the scrape runs in a thread: summing the processes' files
takes tens of milliseconds), ``/healthz`` (200 "ok") and ``/readyz`` (200 "ready"), each
503 with one line per failed check instead; 404 for other paths, 405 for other methods. Every
answer closes the connection; a request head longer than :data:`MAX_HEAD` or not
complete within :data:`HEAD_TIMEOUT` seconds is cut.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Awaitable, Callable

MAX_HEAD = 8 * 1024
HEAD_TIMEOUT = 5.0
TEXT = "text/plain; charset=utf-8"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}

Scrape = Callable[[str], tuple[bytes, str]]      # Accept header -> (body, content type)
Checks = Callable[[], Awaitable[list[str]]]      # -> failed checks, one line each
_CHECKED = {"/healthz": b"ok\n", "/readyz": b"ready\n"}  # path -> body when all pass


class MetricsHttp:
    """Serves ``scrape`` and the checks of ``health`` and ``ready`` (see the module
    docstring)."""

    def __init__(self, scrape: Scrape, health: Checks, ready: Checks):
        self.scrape = scrape
        self.checks = {"/healthz": health, "/readyz": ready}
        self.servers: list[asyncio.Server] = []

    async def start(self, sockets: list[socket.socket]) -> None:
        """Serve on ``sockets``, bound and listening."""
        for sock in sockets:
            self.servers.append(await asyncio.start_server(self._handle, sock=sock,
                                                           limit=MAX_HEAD))

    async def listen(self, host: str, port: int) -> None:
        """Bind ``host``:``port`` and serve there."""
        self.servers.append(await asyncio.start_server(self._handle, host, port,
                                                       limit=MAX_HEAD, reuse_address=True))

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            status, headers, body, method = await self._answer(head)
            await self._send(writer, status, headers, body, with_body=method != "HEAD")
        except asyncio.LimitOverrunError:
            await self._send(writer, 431, {}, b"request head too large\n")
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # too slow, or gone: closed without an answer
        finally:
            writer.close()

    async def _answer(self, head: bytes) -> tuple[int, dict[str, str], bytes, str]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, {}, b"bad request line\n", "GET"
        method, path = parts[0], parts[1].partition("?")[0]
        if path not in ("/metrics", "/healthz", "/readyz"):
            return 404, {}, b"not found\n", method
        if method not in ("GET", "HEAD"):
            return 405, {"Allow": "GET, HEAD"}, b"method not allowed\n", method
        if path in self.checks:
            failed = await self.checks[path]()
            return (503, {}, "".join(f"{line}\n" for line in failed).encode(), method) \
                if failed else (200, {}, _CHECKED[path], method)
        body, content_type = await asyncio.to_thread(self.scrape, _header(lines, "accept"))
        return 200, {"Content-Type": content_type}, body, method

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, headers: dict[str, str],
                    body: bytes, with_body: bool = True) -> None:
        fields = {"Content-Type": TEXT, **headers, "Content-Length": str(len(body)),
                  "Connection": "close"}
        head = f"HTTP/1.1 {status} {_REASONS[status]}\r\n" + \
            "".join(f"{key}: {value}\r\n" for key, value in fields.items()) + "\r\n"
        writer.write(head.encode("latin-1") + (body if with_body else b""))
        await writer.drain()


def _header(lines: list[str], name: str) -> str:
    """The value of header ``name`` (lowercase) among the request's ``lines``, or ""."""
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return ""
