"""The formats of the server's log lines (described in docs/observability.md#logs):

- text: ``TIME LEVEL LOGGER[PID]: MESSAGE`` (TIME in UTC, ``2026-12-06 21:06:05,123``;
  client text escaped: SafeFormatter), then a logfmt tail (server/logfmt.py) of the ids
  and the event's fields when there are any, at the end of the message's first line (so
  a multi-line message's event line keeps them):
  ``... session=3f2a9c1b7d0e queue_id=... event=reject stage=rcpt code=554``;
- json: one object a line, keys in a stable order: ``ts`` (RFC 3339 UTC, µs), ``level``,
  ``logger``, ``pid``, ``msg``, the ids and the event's fields, ``sd`` (a script's
  structured data) and ``exc`` (a traceback) when present.

A record's ids come from server/logids.py's filter, its event and fields from
server/logevents.py, a script's structured data from server/logsetup.py's filter.
"""
from __future__ import annotations

import json
import logging
import re
import time
from datetime import datetime, timezone

from .logfmt import encode_value
from .printable import SafeFormatter, indented, printable

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
# printable ASCII but space, '"', '=' and '\\': a value printable() keeps, logfmt writes bare
_PLAIN = re.compile(r'[!#-<>-\[\]-~]+')


def record_fields(record: logging.LogRecord) -> dict:
    """The ids, the event and its fields of ``record``, in order, None values left out;
    text values escaped as the message is (they may be a client's). Computed once per
    record (kept on it), however many handlers format it."""
    fields = getattr(record, "vsl_formatted_fields", None)
    if fields is None:
        fields = record.vsl_formatted_fields = _fields(record)
    return fields


def _fields(record: logging.LogRecord) -> dict:
    return {key: printable(value) if isinstance(value, str) and not _PLAIN.fullmatch(value)
            else value for key, value in _raw_fields(record).items() if value is not None}


def _raw_fields(record: logging.LogRecord) -> dict:
    """The ids, the event and its fields of ``record``, as given (None values too)."""
    fields = {"session": getattr(record, "session", None),
              "queue_id": getattr(record, "queue_id", None),
              "event": getattr(record, "vsl_event", None)}
    fields.update(getattr(record, "vsl_fields", ()))
    return fields


def text_tail(record: logging.LogRecord) -> str:
    """``encode(record_fields(record))`` in one pass: a plain value is written as it is."""
    return " ".join([f"{key}={value}" if isinstance(value, str) and _PLAIN.fullmatch(value)
                     else f"{key}={_escaped(value)}"
                     for key, value in _raw_fields(record).items() if value is not None])


def _escaped(value) -> str:
    """A field's value as the tail writes it: escaped by printable(), then logfmt."""
    return encode_value(printable(value) if isinstance(value, str) else value)


def script_sd(record: logging.LogRecord) -> tuple[list, str | None]:
    """A script line's structured data (a list of (SD-ID, [(name, value)])) and its text
    without it (None: the record has none)."""
    return getattr(record, "vsl_sd", []), getattr(record, "vsl_sd_rest", None)


class TextFormatter(SafeFormatter):
    """Postfix-like lines in UTC, with the logfmt tail of the ids and the event at the
    end of the first line."""

    converter = time.gmtime

    def __init__(self):
        super().__init__(TEXT_FORMAT)
        self.second: int | None = None  # the second of the last line's time, and its text
        self.second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt=None) -> str:
        """The time as logging writes it (``2026-12-06 21:06:05,123``), the second's text
        made once a second."""
        second = int(record.created)
        if second != self.second:
            self.second_text = time.strftime(self.default_time_format, self.converter(second))
            self.second = second
        return self.default_msec_format % (self.second_text, record.msecs)

    def format(self, record: logging.LogRecord) -> str:
        """logging's line; made here, without its general steps, when there is no
        traceback or stack to add (every event line)."""
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = indented(record.getMessage())
        record.asctime = self.formatTime(record)
        return self._tailed(TEXT_FORMAT % record.__dict__, record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return self._tailed(super().formatMessage(record), record)

    @staticmethod
    def _tailed(line: str, record: logging.LogRecord) -> str:
        """``line`` with the logfmt tail of ``record`` at the end of its first line."""
        tail = text_tail(record)
        if not tail:
            return line
        first, newline, rest = line.partition("\n")
        return f"{first} {tail}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        sd, rest = script_sd(record)
        line = {"ts": rfc3339(record.created), "level": record.levelname,
                "logger": record.name, "pid": record.process,
                "msg": printable(record.getMessage() if rest is None else rest),
                **record_fields(record)}
        if sd:
            line["sd"] = [{"id": sd_id, "params": {name: printable(value)
                                                   for name, value in params}}
                          for sd_id, params in sd]
        if record.exc_info:
            line["exc"] = printable(self.formatException(record.exc_info), lines=True)
        return json.dumps(line, ensure_ascii=False)


def rfc3339(created: float) -> str:
    """A record's time as RFC 3339 in UTC with microseconds: 2026-12-06T21:06:05.123456Z."""
    return datetime.fromtimestamp(created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
