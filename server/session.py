"""One SMTP connection: aiosmtpd's protocol, plus the policy stages at every command.

:class:`Protocol` subclasses aiosmtpd's ``SMTP`` (through :class:`~server.smtp.FastSMTP`)
where hooks are missing (connect, replies with enhanced status codes, error limits, AUTH
with asynchronous checks);
:class:`Session` is its handler and runs the stage functions of the policy.
Both work with the collaborators in :class:`~server.services.SessionServices` (admission,
AUTH, intake, settings), never with the server object.
"""
from __future__ import annotations

import asyncio
import errno
import functools
import logging
import re
import socket
from base64 import b64decode
from time import monotonic

from aiosmtpd.smtp import MISSING, syntax

from vsl.stdlib.ctx import Context, Stage
from vsl.stdlib.support.mail import AddressError, HeaderLimitError, HopLimitError, Mailbox, Message
from vsl.stdlib.status import Status
from vsl.values import FrozenMap

from .auth_throttle import user_key
from .config import Listener
from .printable import printable
from .queue_backend import QueueError, new_id
from .received import protocol, received
from .services import SessionServices
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
AUTH_OK = "235 2.7.0 Authentication succeeded"
REPLY_BUFFER = 64 * 1024  # bytes of replies a client may leave unread
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
AUTH_LOCKED = "454 4.7.0 Error: too many failed logins, try again later"
PARSE_INLINE = 256 * 1024  # bytes of message parsed on the event loop; more: in a thread
INTERNAL_ERROR = "421 4.3.0 Error: internal error"
BAD_SEQUENCE = "503 5.5.1 Error: bad sequence of commands"  # Postfix's
# After a 554 greeting: the commands answered (postscreen_command_count_limit), and the
# seconds the whole session may last (postscreen allows 10 s a command under stress).
REFUSED_COMMANDS = 20
REFUSED_SESSION_TIME = 30.0
TOO_MANY_COMMANDS = b"421 4.7.0 Too many commands, closing the connection"
# Postfix's replies when a message cannot be written to the queue
QUEUE_WRITE_ERROR = "451 4.3.0 Error: queue file write error"
NO_STORAGE = "452 4.3.1 Insufficient system storage"
_STORAGE_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_REPLY_CODE = re.compile(r"^([245])\d\d", re.M)
_GREETING_CODES = {"2": "220", "4": "421", "5": "554"}  # the only ones RFC 5321 allows


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
    """A reply as sent: lines ending with CRLF, continuation marks on all but the last,
    and (unless ``raw``) enhanced status codes."""
    lines = reply.replace(b"\r\n", b"\n").split(b"\n") if b"\n" in reply else [reply]
    if len(lines) > 1:
        lines = [line[:3] + (b" " if i == len(lines) - 1 else b"-") + line[4:]
                 if line[:3].isdigit() else line for i, line in enumerate(lines)]
    return b"".join((line if raw else enhance(line)) + b"\r\n" for line in lines)


def _bound_replies(transport) -> None:
    """Keep little of a client's unread replies buffered: one that pipelines commands but
    never reads stalls soon, so the command timeout can drop it."""
    transport.set_write_buffer_limits(high=REPLY_BUFFER)
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, REPLY_BUFFER)


def _unless_idle(command):
    """The SMTP command method ``command``, not run when the session is idle too long or
    already hung up (commands a client pipelined behind the one that ended it). The time
    from the command to its first reply is the server's, not the client's idling."""
    @functools.wraps(command)
    async def run(self: "Protocol", arg):
        if self.transport is None or self.transport.is_closing() or self._idle_too_long():
            return
        self.command_started = monotonic()  # until its first reply: see push
        await command(self, arg)
    return run


def _idle_checked(cls: type) -> type:
    """``cls`` with every SMTP command but QUIT checked for idleness before it runs, so an
    idle session holds its slot at most ``limits.idle_session`` plus one command timeout."""
    for name in dir(cls):
        if name.startswith("smtp_") and name != "smtp_QUIT":
            setattr(cls, name, _unless_idle(getattr(cls, name)))
    return cls


