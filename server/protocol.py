"""One SMTP connection's protocol: aiosmtpd's ``SMTP`` (through
:class:`~server.smtp.FastSMTP`) with vSL's connection-level rules where its hooks are
missing: connect, replies with enhanced status codes, error and junk-command limits, idle
sessions, a refused session's short life, improper pipelining (ctx.improper_pipelining),
and the connection and reply metrics (every reply sent is counted: :func:`count_reply`).
What each command means (the policy stages, AUTH, the queue) is its handler's,
:class:`~server.session.Session`.
"""
from __future__ import annotations

import array
import asyncio
import fcntl
import functools
import logging
import re
import socket
import termios
from time import monotonic

from aiosmtpd.smtp import TLSSetupException

from . import logids, metrics
from .config import LISTENER_KINDS, Listener
from .implicit_tls import handshake_failed
from .logevents import event
from .replies import TOO_MANY_RECIPIENTS, UNKNOWN_COMMAND, postfix_words
from .services import SessionServices
from .session import COMMAND_STAGES, Session, connection_addresses, log_client_gone
from .smtp import FastSMTP

log = logging.getLogger("vsl.smtp")
mail_log = logging.getLogger("mail.log")  # aiosmtpd's: the SMTP dialogue (vsl serve -vv)

# Enhanced status codes (RFC 3463) for aiosmtpd's own replies, which carry none.
_ENHANCED = {"221": "2.0.0", "235": "2.7.0", "250": "2.0.0", "251": "2.1.5", "252": "2.0.0",
             "421": "4.3.2", "450": "4.2.0", "451": "4.3.0", "452": "4.3.1", "454": "4.7.0",
             "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
             "530": "5.7.0", "535": "5.7.8", "538": "5.7.11", "550": "5.0.0", "552": "5.3.4",
             "553": "5.1.3", "554": "5.0.0", "555": "5.5.4"}
