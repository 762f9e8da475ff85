"""Log lines that are events (docs/observability.md#logs): the text an operator reads,
plus the event's name and fields for the JSON and syslog formats and the text line's
logfmt tail (``vsl log summary`` reads them).

    event(log, logging.INFO, "queued", "%s: queued %s", ip, msg_id,
          client_ip=ip, sender=sender, nrcpt=2, size=1234, to_queue="working")
"""
from __future__ import annotations

import logging
import re

_CODES = re.compile(r"(\d{3})(?:[ -]([245]\.\d{1,3}\.\d{1,3}))?")


def event(logger: logging.Logger, level: int, name: str, msg_fmt: str, *args,
          exc_info=None, **fields) -> None:
    """Log ``msg_fmt % args`` at ``level`` as the event ``name`` with ``fields`` (in
    their order; None values are left out by the formatters), and ``exc_info`` as
    logging takes it."""
    if logger.isEnabledFor(level):
        logger.log(level, msg_fmt, *args, exc_info=exc_info, stacklevel=2,
                   extra={"vsl_event": name, "vsl_fields": fields})


def reply_codes(reply: str) -> tuple[int | None, str | None]:
    """An SMTP reply's code and enhanced status code (None for what it lacks)."""
    found = _CODES.match(reply)
    return (int(found[1]), found[2]) if found else (None, None)
