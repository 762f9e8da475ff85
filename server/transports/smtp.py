"""SMTP relay routes (``smtp://`` with STARTTLS as ``tls=`` says, ``smtps://``), and the
mail transaction that SMTP and LMTP clients share."""
from __future__ import annotations

import re

import aiosmtplib
from aiosmtplib import (SMTPException, SMTPResponseException, SMTPServerDisconnected,
                        SMTPTimeoutError)

from vsl.stdlib.transport import ROUTE_KINDS, Route

from .base import Setup
from .outcome import Busy, Outcome, Unreachable, detail, outcome
from .pool import Pool, SessionKind


class SmtpRelay:
    """smtp:// and smtps:// routes: one session (the relay's login, if the credentials
    file has one and the route says tls=verify); an unreachable relay defers."""

    def __init__(self, setup: Setup):
        self.pool = setup.pool

    async def deliver(self, route: Route, sender: str, recipients: list[str],
                      data: bytes, plaintext_fallback: bool = False) -> dict[str, Outcome]:
        kind = SessionKind(ROUTE_KINDS[route.kind].implicit_tls, route.tls, may_log_in=True,
                           plaintext_fallback=plaintext_fallback)
        try:
            return await send_over_session(self.pool, route.host, route.port, kind,
                                           route.host, sender, recipients, data)
        except (Unreachable, Busy) as err:
            return dict.fromkeys(recipients, err.outcome)


async def send_over_session(pool: Pool, host: str, port: int, kind: SessionKind,
                            remote: str, sender: str, recipients: list[str],
                            data: bytes) -> dict[str, Outcome]:
    """One :func:`transaction` over a pooled session to host:port (Unreachable when none
    can be opened, Busy when the pool has none free there); ``remote`` is the name the
    outcomes give the server."""
    async with pool.session(host, port, kind) as smtp:
        return await transaction(SmtpClient(smtp), sender, recipients, data, remote)


class SmtpClient:
    """aiosmtplib's client with the interface :func:`transaction` uses (as LMTP's has)."""

    def __init__(self, smtp: aiosmtplib.SMTP):
        self.smtp = smtp

    def supports(self, extension: str) -> bool:
        return self.smtp.supports_extension(extension)

    async def command(self, *args: str) -> tuple[int, str]:
        reply = await self.smtp.execute_command(*(a.encode() for a in args))
        return reply.code, reply.message

    async def message(self, data: bytes, count: int) -> list[tuple[int, str]]:
        """The message after DATA's 354, and the reply to its end, once for each of the
        ``count`` recipients (an SMTP server answers the end of DATA once for all).
        aiosmtplib's ``data()`` sends DATA itself and raises one error for a refused DATA
        and a refused message, so the message is written on its protocol here; a reply
        it cannot read is its code -1, and a lost or silent connection is closed, as
        ``data()`` does."""
        protocol = self.smtp.protocol
        if protocol is None:
            raise SMTPServerDisconnected("Connection lost")
        try:
            protocol.write(dot_stuffed(data))
            reply = await protocol.read_response(timeout=self.smtp.timeout)
        except SMTPResponseException as err:
            return [(err.code, err.message)] * count
        except (SMTPServerDisconnected, SMTPTimeoutError):
            self.smtp.close()
            raise
        if reply.code == 421:  # the server closes the session
            self.smtp.close()
        return [(reply.code, reply.message)] * count

    async def abandon(self) -> None:
        """End the session: the server answered in a way that leaves its state unknown."""
        self.smtp.close()


async def transaction(client, sender: str, recipients: list[str], data: bytes,
                      remote: str) -> dict[str, Outcome]:
    """MAIL, RCPT for each recipient, DATA; a lost connection or a timeout defers every
    recipient without an answer yet."""
    outcomes: dict[str, Outcome] = {}
    if not all(a.isascii() for a in (sender, *recipients)) and not client.supports("smtputf8"):
        return dict.fromkeys(recipients, Outcome(
            "failed", "553 5.6.7 the remote server does not support SMTPUTF8", remote))
    try:
        code, text = await client.command("MAIL", *_mail_args(client, sender, recipients,
                                                              data))
        if code // 100 != 2:  # any 2xx goes on, as in Postfix (no 2xx may say delivered)
            return dict.fromkeys(recipients, outcome(code, text, remote, "MAIL FROM"))
        accepted = []
        for rcpt in recipients:
            code, text = await client.command("RCPT", f"TO:<{rcpt}>")
            if code // 100 == 2:
                accepted.append(rcpt)
            else:
                outcomes[rcpt] = outcome(code, text, remote, "RCPT TO")
        if not accepted:
            await client.command("RSET")
            return outcomes
        code, text = await client.command("DATA")
        if code // 100 == 2:  # no message was sent (it had counted as delivered), and the
            await client.abandon()  # server may be reading one: a reply out of place
            code, text = 451, f"4.4.2 unexpected reply to DATA: {code} {text}"
        if code // 100 != 3:
            return outcomes | dict.fromkeys(accepted, outcome(code, text, remote, "DATA"))
        for rcpt, (code, text) in zip(accepted, await client.message(data, len(accepted))):
            outcomes[rcpt] = outcome(code, text, remote, "end of DATA")
    except (SMTPException, OSError) as err:
        lost = Outcome("deferred", f"451 4.4.2 lost connection with {remote}: "
                                   f"{detail(err)}", remote)
        return {rcpt: outcomes.get(rcpt, lost) for rcpt in recipients}
    return outcomes


def _mail_args(client, sender: str, recipients: list[str], data: bytes) -> list[str]:
    args = [f"FROM:<{sender}>"]
    if client.supports("size"):
        args.append(f"SIZE={len(data)}")
    if not data.isascii() and client.supports("8bitmime"):
        args.append("BODY=8BITMIME")
    if not all(a.isascii() for a in (sender, *recipients)):
        args.append("SMTPUTF8")
    return args


def dot_stuffed(data: bytes) -> bytes:
    """Message bytes as sent after DATA: CRLF line ends, leading dots doubled, the final
    ``.`` line."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", data) + b".\r\n"