@_idle_checked
class Protocol(FastSMTP):
    """aiosmtpd's SMTP protocol with vSL's connection-level rules."""

    def __init__(self, services: SessionServices, listener: Listener, tls_context=None):
        self.settings, self.listener = services.settings, listener
        self.errors = 0
        self.junk = 0  # NOOP, RSET, VRFY, HELP, HELO, EHLO since the last accepted message
        self.moved_mail_at = monotonic()  # the start, then the last accepted message, ...
        self.busy = 0.0  # seconds the server spent on commands since then (stages, look-ups)
        self.command_started: float | None = None
        self.in_helo = False  # HELO/EHLO replies (and the greeting) get no enhanced code
        self.greeting: bytes | None = None  # the greeting still to send (None: sent)
        limits, authenticator = self.settings.limits, services.authenticator
        handler = Session(services, listener)
        implicit_tls = listener.kind == "smtps"
        super().__init__(
            handler, hostname=self.settings.hostname, ident="ESMTP vSL",
            data_size_limit=limits.message_size,
            tls_context=None if implicit_tls else tls_context,
            timeout=limits.command_timeout,
            auth_require_tls=authenticator.requires_tls(implicit_tls),
            auth_exclude_mechanism=authenticator.excluded_mechanisms())
        handler.protocol = self

    def connection_made(self, transport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            _bound_replies(transport)
            self.event_handler.connection_made(transport)

    def connection_lost(self, error) -> None:
        self.event_handler.connection_lost()
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        try:
            admitted = await self.event_handler.connect()
        except Exception as error:  # noqa: BLE001 - as aiosmtpd treats a failing command
            self.hang_up((await self.event_handler.handle_exception(error)).encode())
            return
        if admitted:
            self.greeting = self.greeting or f"220 {self.hostname} {self.__ident__}".encode()
            await super()._handle_client()

    async def push(self, status) -> None:
        """Send a reply: multi-line replies get continuation marks and CRLF; every line
        but the greeting and HELO/EHLO's gets an enhanced status code; error replies count
        toward the error limit."""
        reply = status.encode("utf-8", "surrogateescape") if isinstance(status, str) else status
        if self.command_started is not None:  # the server's time, not the client's idling
            self.busy += monotonic() - self.command_started
            self.command_started = None
        raw = self.in_helo
        if self.greeting is not None and reply.startswith(b"220 "):
            reply, self.greeting, raw = self.greeting, None, True
        self._writer.write(wire(reply, raw))
        mail_log.debug("%r << %r", self.session.peer, reply)
        await self._writer.drain()
        if reply.startswith(b"421"):  # RFC 5321 §3.8: the server closes after a 421
            if self.transport is not None:
                self.transport.close()
        elif reply[:1] in (b"4", b"5"):
            self._count_error()

    def _count_error(self) -> None:
        """One more error: at the error limit, say 421 and hang up."""
        self.errors += 1
        if self.errors >= self.settings.limits.errors:
            log.warning("%s: %d errors, disconnecting", self.session.peer[0], self.errors)
            self.hang_up(b"421 4.7.0 Too many errors, closing the connection")

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
        log.info("%s: no mail moved for %d s (limits.idle_session), disconnected",
                 self.session.peer[0], idle)
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
        self._writer.write(wire(greeting, raw=True))
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
        log.info("%s: %d commands after a 554 greeting, disconnected",
                 self.event_handler.peer_ip, REFUSED_COMMANDS)
        self.hang_up(TOO_MANY_COMMANDS)

    async def _command_line(self) -> bytes:
        """The next line the client sends, without its CRLF; a line longer than the limit
        comes as several."""
        try:
            return (await self._reader.readuntil()).rstrip(b"\r\n")
        except asyncio.LimitOverrunError as error:
            return await self._reader.read(error.consumed)

    def hang_up(self, reply: bytes) -> None:
        """Say a last reply and close, without waiting on a client that does not read."""
        if self.transport is None:
            return
        self.transport.write(wire(reply, raw=True))
        self.transport.abort()

    def _timeout_cb(self) -> None:
        log.info("%s: command timeout, disconnected", self.session.peer[0] if self.session.peer
                 else "?")
        self.hang_up(b"421 4.4.2 Timeout, closing the connection")

    async def smtp_HELO(self, hostname: str):
        await self._junk(self._greeting_reply(super().smtp_HELO(hostname)))

    async def smtp_EHLO(self, hostname: str):
        await self._junk(self._greeting_reply(super().smtp_EHLO(hostname)))

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str):
        await self._junk(super().smtp_NOOP(arg))

    @syntax("RSET")
    async def smtp_RSET(self, arg: str):
        await self._junk(super().smtp_RSET(arg))

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str):
        await self._junk(super().smtp_VRFY(arg))

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str):
        await self._junk(super().smtp_HELP(arg))

    async def _greeting_reply(self, command) -> None:
        """Run HELO/EHLO: their replies carry no enhanced status code (RFC 2034)."""
        self.in_helo = True
        try:
            await command
        finally:
            self.in_helo = False

    async def smtp_DATA(self, arg: str) -> None:
        self._reset_timeout(self.settings.limits.data_timeout)
        try:
            await super().smtp_DATA(arg)
        finally:
            self.event_handler.data_done()
            if not self._idle_too_long():  # DATA may last a data timeout: not one more
                self._reset_timeout()


