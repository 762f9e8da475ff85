"""Text that clients and remote servers chose (HELO, addresses, replies), made safe to
show an operator: in a terminal (``vsl queue``) or a log line. No control character (a
terminal escape sequence, a carriage return that overwrites a line, a bidi override)
passes through; each is escaped as Python writes it (``\\x1b``, ``\\u202e``). Bytes that
were not UTF-8 (kept as lone surrogates, ``\\udc9b``) are escaped too: some terminals read
0x9b as a control."""
from __future__ import annotations

import logging
import re

# DEL, C1 controls and the Unicode format characters that reorder or hide text
_OTHER_CONTROLS = (r"\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
                   r"\ud800-\udfff")
_UNPRINTABLE = re.compile(rf"[\x00-\x1f{_OTHER_CONTROLS}]")
_UNPRINTABLE_BUT_LINES = re.compile(rf"[\x00-\x08\x0b-\x1f{_OTHER_CONTROLS}]")  # keeps \t \n


def printable(value, lines: bool = False) -> str:
    """``value`` as text with every control character escaped (``\\x1b``, ``\\u202e``);
    with ``lines``, line feeds and tabs stay."""
    text = str(value)
    if text.isascii() and text.isprintable():  # the common case: nothing to escape
        return text
    pattern = _UNPRINTABLE_BUT_LINES if lines else _UNPRINTABLE
    return pattern.sub(_escape, text)


def marked(value) -> str:
    """``value`` with each control character (and byte that was not UTF-8) made '?', as
    Postfix's printable() passes on text a remote server chose (a reply, into a DSN)."""
    return _UNPRINTABLE.sub("?", str(value))


def _escape(found: re.Match) -> str:
    return found.group().encode("unicode_escape").decode("ascii")


class SafeFormatter(logging.Formatter):
    """Log lines that client text cannot forge or use to drive a terminal: controls are
    escaped in the message and in a traceback (whose messages may quote a client), and
    every line after a record's first is indented, so no text a client sent starts a line
    of its own (what fail2ban reads)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = indented(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:
        return "  " + indented(super().formatException(ei))  # it goes on a line of its own

    def formatStack(self, stack_info: str) -> str:
        return "  " + indented(super().formatStack(stack_info))


def indented(text: str) -> str:
    """``text`` escaped, its lines after the first indented (they cannot pass for a line
    of their own)."""
    return printable(text, lines=True).replace("\n", "\n  ")
