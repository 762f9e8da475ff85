"""``regex::`` -- regular expressions (the ``regex`` module: Postfix's ``pcre:`` and
``regexp:`` tables).

    let m = regex::captures("^(.*)@example\\.test$", ctx.sender.to_string(), "i");
    if m != () { log("info", m[1]); }

Bounded work. A pattern can backtrack exponentially on a text the client chose
(``vsl migrate postfix`` runs ``pcre:`` tables on senders, recipients and HELO names),
and Python's ``re`` then runs to the end holding the GIL, stalling every session. The
``regex`` module keeps Python's syntax (adding PCRE's ``\\p{..}``, atomic groups and
possessive quantifiers), stops a search at its ``timeout=`` and, with
``concurrent=True``, releases the GIL while it searches: a search gets 50 ms (as
Postfix's PCRE has match limits), then fails with an error the script can catch.
Compiling is bounded before it starts: ``regex`` unrolls counted repeats
(``(a{1000}){1000}`` is a million-character program), so a pattern over 2000
characters, or whose counted repeats unroll to over 100000, is refused. Compiled
patterns are cached (the last 1024).
"""
from __future__ import annotations

from functools import lru_cache
import re
from typing import TYPE_CHECKING

from vsl.errors import ScriptError
from vsl.natives import Namespace

if TYPE_CHECKING:
    import regex  # imported by compile_pattern: a script that never compiles one (and
    # `vsl lint` of a script without regex::) does not load it

namespace = Namespace("regex", "Regular expressions")

FLAGS = {"i": "IGNORECASE", "m": "MULTILINE", "s": "DOTALL", "x": "VERBOSE"}  # regex's names
SEARCH_TIMEOUT = 0.05  # seconds a search may take
MAX_PATTERN = 2000  # characters
MAX_UNROLLED = 100_000  # characters a pattern's counted repeats may unroll to
CACHE_SIZE = 1024  # compiled patterns kept

_COUNTED_REPEAT = re.compile(r"\{(\d*)(?:,(\d*))?\}")


@lru_cache(maxsize=CACHE_SIZE)
def compile_pattern(pattern: str, flags: str) -> regex.Pattern:
    """``pattern`` compiled as ``regex::`` runs it (``flags``: any of i, m, s, x): a
    ScriptError for a bad flag or pattern, or one too large to compile."""
    import regex

    bits = 0
    for flag in flags:
        if flag not in FLAGS:
            raise ScriptError(f"regex: unknown flag '{flag}' (use {', '.join(FLAGS)})")
        bits |= getattr(regex, FLAGS[flag])
    if len(pattern) > MAX_PATTERN or _unrolled_size(pattern) > MAX_UNROLLED:
        raise ScriptError(f"regex: pattern too large (over {MAX_PATTERN} characters, or "
                          f"counted repeats over {MAX_UNROLLED} in all): '{pattern[:60]}'")
    try:
        return regex.compile(pattern, bits)
    except regex.error as err:
        raise ScriptError(f"regex: bad pattern '{pattern}': {err}") from None


def _unrolled_size(pattern: str) -> int:
    """The size of ``pattern`` with its counted repeats unrolled, erring high: an
    item counts 1, a group the sum of its items, ``{n,m}`` multiplies what it repeats by
    its largest number. Escapes and character classes are single items."""
    groups = [0]  # the size so far of each group open at this point
    last = 0  # the size of the item just read: what a counted repeat repeats
    at = 0
    while at < len(pattern):
        char = pattern[at]
        repeat = _COUNTED_REPEAT.match(pattern, at) if char == "{" else None
        if repeat:
            count = max((int(number) for number in repeat.groups() if number), default=1)
            groups[-1] += last * (count - 1)
            last *= count
            at = repeat.end()
            continue
        if char == "(":
            groups.append(0)
            last = 0
        elif char == ")" and len(groups) > 1:
            last = groups.pop()
            groups[-1] += last
        else:
            at = _class_end(pattern, at) if char == "[" else at + (char == "\\")
            last = 1
            groups[-1] += 1
        at += 1
    return sum(groups)


def _class_end(pattern: str, at: int) -> int:
    """The index of the ``]`` closing the character class opening at ``at`` (the end of
    the pattern if none); a ``]`` first, after any ``^``, is a member."""
    at += 2 if pattern[at + 1:at + 2] == "^" else 1
    at += pattern[at:at + 1] == "]"
    while at < len(pattern) and pattern[at] != "]":
        at += 2 if pattern[at] == "\\" else 1
    return min(at, len(pattern) - 1)


def _check(args) -> str | None:
    if len(args) >= 1 and all(isinstance(a, str) for a in args[:1] + args[2:3]):
        try:
            compile_pattern(args[0], args[2] if len(args) > 2 else "")
        except ScriptError as err:
            return str(err)
    return None


def _text_size(pattern, text, flags="") -> int:
    return len(text) if isinstance(text, str) else 0


@namespace.native(check=_check, charges=_text_size)
def captures(pattern, text, flags="") -> list | None:
    """captures(pattern, text, flags?): () when ``pattern`` is not found in ``text``, else
    the whole match and each group ("" for a group that took no part). ``flags``: any of
    ``i`` (ignore case), ``m``, ``s``, ``x``. The syntax is Python's (the ``regex``
    module's, which adds PCRE's ``\\p{..}``, atomic groups and possessive quantifiers). A
    search that takes over 50 ms (catastrophic backtracking) fails with an error, as does
    a pattern over 2000 characters or whose counted repeats unroll to over 100000."""
    if not all(isinstance(v, str) for v in (pattern, text, flags)):
        raise ScriptError("regex::captures takes strings")
    try:
        found = compile_pattern(pattern, flags).search(text, timeout=SEARCH_TIMEOUT,
                                                       concurrent=True)
    except TimeoutError:
        raise ScriptError(f"regex::captures: '{pattern[:60]}' took longer than "
                          f"{SEARCH_TIMEOUT * 1000:.0f} ms on a text of {len(text)} characters "
                          "(backtracking)") from None
    if found is None:
        return None
    return [found.group(0), *(g or "" for g in found.groups())]
