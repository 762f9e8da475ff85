"""``vsl queue``: what an operator sees of the queue, and what they can do to it.

Works through the queue backend's admin side (server/queue_backend.py), so it runs
beside a live server: a message the server moved meanwhile is reported, not lost.

Envelopes hold text that clients and remote servers chose (HELO, addresses, replies):
every printer here passes it through :func:`printable`, so no control character (a
terminal escape sequence, a carriage return that overwrites a line) reaches the
operator's terminal.
"""
from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .printable import printable
from .queue_backend import Entry, QueueBackend, QueueError, UnreadableEnvelope

AGE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)  # minutes, like qshape's table
T = TypeVar("T")


async def administer(mail_queue: QueueBackend,
                     work: Callable[[QueueBackend], Awaitable[T]]) -> T:
    """``work(mail_queue)`` between the backend's open and its close: one command."""
    await mail_queue.open()
    try:
        return await work(mail_queue)
    finally:
        await mail_queue.close()


def pending(entry: Entry) -> list[str]:
    """The addresses of a message's recipients still to be delivered (or bounced)."""
    return [rcpt.address for rcpt in entry.envelope.recipients if not rcpt.done]


def listing(entries: list[Entry], unreadable: list[UnreadableEnvelope] = ()) -> str:
    """One line per message, oldest first (like ``mailq``): id, queue, age in minutes,
    recipients still pending, sender; then one per unreadable envelope; then the totals."""
    if not entries and not unreadable:
        return "the queue is empty"
    width = max(len(e.queue) for e in (*entries, *unreadable)) + 2
    lines = [f"{'ID':27}{'QUEUE':{width}}{'AGE':>5}{'PENDING':>9}  SENDER"]
    for entry in entries:
        lines.append(f"{entry.id:27}{entry.queue:{width}}{entry.age / 60:>5.0f}"
                     f"{len(pending(entry)):>9}  <{printable(entry.envelope.sender)}>")
    for err in unreadable:
        lines.append(f"{err.msg_id:27}{err.queue:{width}}"
                     f"(unreadable envelope: {printable(err.why)})")
    total = sum(len(pending(e)) for e in entries)
    lines.append(f"-- {len(entries)} message(s), {total} recipient(s) pending")
    if unreadable:
        lines[-1] += (f", {len(unreadable)} unreadable envelope(s) "
                      "(skipped: fix, hold or remove each)")
    return "\n".join(lines)


def _bucket(age_seconds: float) -> int:
    minutes = age_seconds / 60
    for i, limit in enumerate(AGE_BUCKETS):
        if minutes < limit:
            return i
    return len(AGE_BUCKETS)


def counts_table(counts: dict[str, int]) -> str:
    """Messages per queue, one line each, then the total."""
    width = max(len(queue) for queue in (*counts, "QUEUE")) + 2
    lines = [f"{'QUEUE':{width}}{'MESSAGES':>8}"]
    lines += [f"{printable(queue):{width}}{count:>8}" for queue, count in counts.items()]
    lines.append(f"-- {sum(counts.values())} message(s)")
    return "\n".join(lines)


def table(entries: list[Entry]) -> str:
    """Recipients still pending, by queue and domain, in age columns (minutes)."""
    heads = [f"<{m}" for m in AGE_BUCKETS] + [f">={AGE_BUCKETS[-1]}"]
    rows: dict[tuple[str, str], list[int]] = {}
    for entry in entries:
        for address in pending(entry):
            domain = printable(address.rpartition("@")[2].lower() or "(none)")
            rows.setdefault((entry.queue, domain), [0] * len(heads))[_bucket(entry.age)] += 1
    if not rows:
        return "no recipient pending"
    width = max(len(q) for q, _ in rows) + 2, max(len(d) for _, d in rows) + 2
    lines = [f"{'QUEUE':{width[0]}}{'DOMAIN':{width[1]}}{'TOTAL':>6}" +
             "".join(f"{h:>7}" for h in heads)]
    for (queue, domain), counts in sorted(rows.items()):
        lines.append(f"{queue:{width[0]}}{domain:{width[1]}}{sum(counts):>6}" +
                     "".join(f"{c or '.':>7}" for c in counts))
    return "\n".join(lines)


