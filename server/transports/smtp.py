"""SMTP relay routes (``smtp://`` with STARTTLS as ``tls=`` says, ``smtps://``), and the
mail transaction that SMTP and LMTP clients share."""
from __future__ import annotations

from aiosmtplib import SMTPException

from vsl.stdlib.transport import ROUTE_KINDS, Route

from .base import Setup
from .outcome import Outcome, Unreachable, detail, outcome
from .pool import Pool, SessionKind


class SmtpRelay:
    """smtp:// and smtps:// routes: one session (the relay's login, if the credentials
    file has one and the route says tls=verify); an unreachable relay defers."""

    def __init__(self, setup: Setup):
        self.pool = setup.pool

    async def deliver(self, route: Route, sender: str, recipients: list[str],
                      data: bytes) -> dict[str, Outcome]:
        kind = SessionKind(ROUTE_KINDS[route.kind].implicit_tls, route.tls, may_log_in=True)
        try:
            return await send_over_session(self.pool, route.host, route.port, kind,
                                           route.host, sender, recipients, data)
        except Unreachable as err:
            return dict.fromkeys(recipients, err.outcome)


async def send_over_session(pool: Pool, host: str, port: int, kind: SessionKind,
                            remote: str, sender: str, recipients: list[str],
                            data: bytes) -> dict[str, Outcome]:
    """One :func:`transaction` over a pooled session to host:port (Unreachable when none
    can be opened); ``remote`` is the name the outcomes give the server."""
    async with pool.session(host, port, kind) as client:
        return await transaction(client, sender, recipients, data, remote)


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
        for rcpt, (code, text) in zip(accepted, await client.data(data, len(accepted))):
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
