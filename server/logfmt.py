"""The ``key=value`` tail of a text log line (logfmt), written and read back.

A text line ends with its ids and its event's fields, so ``grep session=…`` finds a
whole conversation and ``vsl log summary`` reads a text log as well as a JSON one:

    ... NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 554 5.7.1 Relay access denied;
    from=<a@example.org> to=<b@example.net> session=3f2a9c1b7d0e event=reject stage=rcpt

A value is written bare when it is a non-empty run of characters other than space,
``"``, ``=`` and ``\\``; otherwise in double quotes, with ``\\``, ``"`` and control
characters escaped (``\\n``, ``\\r``, ``\\t``, ``\\xHH``), so a tail is always one line
and ``parse(encode(pairs)) == pairs``.
"""
from __future__ import annotations

import re

_BARE = re.compile(r'[^\s"=\\]+')
_PAIR = re.compile(r'(?:^|\s)([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|[^\s"=\\]+)')
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_TO_ESCAPE = re.compile(r'[\\"\x00-\x1f\x7f]')
_UNESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)")
_NAMED = {"n": "\n", "r": "\r", "t": "\t"}


def encode_value(value) -> str:
    """One value as logfmt writes it."""
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    return '"' + _TO_ESCAPE.sub(_escape, text) + '"'


def _escape(found: re.Match) -> str:
    char = found.group()
    return _ESCAPES.get(char) or f"\\x{ord(char):02x}"


def encode(pairs: dict) -> str:
    """``key=value`` pairs joined by spaces; None values are left out."""
    return " ".join(f"{key}={encode_value(value)}" for key, value in pairs.items()
                    if value is not None)


def parse(text: str) -> dict[str, str]:
    """Every ``key=value`` pair found in ``text`` (values as strings, unquoted)."""
    return {key: _decode(value) for key, value in _PAIR.findall(text)}


def _decode(value: str) -> str:
    if not value.startswith('"'):
        return value
    return _UNESCAPE.sub(lambda m: _unescape(m.group(1)), value[1:-1])


def _unescape(code: str) -> str:
    if code.startswith("x") and len(code) == 3:
        return chr(int(code[1:], 16))
    return _NAMED.get(code, code)
