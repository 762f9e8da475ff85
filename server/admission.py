"""Admission: which connections the server takes (``limits.connections`` in all,
``limits.connections_per_ip`` from one address), counted while they last.

One process counts in a dict, with a running total. The workers of one ``vsl serve``
count in :class:`~.shared_counters.SharedCounters` instead, so the limits hold across all
of them."""
from __future__ import annotations

import logging
from collections import Counter

from . import metrics
from .config import SmtpLimits
from .logevents import event
from .shared_counters import SharedCounters

log = logging.getLogger("vsl.server")
_REFUSED = {"connections": "limit_total", "connections_per_ip": "limit_per_ip"}


class Admission:
    """The connections open per client address, and the address of a connection that has
    none (the socket pair of ``vsl test``: ``replay_peer``, set by the replayer).
    ``shared``: the counts of every worker (None: this process's alone)."""

    def __init__(self, limits: SmtpLimits, shared: SharedCounters | None = None):
        self.limits = limits
        self.shared = shared
        self.per_ip: Counter = Counter()
        self.total = 0  # connections admitted and open, all addresses
        self.replay_peer: tuple[str, int] | None = None

    def admit(self, ip: str) -> bool:
        """Count a new connection; False when a connection limit is reached."""
        reason = self._count(ip) if self.shared is None else \
            self.shared.admit(ip, self.limits.connections, self.limits.connections_per_ip)
        if reason:
            metrics.count("vsl_connections_refused_total", reason=_REFUSED[reason])
            event(log, logging.WARNING, "limit", "%s: connection refused, limit reached", ip,
                  client_ip=ip, reason=reason)
            return False
        return True

    def _count(self, ip: str) -> str | None:
        """Count a connection in this process unless a limit is reached: None, or the
        limit's name."""
        if self.total >= self.limits.connections:
            return "connections"
        if self.per_ip[ip] >= self.limits.connections_per_ip:
            return "connections_per_ip"
        self.per_ip[ip] += 1
        self.total += 1
        return None

    def release(self, ip: str) -> None:
        """A connection admitted from ``ip`` closed."""
        if self.shared is not None:
            self.shared.release(ip)
            return
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
