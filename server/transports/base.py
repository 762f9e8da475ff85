"""The interface every transport module exposes, and what a transport is made from.

A transport class (or any callable) is registered for a route kind in ``TRANSPORTS``
(server/transports/__init__.py); ``Transports`` there makes one per kind as
``factory(setup)`` and calls its ``deliver`` for each group of recipients."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from vsl.stdlib.dns import DnsDefaults, Resolver
from vsl.stdlib.transport import Route

from ..config import DeliveryConfig
from .outcome import Outcome
from .pool import Pool


@dataclass(frozen=True)
class Setup:
    """What transports share: the [delivery] configuration, the name said in EHLO and
    LHLO, the SMTP connection pool, and the resolver for MX look-ups (None: one made with
    ``dns_defaults``, the server's [dns], at the first look-up)."""

    config: DeliveryConfig
    hostname: str
    pool: Pool
    resolver: Resolver | None = None
    dns_defaults: DnsDefaults = DnsDefaults()


class Transport(Protocol):
    """One way of delivering: made once per :class:`Transports` as ``factory(setup)``."""

    async def deliver(self, route: Route, sender: str, recipients: list[str],
                      data: bytes, plaintext_fallback: bool = False) -> dict[str, Outcome]:
        """Deliver ``data`` to ``recipients`` over ``route``: each recipient's Outcome
        (a problem is an Outcome too, deferred or failed, never an exception).
        ``plaintext_fallback``: the message has waited, so an SMTP session whose
        opportunistic TLS fails may go on in plaintext (pool.py)."""
