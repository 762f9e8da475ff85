"""`vsl log summary`: what a vSL log says happened, as pflogsumm says it for Postfix.

Design: three steps, each usable alone. server/logrecords.py's ``read_records`` turns the
log's lines into records (one dict per vSL line); :func:`summarize` folds the records into
a :class:`Summary` (plain data, JSON-ready); :func:`render` / :func:`as_json` print it.
:func:`summarize_lines` chains the first two, for a file or a recorded `vsl serve` log.

Memory stays bounded on any log: every table, and every distinct count (senders, messages,
...), keeps at most ``key_cap`` distinct keys; later new keys are counted as ``(other)``
and the summary names the tables and counts that reached the cap (those counts are then
lower bounds). Counts grow with the log; keys do not.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable

from .logrecords import LineTally, read_records

KEY_CAP = 100_000
OTHER = "(other)"


# -- counting ----------------------------------------------------------------------

class CappedCounter:
    """Counts per key for at most ``cap`` distinct keys; later new keys count as (other)."""

    def __init__(self, cap: int):
        self.cap = cap
        self.counts: Counter = Counter()
        self.other = 0

    def add(self, key, amount: int = 1) -> None:
        if key in self.counts or len(self.counts) < self.cap:
            self.counts[key] += amount
        else:
            self.other += amount

    @property
    def capped(self) -> bool:
        return self.other > 0

    def ranked(self) -> list[tuple]:
        """Every kept (key, count), largest first (ties by key)."""
        return sorted(self.counts.items(), key=lambda item: (-item[1], str(item[0])))

    def top(self, n: int) -> list[list]:
        """The ``n`` largest counts as [key, count], then [(other), count] if any."""
        return [[key, count] for key, count in self.ranked()[:n]] + self._other()

    def by_key(self) -> dict:
        """Every count by key, in key order, then (other) if any."""
        return dict(sorted(self.counts.items()) + [tuple(row) for row in self._other()])

    def _other(self) -> list[list]:
        return [[OTHER, self.other]] if self.other else []


@dataclass
class Totals:
    """pflogsumm's Grand Totals: events, and distinct keys where named so."""

    connections: int = 0
    received: int = 0
    bytes_received: int = 0
    delivered: int = 0
    delivered_messages: int = 0
    deferred: int = 0
    deferrals: int = 0
    deferred_messages: int = 0
    bounced: int = 0
    bounced_messages: int = 0
    rejected: int = 0
    rejected_percent: float = 0.0
    held: int = 0
    quarantined: int = 0
    dead: int = 0
    limited: int = 0
    improper_pipelining: int = 0
    auth_failures: int = 0
    dsns: int = 0
    senders: int = 0
    recipients: int = 0
    clients: int = 0


@dataclass
class Summary:
    """What a log says happened (plain data: :func:`as_json` dumps it as it is); ``skipped``
    (lines that were no vSL line) is known to :func:`summarize_lines` only."""

    first: str | None
    last: str | None
    records: int
    skipped: int
    totals: Totals
    dsn: dict[str, int]
    received_by_queue: dict[str, int]
    traffic: list[dict]
    rejects: list[dict]
    deferrals: list[list]
    bounces: list[list]
    top: dict[str, list[list]]
    auth_failures: list[list]
    limits: list[list]
    improper_pipelining: list[list]
    problems: list[list]
    capped: list[str] = field(default_factory=list)
    key_cap: int = KEY_CAP


_TRAFFIC = ("received", "delivered", "deferred", "bounced", "rejected")
_TABLES_KEPT = (  # every table of keys read from the log: each capped
    "senders", "sender_domains", "recipients", "recipient_domains", "clients", "rejects",
    "reject_stages", "deferrals", "bounces", "auth_failures", "limits", "pipelining", "problems", "dsn",
    "received_by_queue", "traffic", "delivered_messages", "deferred_messages",
    "bounced_messages", "deferred_recipients", "all_recipients")


