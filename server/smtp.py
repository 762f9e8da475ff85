"""aiosmtpd's SMTP protocol, faster where a busy server spends its time, and sure to end
every connection.

* Set-up: aiosmtpd's ``__init__`` introspects the protocol and its handler
  (``inspect.getmembers``, ``dir``, ``inspect.signature``) on every connection;
  :class:`FastSMTP` does it once per class and only binds the methods per connection.
* Paths: a plain ``<local@domain>`` is parsed with a regular expression, not with the
  email package's parser.
* DATA: aiosmtpd reads the message a line at a time; :func:`read_data` reads it a
  chunk at a time, with the same rules (the lone dot, dot-unstuffing, line and size
  limits, the replies).
* Timeout: aiosmtpd cancels its timer and starts a new one at every command; here a
  command only moves the deadline, and the one timer, when it fires early, waits for
  the rest (:meth:`FastSMTP._reset_timeout`).
* End of input: aiosmtpd cancels the session task on the client's EOF and keeps the
  transport half-open, closing it only from inside the task's command loop. Replies to
  commands the client sent before its FIN were lost, and a task cancelled before it
  reached that loop (under uvloop the EOF of a client that closed at once comes before
  the task's first step) left the connection, and its admission slot, open for ever.
  Here the EOF only ends the input: the session answers what it read, a read past the
  end (:class:`ClientReader`) ends the session as a lost connection, and the session
  task's end, however it comes, closes the transport.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import re

from aiosmtpd.smtp import MISSING, SMTP, _AuthMechAttr, login_always_fail

END = b".\r\n"  # the lone dot's line ends with this; the CRLF before it ends the message
TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
TOO_MUCH = "552 Error: Too much mail data"
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>"
                          r"[ \t]*(.*)", re.S)


class ClientReader(asyncio.StreamReader):
    """The client's input: a line or message cut short by the end of the input is a lost
    connection (CancelledError, as aiosmtpd treats one), not an error to answer."""

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        try:
            return await super().readuntil(separator)
        except asyncio.IncompleteReadError:
            raise asyncio.CancelledError from None


@functools.cache
def _names(cls: type, prefix: str) -> tuple[str, ...]:
    """The attribute names of a class starting with ``prefix``, sorted."""
    return tuple(name for name in dir(cls) if name.startswith(prefix))


@functools.cache
def _ehlo_hook_version(handler_cls: type) -> str | None:
    """aiosmtpd's handle_EHLO flavour: "new" (with the responses so far) or "old"."""
    hook = getattr(handler_cls, "handle_EHLO", None)
    if hook is None:
        return None
    arity = len(inspect.signature(hook).parameters) - 1  # self
    if arity not in (4, 5):
        raise RuntimeError("Unsupported EHLO Hook")
    return "new" if arity == 5 else "old"


class FastSMTP(SMTP):
    """aiosmtpd's ``SMTP`` (SMTPUTF8 on, data never decoded) with per-class set-up and a
    chunked DATA reader. ``tests/test_data_reader.py`` checks that its state matches
    aiosmtpd's own ``__init__`` (so what it adds is set later, over class defaults)."""

    _deadline = 0.0  # when the session times out (loop time)
    _timer_at = 0.0  # when its timer fires

    def __init__(self, handler, *, hostname: str, ident: str, data_size_limit: int | None,
                 tls_context=None, timeout: float = 300, auth_require_tls: bool = True,
                 auth_exclude_mechanism=()):
        self.__ident__ = ident
        self.loop = asyncio.get_running_loop()
        asyncio.StreamReaderProtocol.__init__(
            self, ClientReader(loop=self.loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected, loop=self.loop)
        self.event_handler = handler
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8, self._decode_data = True, False
        self.command_size_limits.clear()  # as aiosmtpd does (a class-level dict)
        self.hostname = hostname
        self.tls_context = tls_context
        self.require_starttls = tls_context and False
        self._timeout_duration, self._timeout_handle = timeout, None
        self._tls_handshake_okay = True
        self._tls_protocol = self._original_transport = None
        self.session = self.envelope = self.transport = self._handler_coroutine = None
        self._auth_require_tls = auth_require_tls
        self._proxy_timeout = None
        self._authenticator, self._auth_callback = None, login_always_fail
        self._auth_required = False
        self._auth_methods = {}
        for obj in (self, handler):
            for name in _names(type(obj), "auth_"):
                method = getattr(obj, name)
                mechanism = getattr(method, "__auth_mechanism_name__",
                                    name.replace("auth_", "").replace("__", "-"))
                self._auth_methods[mechanism] = _AuthMechAttr(method, obj is self)
        for mechanism in auth_exclude_mechanism:
            self._auth_methods.pop(mechanism, None)
        self._handle_hooks = {name[7:]: getattr(handler, name)
                              for name in _names(type(handler), "handle_")}
        self._ehlo_hook_ver = _ehlo_hook_version(type(handler))
        self._smtp_methods = {name[5:]: getattr(self, name)
                              for name in _names(type(self), "smtp_")}
        self._enforce_call_limit = False

    def connection_made(self, transport) -> None:
        starting = self._handler_coroutine is None  # not the TLS transport of STARTTLS
        super().connection_made(transport)
        if starting:
            self._handler_coroutine.add_done_callback(self._session_ended)

    def _session_ended(self, _task) -> None:
        """The session task ended (returned, failed, or was cancelled, perhaps before its
        first step): close the connection."""
        if self.transport is not None:
            self.transport.close()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """The session times out ``duration`` (default: the command timeout) from now. The
        timer is started again only when it would fire too late."""
        self._deadline = self.loop.time() + (duration or self._timeout_duration)
        if self._timeout_handle is None or self._timer_at > self._deadline:
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            self._start_timer()

    def _start_timer(self) -> None:
        self._timer_at = self._deadline
        self._timeout_handle = self.loop.call_at(self._deadline, self._timer_fired)

    def _timer_fired(self) -> None:
        """The timer's time: the session timed out, unless its deadline moved since."""
        if self.loop.time() < self._deadline:
            self._start_timer()
        else:
            self._timeout_cb()

    def eof_received(self) -> bool:
        """The client sends no more: its input ends, the session goes on (see the module
        notes). A plain transport stays half-open for the replies; a TLS one cannot."""
        keep_open = asyncio.StreamReaderProtocol.eof_received(self)
        return keep_open and self.session.ssl is None

    def _getaddr(self, arg: str):
        """aiosmtpd's, without its email parser for a plain ``<local@domain>`` (same
        result: the address and the parameters after it); an unclosed ``<`` is malformed,
        as Postfix has it (aiosmtpd would take the address)."""
        if arg.startswith("<") and ">" not in arg:
            return None, None
        match = _SIMPLE_PATH.fullmatch(arg)
        if match is None or match[2].startswith("(") or self.local_part_limit:
            return super()._getaddr(arg)
        return match[1], match[2]

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        content, error = await read_data(self._reader, self.data_size_limit,
                                         self.line_length_limit)
        if error is not None:
            await self.push(error)
            self._set_post_data_state()
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)


