"""aiosmtpd's own protocol replies in Postfix's words (Postfix 3.7, src/smtpd/smtpd.c and
smtpd_sasl_proto.c): code, enhanced status code and text, so a site moving from Postfix
sees the same replies (docs/migrate.md, "Differences", lists what still differs).

aiosmtpd has no hook for these replies, so :func:`postfix_words` rewords them on their
way out, knowing the command and argument they answer (a malformed address is the
sender's at MAIL, the recipient's at RCPT; Postfix names the option it does not
support). Replies not listed keep their text and get a generic enhanced code
(``server.protocol.enhance``).
"""
from __future__ import annotations

import re

UNKNOWN_COMMAND = "500 5.5.2 Error: command not recognized"
TOO_MANY_RECIPIENTS = "452 4.5.3 Error: too many recipients"
_UNKNOWN = re.compile(r"500 Error: command [\"'][^\"']*[\"'] not recognized")

_ANY_COMMAND = {
    "503 Error: send HELO first": "503 5.5.1 Error: send HELO/EHLO first",
    "503 Error: send EHLO first": "503 5.5.1 Error: send HELO/EHLO first",
    "503 Error: nested MAIL command": "503 5.5.1 Error: nested MAIL command",
    "501 Syntax: MAIL FROM: <address>": "501 5.5.4 Syntax: MAIL FROM:<address>",
    "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]":
        "501 5.5.4 Syntax: MAIL FROM:<address>",
    "501 Syntax: RCPT TO: <address>": "501 5.5.4 Syntax: RCPT TO:<address>",
    "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]":
        "501 5.5.4 Syntax: RCPT TO:<address>",
    "552 Error: message size exceeds fixed maximum message size":
        "552 5.3.4 Message size exceeds fixed limit",
    "552 Error: Too much mail data": "552 5.3.4 Error: message file too big",
    "250 OK": "250 2.0.0 Ok",
    "221 Bye": "221 2.0.0 Bye",
    "454 TLS not available": "502 5.5.1 Error: command not implemented",
    "220 Ready to start TLS": "220 2.0.0 Ready to start TLS",
    "503 Already authenticated": "503 5.5.1 Error: already authenticated",
    "501 Not enough value": "501 5.5.4 Syntax: AUTH mechanism",
    "501 Too many values": "501 5.5.4 Syntax: AUTH mechanism",
    "501 5.7.0 Auth aborted": "501 5.7.0 Authentication aborted",
}
_UNSUPPORTED = ("555 MAIL FROM parameters not recognized or not implemented",
                "555 RCPT TO parameters not recognized or not implemented")
_MAIL_SYNTAX = "501 5.5.4 Syntax: MAIL FROM:<address>"
_MAIL_PARAMETERS = {"BODY", "SMTPUTF8", "SIZE"}  # what vSL's MAIL takes (aiosmtpd's)
_BAD_ADDRESS = "553 5.1.3 Error: malformed address"
_BAD_ADDRESS_OF = {"MAIL": "501 5.1.7 Bad sender address syntax",
                   "RCPT": "501 5.1.3 Bad recipient address syntax"}


def postfix_words(reply: str, command: str | None, argument: str | None) -> str:
    """``reply``, an answer to ``command`` (``MAIL``, ``RCPT``, ...) with ``argument``,
    as Postfix says it."""
    if reply == _BAD_ADDRESS and command in _BAD_ADDRESS_OF:
        return _BAD_ADDRESS_OF[command]
    if _UNKNOWN.fullmatch(reply):
        return UNKNOWN_COMMAND
    if reply in _UNSUPPORTED:
        return f"555 5.5.4 Unsupported option: {_unsupported(command, argument)}"
    reply = _ANY_COMMAND.get(reply, reply)
    if reply == _MAIL_SYNTAX and _bad_size(argument):
        return "501 5.5.4 Bad message size syntax"
    return reply


def _parameters(argument: str | None) -> list[str]:
    """The ESMTP parameters after the address of a MAIL or RCPT argument."""
    _, _, rest = (argument or "").partition(">")
    return rest.split()


def _unsupported(command: str | None, argument: str | None) -> str:
    """The first parameter vSL does not take (RCPT takes none)."""
    taken = _MAIL_PARAMETERS if command == "MAIL" else set()
    return next((p for p in _parameters(argument)
                 if p.partition("=")[0].upper() not in taken), "")


def _bad_size(argument: str | None) -> bool:
    """Whether a MAIL argument's SIZE= is not a number."""
    return any(p.upper().startswith("SIZE=") and not (p[5:].isascii() and p[5:].isdigit())
               for p in _parameters(argument))
