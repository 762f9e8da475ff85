"""One policy request: its conversation, its ctx, the stages it runs, its action.

``protocol_state`` names the SMTP command Postfix is deciding; the request runs every
stage up to that command's which has not run yet for this session or message, in order,
as ``vsl serve`` would have run them (with ``smtpd_delay_reject=yes`` the first request
often comes at RCPT, with everything before it still to run):

    CONNECT              on_connect
    EHLO, HELO           on_connect, on_helo (on_helo again for another HELO name)
    MAIL                 ... on_mail_from
    RCPT                 ... on_mail_from, on_rcpt_to (once per recipient)
    DATA, END-OF-MESSAGE ... on_mail_from, on_pre_queue (once per message: the first of them)
    VRFY, ETRN           nothing: DUNNO

on_pre_queue sees the envelope and an empty message: a policy request carries neither
headers nor body. An address without a domain is qualified with ``ctx.server_name``, as
Postfix does (unqualified.py); one that is still no address answers DEFER_IF_PERMIT:
the stages cannot run, and the request never lets it through unchecked. The first stage refusing gives the action; a stage that already
decided answers its decision again (a HOLD or PREPEND only once: Postfix applied it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from vsl.stdlib.ctx import Context, Stage
from vsl.stdlib.support.mail import AddressError, Message
from vsl.values import FrozenMap

from ..printable import printable
from ..unqualified import qualified
from . import actions
from .conversation import Conversation, Conversations

log = logging.getLogger("vsl.policyd")

_BEFORE_MAIL = (Stage.CONNECT, Stage.HELO)
STAGES = {
    "CONNECT": (Stage.CONNECT,),
    "EHLO": _BEFORE_MAIL, "HELO": _BEFORE_MAIL,
    "MAIL": (*_BEFORE_MAIL, Stage.MAIL_FROM),
    "RCPT": (*_BEFORE_MAIL, Stage.MAIL_FROM, Stage.RCPT_TO),
    "DATA": (*_BEFORE_MAIL, Stage.MAIL_FROM, Stage.PRE_QUEUE),
    "END-OF-MESSAGE": (*_BEFORE_MAIL, Stage.MAIL_FROM, Stage.PRE_QUEUE),
}
ONE_SHOT = ("HOLD", "PREPEND")  # applied by Postfix once: a replay answers DUNNO
REQUEST_KEY = "postfix"  # ctx.get("postfix"): every attribute of the request


@dataclass
class Link:
    """One policy connection: the conversation its last request belonged to."""
    current: Conversation | None = None


class Delegation:
    """Answers the requests of every connection (see the module docstring)."""

    def __init__(self, conversations: Conversations):
        self.conversations = conversations

    async def answer(self, request: dict, link: Link) -> str:
        """The action for ``request``; an internal error or an address that is none
        answers a temporary failure."""
        try:
            return await self._answer(request, link)
        except AddressError as err:
            log.warning("not an address in a request (%s): %s", printable(str(err)),
                        actions.BAD_ADDRESS)
            return actions.BAD_ADDRESS
        except Exception:  # noqa: BLE001 - a bug answers a deferral, never a crash
            log.exception("internal error answering a policy request")
            return actions.TEMPORARY_FAILURE

    async def _answer(self, request: dict, link: Link) -> str:
        state = request.get("protocol_state", "").upper()
        stages = STAGES.get(state)
        if request.get("request") != "smtpd_access_policy" or stages is None:
            return actions.DUNNO
        client = (request.get("client_address", ""), request.get("client_port", ""))
        instance = request.get("instance", "")
        conversation = self.conversations.find(instance, client, link.current)
        link.current = conversation
        self._follow(conversation, state, instance, request.get("helo_name", ""))
        if instance:
            self.conversations.bind(conversation, instance)
        describe(conversation.ctx, request)
        return await self._decide(conversation, stages, state, request)

    def _follow(self, conversation: Conversation, state: str, instance: str,
                helo: str) -> None:
        """End the message when the request says another began: MAIL again, another
        instance, or HELO with another name (then on_helo runs again too)."""
        new_helo = state in ("EHLO", "HELO") and Stage.HELO in conversation.decided and \
            helo != (conversation.ctx.helo or "")
        new_mail = state == "MAIL" and Stage.MAIL_FROM in conversation.decided
        new_instance = bool(instance) and conversation.instance not in ("", instance)
        if new_helo or new_mail or new_instance:
            self.conversations.new_message(conversation)
        if new_helo:
            del conversation.decided[Stage.HELO]

    async def _decide(self, conversation: Conversation, stages: tuple[Stage, ...],
                      state: str, request: dict) -> str:
        """Run the stages not run yet; the first refusal, else a HOLD, else the last
        stage's action."""
        decided = []
        for stage in stages:
            if stage == Stage.HELO and not conversation.ctx.helo:
                continue  # no HELO yet (smtpd_helo_required = no)
            key = (stage, request.get("recipient", "").lower()) \
                if stage == Stage.RCPT_TO else stage
            if key in conversation.decided:
                action = conversation.decided[key]
                action = actions.DUNNO if action.startswith(ONE_SHOT) else action
            else:
                action = await self._run(conversation, stage, state, request)
                conversation.decided[key] = action
            if actions.is_refusal(action):
                return action
            decided.append(action)
        return next((a for a in decided if a.startswith("HOLD")), decided[-1])

    async def _run(self, conversation: Conversation, stage: Stage, state: str,
                   request: dict) -> str:
        """Run one stage on the request's data: its action."""
        ctx, runner = conversation.ctx, conversation.runner
        if stage == Stage.MAIL_FROM:
            ctx.begin_transaction(qualified(request.get("sender", ""), ctx.server_name),
                                  request.get("queue_id") or request.get("instance") or None)
        elif stage == Stage.RCPT_TO:
            ctx.add_recipient(qualified(request.get("recipient", ""), ctx.server_name))
        elif stage == Stage.PRE_QUEUE:
            ctx.message = Message(b"")
        quarantined = runner.quarantine
        status = await runner.run(ctx, stage)
        if status.kind == "deny":
            if stage == Stage.RCPT_TO:
                ctx.drop_recipient()
            log.info("%s: %s refused: %s; decided_by=%s", printable(ctx.client_ip), state,
                     printable(status.reply.replace("\n", " ")), runner.decider(stage))
            return actions.refusal(status.reply)
        if runner.quarantine and runner.quarantine != quarantined:
            action = actions.hold(runner.quarantine)
        elif status.kind in ("accept", "faccept"):
            action = actions.OK
        else:
            action = actions.DUNNO
        if stage == Stage.PRE_QUEUE:
            action = header_action(ctx.message, action, state)
        return action


