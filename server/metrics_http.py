"""A tiny HTTP/1.1 server for Prometheus and health checks (no framework).

GET or HEAD ``/metrics``, ``/healthz`` (200 "ok") and ``/readyz`` (200 "ready"), each
503 with one line per failed check instead; 404 for other paths, 405 for other methods,
500 when answering fails unexpectedly (logged at most once a minute). Every answer
closes the connection.

Design: with ``workers = 1`` this server shares the SMTP server's loop, so it must
never hold that loop or its resources for long:

- at most :data:`MAX_CONNECTIONS` connections at once; one past them is closed at once;
- a scrape (summing the processes' files: tens of milliseconds) runs on a one-thread
  executor of its own (:class:`Scrapes`), never the loop's default one the SMTP side
  uses; concurrent requests await the same scrape, and its result is reused for
  :data:`FRESH` seconds; HEAD answers without scraping (no Content-Length);
- a whole exchange has one deadline: :data:`HEAD_TIMEOUT` for the request head, plus
  :data:`WRITE_TIMEOUT`; past it the connection is aborted (a client that never reads
  holds nothing), as is every open one at :meth:`MetricsHttp.stop` (since Python 3.12,
  ``Server.wait_closed()`` waits for them).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import time
from typing import Awaitable, Callable, NamedTuple

log = logging.getLogger("vsl.metrics")

MAX_HEAD = 8 * 1024
MAX_CONNECTIONS = 16
HEAD_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
FRESH = 1.0             # seconds a scrape's result is served again
ERROR_LOG_INTERVAL = 60.0
TEXT = "text/plain; charset=utf-8"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}

# Accept header -> (content type, what makes the body in a thread)
Scrape = Callable[[str], tuple[str, Callable[[], bytes]]]
Checks = Callable[[], Awaitable[list[str]]]      # -> failed checks, one line each
_CHECKED = {"/healthz": b"ok\n", "/readyz": b"ready\n"}  # path -> body when all pass


class Reply(NamedTuple):
    """An answer; ``body`` None: a HEAD of /metrics (its length is not known)."""

    status: int
    body: bytes | None
    headers: dict[str, str] = {}


class Scrapes:
    """Scrape bodies by content type: made one at a time on a thread of their own,
    shared by the requests that wait for them, reused for :data:`FRESH` seconds."""

    def __init__(self):
        self.executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="vsl-metrics")
        self.made: dict[str, tuple[float, bytes]] = {}   # key -> (when made, body)
        self.making: dict[str, asyncio.Future] = {}

    async def body(self, key: str, make: Callable[[], bytes]) -> bytes:
        made = self.made.get(key)
        if made is not None and time.monotonic() - made[0] < FRESH:
            return made[1]
        making = self.making.get(key)
        if making is None:
            making = asyncio.get_running_loop().run_in_executor(self.executor, make)
            self.making[key] = making
            making.add_done_callback(lambda done: self._made(key, done))
        return await asyncio.shield(making)  # one waiter cut off cancels no other

    def _made(self, key: str, done: asyncio.Future) -> None:
        del self.making[key]
        now = time.monotonic()
        self.made = {k: v for k, v in self.made.items() if now - v[0] < FRESH}
        if not done.cancelled() and done.exception() is None:
            self.made[key] = (now, done.result())

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class MetricsHttp:
    """Serves ``scrape`` and the checks of ``health`` and ``ready`` (see the module
    docstring)."""

    def __init__(self, scrape: Scrape, health: Checks, ready: Checks):
        self.scrape = scrape
        self.scrapes = Scrapes()
        self.checks = {"/healthz": health, "/readyz": ready}
        self.servers: list[asyncio.Server] = []
        self.open: dict[asyncio.StreamWriter, asyncio.Task] = {}  # -> its handler
        self.error_logged = -ERROR_LOG_INTERVAL

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
        """Stop listening, abort the open connections and let their handlers end (at
        once, or when the scrape they wait for does), stop the scrape thread."""
        for server in self.servers:
            server.close()
        handlers = list(self.open.values())
        for writer in self.open:
            writer.transport.abort()
        await asyncio.gather(*handlers, return_exceptions=True)
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()
        self.scrapes.close()

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if len(self.open) >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self.open[writer] = asyncio.current_task()
        try:
            await asyncio.wait_for(self._exchange(reader, writer),
                                   HEAD_TIMEOUT + WRITE_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.transport.abort()  # too slow, or gone: cut without an answer
        finally:
            del self.open[writer]
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except asyncio.LimitOverrunError:
            await _send(writer, Reply(431, b"request head too large\n"))
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        method = parts[0]
        try:
            reply = await self._answer(parts, lines)
        except Exception:  # noqa: BLE001 - any failure: a 500, and the traceback logged
            self._log_failure()
            reply = Reply(500, b"internal error\n")
        await _send(writer, reply, with_body=method != "HEAD")

    async def _answer(self, parts: list[str], lines: list[str]) -> Reply:
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return Reply(400, b"bad request line\n")
        method, path = parts[0], parts[1].partition("?")[0]
        if path not in ("/metrics", "/healthz", "/readyz"):
            return Reply(404, b"not found\n")
        if method not in ("GET", "HEAD"):
            return Reply(405, b"method not allowed\n", {"Allow": "GET, HEAD"})
        if path in self.checks:
            failed = await self.checks[path]()
            return Reply(503, "".join(f"{line}\n" for line in failed).encode()) \
                if failed else Reply(200, _CHECKED[path])
        content_type, make = self.scrape(_header(lines, "accept"))
        body = None if method == "HEAD" else await self.scrapes.body(content_type, make)
        return Reply(200, body, {"Content-Type": content_type})

    def _log_failure(self) -> None:
        """Log the exception being handled, unless one was logged within a minute."""
        now = time.monotonic()
        if now - self.error_logged >= ERROR_LOG_INTERVAL:
            self.error_logged = now
            log.exception("metrics: answering a request failed (500; the next failures "
                          "within %g s are not logged)", ERROR_LOG_INTERVAL)


async def _send(writer: asyncio.StreamWriter, reply: Reply, with_body: bool = True) -> None:
    length = {} if reply.body is None else {"Content-Length": str(len(reply.body))}
    fields = {"Content-Type": TEXT, **reply.headers, **length, "Connection": "close"}
    head = f"HTTP/1.1 {reply.status} {_REASONS[reply.status]}\r\n" + \
        "".join(f"{key}: {value}\r\n" for key, value in fields.items()) + "\r\n"
    writer.write(head.encode("latin-1") + (reply.body if with_body and reply.body else b""))
    await writer.drain()


def _header(lines: list[str], name: str) -> str:
    """The value of header ``name`` (lowercase) among the request's ``lines``, or ""."""
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return ""
