"""``limit::`` -- rate limits on any key a script builds, counted in the server's
``[state]`` (shared by every worker and, with Redis, every server).

    let r = limit::hit(`ip:${ctx.client_ip}`, #{ rate: "20/1m" });
    if !r.allowed { return status::deny(`450 4.7.1 Too many connections, retry in ${r.retry_in} s`) }

A rate is ``"N/unit"`` or ``"N/Kunit"``: N hits per K units of s, m, h or d
(``"100/1h"``, ``"5000/1d"``, ``"3/2s"``). ``hit`` counts one hit and says whether it
is allowed; ``peek`` says whether one would be, counting nothing. The result prints as
its ``value``: ``pass``, ``limited``, or ``temperror`` when the state store cannot be
reached (then ``allowed`` is true: limits fail open, mail keeps flowing).
"""
# The sliding-window counter: time is cut into fixed windows of the rate's length W; the
# store counts hits per (key, window) with increments that expire (2 W: a window is
# read as "the previous one" during the next). A hit at fraction f of window i sees
#     estimate = count(i) + count(i - 1) * (1 - f)
# and is allowed when that (itself included) is at most N. A refused hit is never counted
# (clients that keep knocking do not lengthen their own wait): the store checks and
# counts in one atomic step at its own time (StateStore.count_in_window: one Lua script
# on Redis's clock, one SQLite statement), so no process sees a refused hit counted.
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from vsl.errors import ScriptError
from vsl.natives import Namespace
from vsl.resolve import DYNAMIC

from .support.options import Options
from .support.result import CheckResult
from .support.state import (MAX_KEY_BYTES, StateStore, StateUnavailable, estimate, fits,
                            window_at)

namespace = Namespace("limit", "Rate limits counted in the server's [state]")

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_COUNT = 1_000_000_000
MAX_WINDOW = 366 * 86400
_RATE = re.compile(r"([0-9]{1,10})/([0-9]{0,10})([smhd])")  # digits bounded: int() is cheap


@dataclass(frozen=True)
class Rate:
    """N hits per ``window`` seconds."""

    count: int
    window: int


def _rate_or_problem(text) -> Rate | str:
    """The Rate of ``text`` ("100/1h"), or why it is not one."""
    if not isinstance(text, str):
        return "the rate must be a string such as \"100/1h\""
    return _parsed_rate(text)


@lru_cache(maxsize=1024)
def _parsed_rate(text: str) -> Rate | str:
    """What :func:`_rate_or_problem` says of a string (scripts use a few rates, call after
    call: each is parsed once)."""
    m = _RATE.fullmatch(text)
    if m is None:
        return f"rate '{text}' is not \"N/unit\" or \"N/Kunit\" (units s, m, h, d: \"100/1h\")"
    count, window = int(m.group(1)), int(m.group(2) or 1) * UNITS[m.group(3)]
    if not 1 <= count <= MAX_COUNT:
        return f"rate '{text}': the count must be between 1 and {MAX_COUNT}"
    if not 1 <= window <= MAX_WINDOW:
        return f"rate '{text}': the window must be between 1 s and 366 days"
    return Rate(count, window)


def rate_problem(text) -> str | None:
    """Why ``text`` is not a rate such as "100/1h", or None."""
    found = _rate_or_problem(text)
    return found if isinstance(found, str) else None


def parse_rate(text) -> Rate:
    """The Rate of ``text`` ("100/1h"); ScriptError when malformed."""
    found = _rate_or_problem(text)
    if isinstance(found, str):
        raise ScriptError(found)
    return found


def key_problem(key) -> str | None:
    """Why ``key`` cannot be a limit's key, or None."""
    if not isinstance(key, str) or not key:
        return "the key must be a non-empty string"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"the key is longer than {MAX_KEY_BYTES} bytes"
    return None


