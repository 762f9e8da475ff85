"""The records of a vSL log: one dict per line that `vsl serve` wrote, text or JSON.

Each line is read as the format it is in (JSON when it begins with ``{``, else text with or
without ``[pid]``), so a log whose format changed midway reads whole; any other line (a
traceback, another program's, bytes that are no UTF-8) is counted as skipped, never raised.

A text line's ``key=value`` tail (server/logfmt.py) is found as the leftmost place where a
well-formed tail begins with the ids in their order (``session``, ``queue_id``, ``event``)
and holds no id after them, so ``key=value`` words of client text in the message before
it (a HELO, an address) are never read as the event's fields.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Iterator

from . import logfmt

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
IDS = ("session", "queue_id", "event")
INTEGERS = frozenset({"pid", "code", "nrcpt", "size", "attempt"})
FLOATS = frozenset({"delay", "duration"})
TAIL_CANDIDATES = 8

_TEXT_LINE = re.compile(
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:,\d{1,6})?) (" + "|".join(LEVELS) +
    r") ([^\s\[\]:]+)(?:\[(\d+)\])?: (.*)")
_TAIL_START = re.compile(r" (?=(?:session|queue_id|event)=)")
_PAIR = r' ([A-Za-z_][A-Za-z0-9_.]*)=(?:"(?:[^"\\]|\\.)*"|[^\s"=\\]+)'
_TAIL = re.compile(f"(?:{_PAIR})+")
_TAIL_KEY = re.compile(_PAIR)


@dataclass
class LineTally:
    """How many lines were read, and how many of them were no vSL line."""

    read: int = 0
    skipped: int = 0


def read_records(lines: Iterable[str | bytes], tally: LineTally | None = None
                 ) -> Iterator[dict]:
    """One dict per vSL line of ``lines`` (text or JSON, with or without ``[pid]``):
    ``ts`` (a naive datetime in UTC, as both formats write it, or None), ``level``,
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
    head = {"ts": _parse_time(stamp.replace(",", ".")), "level": level, "logger": logger,
            "pid": int(pid) if pid else None, "msg": msg}
    return head | {key: _number(key, value) for key, value in tail.items() if key not in head}


def _split_tail(message: str) -> tuple[str, dict[str, str]]:
    """The message and its logfmt tail's pairs ({} when it has none). Only the last
    TAIL_CANDIDATES places where a tail may begin are tried (a real tail has at most three
    ids), so a line holding many ``event=`` words costs linear time, not quadratic."""
    starts = [m.start() for m in _TAIL_START.finditer(message)][-TAIL_CANDIDATES:]
    for start in starts:
        tail = message[start:]
        if _TAIL.fullmatch(tail) and _ids_lead(_TAIL_KEY.findall(tail)):
            return message[:start], logfmt.parse(tail)
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
    except (ValueError, RecursionError):  # RecursionError: [[[[... nested past the stack
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
        if moment.tzinfo is not None:
            moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError):  # OverflowError: 0001-01-01T00:00+01:00
        return None
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
