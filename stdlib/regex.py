"""``regex::`` -- regular expressions (Python's ``re``: Postfix's ``pcre:`` and ``regexp:``
tables).

    let m = regex::captures("^(.*)@example\\.test$", ctx.sender.to_string(), "i");
    if m != () { log("info", m[1]); }

Patterns are compiled once and cached. The text searched is charged to the script's
operations by its length; patterns come from the script (the operator), not the client.
"""
from __future__ import annotations

import re
from functools import lru_cache

from vsl.errors import ScriptError
from vsl.natives import Namespace

namespace = Namespace("regex", "Regular expressions")

FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


@lru_cache(maxsize=1024)
def _compile(pattern: str, flags: str) -> re.Pattern:
    bits = 0
    for flag in flags:
        if flag not in FLAGS:
            raise ScriptError(f"regex: unknown flag '{flag}' (use {', '.join(FLAGS)})")
        bits |= FLAGS[flag]
    try:
        return re.compile(pattern, bits)
    except re.error as err:
        raise ScriptError(f"regex: bad pattern '{pattern}': {err}") from None


def _check(args) -> str | None:
    if len(args) >= 1 and all(isinstance(a, str) for a in args[:1] + args[2:3]):
        try:
            _compile(args[0], args[2] if len(args) > 2 else "")
        except ScriptError as err:
            return str(err)
    return None


def _text_size(pattern, text, flags="") -> int:
    return len(text) if isinstance(text, str) else 0


@namespace.native(check=_check, charges=_text_size)
def captures(pattern, text, flags="") -> list | None:
    """captures(pattern, text, flags?): () when ``pattern`` is not found in ``text``, else
    the whole match and each group ("" for a group that took no part). ``flags``: any of
    ``i`` (ignore case), ``m``, ``s``, ``x``."""
    if not all(isinstance(v, str) for v in (pattern, text, flags)):
        raise ScriptError("regex::captures takes strings")
    found = _compile(pattern, flags).search(text)
    if found is None:
        return None
    return [found.group(0), *(g or "" for g in found.groups())]
