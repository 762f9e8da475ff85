"""``bounce::`` -- why a message bounced, by the classifier of ``support/bounce`` (issue 14).

    let why = bounce::classify("550 5.1.1 <a@example.com>: no such user");
    if why == "userunknown" && why.hard { ... }          // .confidence .status .diagnostic
    for entry in bounce::parse(ctx) { ... }              // on_pre_queue / on_post_queue

The shipped network names the reason; when its file is missing or unreadable, the error
is logged once and the status codes decide (confidence 0). See docs/bounces.md.
"""
from __future__ import annotations

import dataclasses

from vsl.errors import ScriptError
from vsl.natives import Namespace

from .ctx import Context
from .support.bounce.message import (MAX_MESSAGE, MAX_RECIPIENTS, Bounce, parse as parse_message,
                                     shows_a_report)
from .support.bounce.shared import shipped
from .support.result import BounceResult
from .support.signing import message_of

# The classifier is the process's shared one (support/bounce/shared.py: loaded on first use,
# the status codes deciding when its file cannot be read), so a script, `vsl bounce` and
# delivery give one text one answer. The work is bounded by the parser's limits (256 KiB,
# 64 MIME parts, 100 recipients; about 2 ms a message), and charged to the script's
# operations by the bytes read and the recipients classified (``charges=``), as a script
# step walking them would be.

# One classification (the whole message and up to 12 clauses of its diagnostic) takes about
# 2 ms, more for a long diagnostic of 12 clauses, about what parsing 32 KiB of a DSN does,
# so each classification is charged as 32 KiB read.
CLASSIFY_WORK = 32 * 1024

namespace = Namespace("bounce", "Why a message bounced (the bounce classifier)")
namespace.register_type(BounceResult)


def text_read(text) -> int:
    """What bounce::classify does with ``text``: read its characters, up to the parser's
    cut, and classify it, counted as ``CLASSIFY_WORK`` bytes read."""
    return min(len(text), MAX_MESSAGE) + CLASSIFY_WORK if isinstance(text, str) else 0


def message_read(ctx) -> int:
    """What bounce::parse does with ``ctx``'s message: read its bytes, up to the parser's
    cut, and classify each recipient, counted as ``CLASSIFY_WORK`` bytes read for every
    ``@`` in them (an upper bound of the recipients found, up to the parser's 100)."""
    message = ctx.message if isinstance(ctx, Context) else None
    if message is None:
        return 0
    data = message.head(MAX_MESSAGE)
    return len(data) + min(data.count(b"@"), MAX_RECIPIENTS) * CLASSIFY_WORK


@namespace.native(charges=text_read)
def classify(text) -> BounceResult:
    """classify(text): why a message bounced, with .reason .confidence .hard .status
    .diagnostic; `text` is a whole message or a reply line (`550 5.1.1 no such user`).

    `.reason` is one of the model's reasons (`userunknown`, `mailboxfull`, `filtered`,
    `rejected`, `blocked`, `spamdetected`, `expired`, `hostunknown`, ...), `.confidence`
    its probability (0 to 1; 0 when the model could not be loaded and the status codes
    decided), `.hard` whether the failure is permanent, `.status` the RFC 3463 code found
    in the text or inferred from the reason, `.diagnostic` the text judged. See
    docs/bounces.md."""
    if not isinstance(text, str):
        raise ScriptError("bounce::classify takes a string (a message or a reply line)")
    return BounceResult(shipped().classify_text(text))


@namespace.native(uses="body", charges=message_read)
def parse(ctx) -> list:
    """parse(ctx): the message as a bounce, one map per failed recipient: recipient,
    action, status, remote_mta, diagnostic, reason, confidence, hard, kind.

    From `on_pre_queue` and `on_post_queue`. `kind` is `dsn` (RFC 3464), `feedback`
    (an RFC 5965 ARF report), `autoreply` (RFC 3834) or `plain` (any other bounce).
    A message naming no recipient gives one entry with an empty `recipient`. Ordinary
    mail gives none: a message is read as a bounce when it came from the null sender or
    shows itself one (a report, an automatic reply's or a mail system's header). An
    incoming bounce teaches self-learning nothing (anyone can write one: docs/bounces.md)."""
    bounce = parse_message(message_of(ctx, "bounce::parse").head(MAX_MESSAGE))
    null_sender = ctx.sender is not None and ctx.sender.is_null()
    if not (null_sender or shows_a_report(bounce)):
        return []
    return [recipient_entry(bounce, index) for index in range(max(1, len(bounce.recipients)))]


def recipient_entry(bounce: Bounce, index: int) -> dict:
    """The map bounce::parse gives for the recipient at ``index``."""
    single = dataclasses.replace(bounce, recipients=bounce.recipients[index:index + 1])
    rcpt, judged = single.first, shipped().classify(single)
    return {"recipient": rcpt.address, "action": rcpt.action, "status": judged.status,
            "remote_mta": rcpt.remote_mta, "diagnostic": judged.diagnostic,
            "reason": judged.reason, "confidence": judged.confidence, "hard": judged.hard,
            "kind": bounce.kind}
