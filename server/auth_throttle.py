"""Throttling of password guessing: failed logins counted per client address and per user
name, across connections (like Postfix's anvil, or fail2ban on its log lines).

Design: each key (``unknown[192.0.2.1]`` for an address, ``sasl_username=alice`` for a
user, as Postfix logs them: a name's unprintable characters are ``?`` there) keeps the
times of its recent failures. When ``auth.failure_limit`` of them fall within
``auth.failure_window`` seconds, the key is locked out for ``auth.lockout`` seconds and its
failures are forgotten; each further lockout lasts twice as long as the one before, up to
``auth.lockout_max``, until the key has been quiet (no failure, no lockout) that long.

A locked address may not AUTH at all. A locked user may still AUTH from the addresses it
last logged in from (at most ``auth.known_addresses`` of them): guesses spread over many
addresses are stopped, but they cannot lock the owner out of her usual address. A login
forgets no failures (that would let guesses slip in between the owner's logins).

The state is in memory, per process, and bounded by ``auth.throttle_entries`` in each of
three tables: failure counts (the least recently used key goes first: losing a count costs
the guesser a flood far larger than the guesses it gains), lockouts (never dropped before
they expire: while the table is full, it fails safe and refuses AUTH to everyone but users
at their known addresses; filling it takes ``failure_limit`` failures per two lockouts,
from as many addresses as lockouts) and known addresses (written by logins only).
"""
from __future__ import annotations

import heapq
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import AuthConfig

log = logging.getLogger("vsl.smtp")


@dataclass
class _Record:
    """The recent failures of one key."""

    failures: deque = field(default_factory=deque)  # times of the recent failures
    last_lockout: float = 0.0  # seconds; 0: none lately
    last_failure: float = 0.0  # or end of the last lockout, whichever is later


def client_key(ip: str) -> str:
    """An address as Postfix names a client without a verified host name."""
    return f"unknown[{ip}]"


def user_key(user: str) -> str:
    """A user name as Postfix logs it, printable (a name may hold any character)."""
    return "sasl_username=" + re.sub(r"[^\x21-\x7e]", "?", user)


def _recent(table: OrderedDict, key: str, make: Callable, limit: int):
    """``table[key]`` (made if missing), now the most recently used; the least recently
    used entries past ``limit`` go."""
    value = table.pop(key, None)
    table[key] = make() if value is None else value
    while len(table) > limit:
        table.popitem(last=False)
    return table[key]


class AuthThrottle:
    """Failed logins per client address and per user name, and who is locked out."""

    def __init__(self, config: AuthConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._lockouts: dict[str, float] = {}  # key: locked until
        self._expiries: list[tuple[float, str]] = []  # heap of the lockouts' ends
        self._known: OrderedDict[str, deque] = OrderedDict()  # user: addresses logged in from
        self._full_logged = False

    def locked(self, ip: str, user: str) -> bool:
        """Whether a login from ``ip`` as ``user`` must be refused now."""
        self._expire(self._clock())
        if client_key(ip) in self._lockouts:
            return True
        if ip in self._known.get(user, ()):
            return False
        return user_key(user) in self._lockouts or self._full()

    def failed(self, ip: str, user: str) -> list[tuple[str, float]]:
        """Count a failed login: the (key, seconds) lockouts it starts."""
        now = self._clock()
        self._expire(now)
        started = []
        for key in (client_key(ip), user_key(user)):
            record = _recent(self._records, key, _Record, self.config.throttle_entries)
            if self._count(record, now):
                seconds = self._lock(key, record, now)
                if seconds:
                    started.append((key, seconds))
        return started

    def succeeded(self, ip: str, user: str) -> None:
        """Remember ``ip`` as an address ``user`` logged in from."""
        config = self.config
        addresses = _recent(self._known, user, lambda: deque(maxlen=config.known_addresses),
                            config.throttle_entries)
        if ip in addresses:
            addresses.remove(ip)
        addresses.append(ip)

    def _count(self, record: _Record, now: float) -> bool:
        """Add a failure to ``record``: whether it reached the limit within the window."""
        config = self.config
        if now - record.last_failure > config.lockout_max:
            record.last_lockout = 0.0  # quiet long enough: start over
        record.last_failure = max(record.last_failure, now)
        failures = record.failures
        failures.append(now)
        while failures[0] <= now - config.failure_window:
            failures.popleft()
        return len(failures) >= config.failure_limit

    def _lock(self, key: str, record: _Record, now: float) -> float:
        """Lock ``key`` out: the seconds, or 0 when the table of lockouts is full (its
        failures are then kept, so that its next one tries again)."""
        if self._full() and key not in self._lockouts:
            return 0.0
        seconds = min(2 * record.last_lockout, self.config.lockout_max) \
            if record.last_lockout else self.config.lockout
        record.failures.clear()
        record.last_lockout, record.last_failure = seconds, now + seconds
        self._lockouts[key] = now + seconds
        heapq.heappush(self._expiries, (now + seconds, key))
        if self._full():
            self._log_full()
        return seconds

    def _expire(self, now: float) -> None:
        """Forget the lockouts that have ended."""
        while self._expiries and self._expiries[0][0] <= now:
            until, key = heapq.heappop(self._expiries)
            if self._lockouts.get(key) == until:  # not locked again since
                del self._lockouts[key]
                self._full_logged = False

    def _full(self) -> bool:
        return len(self._lockouts) >= self.config.throttle_entries

    def _log_full(self) -> None:
        """Say once, until a lockout ends, that the throttle fails safe."""
        if not self._full_logged:
            self._full_logged = True
            log.warning("the AUTH throttle is full (%d lockouts, auth.throttle_entries): "
                        "AUTH refused to everyone but users at their known addresses until "
                        "a lockout ends", len(self._lockouts))
