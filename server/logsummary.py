"""`vsl log summary`: what a vSL log says happened, as pflogsumm says it for Postfix.

Design: three steps, each usable alone. :func:`read_records` turns lines (text or JSON,
decided per line, in the formats of server/logformat.py: the log contract) into one
dict per vSL line and counts the other lines as skipped, whatever their bytes;
:func:`summarize` folds the records into a :class:`Summary` (plain data, JSON-ready); and
:func:`render` / :func:`as_json` print it. :func:`summarize_lines` chains the first two,
for a file or a recorded `vsl serve` log.

Memory stays bounded on any log: every table, and every distinct count (senders, messages,
...), keeps at most ``key_cap`` distinct keys; later new keys are counted as ``(other)``
and the summary names the tables and counts that reached the cap (those counts are then
lower bounds). Counts grow with the log; keys do not.

A text line's ``key=value`` tail (server/logfmt.py) is found as the leftmost place where a
well-formed tail begins with the ids in their order (``session``, ``queue_id``, ``event``)
and holds no id after them, so ``key=value`` words of client text in the message before
it (a HELO, an address) are never read as the event's fields.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator

from . import logfmt

KEY_CAP = 100_000
OTHER = "(other)"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
IDS = ("session", "queue_id", "event")
INTEGERS = frozenset({"pid", "code", "nrcpt", "size", "attempt"})
FLOATS = frozenset({"delay", "duration"})

_TEXT_LINE = re.compile(
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:,\d{1,6})?) (" + "|".join(LEVELS) +
    r") ([^\s\[\]:]+)(?:\[(\d+)\])?: (.*)")
_TAIL_START = re.compile(r" (?=(?:session|queue_id|event)=)")
_PAIR = r' ([A-Za-z_][A-Za-z0-9_.]*)=(?:"(?:[^"\\]|\\.)*"|[^\s"=\\]+)'
_TAIL = re.compile(f"(?:{_PAIR})+")
_TAIL_KEY = re.compile(_PAIR)


# -- reading -----------------------------------------------------------------------

@dataclass
class LineTally:
    """How many lines were read, and how many of them were no vSL line."""

    read: int = 0
    skipped: int = 0


def read_records(lines: Iterable[str | bytes], tally: LineTally | None = None
                 ) -> Iterator[dict]:
    """One dict per vSL line of ``lines`` (text or JSON, with or without ``[pid]``):
    ``ts`` (a naive datetime, UTC for JSON, the server's time for text, or None), ``level``,
    ``logger``, ``pid``, ``msg``, then the ids and the event's fields (numbers as numbers).
    Other lines are counted in ``tally.skipped``; no line raises."""
    tally = tally if tally is not None else LineTally()
    for line in lines:
        tally.read += 1
        if isinstance(line, bytes):
            line = line.decode("utf-8", errors="replace")
        record = _json_record(line) if line.lstrip().startswith("{") else _text_record(line)
        if record is None:
            tally.skipped += 1
        else:
            yield record


def _text_record(line: str) -> dict | None:
    match = _TEXT_LINE.fullmatch(line.rstrip("\r\n"))
    if match is None:
        return None
    stamp, level, logger, pid, message = match.groups()
    msg, tail = _split_tail(message)
    record = {"ts": _parse_time(stamp.replace(",", ".")), "level": level, "logger": logger,
              "pid": int(pid) if pid else None, "msg": msg}
    record.update({key: _number(key, value) for key, value in tail.items()})
    return record


def _split_tail(message: str) -> tuple[str, dict[str, str]]:
    """The message and its logfmt tail's pairs ({} when it has none)."""
    for start in _TAIL_START.finditer(message):
        tail = message[start.start():]
        if _TAIL.fullmatch(tail) and _ids_lead(_TAIL_KEY.findall(tail)):
            return message[:start.start()], logfmt.parse(tail)
    return message, {}


def _ids_lead(keys: list[str]) -> bool:
    """Whether the ids come first, each at most once and in their order, and never after."""
    leading = 0
    while leading < len(keys) and keys[leading] in IDS:
        leading += 1
    ids = keys[:leading]
    return (ids == sorted(set(ids), key=IDS.index)
            and not any(key in IDS for key in keys[leading:]))


def _json_record(line: str) -> dict | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not (isinstance(data, dict) and data.get("level") in LEVELS
            and isinstance(data.get("logger"), str) and isinstance(data.get("msg"), str)):
        return None
    stamp = data.get("ts")
    record = {key: _number(key, value) for key, value in data.items()}
    record["ts"] = _parse_time(stamp) if isinstance(stamp, str) else None
    record.setdefault("pid", None)
    return record


def _parse_time(stamp: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def _number(key: str, value):
    """``value`` as the number the contract says ``key`` holds; else as it is."""
    kind = int if key in INTEGERS else float if key in FLOATS else None
    if kind is None or not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return value
    try:
        return kind(value)
    except (ValueError, OverflowError):
        return value


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

    def top(self, n: int) -> list[list]:
        """The ``n`` largest counts as [key, count] (ties by key), then (other) if any."""
        rows = sorted(self.counts.items(), key=lambda item: (-item[1], str(item[0])))[:n]
        return [[key, count] for key, count in rows] + ([[OTHER, self.other]]
                                                        if self.other else [])


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
    auth_failures: int = 0
    senders: int = 0
    recipients: int = 0
    clients: int = 0


@dataclass
class Summary:
    """What a log says happened (plain data: :func:`as_json` dumps it as it is)."""

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
    problems: list[list]
    capped: list[str] = field(default_factory=list)
    key_cap: int = KEY_CAP


_TRAFFIC = ("received", "delivered", "deferred", "bounced", "rejected")


class _Tally:
    """The counters :func:`summarize` fills, one record at a time."""

    def __init__(self, key_cap: int):
        def capped() -> CappedCounter:
            return CappedCounter(key_cap)
        self.key_cap = key_cap
        self.records = 0
        self.first = self.last = None
        self.totals = Totals()
        self.dsn: Counter = Counter()
        self.received_by_queue: Counter = Counter()
        self.hours: dict[datetime, Counter] = {}
        self.reject_stages: Counter = Counter()
        self.tables = {name: capped() for name in (
            "senders", "sender_domains", "recipients", "recipient_domains", "clients",
            "rejects", "deferrals", "bounces", "auth_failures", "limits", "problems",
            "delivered_messages", "deferred_messages", "bounced_messages",
            "deferred_recipients", "all_recipients")}

    def add(self, record: dict) -> None:
        self.records += 1
        moment = record.get("ts")
        if isinstance(moment, datetime):
            self.first = moment if self.first is None else min(self.first, moment)
            self.last = moment if self.last is None else max(self.last, moment)
        if record["level"] in ("WARNING", "ERROR", "CRITICAL"):
            self.tables["problems"].add((record["level"], record["logger"]))
        handler = getattr(self, f"_on_{record.get('event')}", None)
        if handler is not None and isinstance(record.get("event"), str):
            handler(record)

    def _hour(self, record: dict, what: str) -> None:
        moment = record.get("ts")
        if isinstance(moment, datetime):
            hour = moment.replace(minute=0, second=0, microsecond=0)
            self.hours.setdefault(hour, Counter())[what] += 1

    def _on_connect(self, record: dict) -> None:
        self.totals.connections += 1
        self.tables["clients"].add(_text(record.get("client_ip")))

    def _on_queued(self, record: dict) -> None:
        self.totals.received += 1
        size = record.get("size")
        self.totals.bytes_received += size if isinstance(size, int) else 0
        self.received_by_queue[_text(record.get("to_queue"))] += 1
        sender = _address(record.get("sender"))
        self.tables["senders"].add(sender)
        self.tables["sender_domains"].add(_domain(sender))
        self._hour(record, "received")

    def _on_reject(self, record: dict) -> None:
        self.totals.rejected += 1
        stage = _text(record.get("stage"))
        self.reject_stages[stage] += 1
        self.tables["rejects"].add((stage, _text(record.get("reply")),
                                    _text(record.get("decided_by"))))
        self._hour(record, "rejected")

    def _on_delivered(self, record: dict) -> None:
        self.totals.delivered += 1
        recipient = _address(record.get("recipient"))
        self.tables["recipients"].add(recipient)
        self.tables["recipient_domains"].add(_domain(recipient))
        self._delivery(record, "delivered")

    def _on_deferred(self, record: dict) -> None:
        self.totals.deferrals += 1
        self.tables["deferred_recipients"].add((record.get("queue_id"),
                                                _address(record.get("recipient"))))
        self.tables["deferrals"].add((_text(record.get("route")), _text(record.get("class"))))
        self._delivery(record, "deferred")

    def _on_bounced(self, record: dict) -> None:
        self.totals.bounced += 1
        self.tables["bounces"].add((_text(record.get("route")), _text(record.get("class"))))
        self._delivery(record, "bounced")

    def _delivery(self, record: dict, outcome: str) -> None:
        self.tables[f"{outcome}_messages"].add(record.get("queue_id"))
        self.tables["all_recipients"].add(_address(record.get("recipient")))
        self._hour(record, outcome)

    def _on_dsn(self, record: dict) -> None:
        self.dsn[_text(record.get("kind"))] += 1

    def _on_auth(self, record: dict) -> None:
        if record.get("result") != "success":
            self.totals.auth_failures += 1
            self.tables["auth_failures"].add(_text(record.get("client_ip")))

    def _on_limit(self, record: dict) -> None:
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
        totals=totals, dsn=dict(sorted(tally.dsn.items())),
        received_by_queue=dict(sorted(tally.received_by_queue.items())),
        traffic=_traffic(tally.hours), rejects=_rejects(tally, top),
        deferrals=_pairs(tables["deferrals"].top(top)), bounces=_pairs(tables["bounces"].top(top)),
        top={name: tables[name].top(top) for name in (
            "senders", "sender_domains", "recipients", "recipient_domains", "clients")},
        auth_failures=tables["auth_failures"].top(top), limits=tables["limits"].top(top),
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


def _traffic(hours: dict[datetime, Counter]) -> list[dict]:
    """Per hour when the log spans one day, else per day."""
    days = {hour.date() for hour in hours}
    periods: dict[str, Counter] = {}
    for hour, counts in sorted(hours.items()):
        period = hour.strftime("%Y-%m-%d %H:00") if len(days) == 1 else hour.strftime("%Y-%m-%d")
        periods.setdefault(period, Counter()).update(counts)
    return [{"period": period, **{what: counts[what] for what in _TRAFFIC}}
            for period, counts in periods.items()]


def _rejects(tally: _Tally, top: int) -> list[dict]:
    """Per stage (most first): its count and its top replies with who decided them."""
    replies = tally.tables["rejects"]
    ranked = replies.top(len(replies.counts))
    stages = sorted(tally.reject_stages.items(), key=lambda item: (-item[1], item[0]))
    return [{"stage": stage, "count": count,
             "replies": [[reply, decided_by, n] for (at, reply, decided_by), n in
                         (row for row in ranked if row[0] != OTHER) if at == stage][:top]}
            for stage, count in stages]


# -- printing ----------------------------------------------------------------------

def as_json(summary: Summary) -> str:
    """The summary as one JSON document (`vsl log summary --json`)."""
    return json.dumps(dataclasses.asdict(summary), indent=2)


_TOTALS = (  # (label, field, detail or None)
    ("received", "received", "received_by_queue"), ("delivered", "delivered", None),
    ("deferred", "deferred", None), ("bounced", "bounced", None),
    ("rejected", "rejected", None), ("held", "held", None),
    ("quarantined", "quarantined", None), ("dead", "dead", None),
    ("bytes received", "bytes_received", None), ("senders", "senders", None),
    ("recipients", "recipients", None), ("clients", "clients", None),
    ("connections", "connections", None), ("sessions cut by limits", "limited", None),
    ("AUTH failures", "auth_failures", None), ("DSNs", None, "dsn"))
_DETAILS = {  # what follows a total in parentheses
    "delivered": lambda t: _plural(t["delivered_messages"], "message"),
    "deferred": lambda t: (f"{_plural(t['deferrals'], 'deferral')}, "
                           f"{_plural(t['deferred_messages'], 'message')}"),
    "bounced": lambda t: _plural(t["bounced_messages"], "message"),
    "rejected": lambda t: f"{t['rejected_percent']}% of received + rejected"}
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
                     + _section("Warnings and errors by logger", _rows(summary.problems))
                     + _cap_note(summary)) + "\n"


def _heading(summary: Summary) -> list[str]:
    span = (f"from {summary.first} to {summary.last}" if summary.first
            else "no time stamps")
    return ["vSL log summary", "===============",
            f"{span}: {summary.records} vSL lines, {summary.skipped} other lines skipped"]


def _grand_totals(summary: Summary) -> list[str]:
    totals = dataclasses.asdict(summary.totals)
    lines = []
    for label, name, detail in _TOTALS:
        count = totals[name] if name else sum(getattr(summary, detail).values())
        text = _DETAILS[name](totals) if name in _DETAILS else ""
        if detail:
            text = ", ".join(f"{key} {n}" for key, n in getattr(summary, detail).items())
        lines.append(f"{count:>9}  {label}" + (f" ({text})" if text else ""))
    return _section("Grand Totals", lines)


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
