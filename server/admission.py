"""Admission: which connections the server takes (``limits.connections`` in all,
``limits.connections_per_ip`` from one address), counted while they last."""
from __future__ import annotations

import logging
from collections import Counter

from . import metrics
from .config import SmtpLimits
from .logevents import event

log = logging.getLogger("vsl.server")
_REFUSED = {"connections": "limit_total", "connections_per_ip": "limit_per_ip"}


class Admission:
    """The connections open per client address, and the address of a connection that has
    none (the socket pair of ``vsl test``: ``replay_peer``, set by the replayer)."""

    def __init__(self, limits: SmtpLimits):
        self.limits = limits
        self.per_ip: Counter = Counter()
        self.total = 0  # connections admitted and open, all addresses
        self.replay_peer: tuple[str, int] | None = None

    def admit(self, ip: str) -> bool:
        """Count a new connection; False when a connection limit is reached."""
        reason = "connections" if self.total >= self.limits.connections else \
            "connections_per_ip" if self.per_ip[ip] >= self.limits.connections_per_ip else None
        if reason:
            metrics.count("vsl_connections_refused_total", reason=_REFUSED[reason])
            event(log, logging.WARNING, "limit", "%s: connection refused, limit reached", ip,
                  client_ip=ip, reason=reason)
            return False
        self.per_ip[ip] += 1
        self.total += 1
        return True

    def release(self, ip: str) -> None:
        """A connection admitted from ``ip`` closed."""
        self.per_ip[ip] -= 1
        self.total -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