def describe(ctx: Context, request: dict) -> None:
    """What the request tells of the session, in ``ctx`` as the SMTP server sets it."""
    ctx.helo = request.get("helo_name") or ctx.helo
    ctx.tls = bool(request.get("encryption_protocol"))
    if request.get("sasl_username"):
        ctx.set_auth(request.get("sasl_method", "").upper(), request["sasl_username"])
    ctx.server_ip = request.get("server_address", ctx.server_ip)
    port = request.get("server_port", "")
    ctx.server_port = int(port) if port.isdigit() else ctx.server_port
    if ctx.message_id is not None and request.get("queue_id"):
        ctx.message_id = request["queue_id"]
    ctx.store(REQUEST_KEY, FrozenMap(request))


def header_action(message: Message, action: str, state: str) -> str:
    """The headers on_pre_queue added, as a PREPEND when the stage decided nothing else;
    Postfix takes one per request and none after the message (END-OF-MESSAGE)."""
    fields = list(message.fields())
    usable = action == actions.DUNNO and state == "DATA"
    for name, _ in fields[1 if usable else 0:]:
        log.warning("header %s not added: %s", printable(name),
                    "a request's reply prepends one header" if usable else
                    f"on_pre_queue answered {action} at {state}")
    if usable and fields:
        return actions.prepend(*fields[0])
    return action
