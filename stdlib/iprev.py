"""``iprev::`` -- forward-confirmed reverse DNS of the client (RFC 8601 §3, "iprev").

    let res = iprev::check(#{ ip: ctx.client_ip, dns_resolver: global::resolver });
    if res.value != "pass" { ... }

``pass``: a PTR name of the address resolves back to it. ``fail``: names exist but
none resolves back. ``permerror``: no PTR name. ``temperror``: a DNS failure kept
the check from completing.
"""
from __future__ import annotations

import ipaddress

import authres

from vsl.errors import ScriptError
from vsl.natives import Namespace

from .dns import DnsTempError, Resolver
from .support import telemetry
from .support.options import Options
from .support.result import CheckResult

namespace = Namespace("iprev", "Reverse DNS checks")

MAX_NAMES = 10  # PTR names checked at most (as SPF's ptr mechanism, RFC 7208 §5.5)


class IprevResult(CheckResult):
    """The outcome of iprev::check; compares equal to its value string."""

    vsl_type = "iprev_result"
    vsl_props = frozenset({"value", "ip", "fqdn"})
    mechanism_name = "iprev"

    def __init__(self, value: str, ip: str, fqdn: str | None):
        self.value, self.ip, self.fqdn = value, ip, fqdn

    def auth_result(self) -> authres.IPRevAuthenticationResult:
        """This result as an RFC 8601 Authentication-Results entry."""
        return authres.IPRevAuthenticationResult(result=self.value, policy_iprev=self.ip,
                                                 policy_iprev_comment=self.fqdn)

    def vsl_equals(self, other) -> bool:
        if isinstance(other, IprevResult):
            return (self.value, self.ip, self.fqdn) == (other.value, other.ip, other.fqdn)
        return self.value == other


namespace.register_type(IprevResult)


async def iprev(resolver: Resolver, ip: str) -> IprevResult:
    """Run the check (a Python API for the server and the other natives)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise ScriptError(f"iprev::check: '{ip}' is not an IP address") from None
    try:
        names = await resolver.names(str(address))
    except DnsTempError:
        return IprevResult("temperror", str(address), None)
    if not names:
        return IprevResult("permerror", str(address), None)
    temporary = False
    for name in names[:MAX_NAMES]:
        try:
            found = await resolver.addresses(name)
        except DnsTempError:
            temporary = True
            continue
        if any(ipaddress.ip_address(a) == address for a in found):
            return IprevResult("pass", str(address), name)
    return IprevResult("temperror" if temporary else "fail", str(address), names[0])


_CHECK = Options({"ip": str, "dns_resolver": Resolver})


@namespace.native(options=_CHECK.keys)
@telemetry.counted_check("iprev")
async def check(query) -> IprevResult:
    """check(#{ ip, dns_resolver }): pass | fail | temperror | permerror, with .ip and .fqdn."""
    opts = _CHECK.parse(query, "iprev::check")
    return await iprev(opts["dns_resolver"], opts["ip"])