class LimitResult(CheckResult):
    """The outcome of limit::hit or limit::peek; prints as (and compares equal to) its value."""

    vsl_type = "limit_result"
    vsl_props = frozenset({"value", "allowed", "remaining", "retry_in"})

    def __init__(self, value: str, allowed: bool, remaining: int, retry_in: int):
        self.value, self.allowed, self.remaining, self.retry_in = \
            value, allowed, remaining, retry_in


namespace.register_type(LimitResult)


@dataclass(frozen=True)
class Window:
    """Where a moment falls for a rate: the window's index and the elapsed fraction."""

    rate: Rate
    index: int
    elapsed: float  # 0 <= elapsed < 1

    @classmethod
    def at(cls, rate: Rate, now: float) -> "Window":
        return cls(rate, *window_at(rate.window, now))

    def retry_in(self, current: int, previous: int) -> int:
        """Seconds until one more hit fits, with ``current`` and ``previous`` counted (at
        least 1)."""
        n, w = self.rate.count, self.rate.window
        if current + 1 <= n:  # within this window, once the previous one weighs less
            fraction = 1 - (n - current - 1) / previous
            wait = (fraction - self.elapsed) * w
        else:  # in the next window, where this one is the previous
            fraction = 1 - (n - 1) / current
            wait = (1 - self.elapsed + fraction) * w
        return max(math.ceil(wait - 1e-9), 1)

    def result(self, current: int, previous: int, allowed: bool) -> LimitResult:
        """The result for these counts (an allowed hit among them)."""
        if allowed:
            remaining = self.rate.count - estimate(current, previous, self.elapsed)
            return LimitResult("pass", True, max(math.floor(remaining + 1e-9), 0), 0)
        return LimitResult("limited", False, 0, self.retry_in(current, previous))


async def count(store: StateStore, key: str, rate: Rate, amount: int) -> LimitResult:
    """Count ``amount`` hits (0: peek, which only reads) of ``key`` against ``rate`` in
    ``store`` (the Python API); a refused hit is not counted. The store unavailable:
    ``temperror``, allowed."""
    try:
        seen = await store.count_in_window(f"limit:{rate.window}:{key}:", rate.window,
                                           amount, rate.count)
    except StateUnavailable:
        return LimitResult("temperror", True, rate.count, 0)
    window = Window.at(rate, seen.now)
    allowed = seen.counted if amount else \
        fits(seen.current, seen.previous, window.elapsed, 1, rate.count)
    return window.result(seen.current, seen.previous, allowed)


def _lint(args) -> str | None:
    """vsl lint: a literal key and a literal rate are checked before the script runs."""
    if args and args[0] is not DYNAMIC and (problem := key_problem(args[0])):
        return problem
    options = args[1] if len(args) > 1 else DYNAMIC
    if isinstance(options, dict) and options.get("rate", DYNAMIC) is not DYNAMIC:
        return rate_problem(options["rate"])
    return None


_OPTIONS = Options({"rate": str})


def _arguments(key, options, where: str) -> Rate:
    problem = key_problem(key)
    if problem:
        raise ScriptError(f"{where}: {problem}")
    return parse_rate(_OPTIONS.parse(options, where)["rate"])


@namespace.native(options=_OPTIONS.keys, check=_lint)
async def hit(key, options, *, store: StateStore) -> LimitResult:
    """hit(key, #{ rate }): count one hit of ``key``; .allowed, .remaining, .retry_in
    (seconds, 0 when allowed), .value (pass, limited, temperror: the store unreachable,
    then allowed). ``rate``: "N/unit" or "N/Kunit", units s, m, h, d ("100/1h")."""
    rate = _arguments(key, options, "limit::hit")
    return await count(store, key, rate, 1)


@namespace.native(options=_OPTIONS.keys, check=_lint)
async def peek(key, options, *, store: StateStore) -> LimitResult:
    """peek(key, #{ rate }): what hit would answer, counting nothing."""
    rate = _arguments(key, options, "limit::peek")
    return await count(store, key, rate, 0)


def namespace_for(store: StateStore) -> Namespace:
    """The ``limit::`` namespace of one engine, counting in ``store``."""
    return namespace.binding("hit", store=store).binding("peek", store=store)