class Session:
    """The aiosmtpd handler of one connection: every command goes through the policy."""

    def __init__(self, services: SessionServices, listener: Listener):
        self.settings, self.listener = services.settings, listener
        self.admission, self.authenticator = services.admission, services.authenticator
        self.intake = services.intake
        self.protocol: Protocol | None = None
        self.ctx: Context | None = None
        self.stages = services.stage_runner()
        self.peer_ip = "?"

    # -- connection --------------------------------------------------------------
    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if not isinstance(peer, tuple):  # a socket pair (vsl test) has no address
            peer = self.admission.replay_peer or ("127.0.0.1", 0)
            local = ("127.0.0.1", 25)
        self.peer_ip = peer[0]
        self.ctx = Context(peer[0], peer[1], local[0], local[1], self.settings.hostname)
        self.ctx.tls = self.listener.kind == "smtps"
        self.admitted = self.admission.admit(self.peer_ip)

    def connection_lost(self) -> None:
        if self.admitted:
            self.admission.release(self.peer_ip)
            self.admitted = False

    async def connect(self) -> bool:
        """Before the greeting: connection limits, then on_connect. False: closed."""
        protocol = self.protocol
        if not self.admitted:
            protocol.hang_up(b"421 4.7.0 Too many connections, try again later")
            return False
        status = await self.stages.run(self.ctx, Stage.CONNECT)
        if status.kind == "deny":
            reply = self._reject("CONNECT", as_greeting(status.reply), Stage.CONNECT)
            await protocol.refuse(reply.encode("utf-8", "surrogateescape"))
            return False
        if status.kind in ("accept", "faccept") and status.reply:
            protocol.greeting = as_greeting(status.reply).encode("utf-8", "surrogateescape")
        return True

    # -- HELO / EHLO ---------------------------------------------------------------
    async def _helo(self, session, hostname: str) -> Status:
        """HELO/EHLO ends any transaction; the session opens only if on_helo agrees."""
        self._end_transaction()
        session.host_name = None
        self.ctx.helo = hostname
        status = await self.stages.run(self.ctx, Stage.HELO)
        if status.kind != "deny":
            session.host_name = hostname
        return status

    async def handle_HELO(self, server, session, envelope, hostname):
        status = await self._helo(session, hostname)
        if status.kind == "deny":
            return self._reject("HELO", status.reply, Stage.HELO)
        return status.reply or f"250 {server.hostname}"

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        status = await self._helo(session, hostname)
        if status.kind == "deny":
            session.extended_smtp = False
            return [self._reject("EHLO", status.reply, Stage.HELO)]
        extensions = [r[4:] for r in responses[1:] if r[4:] != "HELP"]
        if "8BITMIME" in extensions:
            extensions[extensions.index("8BITMIME"):0] = ["PIPELINING"]
        extensions.append("ENHANCEDSTATUSCODES")
        extensions = [e for e in extensions if e.strip() != "AUTH"]  # AUTH, no mechanism
        lines = [responses[0][4:]] + extensions
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    def handle_STARTTLS(self, server, session, envelope) -> bool:
        self.ctx.tls = True
        self.protocol.moved_mail()
        return True

    async def handle_RSET(self, server, session, envelope):
        self._end_transaction()
        return "250 2.0.0 Ok"

    def data_done(self) -> None:
        """DATA ended, whatever way (aiosmtpd may have refused it itself)."""
        if self.ctx.message is None and self.ctx.stage >= Stage.MAIL_FROM:
            self._end_transaction()

    def _end_transaction(self) -> None:
        self.ctx.reset()
        self.stages.end_transaction()

    # -- AUTH ------------------------------------------------------------------------
    async def handle_AUTH(self, server, session, envelope, args):
        mechanism = args[0].upper()
        credentials = await self._credentials(server, mechanism, args[1] if len(args) > 1
                                              else None)
        if credentials is None:
            return None  # the exchange already replied (cancelled or malformed)
        user, password = credentials
        throttle = self.authenticator.throttle
        if not await throttle.begin(self.peer_ip, user):
            return self._reject("AUTH", AUTH_LOCKED)
        try:
            return await self._login(session, mechanism, user, password)
        finally:
            throttle.end(self.peer_ip, user)

    async def _login(self, session, mechanism: str, user: str, password: str):
        """Check a login the throttle let through: the AUTH reply."""
        throttle = self.authenticator.throttle
        ok = await self.authenticator.check_password(user, password)
        self.ctx.auth = FrozenMap(mechanism=mechanism, authid=user, password=password)
        decisions = self.stages.save()
        status = await self.stages.run(self.ctx, Stage.AUTH)
        verdict = _auth_verdict(status, ok, self.authenticator.smtp_users is not None)
        if not verdict:
            self.stages.restore(decisions)  # a failed login decides nothing
        if not verdict and not ok:
            self._login_failed(mechanism, user)
        if verdict:
            throttle.succeeded(self.peer_ip, user)
            self.protocol.moved_mail()
            self.ctx.set_auth(mechanism, user)
            session.authenticated = True
            session.auth_data = user
            return status.reply if status.kind in ("accept", "faccept") and status.reply \
                else AUTH_OK
        self.ctx.auth = None
        if status.kind == "deny":
            return self._reject("AUTH", status.reply, Stage.AUTH)
        return AUTH_FAILED

    def _login_failed(self, mechanism: str, user: str) -> None:
        """Log a failed login as Postfix does (what fail2ban reads), and count it."""
        log.warning("unknown[%s]: SASL %s authentication failed: authentication failure, %s",
                    self.peer_ip, mechanism, user_key(user))
        for key, seconds in self.authenticator.throttle.failed(self.peer_ip, user):
            log.warning("%s: too many failed logins, AUTH refused for %g s", key, seconds)

    async def _credentials(self, server, mechanism: str, initial: str | None):
        """(user, password) from a PLAIN or LOGIN exchange, or None after an error reply."""
        try:
            if mechanism == "PLAIN":
                blob = b64decode(initial, validate=True) if initial else \
                    await server.challenge_auth("")
                if blob is MISSING:
                    return None
                _, user, password = blob.split(b"\0")
            else:
                user = b64decode(initial, validate=True) if initial else \
                    await server.challenge_auth("Username:")
                if user is MISSING:
                    return None
                password = await server.challenge_auth("Password:")
                if password is MISSING:
                    return None
            return user.decode("utf-8"), password.decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            await server.push("501 5.5.2 Cannot decode the credentials")
            return None

    # -- transaction -------------------------------------------------------------------
    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        try:
            sender = Mailbox.parse(address)
        except AddressError as err:
            return self._reject("MAIL", f"553 5.1.7 Bad sender address: {err.message}")
        if not sender.address.isascii() and "SMTPUTF8" not in mail_options:
            return self._reject("MAIL", "553 5.6.7 Non-ASCII address without SMTPUTF8")
        self.stages.end_transaction()
        self.ctx.begin_transaction(sender, new_id())  # the queue id, from here on
        status = await self.stages.run(self.ctx, Stage.MAIL_FROM)
        if status.kind == "deny":
            reply = self._reject("MAIL", status.reply, Stage.MAIL_FROM)
            self.ctx.reset()
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return status.reply or "250 2.1.0 Sender ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        rcpt = self._recipient(envelope, address)
        if isinstance(rcpt, str):
            return self._reject("RCPT", rcpt, to=address)
        self.ctx.add_recipient(rcpt)
        status = await self.stages.run(self.ctx, Stage.RCPT_TO)
        decided_by = Stage.RCPT_TO
        if status.kind == "next" and not self._may_receive(rcpt, session):
            status, decided_by = Status("deny", "554 5.7.1 Relay access denied"), None
        if status.kind == "deny":
            self.ctx.drop_recipient()
            return self._reject("RCPT", status.reply, decided_by, to=rcpt.address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return status.reply or "250 2.1.5 Recipient ok"

    def _recipient(self, envelope, address: str) -> Mailbox | str:
        """The recipient of a RCPT TO, or the reply refusing it before any policy."""
        if len(envelope.rcpt_tos) >= self.settings.limits.recipients:
            return "452 4.5.3 Too many recipients"
        try:
            rcpt = Mailbox("postmaster", self.settings.hostname) \
                if address.lower() == "postmaster" else Mailbox.parse(address)
        except AddressError as err:
            return f"553 5.1.3 Bad recipient address: {err.message}"
        if rcpt.is_null():
            return "553 5.1.3 The null address is not a recipient"
        if not rcpt.address.isascii() and not envelope.smtp_utf8:
            return "553 5.6.7 Non-ASCII address without SMTPUTF8"
        return rcpt

    def _may_receive(self, rcpt: Mailbox, session) -> bool:
        """The default rule: local domains (and postmaster) only, unless authenticated."""
        if session.authenticated:
            return True
        if rcpt.local_part.lower() == "postmaster" and rcpt.domain.lower() == \
                self.settings.hostname.lower():
            return True
        return rcpt.domain.lower().rstrip(".") in self.settings.domains

    async def handle_DATA(self, server, session, envelope):
        ctx = self.ctx
        trace = received(session.host_name, ctx.client_ip, None, self.settings.hostname,
                         protocol(session.extended_smtp, ctx.tls, session.authenticated,
                                  envelope.smtp_utf8), ctx.message_id,
                         [r.address for r in ctx.recipients])
        try:
            ctx.message = await self._parse(trace + envelope.original_content)
        except HeaderLimitError as err:
            reply = self._reject("DATA", _header_limit_reply(err))
            self._end_transaction()
            return reply
        status = await self.stages.run(ctx, Stage.PRE_QUEUE)
        if status.kind == "deny":
            reply = self._reject("DATA", status.reply, Stage.PRE_QUEUE)
            self._end_transaction()
            return reply
        queue = f"quarantine/{self.stages.quarantine}" if self.stages.quarantine else "working"
        data = ctx.message.to_bytes()
        authenticated_as = session.auth_data if session.authenticated else None
        try:
            msg_id = await self.intake.store(ctx, data, queue, authenticated_as)
        except (QueueError, OSError) as err:
            log.error("%s: message not queued: %s", self.peer_ip, err)
            reply = self._reject("DATA", not_queued_reply(err))
            self._end_transaction()
            return reply
        log.info("%s: queued %s in %s (%d recipients)", self.peer_ip, msg_id, queue,
                 len(ctx.all_recipients()))
        await self.intake.queued(msg_id, queue, ctx, self.stages, data)
        self._end_transaction()
        self.protocol.junk = 0  # as Postfix, after an accepted message
        self.protocol.moved_mail()
        return status.reply if status.kind in ("accept", "faccept") and status.reply else \
            f"250 2.0.0 Ok: queued as {msg_id}"

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's last resort for an exception in a command: the details go to the
        log only; the client gets a fixed temporary reply, and the connection closes."""
        log.error("%s: internal error, closing the connection", self.peer_ip,
                  exc_info=error)
        return INTERNAL_ERROR

    def _reject(self, command: str, reply: str, stage: Stage | None = None,
                to: str | None = None) -> str:
        """Log a refusal as Postfix does (``NOQUEUE: reject: RCPT from host[ip]: reply;
        from=<> to=<> proto=ESMTP helo=<>``) and who decided it; returns the reply."""
        ctx, session = self.ctx, self.protocol.session
        fields = [f"from=<{printable(ctx.sender.address)}>"] if ctx.sender is not None else []
        fields += [f"to=<{printable(to)}>"] if to is not None else []
        fields.append(f"proto={'ESMTP' if session.extended_smtp else 'SMTP'}")
        fields += [f"helo=<{printable(ctx.helo)}>"] if ctx.helo is not None else []
        fields.append(f"decided_by={self._decider(stage)}")
        log.info("NOQUEUE: reject: %s from unknown[%s]: %s; %s", command, self.peer_ip,
                 printable(reply.replace("\n", " ")), " ".join(fields))
        return reply

    def _decider(self, stage: Stage | None) -> str:
        """Who refused: the server's own rule, the fallback reply of a failed stage, or
        the stage function and where its script made the deny
        (``on_rcpt_to@main.vsl:3:12``, the ``status::deny(...)`` call)."""
        if stage is None:
            return "server"
        if self.stages.failed:
            return f"fallback_reply@{stage.function}"
        return f"{stage.function}@{self.stages.decided_at}"

    async def _parse(self, data: bytes) -> Message:
        """The message within the header limits; a big one is parsed in a thread."""
        limits = self.settings.limits.header
        if len(data) <= PARSE_INLINE:
            return Message(data, limits)
        return await asyncio.to_thread(Message, data, limits)


def as_greeting(reply: str) -> str:
    """A policy's reply made a greeting: 220, 421 (temporary refusal) or 554 (permanent),
    the only codes RFC 5321 (§3.1, §4.2) allows there, whatever code the policy gave."""
    return _REPLY_CODE.sub(lambda code: _GREETING_CODES[code[1]], reply)


def not_queued_reply(error: Exception) -> str:
    """Postfix's reply for a message that could not be written to the queue: 452 when the
    disk (or quota) is full, else 451; never the error's text (it may hold a path)."""
    cause = error if isinstance(error, OSError) else error.__cause__
    full = isinstance(cause, OSError) and cause.errno in _STORAGE_FULL
    return NO_STORAGE if full else QUEUE_WRITE_ERROR


def _header_limit_reply(err: HeaderLimitError) -> str:
    """Postfix's reply to a message it will not take: too many hops, or too big."""
    code = "554 5.4.0" if isinstance(err, HopLimitError) else "552 5.3.4"
    return f"{code} Error: {err}"


def _auth_verdict(status: Status, password_ok: bool, has_users_file: bool) -> bool:
    """Whether AUTH succeeds: the users file (when configured) must accept the password,
    then on_auth may deny; without a users file only on_auth can accept."""
    if status.kind == "deny":
        return False
    if has_users_file:
        return password_ok
    return status.kind in ("accept", "faccept")
