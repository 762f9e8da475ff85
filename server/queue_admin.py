"""``vsl queue``: what an operator sees of the spool, and what they can do to it.

Works on the spool's files directly, so it runs beside a live server: moves are
atomic renames, and a message the server moved meanwhile is reported, not lost.
"""
from __future__ import annotations

import asyncio
import json
import time

from .queue import Entry, QueueError, Spool

AGE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)  # minutes, like vqueue's table


def domains(entry: Entry) -> list[str]:
    """The recipient domains of a message, each once."""
    seen = []
    for rcpt in entry.envelope.get("recipients", []):
        domain = rcpt.get("address", "").rpartition("@")[2].lower() or "(none)"
        if domain not in seen:
            seen.append(domain)
    return seen


def _bucket(age_seconds: float) -> int:
    minutes = age_seconds / 60
    for i, limit in enumerate(AGE_BUCKETS):
        if minutes < limit:
            return i
    return len(AGE_BUCKETS)


def table(entries: list[Entry]) -> str:
    """Counts by queue and recipient domain, in age columns (minutes)."""
    heads = [f"<{m}" for m in AGE_BUCKETS] + [f">={AGE_BUCKETS[-1]}"]
    rows: dict[tuple[str, str], list[int]] = {}
    for entry in entries:
        for domain in domains(entry):
            row = rows.setdefault((entry.queue, domain), [0] * len(heads))
            row[_bucket(entry.age)] += 1
    if not rows:
        return "the queue is empty"
    width = max(len(q) for q, _ in rows) + 2, max(len(d) for _, d in rows) + 2
    lines = [f"{'QUEUE':{width[0]}}{'DOMAIN':{width[1]}}{'TOTAL':>6}" +
             "".join(f"{h:>7}" for h in heads)]
    for (queue, domain), counts in sorted(rows.items()):
        lines.append(f"{queue:{width[0]}}{domain:{width[1]}}{sum(counts):>6}" +
                     "".join(f"{c or '.':>7}" for c in counts))
    return "\n".join(lines)


def as_json(entries: list[Entry]) -> str:
    return json.dumps([{"id": e.id, "queue": e.queue, "age": round(e.age, 1), **e.envelope}
                       for e in entries], indent=2, sort_keys=True)


def describe(entry: Entry) -> str:
    """A readable view of one message's envelope."""
    env = entry.envelope
    received = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(env.get("received_at", 0)))
    lines = [f"id:        {entry.id}", f"queue:     {entry.queue}",
             f"received:  {received} ({entry.age / 60:.0f} min ago) from "
             f"{env.get('client_ip', '?')} ({env.get('helo') or '?'})",
             f"sender:    <{env.get('sender', '')}>"]
    if env.get("next_attempt"):
        lines.append("next try:  " + time.strftime("%Y-%m-%d %H:%M:%S",
                                                   time.localtime(env["next_attempt"])))
    for rcpt in env.get("recipients", []):
        extra = "".join(f" {key}={rcpt[key]}" for key in ("route", "attempts") if rcpt.get(key))
        lines.append(f"rcpt:      <{rcpt.get('address')}> {rcpt.get('status', '?')}{extra}")
        if rcpt.get("error"):
            lines.append(f"           last error: {rcpt['error']}")
    return "\n".join(lines)


def act(spool: Spool, action: str, msg_ids: list[str]) -> list[tuple[bool, str]]:
    """retry | hold | release | remove | move:QUEUE for each id: (done, what happened)."""
    return asyncio.run(_act(spool, action, msg_ids))


async def _act(spool: Spool, action: str, msg_ids: list[str]) -> list[tuple[bool, str]]:
    done = []
    for msg_id in msg_ids:
        try:
            done.append((True, await _one(spool, action, msg_id)))
        except (QueueError, FileNotFoundError) as err:
            why = err if isinstance(err, QueueError) else "moved meanwhile"
            done.append((False, f"{msg_id}: {why}"))
    return done


async def _one(spool: Spool, action: str, msg_id: str) -> str:
    queue = spool.locate(msg_id)
    if action == "remove":
        spool.remove(msg_id, queue)
        return f"{msg_id}: removed from {queue}"
    if action == "retry":
        if queue not in ("deferred", "deliver"):
            raise QueueError(f"in {queue}, nothing to retry")
        entry = spool.get(msg_id, queue)
        entry.envelope.pop("next_attempt", None)
        await spool.update(entry)
        target = "deliver"
    elif action == "hold":
        target = "hold"
    elif action == "release":
        if queue != "hold":
            raise QueueError(f"not held (it is in {queue})")
        target = "deliver"
    else:
        target = action.split(":", 1)[1]
    await spool.move(msg_id, target, queue)
    return f"{msg_id}: {queue} -> {target}"