class _Tally:
    """The counters :func:`summarize` fills, one record at a time."""

    def __init__(self, key_cap: int):
        self.key_cap = key_cap
        self.records = 0
        self.first = self.last = None
        self.totals = Totals()
        self.tables = {name: CappedCounter(key_cap) for name in _TABLES_KEPT}

    def add(self, record: dict) -> None:
        self.records += 1
        moment = record.get("ts")
        if isinstance(moment, datetime):
            self.first = moment if self.first is None else min(self.first, moment)
            self.last = moment if self.last is None else max(self.last, moment)
        if record["level"] in ("WARNING", "ERROR", "CRITICAL"):
            self.tables["problems"].add((record["level"], record["logger"]))
        event = record.get("event")
        handler = getattr(self, f"_on_{event}", None) if isinstance(event, str) else None
        if handler is not None:
            handler(record)

    def _hour(self, record: dict, what: str) -> None:
        moment = record.get("ts")
        if isinstance(moment, datetime):
            self.tables["traffic"].add((moment.replace(minute=0, second=0, microsecond=0),
                                        what))

    def _count_address(self, kind: str, value) -> None:
        """Count an address in the table of ``kind`` (senders, recipients) and its domain."""
        address = _address(value)
        self.tables[f"{kind}s"].add(address)
        self.tables[f"{kind}_domains"].add(_domain(address))

    def _on_connect(self, record: dict) -> None:
        self.totals.connections += 1
        self.tables["clients"].add(_text(record.get("client_ip")))

    def _on_queued(self, record: dict) -> None:
        self.totals.received += 1
        size = record.get("size")
        self.totals.bytes_received += size if type(size) is int else 0
        self.tables["received_by_queue"].add(_text(record.get("to_queue")))
        self._count_address("sender", record.get("sender"))
        self._hour(record, "received")

    def _on_reject(self, record: dict) -> None:
        self.totals.rejected += 1
        stage = _text(record.get("stage"))
        self.tables["reject_stages"].add(stage)
        self.tables["rejects"].add((stage, _text(record.get("reply")),
                                    _text(record.get("decided_by"))))
        self._hour(record, "rejected")

    def _on_delivered(self, record: dict) -> None:
        self.totals.delivered += 1
        self._count_address("recipient", record.get("recipient"))
        self._delivery(record, "delivered")

    def _on_deferred(self, record: dict) -> None:
        self.totals.deferrals += 1
        self.tables["deferred_recipients"].add((_text(record.get("queue_id")),
                                                _address(record.get("recipient"))))
        self.tables["deferrals"].add((_text(record.get("route")), _text(record.get("class"))))
        self._delivery(record, "deferred")

    def _on_bounced(self, record: dict) -> None:
        self.totals.bounced += 1
        self.tables["bounces"].add((_text(record.get("route")), _text(record.get("class"))))
        self._delivery(record, "bounced")

    def _delivery(self, record: dict, outcome: str) -> None:
        self.tables[f"{outcome}_messages"].add(_text(record.get("queue_id")))
        self.tables["all_recipients"].add(_address(record.get("recipient")))
        self._hour(record, outcome)

    def _on_dsn(self, record: dict) -> None:
        self.totals.dsns += 1
        self.tables["dsn"].add(_text(record.get("kind")))

    def _on_auth(self, record: dict) -> None:
        if record.get("result") != "success":
            self.totals.auth_failures += 1
            self.tables["auth_failures"].add(_text(record.get("client_ip")))

    def _on_limit(self, record: dict) -> None:
        """A session cut by a limit; a client that pipelined without PIPELINING is only
        warned (the session goes on): counted apart, by client."""
        if record.get("reason") == "pipelining":
            self.totals.improper_pipelining += 1
            self.tables["pipelining"].add(_text(record.get("client_ip")))
            return
        self.totals.limited += 1
        self.tables["limits"].add(_text(record.get("reason")))

    def _on_held(self, record: dict) -> None:
        self.totals.held += 1

    def _on_quarantined(self, record: dict) -> None:
        self.totals.quarantined += 1

    def _on_dead(self, record: dict) -> None:
        self.totals.dead += 1


def _text(value) -> str:
    return "-" if value is None else str(value)


def _address(value) -> str:
    """An address as the tables show it: the null sender as ``<>``."""
    return "<>" if value in (None, "", "<>") else str(value).strip("<>")


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower() if "@" in address else address


