"""Delivery status notifications (RFC 3464): the bounce sent back to a message's sender,
and the warning that a message is delayed.

    data = build_dsn("mx.example.com", envelope, failed_recipients, original_bytes)
    data = build_dsn("mx.example.com", envelope, deferred_recipients, original_bytes,
                     retry_until=envelope.received_at + max_age)

The result is a ``multipart/report; report-type=delivery-status`` message: a
human-readable part, the ``message/delivery-status`` fields (one block for the message,
one per recipient: Final-Recipient, Action (failed or delayed), Status, Diagnostic-Code,
Remote-MTA, Will-Retry-Until for a delay, and vSL's own ``X-Vsl-Bounce-Reason``: why the
bounce classifier thinks the reply refused the recipient, e.g.
``X-Vsl-Bounce-Reason: mailboxfull; confidence=0.93``, when it was classified), and the
original message's header (``text/rfc822-headers``).
"""
from __future__ import annotations

import email.policy
import re
import time
from email.charset import QP, Charset
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate, make_msgid

from .envelope import Envelope, RecipientState

_ENHANCED = re.compile(r"^\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})\b")
_FIELD_LIMIT = 900  # characters of a delivery-status field (lines stay under 998)
_NOT_ASCII = re.compile(r"[^\x20-\x7e]")
_XTEXT = re.compile(r"[^\x21-\x7e]|[\\+=]")  # RFC 6533 utf-8-addr-xtext: what is escaped


def status_code(recipient: RecipientState) -> str:
    """The RFC 3463 status of a failed recipient: 4.4.7 when it expired, else the
    enhanced code of its last reply (or X.0.0 from the reply code)."""
    if recipient.expired:
        return "4.4.7"
    reply = recipient.reply or "554"
    found = _ENHANCED.match(reply)
    return found.group(1) if found else f"{'4' if reply[:1] == '4' else '5'}.0.0"


def build_dsn(hostname: str, envelope: Envelope, recipients: list[RecipientState],
              original: bytes,
              now: float | None = None, retry_until: float | None = None) -> bytes:
    """The DSN (CRLF line ends) telling ``envelope.sender`` that ``recipients``
    (records of the envelope) could not be delivered; with ``retry_until``, that they are
    delayed and will be tried until then."""
    now = time.time() if now is None else now
    sender = envelope.sender
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    report["To"] = sender
    report["Subject"] = "Undelivered Mail Returned to Sender" if retry_until is None else \
        "Delayed Mail (still being retried)"
    report["Date"] = formatdate(now, localtime=True)
    report["Message-ID"] = make_msgid("dsn", hostname)
    report["Auto-Submitted"] = "auto-replied"
    header = original.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    for part in (_text(_explanation(hostname, recipients, retry_until), "plain"),
                 _status_part(hostname, envelope, recipients, retry_until),
                 _text(header + "\r\n", "rfc822-headers")):
        del part["MIME-Version"]
        report.attach(part)
    policy = email.policy.SMTP if sender.isascii() else email.policy.SMTPUTF8
    return report.as_bytes(policy=policy.clone(max_line_length=998))


def _text(text: str, subtype: str) -> MIMEText:
    """A text part: 7bit when ASCII, else quoted-printable UTF-8 (readable either way)."""
    if text.isascii():
        return MIMEText(text, subtype, "us-ascii")
    charset = Charset("utf-8")
    charset.body_encoding = QP
    return MIMEText(text, subtype, charset)


def _explanation(hostname: str, recipients: list[RecipientState],
                 retry_until: float | None) -> str:
    what = "Your message could not be delivered to the following recipients." \
        if retry_until is None else \
        ("Your message could not be delivered yet to the following recipients. It will be "
         f"tried again until {formatdate(retry_until, localtime=True)}; you need not send "
         "it again.")
    lines = [f"This is the mail system at {hostname}.", "", what, ""]
    for rcpt in recipients:
        why = rcpt.reply or "unknown error"
        if rcpt.expired:
            why = f"delivery time expired; last error: {why}"
        lines.append(f"<{rcpt.address}>: {why}"[:_FIELD_LIMIT])
    lines += ["", "The header of your message is attached."]
    return "\n".join(lines) + "\n"


def _status_part(hostname: str, envelope: Envelope, recipients: list[RecipientState],
                 retry_until: float | None) -> MIMEBase:
    per_message = _fields({"Reporting-MTA": f"dns; {hostname}",
                           "X-Queue-ID": envelope.id,
                           "Arrival-Date": formatdate(envelope.received_at, localtime=True)
                           if envelope.received_at is not None else None})
    blocks = [per_message]
    for rcpt in recipients:
        address = rcpt.address
        kind = "rfc822" if address.isascii() else "utf-8"  # RFC 6533
        reply, remote = rcpt.reply, rcpt.remote_mta
        blocks.append(_fields({
            "Final-Recipient": f"{kind}; {address}",
            "Action": "failed" if retry_until is None else "delayed",
            "Status": status_code(rcpt) if retry_until is None else
            _transient(status_code(rcpt)),
            "Remote-MTA": f"dns; {remote}" if remote else None,
            "Diagnostic-Code": f"{'smtp' if remote else 'X-vSL'}; {reply}" if reply else None,
            "Will-Retry-Until": None if retry_until is None else
            formatdate(retry_until, localtime=True),
            "X-Vsl-Bounce-Reason": _reason(rcpt),
        }))
    part = MIMEBase("message", "delivery-status")
    part.set_payload(blocks)
    return part


def _reason(recipient: RecipientState) -> str | None:
    """The X-Vsl-Bounce-Reason field's value, when the recipient's reply was classified."""
    if not recipient.reason:
        return None
    if recipient.reason_confidence is None:
        return recipient.reason
    return f"{recipient.reason}; confidence={recipient.reason_confidence:.2f}"


def _transient(status: str) -> str:
    """A delayed recipient's status is a 4.x.x one (RFC 3464 2.3.4)."""
    return status if status.startswith("4") else "4.0.0"


def _fields(values: dict) -> Message:
    """A block of delivery-status fields, ASCII as message/delivery-status is: a ``utf-8``
    address in RFC 6533's utf-8-addr-xtext (``\\x{HEX}``), any other character that is
    not ASCII (a remote's reply in French) '?', as Postfix's printable() writes it."""
    block = Message()
    for name, value in values.items():
        if value is not None:
            text = " ".join(str(value).split())[:_FIELD_LIMIT]
            if text.startswith("utf-8; "):
                text = "utf-8; " + _XTEXT.sub(lambda c: f"\\x{{{ord(c.group()):X}}}", text[7:])
            block[name] = _NOT_ASCII.sub("?", text)
    return block
