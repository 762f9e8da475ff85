"""What delivery to one recipient came to (:class:`Outcome`), and the words for what went
wrong on the way (:func:`detail`, :class:`Unreachable`)."""
from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass

from ..printable import marked

_STATUS = {"2": "delivered", "4": "deferred", "5": "failed"}
_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)")


@dataclass(frozen=True)
class Outcome:
    """One recipient's result: status delivered/deferred/failed, the reply (the remote
    server's, or one made up for a local problem), the remote MTA that gave it and the
    SMTP command it answered (``RCPT TO``, ``end of DATA``...; "" when none did). Status
    ``postponed``: not tried, the destination was busy (:class:`Busy`); no attempt."""

    status: str
    reply: str
    remote_mta: str | None = None
    command: str = ""


def outcome(code: int, text: str, remote: str | None = None, command: str = "") -> Outcome:
    """The Outcome of an SMTP reply to ``command``. A code outside 2xx/4xx/5xx (aiosmtplib's
    -1 for a reply it cannot read) is deferred: what the remote did is not known. The
    text is kept printable, as Postfix keeps it: control characters and bytes that are not
    UTF-8 become '?' (they reach logs, ``vsl queue show`` and the sender's DSN)."""
    text = marked(" ".join(text.split()))
    status = _STATUS.get(str(code)[:1])
    if status is None:
        return Outcome("deferred", f"451 4.4.2 unreadable reply: {text}", remote, command)
    return Outcome(status, f"{code} {text}", remote, command)


def detail(err: BaseException | str) -> str:
    """An error's text on one line (aiosmtplib errors: the server's code and reply)."""
    code = getattr(err, "code", None)
    cause = getattr(err, "__cause__", None)  # aiosmtplib wraps the OSError
    if isinstance(cause, ssl.SSLError):  # its errno says nothing ("Operation not permitted")
        err, cause = cause, None
    text = os.strerror(cause.errno) if isinstance(cause, OSError) and cause.errno else \
        " ".join(str(getattr(err, "message", "") or err).split()) or type(err).__name__
    text = marked(_SSL_SOURCE.sub("", text))  # "... (_ssl.c:1006)": where in CPython, not why
    return f"{code} {text}" if isinstance(code, int) and code >= 400 else text


POSTPONED = Outcome("postponed", "")


class Busy(Exception):
    """Every session that ``destination_concurrency`` allows to host:port is in use:
    the recipients are not tried now (``POSTPONED``), and the message gives its delivery
    slot to other mail instead of waiting in it."""

    outcome = POSTPONED


class Unreachable(Exception):
    """No session could be opened (connection, greeting, EHLO, TLS, AUTH): try the next
    host. Deferred, like Postfix, whatever the server said."""

    def __init__(self, where: str, err: BaseException | str):
        super().__init__(where)
        self.outcome = Outcome("deferred", f"451 4.4.1 cannot deliver to {where}: "
                                           f"{detail(err)}")
