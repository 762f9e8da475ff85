"""MX delivery (route ``mx``): the recipient domain's mail exchangers (RFC 5321 section 5;
null MX: RFC 7505), within the per-attempt limits of [delivery].

One attempt looks up the exchangers by preference, their addresses in turn (A before
AAAA), and opens SMTP sessions (no login, opportunistic STARTTLS) until every recipient
has an answer other than a deferral, within ``mx_address_limit`` addresses,
``mx_host_limit`` hosts without an address, ``mx_session_limit`` sessions and
``mx_attempt_timeout`` seconds in all. An exchanger whose ``destination_concurrency``
sessions are all in use postpones the recipients not answered yet (no backup is tried
for it: the server is busy with our own mail)."""
from __future__ import annotations

import asyncio
import functools
import logging
import random
from contextlib import aclosing
from dataclasses import dataclass, field, replace

import dns.name

from vsl.errors import ScriptError
from vsl.stdlib import dns as dns_natives
from vsl.stdlib.transport import Route

from .base import Setup
from .outcome import Busy, Outcome, Unreachable
from .pool import MX_SESSION
from .smtp import send_over_session

log = logging.getLogger("vsl.delivery")


@dataclass
class _Lookups:
    """What one MX attempt met besides addresses: the problems (a failed look-up, an
    address that gave no session) and how many hosts ``mx_host_limit`` left unlooked
    up."""

    problems: list[Outcome] = field(default_factory=list)
    tried: int = 0
    skipped: int = 0

    def outcome(self, domain: str) -> Outcome:
        """The result for recipients no server answered: the last problem; when there
        was none, no host had an address: a failure if every host was looked up, else
        a deferral (the hosts not looked up may have one)."""
        if self.problems:
            return self.problems[-1]
        if self.skipped:
            return Outcome("deferred", f"451 4.4.4 none of the first {self.tried} mail "
                                       f"exchangers of {domain} has an address; "
                                       f"{self.skipped} more not looked up "
                                       "(delivery.mx_host_limit)")
        return Outcome("failed", f"550 5.4.4 no address for {domain} or its mail exchangers")


class MxDelivery:
    """The ``mx`` route: one attempt at the mail exchangers of the recipients' domain
    (the delivery groups recipients by domain for it)."""

    def __init__(self, setup: Setup):
        self.config, self.pool, self.dns_defaults = setup.config, setup.pool, setup.dns_defaults
        if setup.resolver is not None:
            self.resolver = setup.resolver

    @functools.cached_property
    def resolver(self) -> dns_natives.Resolver:
        """The server's configured resolver ([dns]), made at the first MX look-up (so a
        host without a usable DNS configuration still starts; its MX mail defers)."""
        return dns_natives.resolver(defaults=self.dns_defaults)

    async def deliver(self, route: Route, sender: str, recipients: list[str],
                      data: bytes, plaintext_fallback: bool = False) -> dict[str, Outcome]:
        """One attempt, within ``mx_attempt_timeout``: recipients no server has
        answered for by then are deferred."""
        domain = recipients[0].rpartition("@")[2]
        answered: dict[str, Outcome] = {}
        limit = asyncio.timeout(self.config.mx_attempt_timeout)
        try:
            async with limit:
                return await self._attempt(domain, sender, recipients, data, answered,
                                           plaintext_fallback)
        except TimeoutError:
            if not limit.expired():
                raise
        late = Outcome("deferred", f"451 4.4.2 delivery to {domain} took longer than "
                                   f"{self.config.mx_attempt_timeout:g} s "
                                   "(delivery.mx_attempt_timeout)")
        return {r: answered.get(r, late) for r in recipients}

    async def _attempt(self, domain: str, sender: str, recipients: list[str],
                       data: bytes, answered: dict[str, Outcome],
                       plaintext_fallback: bool) -> dict:
        """Addresses of the exchangers in turn (see :meth:`_addresses`); the
        recipients a session defers go on to the next one, for at most
        ``mx_session_limit`` sessions (Postfix's smtp_mx_session_limit). ``answered``
        gets each server's replies as they come."""
        try:
            hosts = await self._exchangers(domain)
        except ScriptError as err:  # DnsTempError, or no usable resolver
            return dict.fromkeys(recipients, Outcome("deferred", f"451 4.4.3 {err}"))
        if not hosts:
            return dict.fromkeys(recipients, Outcome(
                "failed", f"556 5.1.10 {domain} accepts no mail (null MX)"))
        lookups = _Lookups()
        pending, sessions = list(recipients), 0
        kind = replace(MX_SESSION, plaintext_fallback=plaintext_fallback)
        async with aclosing(self._addresses(domain, hosts, lookups)) as addresses:
            async for name, address in addresses:
                try:
                    replies = await send_over_session(
                        self.pool, address, self.config.mx_port, kind, name, sender,
                        pending, data)
                except Unreachable as err:
                    lookups.problems.append(err.outcome)
                    continue
                except Busy as busy:  # our own sessions fill it: not a reason for a backup
                    why = lookups.outcome(domain) if lookups.problems else busy.outcome
                    return {r: answered.get(r, why) for r in recipients}
                answered.update(replies)
                pending = [r for r in pending if replies[r].status == "deferred"]
                sessions += 1
                if not pending or sessions == self.config.mx_session_limit:
                    break
        last = lookups.outcome(domain)
        return {r: answered.get(r, last) for r in recipients}

    async def _addresses(self, domain: str, hosts: list[str], lookups: _Lookups):
        """(host, address) pairs, by preference and A before AAAA, at most
        ``mx_address_limit``. A host without an address (its look-up failed, its error
        added to ``lookups``) costs queries for nothing: after ``mx_host_limit`` of them
        the rest are not looked up (``lookups.skipped``). So one attempt looks up at most
        mx_host_limit + mx_address_limit hosts."""
        addresses_left, misses_left = self.config.mx_address_limit, self.config.mx_host_limit
        for index, name in enumerate(hosts):
            if not misses_left:
                lookups.tried, lookups.skipped = index, len(hosts) - index
                log.info("%s: %d mail exchangers without an address, %d more not looked "
                         "up (delivery.mx_host_limit)", domain,
                         self.config.mx_host_limit, lookups.skipped)
                return
            addresses = await self._host_addresses(name, lookups)
            if not addresses:
                misses_left -= 1
            for address in addresses[:addresses_left]:
                yield name, address
            addresses_left -= min(addresses_left, len(addresses))
            if not addresses_left:
                return

    async def _host_addresses(self, name: str, lookups: _Lookups) -> list[str]:
        """An exchanger's addresses ([] when its look-up fails: the error goes to
        ``lookups``); an address literal is its own."""
        if name.startswith("["):
            return [name[1:-1].removeprefix("IPv6:")]
        try:
            return await self.resolver.addresses(name)
        except ScriptError as err:
            lookups.problems.append(Outcome("deferred", f"451 4.4.3 {err}"))
            return []

    async def _exchangers(self, domain: str) -> list[str]:
        """Mail exchangers by preference (equal ones shuffled, so that a cut by
        ``mx_host_limit`` falls elsewhere at each attempt); the domain itself when it has
        no MX; [] for a null MX."""
        if domain.startswith("["):
            return [domain]
        records = await self.resolver.query(domain, "MX")
        if not records:
            return [domain]
        usable = [r for r in records if r.exchange != dns.name.root]
        usable.sort(key=lambda r: (r.preference, random.random()))
        return [r.exchange.to_text(omit_final_dot=True) for r in usable]
