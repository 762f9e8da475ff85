"""From a raw bounce message to what the classifier reads.

Design: only the structure the standards define is recognised here, never the wording of
a reason. A message is one of four kinds:

- ``dsn``: RFC 3464 ``multipart/report; report-type=delivery-status``; one ``Recipient``
  per per-recipient block (Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code);
- ``feedback``: an RFC 5965 ARF report (a ``message/feedback-report`` part);
- ``autoreply``: RFC 3834 ``Auto-Submitted: auto-replied`` (or the older ``X-Autoreply`` /
  ``Precedence: auto_reply`` marks, or the ``X-Auto-Response-Suppress`` that Exchange and
  Outlook put on their automatic replies), unless a mail system sent it (From ``MAILER-DAEMON``
  or ``postmaster``, or an ``X-Failed-Recipients`` field): that is a bounce;
- ``plain``: any other bounce; its recipients are the ``X-Failed-Recipients``, else the
  addresses its human-readable text names (up to the returned original message: a field
  added in transit, or two header lines in a row), those opening a line first; the
  sender it returns the message to (its To) and a mail system that writes it (its From)
  only when they open a line or the text names no other address.

A report written into the readable text (forwarded as text, or its part lost its type) is
read as a ``dsn`` only for what would otherwise be ``plain``, with no automatic-reply mark,
and when a mail system wrote it (a Reporting-MTA field or a system sender, with Action or
Status fields), not when a reply quotes one.

A recipient's diagnostic is its Diagnostic-Code, decoded from its raw bytes (ISO-2022-JP
and -2, UTF-8, EUC-JP, Shift_JIS); without one (a non-DSN bounce, or a DSN
that left the field empty), the readable text around the recipient's first mention.

The header's marks of an automatic message (the fields of ``MARK_FIELDS``, the system
sender) are kept for the features, whatever the kind.

A bare reply line (``452 4.2.2 Mailbox full``, what delivery gets) is read by
:func:`as_bounce` as the one-recipient RFC 3464 report it would be reported in.

From the diagnostic text the SMTP reply code (RFC 5321), the enhanced status code
(RFC 3463) and the SMTP phase the error came at are picked with simple anchored patterns.
The phase is the SMTP command named where MTAs write it (``COMMAND_MARKER``, qmail's
fixed sentences), the last one before the first 4xx/5xx reply; when the diagnostic names
none, the whole readable text (e.g. Sendmail's session transcript) is read.
Work is bounded: the input is cut at ``MAX_MESSAGE`` bytes and before its boundary line past
``MAX_BOUNDARIES`` or blank line past ``MAX_BLANK_LINES`` (so ``email`` parses few parts,
shallow nesting, few field blocks), at most ``MAX_PARTS`` MIME parts are walked, field
blocks are read from ``MAX_BLOCKS_TEXT`` characters up to ``MAX_RECIPIENTS``, each text kept
is cut at ``MAX_TEXT`` characters, the text is scanned for addresses and codes once per
message (not per recipient); the patterns have no nested quantifiers, so they run in linear
time. ``parse`` never raises: a message nested too deep is read by its header, and anything
else unreadable is an empty ``plain`` bounce.
"""
# The email package is imported by the functions that parse: ``bounce::`` declares its
# natives' costs with MAX_MESSAGE, and ``vsl lint`` should not wait for email.policy.
from __future__ import annotations

import codecs
import functools
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_MESSAGE = 256 * 1024
MAX_PARTS = 64
MAX_TEXT = 4000
MAX_RECIPIENTS = 100
# Field blocks are read from at most this much of a status part or inline report.
MAX_BLOCKS_TEXT = 8 * MAX_TEXT
# The boundary lines (MIME parts, their nesting) and blank lines (delivery-status field
# blocks) the parser is given at most: a message cut there still parses, in bounded time.
MAX_BOUNDARIES = 2 * MAX_PARTS
MAX_BLANK_LINES = 8 * MAX_PARTS
PLAIN_DIAGNOSTIC = 600
SUBJECT = 300  # characters of the Subject read

