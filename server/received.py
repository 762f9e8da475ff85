"""The ``Received:`` trace header every accepted message gets (RFC 5321 §4.4, RFC 3848)."""
from __future__ import annotations

import functools
import time
from datetime import datetime
from email.utils import format_datetime, localtime


def protocol(extended: bool, tls: bool, authenticated: bool, utf8: bool = False) -> str:
    """The "with" keyword: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA (UTF8 variants too)."""
    if not extended:
        return "SMTP"
    name = ("UTF8SMTP" if utf8 else "ESMTP") + ("S" if tls else "") + ("A" if authenticated
                                                                       else "")
    return name


def received(helo: str | None, client_ip: str, reverse_name: str | None, server_name: str,
             proto: str, msg_id: str, recipients: list[str]) -> bytes:
    """A complete, folded ``Received:`` field, ending with CRLF."""
    client = f"{reverse_name} [{client_ip}]" if reverse_name else f"[{client_ip}]"
    parts = [f"from {_clean(helo) or 'unknown'} ({client})", f"by {server_name}",
             f"with {proto}", f"id {msg_id}"]
    if len(recipients) == 1:
        parts.append(f"for <{_clean(recipients[0])}>")
    text = "Received: " + "\r\n\t".join(parts) + ";\r\n\t" + _date(int(time.time()))
    return text.encode("utf-8", "surrogateescape") + b"\r\n"


@functools.lru_cache(maxsize=1)
def _date(second: int) -> str:
    """The RFC 5322 date of a second, in local time (once per second, not per message)."""
    return format_datetime(localtime(datetime.fromtimestamp(second)))


def _clean(text: str | None) -> str:
    """Keep client-supplied text from breaking the header (no CR, LF, ';' or parentheses)."""
    if not text:
        return ""
    return "".join(c for c in text if c.isprintable() and c not in "();")[:255]
