"""Throttling of password guessing: failed logins counted per client address and per user
name, across connections (like Postfix's anvil, or fail2ban on its log lines).

Design: each key (``unknown[192.0.2.1]`` for an address, ``sasl_username=alice`` for a
user, as Postfix logs them: a name's unprintable characters are ``?`` there) keeps the
times of its recent failures. When ``auth.failure_limit`` of them fall within
``auth.failure_window`` seconds, the key is locked out for ``auth.lockout`` seconds and its
failures are forgotten; each further lockout lasts twice as long as the one before, up to
``auth.lockout_max``, until the key has been quiet (no failure, no lockout) that long.
While either key of an attempt is locked, AUTH is refused without looking at the password.
A successful login forgets its user's failures (not its address's: one good account must
not clear the guesses at others). The state is in memory, per process, and bounded: past
``auth.throttle_entries`` keys, the one used least recently is forgotten.
"""
from __future__ import annotations

import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from .config import AuthConfig


@dataclass
class _Record:
    """What is known of one key."""

    failures: deque = field(default_factory=deque)  # times of the recent failures
    locked_until: float = 0.0
    last_lockout: float = 0.0  # seconds; 0: none lately
    last_failure: float = 0.0


def client_key(ip: str) -> str:
    """An address as Postfix names a client without a verified host name."""
    return f"unknown[{ip}]"


def user_key(user: str) -> str:
    """A user name as Postfix logs it, printable (a name may hold any character)."""
    return "sasl_username=" + re.sub(r"[^\x21-\x7e]", "?", user)


class AuthThrottle:
    """Failed logins per client address and per user name, and who is locked out."""

    def __init__(self, config: AuthConfig):
        self.config = config
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def locked(self, ip: str, user: str) -> bool:
        """Whether a login from ``ip`` as ``user`` must be refused now."""
        now = time.monotonic()
        return any(self._records[key].locked_until > now
                   for key in (client_key(ip), user_key(user)) if key in self._records)

    def failed(self, ip: str, user: str) -> list[tuple[str, float]]:
        """Count a failed login: the (key, seconds) lockouts it starts."""
        now = time.monotonic()
        started = []
        for key in (client_key(ip), user_key(user)):
            seconds = self._count(self._touch(key), now)
            if seconds:
                started.append((key, seconds))
        return started

    def succeeded(self, user: str) -> None:
        """Forget the failures of a user who logged in."""
        self._records.pop(user_key(user), None)

    def _touch(self, key: str) -> _Record:
        """The record of ``key``, now the most recently used; the least recently used
        one goes when there are too many."""
        record = self._records.pop(key, None) or _Record()
        self._records[key] = record
        if len(self._records) > self.config.throttle_entries:
            self._records.popitem(last=False)
        return record

    def _count(self, record: _Record, now: float) -> float:
        """Add a failure to ``record``: the seconds of the lockout it starts, or 0."""
        config = self.config
        if now - max(record.last_failure, record.locked_until) > config.lockout_max:
            record.last_lockout = 0.0  # quiet long enough: start over
        record.last_failure = now
        failures = record.failures
        failures.append(now)
        while failures[0] <= now - config.failure_window:
            failures.popleft()
        if len(failures) < config.failure_limit:
            return 0.0
        failures.clear()
        seconds = min(2 * record.last_lockout, config.lockout_max) if record.last_lockout \
            else config.lockout
        record.last_lockout, record.locked_until = seconds, now + seconds
        return seconds