REPLY_CODE = re.compile(r"(?<![\d.])([245][0-5]\d)(?=[ \-\t]|$)", re.M)
ENHANCED_CODE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
ADDRESS = re.compile(r"[\w.+=\-]{1,64}@[\w\-]{1,63}(?:\.[\w\-]{1,63}){0,8}")
# Where a bounce names the SMTP command a reply answered, in the layouts MTAs write it:
# Postfix "(in reply to RCPT TO command)", Exim "SMTP error from remote mail server after
# end of data", Sendmail's transcript ">>> DATA" / "<<< 550 ...", DragonFly "did not like
# our RCPT TO", X3 "SMTP:RCPT", "... for TEXT command". The command is group 1.
# Postfix folds its text at 80 columns, so a marker may span a line break.
COMMAND_MARKER = re.compile(
    r"(?:in\s{1,8}reply\s{1,8}to|after|for|during|response\s{1,8}to|"
    r"did\s{1,8}not\s{1,8}like\s{1,8}our|^[ \t>]{0,4}>>>|SMTP:)"
    r"[ \t]{0,8}\r?\n?[ \t]{0,8}(?:the\s|our\s|final\s|initial\s)?"
    r"(RCPT|MAIL|DATA|end\s{1,8}of\s{1,8}data|TEXT|BDAT|HELO|EHLO|LHLO|STARTTLS|AUTH|"
    r"connection|connect|greeting|banner)\b", re.I | re.M)
# qmail-remote's fixed sentences, one per SMTP step (its source, qmail-remote.c).
QMAIL_STEPS = (("does not like recipient", "rcpt"), ("sender was rejected", "mail"),
               ("my name was rejected", "helo"), ("failed on DATA command", "data"),
               ("failed after I sent the message", "data"),
               ("establish an SMTP connection", "connect"))
COMMAND_PHASES = {"rcpt": "rcpt", "mail": "mail", "data": "data", "end of data": "data",
                  "text": "data", "bdat": "data", "helo": "helo", "ehlo": "helo",
                  "lhlo": "helo", "starttls": "starttls", "auth": "auth",
                  "connection": "connect", "connect": "connect", "greeting": "connect",
                  "banner": "connect"}
# A line that starts the returned original message's header block (RFC 5322 fields a
# message gets in transit, in any case: Exim writes "Return-path:").
ORIGINAL_HEADERS = re.compile(
    r"^(?:Received|Return-Path|DKIM-Signature|Message-ID|MIME-Version|X-Received"
    r"|Authentication-Results|Delivered-To):[ \t]", re.M | re.I)
# Two header lines in a row (the fields a message is written with, or the above): the
# returned original's header block when no field added in transit opens it.
_FIELD = (r"(?:From|To|Cc|Subject|Date|Sender|Reply-To|Received|Return-Path|Message-ID"
          r"|MIME-Version|Content-Type|DKIM-Signature|Delivered-To):[ \t]")
ORIGINAL_HEADER_RUN = re.compile(rf"^{_FIELD}[^\n]*\n{_FIELD}", re.M | re.I)
BLANK_LINE = re.compile(r"\n[ \t]*\n")
HTML_TAG = re.compile(r"<[^>]*>?")  # an unclosed tag hides the rest, as a browser would
# A numeric character reference's leading zeros but one, and a reference past U+10FFFF
# (9 digits or more): html.unescape makes it U+FFFD, but converts its digits first (past
# 4,300 of them, an error).
LEADING_ZEROS = re.compile(r"&#([xX]?0)0+(?=\w)")
HUGE_REFERENCE = re.compile(r"&#(?:0?[1-9]\d{8,}|[xX]0?[1-9a-fA-F][0-9a-fA-F]{8,});?")
# A comment (which may hold a "<style>" that no end tag closes; HTML ends one at "-->",
# "--!>", or at once at "<!-->" and "<!--->"), or a style or script element, up to its end
# or the end of the text (linear: each try ends in a match).
HIDDEN_ELEMENT = re.compile(
    r"<!--(?:-?>|.*?(?:--!?>|\Z))|<(style|script)\b.*?(?:</\1[^>]*>?|\Z)", re.I | re.S)
# A line that opens with an address, maybe in angle brackets or quotes (GMX): the next
# recipient's block in a non-DSN bounce.
RECIPIENT_BLOCK = re.compile(r'^[ \t>]{0,4}[<"]?[\w.+=\-]{1,64}@[\w.\-]{1,255}', re.M)
# A delivery-status report's first per-message or per-recipient field (RFC 3464 §2.2, §2.3)
# at the start of a line of the readable text, maybe quoted (``> ``).
INLINE_REPORT = re.compile(r"^(?:>[ \t]?)?(?:Reporting-MTA|Final-Recipient|Original-Recipient)"
                           r":", re.M | re.I)
