"""From a raw bounce message to what the classifier reads.

Design: only the structure the standards define is recognised here, never the wording of
a reason. A message is one of four kinds:

- ``dsn``: RFC 3464 ``multipart/report; report-type=delivery-status``; one ``Recipient``
  per per-recipient block (Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code);
- ``feedback``: an RFC 5965 ARF report (a ``message/feedback-report`` part);
- ``autoreply``: RFC 3834 ``Auto-Submitted: auto-replied`` (or the older ``X-Autoreply`` /
  ``Precedence: auto_reply`` marks);
- ``plain``: any other bounce; its human-readable text up to the returned original
  message is the diagnostic.

A bare reply line (``452 4.2.2 Mailbox full``, what delivery gets) is read by
:func:`as_bounce` as the one-recipient RFC 3464 report it would be reported in.

From the diagnostic text the SMTP reply code (RFC 5321), the enhanced status code
(RFC 3463) and the SMTP phase the error came at are picked with simple anchored patterns.
Work is bounded: the input is cut at ``MAX_MESSAGE`` bytes, at most ``MAX_PARTS`` MIME parts
are walked and each text kept is cut at ``MAX_TEXT`` characters; the patterns have no nested
quantifiers, so they run in linear time.
"""
from __future__ import annotations

import email
import email.header
import email.policy
import re
from dataclasses import dataclass, field

MAX_MESSAGE = 256 * 1024
MAX_PARTS = 64
MAX_TEXT = 4000
MAX_RECIPIENTS = 100
PLAIN_DIAGNOSTIC = 600

REPLY_CODE = re.compile(r"(?<![\d.])([245][0-5]\d)(?=[ \-\t]|$)", re.M)
ENHANCED_CODE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
ADDRESS = re.compile(r"[\w.+=\-]{1,64}@[\w\-]{1,63}(?:\.[\w\-]{1,63}){0,8}")
# The SMTP commands of RFC 5321 (and RFC 3207 / 4954), and the two moments with no command.
PHASES = (("rcpt", re.compile(r"\bRCPT\b", re.I)),
          ("mail", re.compile(r"\bMAIL\s{0,3}FROM\b", re.I)),
          ("data", re.compile(r"\b(?:DATA|end of data|message body)\b", re.I)),
          ("helo", re.compile(r"\b(?:HELO|EHLO|LHLO|greeting)\b", re.I)),
          ("starttls", re.compile(r"\bSTARTTLS\b", re.I)),
          ("auth", re.compile(r"\bAUTH\b")),
          ("connect", re.compile(r"\bconnect(?:ion|ed|ing)?\b", re.I)))
# A line that starts the returned original message's header block (RFC 5322 fields).
ORIGINAL_HEADERS = re.compile(
    r"^(?:Received|Return-Path|DKIM-Signature|Message-I[Dd]|MIME-Version|X-Received"
    r"|Authentication-Results|Delivered-To):[ \t]", re.M)
AUTOREPLY_PRECEDENCE = ("auto_reply", "auto-reply")
# A header field's first line (RFC 5322 §2.2: a name of printable characters but ':').
HEADER_FIELD = re.compile(r"[!-9;-~]{1,76}:")


@dataclass
class Recipient:
    """One failed (or delayed, delivered...) recipient of a bounce."""

    address: str = ""
    action: str = ""
    status: str = ""
    reply_code: str = ""
    remote_mta: str = ""
    diagnostic: str = ""
    phase: str = ""


@dataclass
class Bounce:
    """What a bounce message says: its kind, subject, readable text and recipients."""

    kind: str
    subject: str = ""
    text: str = ""
    recipients: list[Recipient] = field(default_factory=list)

    @property
    def first(self) -> Recipient:
        """The first recipient (an empty one when none was found)."""
        return self.recipients[0] if self.recipients else Recipient()