_HAS_ENHANCED = re.compile(rb"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
_WIRED_ENHANCED = re.compile(rb"\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})[ \r]")
_OPENED = {kind: metrics.Series("vsl_connections_opened_total", listener=kind)
           for kind in LISTENER_KINDS}
_CURRENT = metrics.Series("vsl_connections_current")
REPLY_HEAD = 16  # bytes of a reply that hold its code and enhanced code ("550 5.7.255 ")
REPLY_SERIES = 512  # replies' series remembered by their first bytes (count_reply)
_reply_series: dict[tuple, metrics.Series] = {}
REPLY_BUFFER = 64 * 1024  # bytes of replies a client may leave unread
RECIPIENT_OVERSHOOT = 1000  # Postfix's smtpd_recipient_overshoot_limit
_TOO_MANY_RECIPIENTS = TOO_MANY_RECIPIENTS.encode()
NOT_POSTFIX = ("HELP", "EXPN")  # aiosmtpd's commands that Postfix's smtpd does not have
BAD_SEQUENCE = "503 5.5.1 Error: bad sequence of commands"  # Postfix's
# After a 554 greeting: the commands answered (postscreen_command_count_limit), and the
# seconds the whole session may last (postscreen allows 10 s a command under stress).
REFUSED_COMMANDS = 20
REFUSED_SESSION_TIME = 30.0
TOO_MANY_COMMANDS = b"421 4.7.0 Too many commands, closing the connection"
# The commands that end an RFC 2920 command group (Postfix's SMTPD_CMD_FLAG_LAST): after
# EHLO a client may send others ahead of their replies, never anything behind these.
GROUP_ENDERS = frozenset({"HELO", "EHLO", "DATA", "NOOP", "VRFY"})


def enhance(reply: bytes) -> bytes:
    """Insert a generic enhanced status code into a reply line that lacks one (RFC 2034:
    every 2xx, 4xx and 5xx reply but the greeting and the EHLO response)."""
    code = reply[:3]
    if not code.isdigit() or code[:1] not in b"245" or code == b"220" or \
            _HAS_ENHANCED.match(reply):
        return reply
    enhanced = _ENHANCED.get(code.decode(), f"{code.decode()[0]}.0.0").encode()
    sep, text = reply[3:4] or b" ", reply[4:]
    return code + sep + enhanced + (b" " + text if text else b"")


def wire(reply: bytes, raw: bool) -> bytes:
    """A reply as sent: lines ending with CRLF, continuation marks on all but the last
    (and never on the last: a one-line reply written ``550-...`` ends it too), and
    (unless ``raw``) enhanced status codes."""
    lines = reply.replace(b"\r\n", b"\n").split(b"\n") if b"\n" in reply else [reply]
    if len(lines) > 1 or reply[3:4] == b"-":
        lines = [line[:3] + (b" " if i == len(lines) - 1 else b"-") + line[4:]
                 if line[:3].isdigit() else line for i, line in enumerate(lines)]
    return b"".join((line if raw else enhance(line)) + b"\r\n" for line in lines)


def sent(reply: bytes, raw: bool, command: str | None) -> bytes:
    """``reply`` as sent (:func:`wire`), counted as the answer to ``command``."""
    wired = wire(reply, raw)
    count_reply(command, wired)
    return wired


def count_reply(command: str | None, wired: bytes) -> None:
    """Count a reply as sent (``wired``: its lines as on the wire) in
    vsl_smtp_replies_total: the stage of the ``command`` it answers, its code and the
    enhanced code of its first line; nothing while metrics are off. The series is
    remembered by the command and the reply's first bytes (which hold both codes), up to
    REPLY_SERIES of them."""
    if not metrics.recording():
        return
    key = (command, wired[:REPLY_HEAD])
    series = _reply_series.get(key)
    if series is None:
        enhanced = _WIRED_ENHANCED.match(wired)
        series = metrics.Series("vsl_smtp_replies_total",
                                stage=COMMAND_STAGES.get(command, "other"),
                                code=wired[:3].decode("ascii", "replace"),
                                enhanced=enhanced[1].decode() if enhanced else "none")
        if len(_reply_series) < REPLY_SERIES:
            _reply_series[key] = series
    series.inc()


def _bound_replies(transport, sock) -> None:
    """Keep little of a client's unread replies buffered: one that pipelines commands but
    never reads stalls soon, so the command timeout can drop it."""
    transport.set_write_buffer_limits(high=REPLY_BUFFER)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, REPLY_BUFFER)


def _unread_bytes(fd: int) -> int:
    """How many bytes the client sent that the kernel holds unread on the socket ``fd``
    (FIONREAD, answered in place; 0 without a socket)."""
    if fd < 0:
        return 0
    unread = array.array("i", [0])  # not shared: servers of one process run in threads
    try:
        fcntl.ioctl(fd, termios.FIONREAD, unread)
    except OSError:
        return 0
    return unread[0]


def _unless_idle(command, name: str = ""):
    """The SMTP command method ``command`` (of the command ``name``, else its own name's),
    not run when the session is idle too long or already hung up (commands a client
    pipelined behind the one that ended it). The time from the command to its first reply
    is the server's, not the client's idling."""
    name = name or command.__name__.removeprefix("smtp_")

    @functools.wraps(command)
    async def run(self: "Protocol", arg):
        if self.transport is None or self.transport.is_closing() or self._idle_too_long():
            return
        self.command_started = monotonic()  # until its first reply: see push
        self.command, self.argument = name, arg  # what its replies answer: see push
        self.counts.issued(name)
        self._check_pipelining(name)
        await command(self, arg)
    return run


class _Commands(dict):
    """Command name -> method; a name not known gets ``unknown``. So aiosmtpd's own budget
    of 5 unknown commands a session, which hung up before Postfix's error limit, never
    applies, nor its WARNING log line for each."""

    def __init__(self, methods: dict, unknown):
        super().__init__((name, method) for name, method in methods.items()
                         if name not in NOT_POSTFIX)
        self.unknown = unknown

    def get(self, name, default=None):
        return super().get(name, self.unknown)