def as_json(entries: list[Entry]) -> str:
    """Every message's envelope, as JSON (ASCII: control characters come out escaped)."""
    return json.dumps([{**e.envelope.stored(), "id": e.id, "queue": e.queue,
                        "age": round(e.age, 1)}
                       for e in entries], indent=2, sort_keys=True)


def describe(entry: Entry) -> str:
    """A readable view of one message's envelope."""
    env = entry.envelope
    received = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(env.received_at or 0))
    lines = [f"id:        {entry.id}", f"queue:     {entry.queue}",
             f"received:  {received} ({entry.age / 60:.0f} min ago) from "
             f"{env.client_ip or '?'} ({env.helo or '?'})",
             f"sender:    <{env.sender}>"]
    if env.authenticated_as:
        lines.append(f"login:     {env.authenticated_as}")
    if entry.queue == "deferred" and env.next_attempt:
        lines.append("next try:  " + time.strftime("%Y-%m-%d %H:%M:%S",
                                                   time.localtime(env.next_attempt)))
    for rcpt in env.recipients:
        lines.append(f"rcpt:      <{rcpt.address}> {rcpt.status} route={rcpt.route} "
                     f"attempts={rcpt.attempts}")
        if rcpt.reply and rcpt.status != "delivered":
            lines.append(f"           last error: {rcpt.reply}")
        if rcpt.reason and rcpt.status != "delivered":
            lines.append(f"           reason:     {_reason(rcpt)}")
    return "\n".join(printable(line) for line in lines)


def _reason(rcpt) -> str:
    confidence = rcpt.reason_confidence
    return rcpt.reason if confidence is None else f"{rcpt.reason} (confidence {confidence:.2f})"


async def act(mail_queue: QueueBackend, action: str,
              msg_ids: list[str]) -> list[tuple[bool, str]]:
    """retry | hold | release | remove | move:QUEUE for each id: (done, what happened)."""
    return [await _outcome(msg_id, _one(mail_queue, action, msg_id)) for msg_id in msg_ids]


async def retry_all(mail_queue: QueueBackend) -> list[tuple[bool, str]]:
    """retry for every deferred message, read in one pass: each is retried as listed,
    not looked up again (on a broker every lookup reads the queue)."""
    entries = (await mail_queue.scan("deferred"))[0]
    return [await _outcome(entry.id, _retry(mail_queue, entry)) for entry in entries]


async def _outcome(msg_id: str, work: Awaitable[str]) -> tuple[bool, str]:
    try:
        return True, printable(await work)
    except QueueError as err:
        return False, printable(f"{msg_id}: {err}")


async def _one(mail_queue: QueueBackend, action: str, msg_id: str) -> str:
    if action == "move:working" and mail_queue.shared:
        raise QueueError("not moved: on a shared queue, working holds what receivers hand "
                         "to post-queue workers, and a message moved there has no hand-off "
                         "(a worker would send it to dead); move it to deliver or hold")
    queue = await mail_queue.locate(msg_id)
    if action == "remove":
        await mail_queue.remove(msg_id, queue)
        return f"{msg_id}: removed from {queue}"
    if action == "retry":
        if queue not in ("deferred", "deliver"):
            raise QueueError(f"in {queue}, nothing to retry")
        return await _retry(mail_queue, await mail_queue.get(msg_id, queue))
    if action == "hold":
        if queue == "hold":
            raise QueueError("already held")
        target = "hold"
    elif action == "release":
        if queue != "hold":
            raise QueueError(f"not held (it is in {queue})")
        target = "deliver"
    else:
        target = action.split(":", 1)[1]
    await mail_queue.move(msg_id, target, queue)
    return f"{msg_id}: {queue} -> {target}"


async def _retry(mail_queue: QueueBackend, entry: Entry) -> str:
    """A message of ``deferred`` or ``deliver`` (as read) to ``deliver``, due now."""
    entry.envelope.next_attempt = None
    await mail_queue.update(entry)
    if entry.queue == "deliver":
        return f"{entry.id}: in deliver, due now"
    await mail_queue.move(entry.id, "deliver", entry.queue)
    return f"{entry.id}: {entry.queue} -> deliver"