# A per-recipient field (RFC 3464 §2.3.1, §2.3.2): a field block that has one is read.
RECIPIENT_FIELD = re.compile(r"^(?:Final|Original)-Recipient[ \t]*:", re.M | re.I)
# A line that may be a MIME boundary (RFC 2046 §5.1.1), or a blank line.
# a boundary or blank line, after a line end as the email parser splits them (CRLF, CR, LF)
SECTION_LINE = re.compile(rb"(?:\A|\r\n|\r(?!\n)|\n)(?:(--)|(?=[\r\n]|\Z))")
# codecs Python has that are no character set; punycode decodes in quadratic time
NOT_CHARSETS = frozenset({"punycode", "idna", "unicode-escape", "raw-unicode-escape",
                          "undefined"})
# The fields that tell an inline report from a quoted one (RFC 3464 §2.2.2, §2.3.3, §2.3.4).
REPORT_FIELD = re.compile(r"^(?:>[ \t]?)?(Reporting-MTA|Action|Status)[ \t]*:", re.M | re.I)
# A 2-byte run of ISO-2022-JP(-2) text (RFC 1468, RFC 1554): from its escape to the next.
JIS_RUN = re.compile(rb"\x1b\$(?:[@AB]|\([@-Z])[^\x1b]*")
FOLD = re.compile(rb"\r?\n[ \t]*")
# what Japanese text has and Latin-1 read as Shift_JIS has not: kana, Japanese punctuation
# or full-width forms; read as EUC-JP (both bytes 8-bit) not two kanji in a row either
JAPANESE_SIGNS = re.compile("[\u3000-\u30ff\uff01-\uff5e]")
JAPANESE = re.compile("[\u3000-\u30ff\uff01-\uff5e]|[\u4e00-\u9fff]{2}")
QUOTE_MARK = re.compile(r"^>[ \t]?", re.M)
XTEXT_ESCAPE = re.compile(r"\\x\{(10[0-9A-Fa-f]{4}|[0-9A-Fa-f]{1,5})\}")  # up to U+10FFFF
AUTOREPLY_PRECEDENCE = ("auto_reply", "auto-reply")
# The marks (see MARK_FIELDS) of an automatic reply.
AUTOREPLY_MARKS = {"auto-submitted=auto-replied", "x-autoreply", "x-autorespond",
                   "x-auto-response-suppress"} | \
    {f"precedence={value}" for value in AUTOREPLY_PRECEDENCE}
# Header fields that tell what an automatic message is: RFC 3834 Auto-Submitted, Precedence
# (RFC 2076), the older X-Autoreply / X-Autorespond, Microsoft's X-Auto-Response-Suppress,
# and X-Failed-Recipients (Exim, Gmail), which only a bounce carries.
MARK_FIELDS = ("Auto-Submitted", "Precedence", "X-Autoreply", "X-Autorespond",
               "X-Auto-Response-Suppress", "X-Failed-Recipients")
VALUED_MARKS = ("auto-submitted", "precedence")
# The local parts a mail system sends its notices from (RFC 5321 §4.5.1, RFC 2142).
SYSTEM_SENDERS = ("mailer-daemon", "postmaster", "mail-daemon", "maildaemon")
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
    """What a bounce message says: its kind, subject, readable text, recipients and the
    marks its header carries (``auto-submitted=auto-replied``, ``x-failed-recipients``,
    ``from=mailer-daemon``...)."""

    kind: str
    subject: str = ""
    text: str = ""
    recipients: list[Recipient] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)

    @property
    def first(self) -> Recipient:
        """The first recipient (an empty one when none was found)."""
        return self.recipients[0] if self.recipients else Recipient()