def _idle_checked(cls: type) -> type:
    """``cls`` with every SMTP command but QUIT checked for idleness before it runs, so an
    idle session holds its slot at most ``limits.idle_session`` plus one command timeout."""
    for name in dir(cls):
        if name.startswith("smtp_") and name != "smtp_QUIT":
            setattr(cls, name, _unless_idle(getattr(cls, name)))
    cls.unknown_command = _unless_idle(cls.unknown_command, "UNKNOWN")  # Postfix's word
    return cls


class CommandCounts:
    """The commands of a session, issued and accepted (a 2xx or 3xx first reply), as
    Postfix's disconnect line shows them: ``ehlo=1 mail=1 rcpt=1/2 quit=1 commands=4/5``.
    Counted by the names aiosmtpd gives (upper case), in the order first issued."""

    def __init__(self):
        self.issued_by_name: dict[str, int] = {}
        self.accepted_by_name: dict[str, int] = {}

    def issued(self, command: str) -> None:
        issued = self.issued_by_name
        issued[command] = issued.get(command, 0) + 1

    def answered(self, command: str | None, accepted: bool) -> None:
        if accepted and command in self.issued_by_name:
            accepted_by_name = self.accepted_by_name
            accepted_by_name[command] = accepted_by_name.get(command, 0) + 1

    def __str__(self) -> str:
        accepted = self.accepted_by_name
        parts = [f"{name.lower()}={_ratio(accepted.get(name, 0), issued)}"
                 for name, issued in self.issued_by_name.items()]
        total = _ratio(sum(accepted.values()), sum(self.issued_by_name.values()))
        return " ".join([*parts, f"commands={total}"])


def _ratio(accepted: int, issued: int) -> str:
    return str(issued) if accepted == issued else f"{accepted}/{issued}"


