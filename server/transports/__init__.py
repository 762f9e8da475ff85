"""Delivering one message to a group of recipients over one route.

    transports = Transports(config, "mx.example.com", resolver)
    outcomes = await transports.deliver(route, sender, ["a@x.example", "b@x.example"], data)
    await transports.close()                     # the idle SMTP connections

``outcomes`` maps each recipient to an :class:`Outcome` (delivered, deferred or failed,
with the reply that decided it). :data:`TRANSPORTS` maps each route kind to its
transport: smtp.py (relay routes, through the connection pool of pool.py), mx.py (MX
delivery), lmtp.py, local.py (Maildir and mbox). What a route kind is (its form, port,
``tls=`` values) is declared once, in vsl.stdlib.transport ``ROUTE_KINDS``, which the
scripts parse routes with; this registry must have a transport for each.

Adding a transport: a module here with a class (or function) made as ``factory(setup)``
that has ``async deliver(route, sender, recipients, data, plaintext_fallback=False)``
(base.py :class:`Transport`; the flag matters only to transports that may start TLS),
its line in :data:`TRANSPORTS`, and its kind's line in ``ROUTE_KINDS``.
"""
from __future__ import annotations

from typing import Callable

from vsl.stdlib.dns import DnsDefaults, Resolver
from vsl.stdlib.transport import ROUTE_KINDS, Route

from ..config import DeliveryConfig
from ..relay_logins import RelayLogins
from .base import Setup, Transport
from .lmtp import LmtpDelivery
from .local import maildir, mbox
from .mx import MxDelivery
from .outcome import Outcome
from .pool import Pool
from .smtp import SmtpRelay

TRANSPORTS: dict[str, Callable[[Setup], Transport]] = {
    "smtp": SmtpRelay,
    "smtps": SmtpRelay,
    "lmtp": LmtpDelivery,
    "mx": MxDelivery,
    "maildir": maildir,
    "mbox": mbox,
}


def check_registry(kinds=ROUTE_KINDS, transports=TRANSPORTS) -> None:
    """RuntimeError unless every declared route kind has a transport, and every
    transport a declared kind."""
    missing, unknown = set(kinds) - set(transports), set(transports) - set(kinds)
    if missing or unknown:
        raise RuntimeError(f"route kinds without a transport: {sorted(missing)}; "
                           f"transports of no declared route kind: {sorted(unknown)}")


check_registry()


class Transports:
    """Every delivery method, sharing one SMTP connection pool."""

    def __init__(self, config: DeliveryConfig, hostname: str,
                 resolver: Resolver | None = None, dns_defaults: DnsDefaults = DnsDefaults()):
        self.pool = Pool(config, hostname, RelayLogins.load(config.credentials))
        setup = Setup(config, hostname, self.pool, resolver, dns_defaults)
        self.by_kind = {kind: factory(setup) for kind, factory in TRANSPORTS.items()}

    async def deliver(self, route: Route, sender: str, recipients: list[str],
                      data: bytes, plaintext_fallback: bool = False) -> dict[str, Outcome]:
        """Deliver ``data`` to ``recipients`` (one domain when the route is ``mx``);
        ``plaintext_fallback`` as base.py :class:`Transport` says."""
        return await self.by_kind[route.kind].deliver(route, sender, recipients, data,
                                                      plaintext_fallback)

    async def close(self) -> None:
        """Close the idle SMTP connections."""
        await self.pool.close()