def parse(raw: bytes | str) -> Bounce:
    """Parses a raw RFC 5322 message (bytes or str) into a ``Bounce``; never raises: what
    cannot be read at all is an empty ``plain`` bounce."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    try:
        return _parsed(_message(_cut_sections(raw[:MAX_MESSAGE])))
    except Exception:  # noqa: BLE001 - a last resort: hostile input must not stop delivery
        return Bounce(kind="plain")


def _cut_sections(raw: bytes) -> bytes:
    """``raw`` cut before its boundary line past MAX_BOUNDARIES or blank line past
    MAX_BLANK_LINES, so that ``email`` is not made to parse thousands of parts, a deep
    nesting or thousands of delivery-status blocks, of which few are read."""
    boundaries = blanks = 0
    for line in SECTION_LINE.finditer(raw):
        boundaries += bool(line.group(1))
        blanks += not line.group(1)
        if boundaries > MAX_BOUNDARIES or blanks > MAX_BLANK_LINES:
            return raw[:line.start()]
    return raw


def _message(raw: bytes):
    """The parsed message; only its header when its MIME parts nest too deep to parse."""
    import email.parser
    import email.policy

    try:
        return email.message_from_bytes(raw, policy=email.policy.compat32)
    except RecursionError:
        parser = email.parser.BytesParser(policy=email.policy.compat32)
        return parser.parsebytes(raw, headersonly=True)


def _parsed(msg) -> Bounce:
    parts = _parts(msg)
    subject = _unfold(_decoded_header(_head_of(_field(msg, "Subject"))))[:SUBJECT]
    text = _readable_text(parts)
    marks = _marks(msg)
    recipients = _dsn_recipients(parts)
    kind = _kind(parts, marks, bool(recipients))
    if kind == "plain" and _reads_as_report(text, marks):
        recipients = _inline_dsn_recipients(text)
        kind = "dsn" if recipients else kind
    mentions = _first_mentions(text)
    if not recipients:
        failed = ADDRESS.findall(_field(msg, "X-Failed-Recipients")[:2000])
        recipients = _plain_recipients(text, failed, mentions, _correspondents(msg, marks))
    text_codes = functools.cache(lambda: _codes(text))  # scanned only when a recipient needs it
    for rcpt in recipients:
        rcpt.diagnostic = rcpt.diagnostic or _diagnostic_in_text(text, rcpt.address, mentions)
        _fill_codes(rcpt, text_codes)
    return Bounce(kind=kind, subject=subject, text=text, recipients=recipients, marks=marks)


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


def _marks(msg) -> list[str]:
    """The header's marks of an automatic message (MARK_FIELDS, with the value of those
    that have one) and ``from=<local part>`` when a mail system sent it."""
    marks = []
    for name in MARK_FIELDS:
        if name not in msg:
            continue
        words = _unfold(_field(msg, name)).lower().split()
        valued = name.lower() in VALUED_MARKS and words
        marks.append(f"{name.lower()}={words[0].strip(';')}" if valued else name.lower())
    sender = ADDRESS.search(_unfold(_field(msg, "From"))[:500])
    local = sender.group(0).split("@")[0].lower() if sender else ""
    if local in SYSTEM_SENDERS:
        marks.append(f"from={local}")
    return marks


def _kind(parts, marks: list[str], has_dsn: bool) -> str:
    types = {part.get_content_type() for part in parts}
    if "message/feedback-report" in types:
        return "feedback"
    if has_dsn:
        return "dsn"
    if AUTOREPLY_MARKS & set(marks) and not _from_system(marks) and \
            "x-failed-recipients" not in marks:
        return "autoreply"
    return "plain"


def shows_a_report(bounce: Bounce) -> bool:
    """Whether the message says by its structure or header that a mail system or an
    automatic responder wrote it: a DSN, an ARF report, an automatic reply, a system
    sender (``MAILER-DAEMON``, ``postmaster``) or an ``X-Failed-Recipients`` field. A
    bounce from the null sender need not (RFC 5321 §4.5.5 has every bounce sent from it);
    anything else is ordinary mail."""
    return bounce.kind != "plain" or _from_system(bounce.marks) or \
        "x-failed-recipients" in bounce.marks


def _reads_as_report(text: str, marks: list[str]) -> bool:
    """Whether a plain bounce's ``text`` carries a delivery-status report a mail system
    wrote (a Reporting-MTA field, or a system sender), with its Action or Status fields,
    rather than quoting one in a reply (an automatic reply's marks, no system)."""
    if AUTOREPLY_MARKS & set(marks):
        return False
    fields = {match.group(1).lower() for match in REPORT_FIELD.finditer(text)}
    from_system = "reporting-mta" in fields or _from_system(marks)
    return from_system and bool(fields & {"action", "status"})


def _from_system(marks: list[str]) -> bool:
    """Whether a mail system sent the message (``_marks``' ``from=`` mark)."""
    return any(mark.startswith("from=") for mark in marks)


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
        chunks.append(_before_original(text[:MAX_TEXT - size]))
        size += len(chunks[-1])
        if size >= MAX_TEXT:
            break
    return "\n".join(chunks)


def _before_original(text: str) -> str:
    """``text`` up to the header block of the original message it returns."""
    starts = [match.start() for match in (ORIGINAL_HEADERS.search(text),
                                          ORIGINAL_HEADER_RUN.search(text)) if match]
    return text[:min(starts)] if starts else text


def _dsn_recipients(parts) -> list[Recipient]:
    """The per-recipient blocks of every delivery-status part."""
    status_parts = [part for part in parts if _is_broken_multipart(part) or
                    part.get_content_type() in ("message/delivery-status",
                                                "message/global-delivery-status")]
    blocks = itertools.chain.from_iterable(map(_status_blocks, status_parts))
    recipients = (rcpt for rcpt in map(_recipient_from_block, blocks) if rcpt)
    return list(itertools.islice(recipients, MAX_RECIPIENTS))


def _is_broken_multipart(part) -> bool:
    """A multipart whose boundary the parser could not find: its body is kept as text."""
    return part.get_content_maintype() == "multipart" and isinstance(part.get_payload(), str)


def _inline_dsn_recipients(text: str) -> list[Recipient]:
    """The per-recipient blocks of a delivery-status report written into the readable text
    (a report forwarded as text, or whose part lost its type), quoted with ``>`` or not."""
    start = INLINE_REPORT.search(text)
    if not start:
        return []
    report = QUOTE_MARK.sub("", text[start.start():])
    return [rcpt for rcpt in map(_recipient_from_block, _field_blocks(report)) if rcpt]


def _status_blocks(part) -> list:
    """The field blocks of a delivery-status part, whether the parser split them or not.
    ``email`` reads a global one (RFC 6533) as one message: the per-message block for its
    header, the per-recipient blocks, in UTF-8, for its body."""
    payload = part.get_payload()
    if isinstance(payload, str):
        return _field_blocks(payload)
    if part.get_content_type() == "message/global-delivery-status" and payload:
        body = payload[0].get_payload(decode=True) or b""
        return payload[:1] + _field_blocks(body.decode("utf-8", "replace"))
    return payload


def _field_blocks(text: str) -> list:
    """The blank-line separated blocks of header fields in the first MAX_BLOCKS_TEXT
    characters of ``text`` that name a recipient, each parsed alone, at most
    MAX_RECIPIENTS of them."""
    import email.policy

    blocks = text[:MAX_BLOCKS_TEXT].replace("\r\n", "\n").split("\n\n")
    named = (block for block in blocks if RECIPIENT_FIELD.search(block))
    return [email.message_from_string(block.strip() + "\n", policy=email.policy.compat32)
            for block in itertools.islice(named, MAX_RECIPIENTS)]


def _recipient_from_block(block) -> Recipient | None:
    address = _field(block, "Final-Recipient") or _field(block, "Original-Recipient")
    if not address:
        return None
    return Recipient(address=_after_type(address).strip(" \t<>"),  # McAfee writes <address>
                     action=_unfold(_field(block, "Action")).lower(),
                     status=_enhanced(_field(block, "Status")),
                     remote_mta=_after_type(_field(block, "Remote-MTA")),
                     diagnostic=_after_type(_diagnostic_code(block))[:MAX_TEXT])


def _first_mentions(text: str) -> dict[str, re.Match]:
    """Each address ``text`` names (lower case), with its first mention, in text order."""
    mentions: dict[str, re.Match] = {}
    for match in ADDRESS.finditer(text):
        mentions.setdefault(match.group(0).strip(".").lower(), match)
    return mentions


def _plain_recipients(text: str, failed: list[str], mentions: dict,
                      correspondents: set[str]) -> list[Recipient]:
    """The ``failed`` addresses (X-Failed-Recipients) when there are some, else those that
    open a line of the text of a non-DSN bounce (a recipient's block), then those it names
    elsewhere; the bounce's own ``correspondents`` (the sender it returns the message to,
    the mail system that writes it) only when it names no other address: a policy that
    suppresses failed recipients must not suppress the sender."""
    recipients, seen = [], set()
    openers = [_opener(m) for m in RECIPIENT_BLOCK.finditer(text)]
    elsewhere = [a for a in mentions if a not in correspondents] or list(mentions)
    named = [a.strip(".").lower() for a in failed] or openers + elsewhere
    for address in named:
        if address in seen or len(recipients) >= MAX_RECIPIENTS:
            continue
        seen.add(address)
        recipients.append(Recipient(address=address))
    return recipients


def _correspondents(msg, marks: list[str]) -> set[str]:
    """The addresses of the bounce's To field (the sender it returns the message to) and,
    when a mail system wrote it, of its From (an auto-reply's or a notice's From may be the
    recipient it is about), lower case."""
    fields = _field(msg, "To")[:2000]
    if _from_system(marks):
        fields += " " + _field(msg, "From")[:2000]
    return {address.strip(".").lower() for address in ADDRESS.findall(fields)}


def _opener(block: re.Match) -> str:
    """The address a ``RECIPIENT_BLOCK`` match opens its line with, lower case."""
    return block.group(0).strip(" \t><\"").strip(".").lower()


def _diagnostic_in_text(text: str, address: str, mentions: dict) -> str:
    """What the readable ``text`` says of ``address`` (the text around its first mention,
    in ``mentions``, on one line): a non-DSN bounce's diagnostic, and a DSN recipient's
    when its Diagnostic-Code is empty (Sendmail writes the reply in its transcript above)."""
    mention = mentions.get(address.strip("<>").lower())
    return " ".join(_text_around(text, mention).split()) if mention else ""


def _text_around(text: str, mention: re.Match) -> str:
    """What a non-DSN bounce says of the address ``mention`` names: its line (IMail's
    "Unknown user: <address>"), the line above when the address opens its own and that
    line is no part of another recipient's block (some MTAs write the reason above the
    address; qmail and GMX write blocks one after the other, the reason below), and the
    text below up to the next recipient's block (a line that opens with another address)."""
    start = text.rfind("\n", 0, mention.start()) + 1
    if not text[start:mention.start()].strip(" \t<>\"'"):
        above = text[:start].rstrip()
        if not _in_a_block(text, len(above)):
            start = above.rfind("\n") + 1
    following = text[mention.end():mention.end() + PLAIN_DIAGNOSTIC]
    block_end = RECIPIENT_BLOCK.search(following)
    while block_end and mention.group(0).lower() in block_end.group(0).lower():
        block_end = RECIPIENT_BLOCK.search(following, block_end.end())
    return text[start:mention.start()] + following[:block_end.start() if block_end else None]


def _in_a_block(text: str, line_end: int) -> bool:
    """Whether the line that ends at ``line_end`` is part of a recipient's block: it, or a
    line above it with no blank line between (in the ``PLAIN_DIAGNOSTIC`` characters
    before it), opens with an address."""
    floor = max(0, line_end - PLAIN_DIAGNOSTIC)
    openers = list(RECIPIENT_BLOCK.finditer(text, floor, line_end))
    return bool(openers) and not BLANK_LINE.search(text, openers[-1].end(), line_end)


def _fill_codes(rcpt: Recipient, text_codes: Callable[[], tuple[str, str, str]]) -> None:
    """Sets the reply code, the missing enhanced code and the phase from the recipient's
    diagnostic, else from the whole text (``text_codes()``, called only then: scanning the
    text is the costly part); the phase is the text's when the diagnostic names none."""
    reply, status, phase = _codes(rcpt.diagnostic) if rcpt.diagnostic else text_codes()
    rcpt.reply_code = reply
    rcpt.status = rcpt.status or status
    rcpt.phase = phase or text_codes()[2]


def _codes(context: str) -> tuple[str, str, str]:
    """The failure reply code, the enhanced status code and the SMTP phase in ``context``."""
    context = context[:MAX_TEXT]
    reply = _failure_reply(context)
    phase = phase_of(context, reply.start() if reply else len(context))
    return (reply.group(1) if reply else "", _enhanced(context), phase)


def _failure_reply(text: str) -> re.Match | None:
    """The first 4xx/5xx reply code in ``text`` (a session transcript shows the 2xx
    replies before it), else the first reply code."""
    replies = list(itertools.islice(REPLY_CODE.finditer(text), 20))
    return next((m for m in replies if m.group(1)[0] in "45"), replies[0] if replies else None)


def failure_line(bounce: Bounce) -> str:
    """The line of the bounce's text (of its first ``MAX_TEXT`` characters) that holds the
    first 4xx/5xx reply code among its first reply codes (``_failure_reply``), or ``""``
    when there is none or it is another recipient's: the line names one, or a line that
    opens with one (that recipient's block) comes before it."""
    context = bounce.text[:MAX_TEXT]
    reply = _failure_reply(context)
    if not reply or reply.group(1)[0] not in "45":
        return ""
    start = context.rfind("\n", 0, reply.start()) + 1
    end = context.find("\n", reply.end())
    line = context[start:end if end >= 0 else None]
    others = {rcpt.address.lower() for rcpt in bounce.recipients[1:]}
    others.discard(bounce.first.address.lower())
    named = {_opener(block) for block in RECIPIENT_BLOCK.finditer(context, 0, start)}
    named.update(match.group(0).strip(".").lower() for match in ADDRESS.finditer(line))
    return "" if others & named else line.strip()


def phase_of(text: str, reply_at: int) -> str:
    """The SMTP phase the reply at ``reply_at`` answered, as the bounce shows it: the last
    command marker before it, else the first one after (the reply was quoted above the
    transcript); ``""`` when the text names none. A RCPT TO refusal that Sendmail prints
    after the DATA it pipelined with it (RFC 2920) counts as DATA's: the labels read it so
    (a "user unknown" there is ``filtered`` unless its code is 5.1.1)."""
    found = [(m.start(), COMMAND_PHASES[" ".join(m.group(1).lower().split())])
             for m in COMMAND_MARKER.finditer(text)]
    lowered = text.lower()
    found += [(lowered.find(sentence.lower()), phase) for sentence, phase in QMAIL_STEPS
              if sentence.lower() in lowered]
    if not found:
        return ""
    before = [item for item in found if item[0] < reply_at]
    return (max(before) if before else min(found))[1]


def _enhanced(text: str) -> str:
    match = ENHANCED_CODE.search(text or "")
    return ".".join(match.groups()) if match else ""


def _after_type(value: str) -> str:
    """A DSN field's value without its ``type;`` prefix (``rfc822;``, ``smtp;``, ``dns;``);
    a ``utf-8;`` address's ``\\x{HEX}`` escapes (RFC 6533) decoded."""
    value = _unfold(value)
    kind, sep, rest = value.partition(";")
    if not sep or len(kind) > 12 or " " in kind.strip():
        return value
    if kind.strip().lower() == "utf-8":
        return XTEXT_ESCAPE.sub(lambda m: chr(int(m[1], 16)), rest.strip())
    return rest.strip()


def _diagnostic_code(block) -> str:
    """A field block's Diagnostic-Code, decoded from the raw bytes it was written in."""
    raw = next((value for name, value in block.raw_items()
                if name.lower() == "diagnostic-code"), "")
    return _decoded_raw(raw)


def _decoded_raw(value: str) -> str:
    """A field value written raw, decoded as ``_sniffed`` decodes bytes, without the fold
    line breaks inside a 2-byte ISO-2022-JP run (Japanese MTAs write a Diagnostic-Code so).
    A value of text already decoded is returned as it is."""
    try:
        data = value.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return value
    return _sniffed(JIS_RUN.sub(lambda run: FOLD.sub(b"", run.group(0)), data))


def _sniffed(data: bytes) -> str:
    """Bytes of an undeclared charset, decoded: as ISO-2022-JP (RFC 1468: 7-bit text
    switched to Japanese by escape sequences) when they hold an escape; else as UTF-8 (RFC
    6533), else as the 8-bit Japanese encodings when that gives Japanese (``JAPANESE``,
    ``JAPANESE_SIGNS`` for Shift_JIS, which pairs a Latin-1 letter with the next one),
    else as Windows-1252 (the Latin-1 of European MTAs' "Empfänger unbekannt"; Shift_JIS
    would take most of its accented letters for kanji). A character cut at the end (a
    message read to its bound) is dropped rather than make the whole text undecodable."""
    if b"\x1b" in data:
        codecs_tried, fallback = ("iso2022_jp", "iso2022_jp_2"), "utf-8"
    else:
        codecs_tried, fallback = ("utf-8", "euc_jp", "shift_jis"), "cp1252"
    for codec in codecs_tried:
        text = _decoded_to_a_cut(data, codec)
        if text is None:
            continue
        if codec in ("utf-8", "iso2022_jp", "iso2022_jp_2") or \
                (JAPANESE if codec == "euc_jp" else JAPANESE_SIGNS).search(text):
            return text
    return data.decode(fallback, "replace")


def _decoded_to_a_cut(data: bytes, codec: str) -> str | None:
    """``data`` decoded as ``codec``, a character cut at the end dropped (bytes read to a
    bound); None when they are not that codec."""
    try:
        return codecs.getincrementaldecoder(codec)().decode(data)
    except UnicodeError:
        return None


def _field(msg, name: str) -> str:
    """A header field's value as text, ``""`` when absent (compat32 gives a ``Header``
    object for a value with 8-bit bytes)."""
    value = msg.get(name)
    return "" if value is None else str(value)


def _unfold(value) -> str:
    return " ".join(str(value).split())


def _head_of(value: str) -> str:
    """Enough of a header value to decode SUBJECT characters (an encoded word takes up to 9
    bytes a character: Q-encoded UTF-8), cut at white space so that no encoded word is cut."""
    limit = SUBJECT * 12
    if len(value) <= limit:
        return value
    return (value[:limit].rsplit(None, 1) or [""])[0]  # "": it was only white space


def _decoded_header(value) -> str:
    """A header field's value with its RFC 2047 encoded words decoded (one naming no
    character set is read as Latin-1, which decodes any bytes)."""
    import email.header

    try:
        words = [(chunk, charset if charset is None or _charset_codec(charset) else "latin-1")
                 for chunk, charset in email.header.decode_header(str(value))]
        return str(email.header.make_header(words))
    except (ValueError, LookupError, UnicodeError):
        return str(value)


def _charset_codec(charset: str) -> str | None:
    """The codec of a declared character set, None when Python has none or what it has
    is no character set (``punycode``, ``unicode_escape``, ``base64``, ...)."""
    try:
        info = codecs.lookup(charset)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in NOT_CHARSETS:
        return None
    return info.name


def _decoded_payload(part) -> str:
    """A text part's body, decoded by its declared charset; one declared as none or as
    US-ASCII (which some Japanese MTAs declare over ISO-2022-JP), or as no character set
    Python knows, is sniffed; one its declared charset cannot decode, or declared as a
    charset of one byte a character (Latin-1, Windows-1252: they decode any bytes), is
    read as UTF-8 when it is that (``_mislabelled_utf8``)."""
    data = (part.get_payload(decode=True) or b"")[:MAX_MESSAGE]
    charset = part.get_content_charset()
    codec = _charset_codec(charset) if charset not in (None, "us-ascii") else None
    if codec is None:
        return _sniffed(data)
    try:
        text = data.decode(codec)
    except UnicodeDecodeError:
        return _mislabelled_utf8(data) or data.decode(codec, "replace")
    if _one_byte_a_character(codec):  # it decodes any bytes; UTF-8 is seldom by chance
        return _mislabelled_utf8(data) or text
    return text


@functools.cache
def _one_byte_a_character(codec: str) -> bool:
    """Whether ``codec`` reads every 8-bit byte as one character (Latin-1, Windows-1252,
    KOI8-R: not Shift_JIS, whose half-width katakana are single bytes among pairs)."""
    return codec != "utf-8" and len(bytes(range(0x80, 0x100)).decode(codec, "replace")) == 0x80


def _mislabelled_utf8(data: bytes) -> str | None:
    """8-bit bytes that are UTF-8, decoded (a part declared ISO-2022-JP, which is 7-bit,
    or Shift_JIS, whose text was re-encoded on its way or written by a mail system that
    declares its old charset over UTF-8); None for any other bytes, and for bytes with an
    escape or a NUL (ISO-2022-JP or UTF-16 text with a stray 8-bit byte, which UTF-8 would
    read as its raw escapes). A character cut at the end (a part read to its bound) is
    dropped."""
    if data.isascii() or b"\x1b" in data or b"\x00" in data:
        return None
    return _decoded_to_a_cut(data, "utf-8")


def _strip_tags(html: str) -> str:
    """The text of an HTML part: its tags and comments, and the content of its style and
    script elements (Google's and Microsoft's bounces carry a style sheet), dropped; character
    references decoded in the first ``8 * MAX_TEXT`` characters left (the readable text
    keeps ``MAX_TEXT``; each reference costs a call)."""
    import html as entities

    shown = HIDDEN_ELEMENT.sub(" ", html[:MAX_MESSAGE])
    shown = LEADING_ZEROS.sub(r"&#\1", HTML_TAG.sub(" ", shown)[:8 * MAX_TEXT])
    return entities.unescape(HUGE_REFERENCE.sub("\ufffd", shown))


def as_bounce(text: str) -> Bounce:
    """A whole message parsed as one; a bare reply or diagnostic line as the report of one
    recipient refused with it."""
    return parse(report_text(text))


def report_text(text: str) -> str:
    """The message the classifier reads for ``text``: itself when it is a whole message,
    else the report of one recipient refused with it."""
    return text if is_message(text) else reply_report(text)


def reply_report(reply: str) -> str:
    """The RFC 3464 report of one recipient refused with ``reply`` (on one line, so that
    a remote server's text can add neither fields nor MIME boundaries). It has no
    ``Action``: one reply says why an attempt failed, not whether the message is given up
    or still retried (the network learned ``Action: delayed`` from delay notices, whose
    reason is often ``expired``); the reply code says whether the failure is permanent."""
    diagnostic = " ".join(reply.split())
    return ("Content-Type: multipart/report; report-type=delivery-status; boundary=R\n\n"
            "--R\nContent-Type: message/delivery-status\n\n"
            "Final-Recipient: rfc822; recipient\n"
            f"Diagnostic-Code: smtp; {diagnostic}\n--R--\n")
