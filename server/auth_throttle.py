"""Throttling of password guessing: failed logins counted per client address and per user
name, across connections (like Postfix's anvil, or fail2ban on its log lines).

Design: each key (``unknown[192.0.2.1]`` for an address, ``unknown[2001:db8:1:2::/64]`` for
an IPv6 one, whose client may use any address of its /64, ``sasl_username=alice`` for a
user, as Postfix logs them: a name's unprintable characters are ``?`` there) keeps the
times of its recent failures. A login being checked counts as a failure until it is
settled (``begin``, then ``end``): else parallel logins all pass before the first fails;
one that would reach the limit with those pending waits for them instead of being refused.
When ``auth.failure_limit`` of them fall within ``auth.failure_window`` seconds, the key
is locked out for ``auth.lockout`` seconds and its failures are forgotten; each further
lockout lasts twice as long as the one before, up to
``auth.lockout_max``, until the key has been quiet (no failure, no lockout) that long.

A locked address may not AUTH at all. A locked user may still AUTH from the addresses it
last logged in from (at most ``auth.known_addresses`` of them): guesses spread over many
addresses are stopped, but they cannot lock the owner out of her usual address. A login
forgets no failures (that would let guesses slip in between the owner's logins). A key
whose failures (and pending logins) reached the limit is refused even without a lockout
(which a full table cannot record).

The state is in memory, in one process (the workers of one ``vsl serve`` ask one in a
child of its own: server/throttle_service.py), and bounded by ``auth.throttle_entries`` in
each of three tables: failure counts (the least recently used key goes first: losing a
count costs the guesser a flood far larger than the guesses it gains), lockouts (never
dropped before they expire: while the table is full, it fails safe and refuses AUTH to
everyone but users at their known addresses; filling it takes ``failure_limit`` failures
per two lockouts, from as many addresses as lockouts) and known addresses (written by
logins only). The logins being checked are bounded by the connections.
"""
from __future__ import annotations

import asyncio
import heapq
import ipaddress
import logging
import re
import time
from collections import Counter, OrderedDict, deque
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
    """The throttle's key for a client: its address as Postfix names a client without a
    verified host name, an IPv6 one as its /64 (an IPv4-mapped one as its IPv4 address)."""
    return f"unknown[{_client_network(ip)}]"


def _client_network(ip: str) -> str:
    """``ip``, or the /64 of an IPv6 address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if address.version == 4:
        return ip
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.ip_network((address, 64), strict=False))


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
        self._known: OrderedDict[str, deque] = OrderedDict()  # user: client keys logged in from
        self._pending: Counter[str] = Counter()  # key: its logins being checked now
        self._settled = asyncio.Event()  # set (and replaced) when a pending login ends
        self._full_logged = False

    async def begin(self, ip: str, user: str) -> bool:
        """Whether a login from ``ip`` as ``user`` may be checked; if so, it counts as a
        failure until :meth:`end`. While earlier logins of its keys are being checked and
        would, should they fail, reach the limit, it waits for them to settle (correct
        logins in parallel are only delayed; guesses are refused once they failed)."""
        while True:
            if self.locked(ip, user):
                return False
            now = self._clock()
            at_limit = [key for key in self._guards(ip, user) if self._at_limit(key, now)]
            if not at_limit:
                break
            if not all(self._pending[key] for key in at_limit):
                return False  # a key at the limit by its failures alone
            await self._settled.wait()
        self._pending.update((client_key(ip), user_key(user)))
        return True

    def end(self, ip: str, user: str) -> None:
        """The login :meth:`begin` allowed is settled (failed, succeeded or abandoned):
        the logins waiting for it look again."""
        for key in (client_key(ip), user_key(user)):
            self._pending[key] -= 1
            if not self._pending[key]:
                del self._pending[key]
        self._settled.set()
        self._settled = asyncio.Event()

    def locked(self, ip: str, user: str) -> bool:
        """Whether a lockout refuses a login from ``ip`` as ``user`` now."""
        self._expire(self._clock())
        guards = self._guards(ip, user)
        return any(key in self._lockouts for key in guards) or \
            (user_key(user) in guards and self._full())

    def _guards(self, ip: str, user: str) -> tuple[str, ...]:
        """The keys that may refuse a login from ``ip`` as ``user``: the address's, and the
        user's unless ``ip`` is an address she logged in from."""
        if client_key(ip) in self._known.get(user, ()):
            return (client_key(ip),)
        return client_key(ip), user_key(user)

    def _at_limit(self, key: str, now: float) -> bool:
        """Whether ``key``'s recent failures and pending logins reached the limit."""
        record = self._records.get(key)
        failures = len(self._recent_failures(record, now)) if record else 0
        return failures + self._pending[key] >= self.config.failure_limit

    def failed(self, ip: str, user: str) -> list[tuple[str, float]]:
        """Count a failed login: the (key, seconds) lockouts it starts, each logged."""
        now = self._clock()
        self._expire(now)
        started = []
        for key in (client_key(ip), user_key(user)):
            record = _recent(self._records, key, _Record, self.config.throttle_entries)
            if self._count(record, now):
                seconds = self._lock(key, record, now)
                if seconds:
                    started.append((key, seconds))
                    log.warning("%s: too many failed logins, AUTH refused for %g s", key,
                                seconds)
        return started

    def succeeded(self, ip: str, user: str) -> None:
        """Remember ``ip`` as an address ``user`` logged in from."""
        config = self.config
        addresses = _recent(self._known, user, lambda: deque(maxlen=config.known_addresses),
                            config.throttle_entries)
        key = client_key(ip)
        if key in addresses:
            addresses.remove(key)
        addresses.append(key)

    def _count(self, record: _Record, now: float) -> bool:
        """Add a failure to ``record``: whether it reached the limit within the window."""
        config = self.config
        if now - record.last_failure > config.lockout_max:
            record.last_lockout = 0.0  # quiet long enough: start over
        record.last_failure = max(record.last_failure, now)
        record.failures.append(now)
        return len(self._recent_failures(record, now)) >= config.failure_limit

    def _recent_failures(self, record: _Record, now: float) -> deque:
        """``record``'s failures within the window (older ones are dropped)."""
        failures = record.failures
        while failures and failures[0] <= now - self.config.failure_window:
            failures.popleft()
        return failures

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
