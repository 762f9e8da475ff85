"""A transcript's ``Q:`` lines: what the replayed session must have queued.

They follow the dialogue and are checked once the session is over, against the spool,
in order. They look at one message at a time, the last one queued unless ``Q: message N``
picks another (messages are numbered in the order they were queued, from 1)::

    Q: none                         nothing was queued
    Q: messages 2                   this many messages were queued
    Q: message 1                    the following checks look at the first message
    Q: deliver                      the message is in this queue (hold, quarantine/NAME, ...)
    Q: header X-Policy: checked*    it has this header (``*`` as in S: lines)
    Q: no header X-Policy           it has no such header
    Q: sender bounces@example.test  its envelope sender (``<>`` for the null sender)
    Q: recipients a@x.test b@x.test its envelope recipients, in order
    Q: route bob@x.test lmtp://*    a recipient's route (``*`` as in S: lines)

A failed check reads like a failed ``S:`` line: ``line N: expected 'Q: ...', got 'Q: ...'``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from vsl.resolve import closest
from vsl.stdlib.support.mail import Message

from .queue_backend import QUEUES, Entry, QueueBackend, QueueError, check_queue

_FORMS = {  # the first word of a check: its whole form, and how to write it
    "none": (re.compile(r"none"), "Q: none"),
    "messages": (re.compile(r"messages ([1-9]\d*)"), "Q: messages N"),
    "message": (re.compile(r"message ([1-9]\d*)"), "Q: message N"),
    "header": (re.compile(r"header ([!-9;-~]+):\s*(.*)"), "Q: header NAME: VALUE"),
    "no": (re.compile(r"no header ([!-9;-~]+)"), "Q: no header NAME"),
    "sender": (re.compile(r"sender (\S+)"), "Q: sender ADDRESS"),
    "recipients": (re.compile(r"recipients (\S+(?: \S+)*)"), "Q: recipients ADDRESS..."),
    "route": (re.compile(r"route (\S+) (\S+)"), "Q: route ADDRESS ROUTE"),
}
_KNOWN = "a queue (deliver, hold, quarantine/NAME, ...), " + ", ".join(
    usage.removeprefix("Q: ") for _, usage in _FORMS.values())


def matches(pattern: str, text: str) -> bool:
    """An ``S:`` or ``Q:`` pattern against a reply or a value (``*`` matches the rest)."""
    if "*" in pattern:
        return text.startswith(pattern[:pattern.index("*")])
    return text == pattern


@dataclass(frozen=True)
class QueueCheck:
    """One ``Q:`` line: ``kind`` is its first word, or "queue"."""

    line: int
    text: str
    kind: str
    args: tuple[str, ...]


def parse_check(where: str, number: int, text: str) -> QueueCheck:
    """The check a ``Q:`` line states (``where`` is file:line for errors)."""
    word = text.split(" ", 1)[0]
    if word in _FORMS:
        form, usage = _FORMS[word]
        found = form.fullmatch(text)
        if not found:
            raise ValueError(f"{where}: malformed check 'Q: {text}': write '{usage}'")
        return QueueCheck(number, text, word, found.groups())
    try:
        return QueueCheck(number, text, "queue", (check_queue(text),))
    except QueueError:
        near = closest(word, (*_FORMS, *QUEUES))
        usage = _FORMS[near][1] if near in _FORMS else f"Q: {near}"
        hint = f", did you mean '{usage}'?" if near else f" (checks: {_KNOWN})"
        raise ValueError(f"{where}: unknown check 'Q: {text}'{hint}") from None


async def check_queued(spool: QueueBackend, checks: list[QueueCheck]) -> list[str]:
    """Every check that the spool's messages fail, as ``line N: expected ..., got ...``."""
    entries = sorted(await spool.list(),
                     key=lambda entry: (entry.envelope.received_at or 0, entry.id))
    selected = entries[-1] if entries else None
    problems = []
    for check in checks:
        if check.kind == "message":
            index = int(check.args[0])
            selected = entries[index - 1] if index <= len(entries) else None
            got = None if selected else _count(entries)
        elif check.kind in ("none", "messages"):
            wanted = 0 if check.kind == "none" else int(check.args[0])
            got = None if len(entries) == wanted else _count(entries)
        elif selected is None:
            got = "no message to check"
        else:
            got = await _got(spool, selected, check)
        if got is not None:
            problems.append(f"line {check.line}: expected 'Q: {check.text}', got {got}")
    return problems


def _count(entries: list[Entry]) -> str:
    return f"{len(entries)} message{'' if len(entries) == 1 else 's'} queued"


async def _got(spool: QueueBackend, entry: Entry, check: QueueCheck) -> str | None:
    """What the message shows instead of what ``check`` expects; None when it passes."""
    envelope = entry.envelope
    if check.kind == "queue":
        return None if entry.queue == check.args[0] else f"'Q: {entry.queue}'"
    if check.kind == "sender":
        sender = envelope.sender or "<>"
        return None if sender == check.args[0] else f"'Q: sender {sender}'"
    if check.kind == "recipients":
        addresses = " ".join(rcpt.address for rcpt in envelope.recipients)
        return None if addresses == check.args[0] else f"'Q: recipients {addresses}'"
    if check.kind == "route":
        address, pattern = check.args
        routes = [rcpt.route for rcpt in envelope.recipients if rcpt.address == address]
        if not routes:
            return f"no recipient {address}"
        return None if matches(pattern, routes[0]) else f"'Q: route {address} {routes[0]}'"
    name = check.args[0]
    values = Message(await spool.message(entry.id, entry.queue)).get_all(name)
    if check.kind == "no":
        return f"'Q: header {name}: {values[0]}'" if values else None
    if any(matches(check.args[1], value) for value in values):
        return None
    return f"'Q: header {name}: {values[0]}'" if values else f"no {name} header"