def parse(raw: bytes | str) -> Bounce:
    """Parses a raw RFC 5322 message (bytes or str) into a ``Bounce``; never raises on
    malformed input."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    msg = email.message_from_bytes(raw[:MAX_MESSAGE], policy=email.policy.compat32)
    parts = _parts(msg)
    subject = _unfold(_decoded_header(msg.get("Subject", "")))[:300]
    text = _readable_text(parts)
    recipients = _dsn_recipients(parts)
    kind = _kind(msg, parts, bool(recipients))
    if not recipients:
        recipients = _plain_recipients(text)
    for rcpt in recipients:
        _fill_codes(rcpt, rcpt.diagnostic or text)
    return Bounce(kind=kind, subject=subject, text=text, recipients=recipients)


def is_message(text: str) -> bool:
    """Whether ``text`` starts with a header block ended by a blank line (a message),
    rather than being a bare reply or diagnostic such as ``550 5.1.1 no such user``."""
    head, blank, _ = text[:MAX_TEXT].replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    return bool(blank) and all(HEADER_FIELD.match(line) or line[:1] in (" ", "\t")
                               for line in lines) and bool(HEADER_FIELD.match(lines[0]))


def _parts(msg) -> list:
    """The message's MIME parts in order, at most MAX_PARTS, not entering a returned
    ``message/rfc822`` original."""
    found, stack = [], [msg]
    while stack and len(found) < MAX_PARTS:
        part = stack.pop()
        found.append(part)
        ctype = part.get_content_type()
        if part.is_multipart() and ctype not in ("message/rfc822", "message/delivery-status",
                                                 "message/global-delivery-status"):
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(reversed(payload))
    return found


def _kind(msg, parts, has_dsn: bool) -> str:
    types = {part.get_content_type() for part in parts}
    if "message/feedback-report" in types:
        return "feedback"
    if has_dsn:
        return "dsn"
    auto = msg.get("Auto-Submitted", "").strip().lower()
    precedence = msg.get("Precedence", "").strip().lower()
    if auto.startswith("auto-replied") or msg.get("X-Autoreply") or \
            precedence in AUTOREPLY_PRECEDENCE:
        return "autoreply"
    return "plain"


def _readable_text(parts) -> str:
    """The human-readable text parts, up to the returned original message."""
    chunks, size = [], 0
    for part in parts:
        readable = part.get_content_type() in ("text/plain", "text/html")
        if not (readable or _is_broken_multipart(part)) or \
                part.get_content_disposition() == "attachment":
            continue
        text = _decoded_payload(part)
        if part.get_content_type() == "text/html":
            text = _strip_tags(text)
        cut = ORIGINAL_HEADERS.search(text)
        text = text[:cut.start()] if cut else text
        chunks.append(text[:MAX_TEXT - size])
        size += len(chunks[-1])
        if size >= MAX_TEXT:
            break
    return "\n".join(chunks)


def _dsn_recipients(parts) -> list[Recipient]:
    """The per-recipient blocks of every delivery-status part."""
    recipients = []
    for part in parts:
        if part.get_content_type() not in ("message/delivery-status",
                                           "message/global-delivery-status") \
                and not _is_broken_multipart(part):
            continue
        for block in _status_blocks(part):
            rcpt = _recipient_from_block(block)
            if rcpt and len(recipients) < MAX_RECIPIENTS:
                recipients.append(rcpt)
    return recipients


def _is_broken_multipart(part) -> bool:
    """A multipart whose boundary the parser could not find: its body is kept as text."""
    return part.get_content_maintype() == "multipart" and isinstance(part.get_payload(), str)


def _status_blocks(part) -> list:
    """The field blocks of a delivery-status part, whether the parser split them or not."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return payload
    if isinstance(payload, str):
        text = payload[:MAX_MESSAGE].replace("\r\n", "\n")
        return [email.message_from_string(block.strip() + "\n", policy=email.policy.compat32)
                for block in text.split("\n\n") if block.strip()]
    return []


def _recipient_from_block(block) -> Recipient | None:
    address = block.get("Final-Recipient") or block.get("Original-Recipient")
    if not address:
        return None
    return Recipient(address=_after_type(address),
                     action=_unfold(block.get("Action", "")).lower(),
                     status=_enhanced(block.get("Status", "")),
                     remote_mta=_after_type(block.get("Remote-MTA", "")),
                     diagnostic=_after_type(block.get("Diagnostic-Code", ""))[:MAX_TEXT])


def _plain_recipients(text: str) -> list[Recipient]:
    """Addresses a non-DSN bounce names, each with the text that follows it as diagnostic."""
    recipients, seen = [], set()
    for match in ADDRESS.finditer(text):
        address = match.group(0).strip(".").lower()
        if address in seen or len(recipients) >= MAX_RECIPIENTS:
            continue
        seen.add(address)
        following = text[match.end():match.end() + PLAIN_DIAGNOSTIC]
        recipients.append(Recipient(address=address, diagnostic=" ".join(following.split())))
    return recipients


def _fill_codes(rcpt: Recipient, context: str) -> None:
    """Sets the reply code, the missing enhanced code and the phase from the text."""
    context = context[:MAX_TEXT]
    reply = REPLY_CODE.search(context)
    rcpt.reply_code = reply.group(1) if reply else ""
    if not rcpt.status:
        rcpt.status = _enhanced(context)
    rcpt.phase = next((name for name, pattern in PHASES if pattern.search(context)), "")


def _enhanced(text: str) -> str:
    match = ENHANCED_CODE.search(text or "")
    return ".".join(match.groups()) if match else ""


def _after_type(value: str) -> str:
    """A DSN field's value without its ``type;`` prefix (``rfc822;``, ``smtp;``, ``dns;``)."""
    value = _unfold(value)
    kind, sep, rest = value.partition(";")
    return rest.strip() if sep and len(kind) <= 12 and " " not in kind.strip() else value


def _unfold(value) -> str:
    return " ".join(str(value).split())


def _decoded_header(value) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(str(value))))
    except (ValueError, LookupError, UnicodeError):
        return str(value)


def _decoded_payload(part) -> str:
    data = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return data[:MAX_MESSAGE].decode(charset, "replace")
    except LookupError:
        return data[:MAX_MESSAGE].decode("utf-8", "replace")


def _strip_tags(html: str) -> str:
    out, inside = [], False
    for char in html[:MAX_MESSAGE]:
        if char == "<":
            inside = True
        elif char == ">":
            inside = False
            out.append(" ")
        elif not inside:
            out.append(char)
    return "".join(out)


def as_bounce(text: str, action: str = "failed") -> Bounce:
    """A whole message parsed as one; a bare reply or diagnostic line as the report of one
    recipient whose delivery ended with ``action`` (``failed`` or ``delayed``)."""
    return parse(text if is_message(text) else reply_report(text, action))


def reply_report(reply: str, action: str) -> str:
    """The RFC 3464 report of one recipient refused with ``reply`` (on one line, so that
    a remote server's text can add neither fields nor MIME boundaries)."""
    diagnostic = " ".join(reply.split())
    return ("Content-Type: multipart/report; report-type=delivery-status; boundary=R\n\n"
            "--R\nContent-Type: message/delivery-status\n\n"
            f"Final-Recipient: rfc822; recipient\nAction: {action}\n"
            f"Diagnostic-Code: smtp; {diagnostic}\n--R--\n")
