"""A stage's :class:`Status` as the milter response the MTA acts on."""
from __future__ import annotations

import re
from typing import ClassVar

import attrs
from purepythonmilter.protocol import responses

from vsl.stdlib.status import Status

# what a milter answers when vSL itself failed (a bug, never the script: that is the
# policy's fallback reply); no detail reaches the SMTP client
INTERNAL_ERROR = "451 4.3.0 Error: internal error"
_LINE_BREAK = re.compile(r"\r?\n")


@attrs.define(auto_attribs=False, kw_only=True)
class SmtpReply(responses.AbstractVerdict):
    """SMFIR_REPLYCODE with a whole SMTP reply (``550 5.7.1 text``, or several lines as
    ``550-5.7.1 one`` CRLF ``550 5.7.1 two``): the MTA rejects (5xx) or defers (4xx) the
    command with exactly this text."""

    response_char: ClassVar[bytes] = b"y"
    reply: str = attrs.field()

    def encode(self) -> bytes:
        text = _LINE_BREAK.sub("\r\n", self.reply)
        return self.response_char + text.encode("utf-8", "surrogateescape") + b"\x00"


@attrs.define(auto_attribs=False, kw_only=True)
class Quarantine(responses.AbstractManipulation):
    """SMFIR_QUARANTINE: the MTA holds the message (Postfix: its hold queue; the reason
    is only logged). purepythonmilter's own class cannot be encoded."""

    response_char: ClassVar[bytes] = b"q"
    reason: str = attrs.field()

    def encode(self) -> bytes:
        return self.response_char + self.reason.encode("utf-8", "surrogateescape") + b"\x00"


def verdict(status: Status) -> responses.AbstractResponse:
    """The answer to a stage that did not deny (a deny is refused with its reply by the
    session, which logs it): ``faccept`` accepts the message (or the connection, before
    MAIL) without asking again; anything else goes on."""
    if status.kind == "faccept":
        return responses.Accept()
    return responses.Continue()