@_idle_checked
class Protocol(FastSMTP):
    """aiosmtpd's SMTP protocol with vSL's connection-level rules."""

    client_fd = -1  # the client's socket (connection_made), for FIONREAD

    def __init__(self, services: SessionServices, listener: Listener, tls_context=None,
                 accepted: tuple[tuple, tuple] | None = None):
        self.settings, self.listener = services.settings, listener
        self.errors = 0
        self.overshoot = 0  # recipients refused past limits.recipients (see _overshoot)
        self.junk = 0  # NOOP, RSET, VRFY, HELO, EHLO since the last accepted message
        self.moved_mail_at = monotonic()  # the start, then the last accepted message, ...
        self.busy = 0.0  # seconds the server spent on commands since then (stages, look-ups)
        self.command_started: float | None = None
        self.command: str | None = None  # the SMTP command being answered (MAIL, ...)
        self.argument: str | None = None  # and its argument
        self.in_helo = False  # HELO/EHLO replies (and the greeting) get no enhanced code
        self.greeting: bytes | None = None  # the greeting still to send (None: sent)
        self.counts = CommandCounts()
        self.connected_at = monotonic()
        self.open = False  # counted in vsl_connections_current (until connection_lost)
        limits, authenticator = self.settings.limits, services.authenticator
        handler = Session(services, listener, accepted)
        implicit_tls = listener.kind == "smtps"
        super().__init__(
            handler, hostname=self.settings.hostname, ident="ESMTP vSL",
            data_size_limit=limits.message_size,
            tls_context=None if implicit_tls else tls_context,
            timeout=limits.command_timeout,
            auth_require_tls=authenticator.requires_tls(implicit_tls),
            auth_exclude_mechanism=authenticator.excluded_mechanisms())
        handler.protocol = self
        self._smtp_methods = _Commands(self._smtp_methods, self.unknown_command)

    def connection_made(self, transport) -> None:
        first = self.transport is None
        if first:
            addresses = self.event_handler.accepted or connection_addresses(transport)
            if addresses is None:
                log_client_gone(self.listener.kind)
                transport.abort()  # nothing began: connection_lost has nothing to end
                return
            # before aiosmtpd creates the handler task, which copies the context
            ids = logids.start_session()
        super().connection_made(transport)
        if first:
            sock = transport.get_extra_info("socket")
            self.client_fd = sock.fileno() if sock is not None else -1
            _bound_replies(transport, sock)
            self.open = True
            _OPENED[self.listener.kind].inc()
            _CURRENT.inc()
            self.event_handler.connection_made(transport, ids, addresses)

    def connection_lost(self, error) -> None:
        if self.transport is None:  # a client gone before its connection was made
            return
        if self.open:
            self.open = False
            _CURRENT.inc(-1)
        self.event_handler.connection_lost(str(self.counts),
                                           monotonic() - self.connected_at)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        self._check_greeting_pipelining()
        try:
            admitted = await self.event_handler.connect()
        except Exception as error:  # noqa: BLE001 - as aiosmtpd treats a failing command
            self.hang_up((await self.event_handler.handle_exception(error)).encode())
            return
        if admitted:
            self._check_greeting_pipelining()  # the client may have spoken during on_connect
            self.greeting = self.greeting or f"220 {self.hostname} {self.__ident__}".encode()
            await super()._handle_client()

    async def push(self, status) -> None:
        """Send a reply: aiosmtpd's own in Postfix's words; multi-line replies get
        continuation marks and CRLF; every line but the greeting and HELO/EHLO's gets an
        enhanced status code; error replies count toward the error limit."""
        if isinstance(status, str):
            status = postfix_words(status, self.command, self.argument)
        reply = status.encode("utf-8", "surrogateescape") if isinstance(status, str) else status
        if self.command_started is not None:  # the server's time, not the client's idling
            self.counts.answered(self.command, reply[:1] in (b"2", b"3"))
            self.busy += monotonic() - self.command_started
            self.command_started = None
        raw = self.in_helo
        if self.greeting is not None and reply.startswith(b"220 "):
            reply, self.greeting, raw = self.greeting, None, True
        mail_log.debug("%r << %r", self.session.peer, reply)
        self._writer.write(sent(reply, raw, self.command))
        await self._writer.drain()
        if reply.startswith(b"421"):  # RFC 5321 §3.8: the server closes after a 421
            if self.transport is not None:
                self.transport.close()
        elif reply[:1] in (b"4", b"5") and not self._overshoot(reply):
            self._count_error()

    def _overshoot(self, reply: bytes) -> bool:
        """Whether ``reply`` refuses a recipient past ``limits.recipients`` and is not an
        error yet: as Postfix, the first RECIPIENT_OVERSHOOT of a session are not, so a
        client sending 150 recipients gets the rest refused for a later transaction
        (RFC 5321 4.5.3.1.8) rather than the error limit's hang-up."""
        if not reply.startswith(_TOO_MANY_RECIPIENTS):
            return False
        self.overshoot += 1
        return self.overshoot <= RECIPIENT_OVERSHOOT

    def _count_error(self) -> None:
        """One more error: at the error limit, say 421 and hang up."""
        self.errors += 1
        if self.errors >= self.settings.limits.errors:
            event(log, logging.WARNING, "limit", "%s: %d errors, disconnecting",
                  self.session.peer[0], self.errors, client_ip=self.session.peer[0],
                  reason="errors")
            self.hang_up(f"421 4.7.0 {self.hostname} Error: too many errors".encode())

    def moved_mail(self) -> None:
        """An accepted message, AUTH or STARTTLS: the session is not idle. (Not an accepted
        MAIL or RCPT: a client could repeat MAIL and RSET for ever.)"""
        self.moved_mail_at, self.busy = monotonic(), 0.0

    async def _junk(self, command) -> None:
        """Run a command that keeps the connection alive but moves no mail: past
        ``limits.junk_commands`` of them since the last accepted message, each counts as an
        error too (Postfix's smtpd_junk_command_limit), so a client that only idles runs
        into the error limit."""
        await command
        self.junk += 1
        if self.junk > self.settings.limits.junk_commands:
            self._count_error()

    def _idle_too_long(self) -> bool:
        """Whether the client idled ``limits.idle_session`` (the time since the last
        accepted message, less the time the server spent on its commands): if so, say
        Postfix's timeout reply and hang up."""
        idle = monotonic() - self.moved_mail_at - self.busy
        if idle < self.settings.limits.idle_session:
            return False
        event(log, logging.WARNING, "limit",
              "%s: no mail moved for %d s (limits.idle_session), disconnected",
              self.session.peer[0], idle, client_ip=self.session.peer[0],
              reason="idle_session")
        self.hang_up(f"421 4.4.2 {self.hostname} Error: timeout exceeded".encode())
        return True

    async def refuse(self, greeting: bytes) -> None:
        """Refuse the session with a 421 or 554 greeting. A 421 hangs up at once; after a
        554 the client may only QUIT (RFC 5321 §3.1: the server MUST wait for it and SHOULD
        answer anything else 503), within ``REFUSED_SESSION_TIME`` in all, the command
        timeout and the error limit."""
        if greeting.startswith(b"421"):
            self.hang_up(greeting)
            return
        self._writer.write(sent(greeting, True, None))
        try:
            async with asyncio.timeout(REFUSED_SESSION_TIME):
                await self._wait_for_quit()
        except TimeoutError:
            self._timeout_cb()

    async def _wait_for_quit(self) -> None:
        """After a 554 greeting: QUIT gets 221 and the close, anything else 503; past
        ``REFUSED_COMMANDS`` of them, 421 and the close."""
        for _ in range(REFUSED_COMMANDS):
            line = await self._command_line()
            self._reset_timeout()
            if line.strip().upper() == b"QUIT":
                await self.push("221 Bye")
                self.transport.close()
                return
            await self.push(BAD_SEQUENCE)
        event(log, logging.WARNING, "limit", "%s: %d commands after a 554 greeting, "
              "disconnected", self.event_handler.peer_ip, REFUSED_COMMANDS,
              client_ip=self.event_handler.peer_ip, reason="junk_commands")
        self.hang_up(TOO_MANY_COMMANDS)

    async def _command_line(self) -> bytes:
        """The next line the client sends, without its CRLF; a line longer than the limit
        comes as several."""
        try:
            return (await self._reader.readuntil()).rstrip(b"\r\n")
        except asyncio.LimitOverrunError as error:
            return await self._reader.read(error.consumed)

    def _check_greeting_pipelining(self) -> None:
        """Flag improper pipelining if the client spoke before the greeting; not on an
        implicit-TLS listener, whose client may speak once the handshake is done (as
        Postfix spares smtpd_tls_wrappermode)."""
        if self.listener.kind != "smtps":
            self._note_early_input("CONNECT")

    def _check_pipelining(self, command: str) -> None:
        """Before ``command`` runs: flag improper pipelining (ctx.improper_pipelining, as
        Postfix's reject_unauth_pipelining sees it) if the client sent more behind it while
        it did not say EHLO (so was never offered PIPELINING) or ``command`` ends a group."""
        if not self.session.extended_smtp or command in GROUP_ENDERS:
            self._note_early_input(command)

    def _note_early_input(self, where: str) -> None:
        """Flag improper pipelining if client input is waiting unread: in the reader's
        buffer or the socket's (Postfix's vstream_peek and peekfd). The flag stays set."""
        ctx = self.event_handler.ctx
        if ctx.improper_pipelining or self.transport is None:
            return
        pending = len(self._reader._buffer) or _unread_bytes(self.client_fd)  # noqa: SLF001
        if pending:
            event(log, logging.WARNING, "limit", "%s: improper command pipelining after %s",
                  self.event_handler.peer_ip, where, client_ip=self.event_handler.peer_ip,
                  reason="pipelining")
            ctx.improper_pipelining = True

    def hang_up(self, reply: bytes) -> None:
        """Say a last reply and close, without waiting on a client that does not read."""
        if self.transport is None:
            return
        self.transport.write(sent(reply, True, self.command))
        self.transport.abort()

    def _timeout_cb(self) -> None:
        peer = self.session.peer[0] if self.session.peer else "?"
        event(log, logging.WARNING, "limit", "%s: command timeout, disconnected", peer,
              client_ip=peer, reason="command_timeout")
        self.hang_up(f"421 4.4.2 {self.hostname} Error: timeout exceeded".encode())

    async def smtp_HELO(self, hostname: str):
        await self._junk(self._greeting_reply(super().smtp_HELO(hostname)))

    async def smtp_EHLO(self, hostname: str):
        await self._junk(self._greeting_reply(super().smtp_EHLO(hostname)))

    async def smtp_NOOP(self, arg: str):
        await self._junk(super().smtp_NOOP(arg))

    async def smtp_RSET(self, arg: str):
        await self._junk(super().smtp_RSET(arg))

    async def smtp_VRFY(self, arg: str):
        await self._junk(self._vrfy(arg))

    async def _vrfy(self, arg: str | None) -> None:
        """Postfix's answer to VRFY: 252 and the address as given, nothing verified."""
        words = (arg or "").split()  # "\x1c" or an ideographic space: no address
        if not words:
            await self.push("501 5.5.4 Syntax: VRFY address [SMTPUTF8]")
        else:
            await self.push(f"252 2.0.0 {words[0]}")

    async def smtp_STARTTLS(self, arg: str):
        """STARTTLS; inside TLS already, Postfix's refusal."""
        if not arg and (self._tls_protocol is not None or self.listener.kind == "smtps"):
            await self.push("554 5.5.1 Error: TLS already active")
            return
        try:
            await super().smtp_STARTTLS(arg)
        except TLSSetupException as error:
            handshake_failed(self.event_handler.peer_ip, self.listener.kind, error.__cause__)
            raise

    async def unknown_command(self, arg: str) -> None:
        """A command Postfix does not know (a 5xx reply: the error limit counts it)."""
        await self.push(UNKNOWN_COMMAND)

    async def smtp_QUIT(self, arg: str):
        """QUIT, its arguments ignored (as Postfix does)."""
        self.command, self.argument = "QUIT", None  # its 221 answers QUIT, not the last one
        self.counts.issued("QUIT")
        self.counts.answered("QUIT", True)
        await super().smtp_QUIT(None)

    async def smtp_AUTH(self, arg: str):
        """AUTH; an argument of only (Unicode) white space has no mechanism."""
        await super().smtp_AUTH(arg if not arg or arg.split() else "")

    def _getparams(self, params):
        """aiosmtpd's ESMTP parameters, with a SIZE= not of ASCII digits (RFC 1870:
        ``1*20DIGIT``; ``SIZE=²`` raised in ``int``) made one MAIL refuses."""
        found = super()._getparams(params)
        size = found.get("SIZE") if found else None
        if isinstance(size, str) and not (size.isascii() and size.isdigit()):
            found["SIZE"] = "NaN"
        return found

    async def smtp_RCPT(self, arg: str):
        """RCPT: before MAIL (even before HELO), Postfix's "need MAIL command"."""
        if not self.envelope.mail_from:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        await super().smtp_RCPT(arg)

    async def _greeting_reply(self, command) -> None:
        """Run HELO/EHLO: their replies carry no enhanced status code (RFC 2034)."""
        self.in_helo = True
        try:
            await command
        finally:
            self.in_helo = False

    async def smtp_DATA(self, arg: str) -> None:
        if not self.envelope.rcpt_tos:  # Postfix's replies (no HELO: no MAIL either)
            await self.push("554 5.5.1 Error: no valid recipients" if self.envelope.mail_from
                            else "503 5.5.1 Error: need RCPT command")
            return
        self._reset_timeout(self.settings.limits.data_timeout)
        try:
            await super().smtp_DATA(arg)
        finally:
            if self.envelope.mail_from is None:  # the message phase ran and reset it
                self.event_handler.data_done()
            if not self._idle_too_long():  # DATA may last a data timeout: not one more
                self._reset_timeout()