def summarize(records: Iterable[dict], top: int = 10, key_cap: int = KEY_CAP) -> Summary:
    """Fold ``records`` (from :func:`read_records`) into a :class:`Summary` whose tables
    keep their ``top`` largest rows."""
    tally = _Tally(key_cap)
    for record in records:
        tally.add(record)
    return _summary(tally, top)


def summarize_lines(lines: Iterable[str | bytes], top: int = 10,
                    key_cap: int = KEY_CAP) -> Summary:
    """The summary of a log given as its lines: what `vsl log summary` prints."""
    lines_tally = LineTally()
    summary = summarize(read_records(lines, lines_tally), top, key_cap)
    return dataclasses.replace(summary, skipped=lines_tally.skipped)


def _summary(tally: _Tally, top: int) -> Summary:
    tables = tally.tables
    totals = dataclasses.replace(
        tally.totals,
        delivered_messages=len(tables["delivered_messages"].counts),
        deferred=len(tables["deferred_recipients"].counts),
        deferred_messages=len(tables["deferred_messages"].counts),
        bounced_messages=len(tables["bounced_messages"].counts),
        rejected_percent=_percent(tally.totals.rejected,
                                  tally.totals.received + tally.totals.rejected),
        senders=len(tables["senders"].counts), recipients=len(tables["all_recipients"].counts),
        clients=len(tables["clients"].counts))
    return Summary(
        first=_stamp(tally.first), last=_stamp(tally.last), records=tally.records, skipped=0,
        totals=totals, dsn=tables["dsn"].by_key(),
        received_by_queue=tables["received_by_queue"].by_key(),
        traffic=_traffic(tables["traffic"]), rejects=_rejects(tables, top),
        deferrals=_pairs(tables["deferrals"].top(top)), bounces=_pairs(tables["bounces"].top(top)),
        top={name: tables[name].top(top) for name in (
            "senders", "sender_domains", "recipients", "recipient_domains", "clients")},
        auth_failures=tables["auth_failures"].top(top), limits=tables["limits"].top(top),
        improper_pipelining=tables["pipelining"].top(top),
        problems=_pairs(tables["problems"].top(top)),
        capped=sorted(name for name, table in tables.items() if table.capped),
        key_cap=tally.key_cap)


def _percent(part: int, whole: int) -> float:
    return round(100 * part / whole, 1) if whole else 0.0


def _stamp(moment: datetime | None) -> str | None:
    return moment.isoformat(sep=" ", timespec="seconds") if moment else None


def _pairs(rows: list[list]) -> list[list]:
    """[(a, b), n] rows as [a, b, n] (the (other) row as [(other), "", n])."""
    return [[*key, count] if isinstance(key, tuple) else [key, "", count]
            for key, count in rows]


def _traffic(traffic: CappedCounter) -> list[dict]:
    """Counts per hour when the log spans one day, else per day."""
    days = {hour.date() for hour, _ in traffic.counts}
    periods: dict[str, Counter] = {}
    for (hour, what), count in sorted(traffic.counts.items()):
        period = hour.strftime("%Y-%m-%d %H:00" if len(days) == 1 else "%Y-%m-%d")
        periods.setdefault(period, Counter())[what] += count
    return [{"period": period, **{what: counts[what] for what in _TRAFFIC}}
            for period, counts in periods.items()]


def _rejects(tables: dict[str, CappedCounter], top: int) -> list[dict]:
    """Per stage (most first): its count and its ``top`` replies with who decided them."""
    replies: dict[str, list[list]] = {}
    for (stage, reply, decided_by), count in tables["rejects"].ranked():
        replies.setdefault(stage, []).append([reply, decided_by, count])
    return [{"stage": stage, "count": count, "replies": replies.get(stage, [])[:top]}
            for stage, count in tables["reject_stages"].top(len(tables["reject_stages"].counts))]


# -- printing ----------------------------------------------------------------------

def as_json(summary: Summary) -> str:
    """The summary as one JSON document, ending with a line break (`vsl log summary --json`)."""
    return json.dumps(dataclasses.asdict(summary), indent=2) + "\n"


