"""One SMTP session as the MTA describes it over the milter protocol.

The MTA reports each command (connect, HELO, MAIL, RCPT, the header fields, the body,
end of message); :class:`MilterSession` keeps the :class:`Context` of the session the way
the SMTP server does (``ctx.store`` values per connection and per message, the
transaction forgotten at HELO, MAIL, abort and after each message), runs the matching
stage through its :class:`StageRunner` and answers the verdict. At end of message the
whole message is known: on_pre_queue runs on it, and what the script changed goes back
as modification actions (edits.py). An address without a domain is qualified with
``ctx.server_name`` (the MTA's ``j`` macro), as Postfix does (unqualified.py); one that
is still no address is refused with 553. Any exception of vSL's own is logged and answered
with a temporary failure that names nothing of it.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from purepythonmilter.api import models
from purepythonmilter.protocol import commands, definitions, responses

from vsl.stdlib.ctx import Context, Stage
from vsl.stdlib.support.mail import AddressError, HeaderLimitError

from ..queue_backend import new_id
from ..services import SessionSettings
from ..session import header_limit_reply, parse_message
from ..stages import StageRunner
from ..unqualified import qualified
from .edits import Snapshot, offered
from .verdicts import INTERNAL_ERROR, Quarantine, SmtpReply, verdict

log = logging.getLogger("vsl.milter")

TOO_BIG = "552 5.3.4 Error: message file too big"  # Postfix's words
# the macros asked for, by the stage the MTA sends them at
MACROS = {
    definitions.MacroStage.CONNECT: {"j", "{daemon_addr}", "{daemon_port}"},
    definitions.MacroStage.HELO: {"{tls_version}"},
    definitions.MacroStage.MAIL_FROM: {"i", "{auth_type}", "{auth_authen}", "{tls_version}"},
}
_WANTED = set().union(*MACROS.values())
# each modification action, and the negotiation flag that allows it
ACTIONS = {
    responses.AppendHeader: "add_headers", responses.InsertHeader: "add_headers",
    responses.ChangeHeader: "change_headers", responses.AddRecipient: "add_recipients",
    responses.RemoveRecipient: "remove_recipients",
    responses.ChangeMailFrom: "change_mail_from", Quarantine: "quarantine",
}


class MilterSession:
    """The stages of one MTA connection (one SMTP session, or several after a
    QUIT_NC)."""

    def __init__(self, new_runner: Callable[[], StageRunner], settings: SessionSettings):
        self.new_runner, self.settings = new_runner, settings
        self.runner = new_runner()
        self.ctx: Context | None = None
        self.macros: dict[str, str] = {}
        self.allowed: set[type] = set()  # the modification actions negotiated
        self.space = ""  # before a header value we add: " " if the MTA wants it given
        self._message = bytearray()
        self._in_body = self._too_big = False
        self._sender, self._recipients = "", []  # the envelope as the MTA has it
        self.done = False  # the MTA quit

    async def handle(self, command: commands.BaseCommand) -> list[responses.AbstractBaseResponse]:
        """What to send back for ``command``: nothing, or its response (after the
        modification actions at end of message)."""
        handler = self._HANDLERS.get(type(command))
        try:
            if handler is None:  # a step we did not ask for: the MTA could not skip it
                return [responses.Continue()]
            if self.ctx is None and type(command) in _IN_SESSION:
                log.warning("%s before CONNECT: refused", type(command).__name__)
                return [SmtpReply(reply=INTERNAL_ERROR)]
            if type(command) in _IN_TRANSACTION and self.ctx.sender is None:
                log.warning("%s before MAIL FROM: refused", type(command).__name__)
                return [SmtpReply(reply=INTERNAL_ERROR)]
            return await handler(self, command)
        except Exception:  # noqa: BLE001 - a bug answers a temporary failure, logged
            log.exception("internal error at %s", type(command).__name__)
            self._end_transaction()
            return [SmtpReply(reply=INTERNAL_ERROR)]

    # -- negotiation and macros ------------------------------------------------------
    async def _negotiate(self, command: commands.OptionsNegotiate) -> list:
        mta = command.flags
        flags = models.RequestProtocolFlags(
            call_connect=True, call_helo=True, call_mail_from=True, call_rcpt_to=True,
            call_headers=True, call_body_chunk=True,
            call_data=not mta.disable_call_data,
            call_end_of_headers=not mta.disable_call_end_of_headers,
            call_unknown=not mta.disable_call_unknown,
            reply_connect=True, reply_helo=True, reply_mail_from=True, reply_rcpt_to=True,
            reply_data=True, reply_headers=True, reply_end_of_headers=True,
            reply_body_chunk=True, reply_unknown=True,
            can_add_headers=mta.allows_add_headers,
            can_change_headers=mta.allows_change_headers,
            can_add_recipients=mta.allows_add_recipients,
            can_remove_recipients=mta.allows_remove_recipients,
            can_change_mail_from=mta.allows_change_mail_from,
            can_quarantine=mta.allows_quarantine,
            can_specify_macros=mta.allows_specify_macros, can_skip_body_chunks=False,
            headers_with_leading_space=mta.headers_with_leading_space)
        self.space = " " if mta.headers_with_leading_space else ""
        self.allowed = {action for action, flag in ACTIONS.items()
                        if getattr(mta, f"allows_{flag}")}
        return [responses.OptionsNegotiateResponse(
            protocol_flags=flags, symbols_for_stage=MACROS if mta.allows_specify_macros else {})]

    async def _macro(self, command: commands.DefineMacro) -> list:
        """Keep the macros vSL reads (an MTA sending others cannot grow the session)."""
        self.macros.update((name, value) for name, value in command.macros.items()
                           if name in _WANTED)
        return []

    # -- connection and HELO -------------------------------------------------------------
    async def _connect(self, command: commands.Connect) -> list:
        info = command.connection_info_args
        if isinstance(info, (models.ConnectionInfoArgsIPv4, models.ConnectionInfoArgsIPv6)):
            client = (str(info.addr), info.port)
        else:  # the sendmail command (non_smtpd_milters), a Unix socket: this host
            client = ("127.0.0.1", 0)
        port = self.macros.get("{daemon_port}", "")
        self.runner = self.new_runner()
        self.ctx = Context(*client, self.macros.get("{daemon_addr}", "127.0.0.1"),
                           int(port) if port.isascii() and port.isdigit() else 25,
                           self.macros.get("j") or self.settings.hostname)
        return [await self._stage(Stage.CONNECT, "CONNECT")]

    async def _helo(self, command: commands.Helo) -> list:
        self._end_transaction()
        self.ctx.helo = command.hostname
        self.ctx.tls = bool(self.macros.get("{tls_version}"))
        return [await self._stage(Stage.HELO, "HELO")]

    # -- envelope ---------------------------------------------------------------------------
    async def _mail_from(self, command: commands.MailFrom) -> list:
        try:
            sender = qualified(command.address, self.ctx.server_name)
        except AddressError as err:
            return [SmtpReply(reply=f"553 5.1.7 Bad sender address: {err.message}")]
        self._end_transaction()
        ctx = self.ctx
        ctx.tls = bool(self.macros.get("{tls_version}"))
        if self.macros.get("{auth_authen}"):
            ctx.set_auth(self.macros.get("{auth_type}", ""), self.macros["{auth_authen}"])
        queue_id = self.macros.get("i", "")
        ctx.begin_transaction(sender, queue_id if queue_id.isalnum() else new_id())
        response = await self._stage(Stage.MAIL_FROM, "MAIL")
        if isinstance(response, SmtpReply):
            ctx.reset()
        self._sender = sender.address
        return [response]

    async def _rcpt_to(self, command: commands.RcptTo) -> list:
        try:
            rcpt = qualified(command.address, self.ctx.server_name)
        except AddressError as err:
            return [SmtpReply(reply=f"553 5.1.3 Bad recipient address: {err.message}")]
        self.ctx.add_recipient(rcpt)
        response = await self._stage(Stage.RCPT_TO, "RCPT")
        if isinstance(response, SmtpReply):
            self.ctx.drop_recipient()
        else:
            self._recipients.append(rcpt.address)
        return [response]

    # -- the message --------------------------------------------------------------------------
    async def _header(self, command: commands.Header) -> list:
        name, _, value = command.data_raw.rstrip(b"\x00").partition(b"\x00")
        space = b"" if value[:1] in (b" ", b"\t") else b" "  # its own, if the MTA kept it
        self._collect(name + b":" + space + value.replace(b"\r\n", b"\n")
                      .replace(b"\n", b"\r\n") + b"\r\n")
        return [responses.Continue()]

    async def _end_of_headers(self, command: commands.EndOfHeaders) -> list:
        return [responses.Continue()]

    async def _body(self, command: commands.BodyChunk) -> list:
        self._end_header()
        self._collect(command.data_raw)
        return [responses.Continue()]

    def _end_header(self) -> None:
        """The empty line between the header and the body, once."""
        if not self._in_body:
            self._in_body = True
            self._collect(b"\r\n")

    def _collect(self, data: bytes) -> None:
        """Keep the message up to the size limit; past it only remember that."""
        if self._too_big or len(self._message) + len(data) > self.settings.limits.message_size:
            self._too_big = True
            self._message.clear()
            return
        self._message += data

    async def _end_of_message(self, command: commands.EndOfMessage) -> list:
        try:
            return await self._pre_queue()
        finally:
            self._end_transaction()

    async def _pre_queue(self) -> list:
        """on_pre_queue on the whole message; its changes, then its verdict."""
        ctx = self.ctx
        if self._too_big:
            return [self._refused("END-OF-MESSAGE", TOO_BIG, None)]
        self._end_header()  # a message without a body
        try:
            ctx.message = await parse_message(bytes(self._message), self.settings.limits.header)
        except HeaderLimitError as err:
            return [self._refused("END-OF-MESSAGE", header_limit_reply(err), None)]
        before = Snapshot(ctx, self._sender, self._recipients)
        status = await self.runner.run(ctx, Stage.PRE_QUEUE)
        if status.kind == "deny":
            return [self._refused("END-OF-MESSAGE", status.reply, Stage.PRE_QUEUE)]
        actions = before.edits(ctx, self.space)
        if self.runner.quarantine is not None:
            actions.append(Quarantine(reason=self.runner.quarantine))
        return offered(actions, self.allowed) + [verdict(status)]

    async def _abort(self, command: commands.BaseCommand) -> list:
        self._end_transaction()
        return []

    async def _quit(self, command: commands.Quit) -> list:
        self.done = True  # the connection closes, and closes the session
        return []

    async def _new_session(self, command: commands.QuitNoClose) -> list:
        self._end_transaction()
        self.ctx, self.macros = None, {}
        return []

    # -- helpers ------------------------------------------------------------------------------
    async def _stage(self, stage: Stage, command: str) -> responses.AbstractResponse:
        """Run ``stage``; its verdict (a refusal logged)."""
        status = await self.runner.run(self.ctx, stage)
        if status.kind == "deny":
            return self._refused(command, status.reply, stage)
        return verdict(status)

    def _refused(self, command: str, reply: str, stage: Stage | None) -> SmtpReply:
        """The refusal of ``command``, logged with who decided it."""
        decider = "milter" if stage is None else self.runner.decider(stage)
        log.info("reject: %s from %s: %s; decided_by=%s", command, self.ctx.client_ip,
                 reply.replace("\n", " "), decider)
        return SmtpReply(reply=reply)

    def close(self) -> None:
        """The connection ends."""
        self._end_transaction()

    def _end_transaction(self) -> None:
        """The message is done (or never was): forget it, keep the session."""
        self._message.clear()
        self._in_body = self._too_big = False
        self._sender, self._recipients = "", []
        if self.ctx is not None:
            self.ctx.reset()
        self.runner.end_transaction()

    _HANDLERS = {
        commands.OptionsNegotiate: _negotiate, commands.DefineMacro: _macro,
        commands.Connect: _connect, commands.Helo: _helo, commands.MailFrom: _mail_from,
        commands.RcptTo: _rcpt_to, commands.Header: _header,
        commands.EndOfHeaders: _end_of_headers, commands.BodyChunk: _body,
        commands.EndOfMessage: _end_of_message, commands.Abort: _abort,
        commands.Quit: _quit, commands.QuitNoClose: _new_session,
    }


_IN_SESSION = {commands.Helo, commands.MailFrom, commands.RcptTo, commands.Header,
               commands.BodyChunk, commands.EndOfMessage}
_IN_TRANSACTION = {commands.RcptTo, commands.EndOfMessage}  # what needs a sender


