"""Global functions (no namespace): ``print(value)`` and ``log([topic,] level, message)``."""
from __future__ import annotations

import logging
import sys

from vsl.errors import ScriptError
from vsl.natives import Namespace
from vsl.values import display

namespace = Namespace("", "Global functions")

LEVELS = {"trace": 5, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR}


@namespace.native
def print_(value) -> None:
    """Write a value to standard output (the server writes it to its log)."""
    sys.stdout.write(display(value) + "\n")


def _check_log(args) -> str | None:
    level = args[1] if len(args) == 3 else args[0] if args else None
    if isinstance(level, str) and level not in LEVELS:
        return f"unknown log level '{level}' (use {', '.join(LEVELS)})"
    return None


@namespace.native(name="log", check=_check_log)
def log(*args) -> None:
    """log(level, message) or log(topic, level, message): write to the server's log."""
    if len(args) == 2:
        topic, (level, message) = "app", args
    elif len(args) == 3:
        topic, level, message = args
    else:
        raise ScriptError(f"log takes 2 or 3 arguments, not {len(args)}")
    if level not in LEVELS:
        raise ScriptError(f"unknown log level {display(level)} (use {', '.join(LEVELS)})")
    logging.getLogger(f"vsl.script.{display(topic)}").log(LEVELS[level], display(message))
