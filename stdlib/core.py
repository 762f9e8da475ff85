"""Global functions (no namespace): ``print(value)`` and ``log([topic,] level, message)``."""
from __future__ import annotations

import logging
import sys

from vsl.errors import ScriptError
from vsl.natives import Namespace
from vsl.values import preview

namespace = Namespace("", "Global functions")

LINE_LIMIT = 10_000  # characters of a non-string value printed or logged
LEVELS = {"trace": 5, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR}


@namespace.native
def print_(value) -> None:
    """Write a value to standard output (the server writes it to its log)."""
    sys.stdout.write(_text(value) + "\n")


def _check_log(args) -> str | None:
    level = args[1] if len(args) == 3 else args[0] if args else None
    if isinstance(level, str) and level not in LEVELS:
        return f"unknown log level '{level}' (use {', '.join(LEVELS)})"
    return None


@namespace.native(name="log", check=_check_log)
def log(first, second, third=None) -> None:
    """log(level, message) or log(topic, level, message): write to the server's log.

    ``level``: ``trace``, ``debug``, ``info``, ``warn`` or ``error``; the topic is ``app``
    unless given. ``vsl run`` prints the messages on stderr."""
    topic, level, message = ("app", first, second) if third is None else (first, second, third)
    if level not in LEVELS:
        raise ScriptError(f"unknown log level {preview(level)} (use {', '.join(LEVELS)})")
    logging.getLogger(f"vsl.script.{_text(topic)}").log(LEVELS[level], _text(message))


def _text(value) -> str:
    """A value's text for a log line, cut short when it is huge."""
    return value if type(value) is str else preview(value, LINE_LIMIT)