async def read_data(reader: ClientReader, size_limit: int | None,
                    line_limit: int) -> tuple[bytes, str | None]:
    """Read a message up to the lone dot, as aiosmtpd does a line at a time: (content,
    None) with every line's leading dot removed, or (b"", aiosmtpd's error reply) when a
    line (CRLF included) is longer than ``line_limit`` or the message longer than
    ``size_limit``; the message is read to its end either way. Reads only what belongs
    to the message: pipelined commands after it stay in ``reader``."""
    data = bytearray()
    size, head = 0, None  # bytes read, the lone dot's line too; what is kept of a big one
    keep = size_limit + line_limit + len(END) if size_limit else None  # enough to judge
    while True:
        try:  # StreamReader's own: a chunk costs no coroutine of ClientReader's
            chunk, ended = await asyncio.StreamReader.readuntil(reader, END), True
        except asyncio.LimitOverrunError as err:  # no END within the reader's limit
            chunk, ended = await reader.read(err.consumed), False
        except asyncio.IncompleteReadError:
            raise asyncio.CancelledError from None  # the client left: as ClientReader
        data += chunk
        size += len(chunk)
        if ended and (size == len(END) or data[-5:-3] == b"\r\n"):
            break
        if head is None and keep and len(data) > keep:
            head = bytes(data[:keep])
        if head is not None:
            del data[:-2]  # kept: what may precede END
    if head is None:
        del data[-len(END):]
    error = _error(data if head is None else head, size - len(END), size_limit, line_limit)
    if error is not None:
        return b"", error
    content = bytes(data.replace(b"\r\n.", b"\r\n"))
    return content[1:] if content.startswith(b".") else content, None


def _error(data, size: int, size_limit: int | None, line_limit: int) -> str | None:
    """aiosmtpd's verdict on a message of ``size`` bytes (``data``: all of it, or enough of
    its start): the first line that is too long, or that brings the size over the limit,
    decides; a line too long to be read at once (over ``line_limit`` without its CRLF)
    is refused as too long before it counts toward the size."""
    long = _first_long_line(data, line_limit - 2)
    over = None
    if size_limit and size > size_limit:
        crlf = data.rfind(b"\r\n", 0, size_limit)
        over = crlf + 2 if crlf != -1 else 0  # where the line over the limit starts
    if long is not None and (over is None or long[0] < over):
        return TOO_LONG
    if over is not None:
        return TOO_LONG if long is not None and long[0] == over and long[1] > line_limit \
            else TOO_MUCH
    return None


def _first_long_line(data, longest: int) -> tuple[int, int] | None:
    """(start, length without CRLF) of the first line longer than ``longest``, or None:
    each step skips to the last CRLF within reach of a line's start."""
    start = 0
    while len(data) - start > longest:
        crlf = data.rfind(b"\r\n", start, start + longest + 2)
        if crlf == -1:
            end = data.find(b"\r\n", start)
            return start, (end if end != -1 else len(data)) - start
        start = crlf + 2
    return None
