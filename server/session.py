"""One SMTP connection's handler: :class:`Session` runs the policy's stage functions at
every command, checks AUTH logins and queues accepted messages. aiosmtpd's protocol with
vSL's connection-level rules is :class:`~server.protocol.Protocol`, which creates it.
Both work with the collaborators in :class:`~server.services.SessionServices` (admission,
AUTH, intake, settings), never with the server object.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import re
import socket
from base64 import b64decode

from aiosmtpd.smtp import MISSING, TLSSetupException

from vsl.stdlib.ctx import Context, Stage
from vsl.stdlib.support.mail import (AddressError, HeaderLimitError, HopLimitError, Mailbox,
                                     Message, domain_key)
from vsl.stdlib.status import Status
from vsl.values import FrozenMap

from . import logids, metrics
from .auth_throttle import user_key
from .config import Listener
from .logevents import event, reply_codes
from .printable import printable
from .queue_backend import QueueError, new_id
from .received import protocol, received
from .replies import TOO_MANY_RECIPIENTS
from .services import SessionServices

log = logging.getLogger("vsl.smtp")

AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.8 Error: authentication failed: authentication failure"
AUTH_LOCKED = "454 4.7.0 Error: too many failed logins, try again later"
PARSE_INLINE = 256 * 1024  # bytes of message parsed on the event loop; more: in a thread
INTERNAL_ERROR = "421 4.3.0 Error: internal error"
# Postfix's replies when a message cannot be written to the queue
QUEUE_WRITE_ERROR = "451 4.3.0 Error: queue file write error"
NO_STORAGE = "452 4.3.1 Insufficient system storage"
# Postfix's replies to an address it cannot take
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
NEEDS_SMTPUTF8 = "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
_STORAGE_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_RECEIVED = metrics.Series("vsl_messages_received_total")
_SIZE = metrics.Series("vsl_message_size_bytes")
_REPLY_CODE = re.compile(r"^([245])\d\d", re.M)
_GREETING_CODES = {"2": "220", "4": "421", "5": "554"}  # the only ones RFC 5321 allows


def connection_addresses(transport) -> tuple | None:
    """A new connection's (peer, local) addresses, read once; None when a network client
    reset it before it was made (they can no longer be read). A socket pair, as ``vsl
    test`` uses, has none anyway: its own values then (the session stands in for them)."""
    peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    if isinstance(peer, tuple) and isinstance(local, tuple):
        return peer, local
    sock = transport.get_extra_info("socket")
    return (peer, local) if sock is not None and sock.family == socket.AF_UNIX else None


def log_client_gone(listener: str) -> None:
    """Log a connection whose client was gone before it was made (its address could no
    longer be read) as Postfix does, ``unknown[unknown]``, under a session id of its own:
    nothing else runs for it."""
    with logids.using(logids.Ids(logids.new_session_id())):
        event(log, logging.INFO, "connect", "connect from unknown[unknown]",
              client_ip="unknown", listener=listener)
        event(log, logging.INFO, "disconnect", "disconnect from unknown[unknown] commands=0",
              client_ip="unknown", commands="commands=0", duration=0.0)


class Session:
    """The aiosmtpd handler of one connection: every command goes through the policy."""

    def __init__(self, services: SessionServices, listener: Listener,
                 accepted: tuple[tuple, tuple] | None = None):
        """``accepted``: the (peer, local) addresses of a connection that admission
        counted at its accept (smtps: server/implicit_tls.py)."""
        self.settings, self.listener = services.settings, listener
        self.accepted = accepted
        self.admitted = accepted is not None
        self.admission, self.authenticator = services.admission, services.authenticator
        self.intake = services.intake
        self.protocol = None  # the server.protocol.Protocol that made it (not imported: a circle)
        self.ctx: Context | None = None
        self.stages = services.stage_runner()
        self.peer_ip = "?"
        self.ids = logids.Ids()  # the session's log ids (protocol.py binds them)

    # -- connection --------------------------------------------------------------
    def connection_made(self, transport, ids: logids.Ids, addresses: tuple) -> None:
        """``addresses``: the connection's (peer, local), from ``connection_addresses``."""
        self.ids = ids
        peer, local = addresses
        if not isinstance(peer, tuple):  # a socket pair (vsl test) has no address
            peer = self.admission.replay_peer or ("127.0.0.1", 0)
            local = ("127.0.0.1", 25)
        self.peer_ip = peer[0]
        self.ctx = Context(peer[0], peer[1], local[0], local[1], self.settings.hostname)
        self.ctx.tls = self.listener.kind == "smtps"
        self.admitted = self.admitted or self.admission.admit(self.peer_ip)
        event(log, logging.INFO, "connect", "connect from unknown[%s]", self.peer_ip,
              client_ip=self.peer_ip, listener=self.listener.kind)
        if self.ctx.tls:
            self._log_tls(transport.get_extra_info("ssl_object"))

    def _log_tls(self, ssl_object) -> None:
        """The event of a TLS session set up (at STARTTLS, or at connect on smtps)."""
        if ssl_object is None:
            return
        version, cipher = ssl_object.version(), (ssl_object.cipher() or ("?",))[0]
        metrics.count("vsl_tls_sessions_total", version=version)
        event(log, logging.INFO, "tls", "%s: %s with cipher %s", self.peer_ip, version,
              cipher, client_ip=self.peer_ip, version=version, cipher=cipher)

    def connection_lost(self, commands: str, duration: float) -> None:
        """Log the disconnect (``commands``: Postfix's counts) and free the slot."""
        with logids.using(self.ids):
            event(log, logging.INFO, "disconnect", "disconnect from unknown[%s] %s",
                  self.peer_ip, commands, client_ip=self.peer_ip, commands=commands,
                  duration=round(duration, 3))
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
            metrics.count("vsl_connections_refused_total", reason="on_connect")
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
        return ["\n".join(f"250 {line}" for line in lines)]  # one reply: one write

    def handle_STARTTLS(self, server, session, envelope) -> bool:
        self.ctx.tls = True
        with logids.using(self.ids):
            self._log_tls(session.ssl.get("ssl_object"))
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
        self.ids.queue_id = None
        self.ctx.reset()
        self.stages.end_transaction()

    # -- AUTH ------------------------------------------------------------------------
    async def handle_AUTH(self, server, session, envelope, args):
        mechanism = args[0].upper()
        credentials = await self._credentials(server, mechanism, args[1] if len(args) > 1
                                              else None)
        if credentials is None:
            return None  # the exchange already replied (cancelled or malformed)
        authzid, user, password = credentials
        throttle = self.authenticator.throttle
        if not await throttle.begin(self.peer_ip, user):
            self._auth_event(logging.WARNING, "locked", "unknown[%s]: SASL %s login locked out",
                             self.peer_ip, mechanism, mechanism=mechanism)
            return self._reject("AUTH", AUTH_LOCKED)
        try:
            if authzid not in ("", user):  # RFC 4616 2: acting for another is not allowed
                self._login_failed(mechanism, user)
                return AUTH_FAILED
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
            self._auth_event(logging.INFO, "success", "unknown[%s]: SASL %s login as %s",
                             self.peer_ip, mechanism, printable(user), mechanism=mechanism,
                             user=user)
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
        self._auth_event(logging.WARNING, "failure",
                         "unknown[%s]: SASL %s authentication failed: authentication "
                         "failure, %s", self.peer_ip, mechanism, user_key(user),
                         mechanism=mechanism)
        self.authenticator.throttle.failed(self.peer_ip, user)  # it logs the lockouts

    def _auth_event(self, level: int, result: str, fmt: str, *args, mechanism: str,
                    **fields) -> None:
        """The ``auth`` event of a login's ``result``, counted in vsl_auth_total."""
        metrics.count("vsl_auth_total", mechanism=mechanism, result=result)
        event(log, level, "auth", fmt, *args, client_ip=self.peer_ip, mechanism=mechanism,
              result=result, **fields)

    async def _credentials(self, server, mechanism: str, initial: str | None):
        """(authorization identity, user, password) from a PLAIN or LOGIN exchange (LOGIN
        has no authorization identity: ""), or None after an error reply."""
        try:
            if mechanism == "PLAIN":
                blob = b64decode(initial, validate=True) if initial else \
                    await server.challenge_auth("")
                if blob is MISSING:
                    return None
                authzid, user, password = blob.split(b"\0")
            else:
                authzid = b""
                user = b64decode(initial, validate=True) if initial else \
                    await server.challenge_auth("Username:")
                if user is MISSING:
                    return None
                password = await server.challenge_auth("Password:")
                if password is MISSING:
                    return None
            return authzid.decode("utf-8"), user.decode("utf-8"), password.decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            await server.push("501 5.5.2 Cannot decode the credentials")
            return None

    # -- transaction -------------------------------------------------------------------
    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        try:
            sender = Mailbox.parse(address)
        except AddressError as err:
            log.info("%s: bad sender address: %s", self.peer_ip, printable(err.message))
            return self._reject("MAIL", "501 5.1.7 Bad sender address syntax")
        if not sender.address.isascii() and "SMTPUTF8" not in mail_options:
            return self._reject("MAIL", NEEDS_SMTPUTF8)
        self.stages.end_transaction()
        self.ctx.begin_transaction(sender, new_id())  # the queue id, from here on
        self.ids.queue_id = self.ctx.message_id
        status = await self.stages.run(self.ctx, Stage.MAIL_FROM)
        if status.kind == "deny":
            reply = self._reject("MAIL", status.reply, Stage.MAIL_FROM)
            self.ids.queue_id = None
            self.ctx.reset()
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return status.reply or "250 2.1.0 Ok"

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
        return status.reply or "250 2.1.5 Ok"

    def _recipient(self, envelope, address: str) -> Mailbox | str:
        """The recipient of a RCPT TO, or the reply refusing it before any policy."""
        if len(envelope.rcpt_tos) >= self.settings.limits.recipients:
            return TOO_MANY_RECIPIENTS  # not an error, up to RECIPIENT_OVERSHOOT (protocol)
        try:
            rcpt = Mailbox("postmaster", self.settings.hostname) \
                if address.lower() == "postmaster" else Mailbox.parse(address)
        except AddressError as err:
            log.info("%s: bad recipient address: %s", self.peer_ip, printable(err.message))
            return BAD_RECIPIENT
        if rcpt.is_null():
            return BAD_RECIPIENT
        if not rcpt.address.isascii() and not envelope.smtp_utf8:
            return NEEDS_SMTPUTF8
        return rcpt

    def _may_receive(self, rcpt: Mailbox, session) -> bool:
        """The default rule: local domains (and postmaster) only, unless authenticated."""
        if session.authenticated:
            return True
        domain = domain_key(rcpt.domain)
        if rcpt.local_part.lower() == "postmaster" and domain == self.settings.hostname_key:
            return True
        return domain in self.settings.domains

    async def handle_DATA(self, server, session, envelope):
        ctx = self.ctx
        _RECEIVED.inc()
        _SIZE.observe(len(envelope.original_content))
        trace = received(session.host_name, ctx.client_ip, None, self.settings.hostname,
                         protocol(session.extended_smtp, ctx.tls, session.authenticated,
                                  envelope.smtp_utf8), ctx.message_id,
                         [r.address for r in ctx.recipients])
        try:
            ctx.message = await parse_message(trace + envelope.original_content,
                                              self.settings.limits.header)
        except HeaderLimitError as err:
            reply = self._reject("DATA", header_limit_reply(err))
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
            entry = await self.intake.store(ctx, self.stages, data, queue, authenticated_as)
        except (QueueError, OSError) as err:
            log.error("%s: message not queued: %s", self.peer_ip, err)
            reply = self._reject("DATA", not_queued_reply(err))
            metrics.count("vsl_messages_not_queued_total",
                          reason="disk_full" if reply == NO_STORAGE else "error")
            self._end_transaction()
            return reply
        nrcpt = len(ctx.all_recipients())
        metrics.count("vsl_messages_queued_total", queue=queue.partition("/")[0])
        event(log, logging.INFO, "queued", "%s: queued %s in %s (%d recipients)",
              self.peer_ip, entry.id, queue, nrcpt, client_ip=self.peer_ip,
              sender=ctx.sender.address, nrcpt=nrcpt, size=len(data), to_queue=queue)
        await self.intake.queued(entry, ctx, self.stages, data)
        self._end_transaction()
        self.protocol.junk = 0  # as Postfix, after an accepted message
        self.protocol.moved_mail()
        return status.reply if status.kind in ("accept", "faccept") and status.reply else \
            f"250 2.0.0 Ok: queued as {entry.id}"

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's last resort for an exception in a command: the details go to the
        log only; the client gets a fixed temporary reply, and the connection closes. A
        failed STARTTLS handshake is no internal error: the protocol has logged it."""
        if isinstance(error, TLSSetupException):
            return INTERNAL_ERROR  # never sent: aiosmtpd closes the connection
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
        fields.append(f"decided_by={'server' if stage is None else self.stages.decider(stage)}")
        one_line = reply.replace("\n", " ")
        code, enhanced = reply_codes(one_line)
        stage_name = COMMAND_STAGES.get(command, "command")  # the metric's "other"
        decided_by = self._decided_by(stage)
        metrics.count("vsl_smtp_rejects_total", stage=stage_name,
                      decider=decided_by if decided_by in ("server", "fallback") else "script")
        event(log, logging.INFO, "reject", "NOQUEUE: reject: %s from unknown[%s]: %s; %s",
              command, self.peer_ip, printable(one_line), " ".join(fields),
              stage=stage_name, command=command, code=code,
              enhanced=enhanced, reply=one_line, client_ip=self.peer_ip, helo=ctx.helo,
              sender=ctx.sender.address if ctx.sender is not None else None, recipient=to,
              decided_by=decided_by)
        return reply

    def _decided_by(self, stage: Stage | None) -> str:
        """The reject event's ``decided_by``: ``server``, ``fallback`` or the script
        position of the status that decided."""
        if stage is None:
            return "server"
        return "fallback" if self.stages.failed else str(self.stages.decided_at)


# The stage a command is part of, in the metrics and the reject events (None: the
# greeting, which answers no command)
COMMAND_STAGES = {None: "connect", "CONNECT": "connect", "HELO": "helo", "EHLO": "helo",
                  "AUTH": "auth", "MAIL": "mail", "RCPT": "rcpt", "DATA": "data"}


async def parse_message(data: bytes, limits) -> Message:
    """The message within the header ``limits``; a big one is parsed in a thread, so the
    event loop keeps serving (the SMTP session and the milter)."""
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


def header_limit_reply(err: HeaderLimitError) -> str:
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