_TOTALS = (  # (label, field of Totals, what follows in parentheses or None)
    ("received", "received", lambda summary: _breakdown(summary.received_by_queue)),
    ("delivered", "delivered", lambda summary: _plural(summary.totals.delivered_messages,
                                                       "message")),
    ("deferred", "deferred", lambda summary: (
        f"{_plural(summary.totals.deferrals, 'deferral')}, "
        f"{_plural(summary.totals.deferred_messages, 'message')}")),
    ("bounced", "bounced", lambda summary: _plural(summary.totals.bounced_messages, "message")),
    ("rejected", "rejected",
     lambda summary: f"{summary.totals.rejected_percent}% of received + rejected"),
    ("held", "held", None), ("quarantined", "quarantined", None), ("dead", "dead", None),
    ("bytes received", "bytes_received", None), ("senders", "senders", None),
    ("recipients", "recipients", None), ("clients", "clients", None),
    ("connections", "connections", None), ("sessions cut by limits", "limited", None),
    ("improper pipelining", "improper_pipelining", None),
    ("AUTH failures", "auth_failures", None),
    ("DSNs", "dsns", lambda summary: _breakdown(summary.dsn)))
_TABLES = (("senders", "Senders by message count"),
           ("sender_domains", "Sender domains by message count"),
           ("recipients", "Recipients by delivery count"),
           ("recipient_domains", "Recipient domains by delivery count"),
           ("clients", "Clients by connection count"))


def render(summary: Summary) -> str:
    """The summary as plain text, in pflogsumm's sections."""
    return "\n".join(_heading(summary) + _grand_totals(summary) + _traffic_table(summary)
                     + _reject_section(summary)
                     + _section("Deferrals by route and class", _rows(summary.deferrals))
                     + _section("Bounces by route and class", _rows(summary.bounces))
                     + [line for name, title in _TABLES
                        for line in _section(title, _rows(summary.top[name]))]
                     + _section("AUTH failures by client", _rows(summary.auth_failures))
                     + _section("Sessions cut by limits by reason", _rows(summary.limits))
                     + _section("Improper pipelining by client",
                                _rows(summary.improper_pipelining))
                     + _section("Warnings and errors by logger", _rows(summary.problems))
                     + _cap_note(summary)) + "\n"


def _heading(summary: Summary) -> list[str]:
    span = (f"from {summary.first} to {summary.last}" if summary.first
            else "no time stamps")
    return ["vSL log summary", "===============",
            f"{span}: {summary.records} vSL lines, {summary.skipped} other lines skipped"]


def _grand_totals(summary: Summary) -> list[str]:
    lines = []
    for label, name, detail in _TOTALS:
        text = detail(summary) if detail else ""
        lines.append(f"{getattr(summary.totals, name):>9}  {label}"
                     + (f" ({text})" if text else ""))
    return _section("Grand Totals", lines)


def _breakdown(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {count}" for key, count in counts.items())


def _traffic_table(summary: Summary) -> list[str]:
    if not summary.traffic:
        return _section("Traffic", [])
    width = max(len(row["period"]) for row in summary.traffic)
    header = "".join(f"{what.capitalize():>11}" for what in _TRAFFIC)
    lines = [f"  {'':<{width}}{header}"] + [
        f"  {row['period']:<{width}}" + "".join(f"{row[what]:>11}" for what in _TRAFFIC)
        for row in summary.traffic]
    per = "hour" if len(summary.traffic[0]["period"]) > 10 else "day"
    return _section(f"Traffic per {per}", lines)


def _reject_section(summary: Summary) -> list[str]:
    lines = []
    for stage in summary.rejects:
        lines.append(f"{stage['count']:>9}  {stage['stage']}")
        lines += [f"{n:>13}  {reply}  (decided by {decided_by})"
                  for reply, decided_by, n in stage["replies"]]
    return _section("Rejects by stage and reply", lines)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _rows(rows: list[list]) -> list[str]:
    return [f"{row[-1]:>9}  " + "  ".join(str(cell) for cell in row[:-1] if cell != "")
            for row in rows]


def _section(title: str, lines: list[str]) -> list[str]:
    return ["", title, "-" * len(title)] + (lines or ["        none"])


def _cap_note(summary: Summary) -> list[str]:
    if not summary.capped:
        return []
    return ["", f"Note: {', '.join(summary.capped)} reached {summary.key_cap} distinct keys: "
            "later new keys are counted as (other), and their distinct counts are lower bounds."]
