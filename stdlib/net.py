"""``net::`` -- IP networks: whether an address is in a network (Postfix's ``cidr:`` tables,
``mynetworks``).

    if net::in_network(ctx.client_ip, "192.0.2.0/24") { ... }
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache

from vsl.errors import ScriptError
from vsl.natives import Namespace

namespace = Namespace("net", "IP networks")


def bare_network(text: str) -> str:
    """A network as Postfix writes one (``192.0.2.0/24``, ``[2001:db8::]/32``) without its
    brackets."""
    return text.strip("[]").replace("]/", "/")


def plain_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address
                  ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``address`` as a client is compared and looked up: an IPv4-mapped IPv6 address as
    its IPv4 address, an IPv6 address without its scope (``%eth0``)."""
    if address.version == 6:
        return address.ipv4_mapped or ipaddress.IPv6Address(int(address))
    return address


def is_network(text: str) -> bool:
    """Whether ``text`` is an address or network as Postfix writes one."""
    try:
        ipaddress.ip_network(bare_network(text), strict=False)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=1024)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(bare_network(text), strict=False)
    except ValueError:
        raise ScriptError(f"net::in_network: '{text}' is not an IP network") from None


def _check(args) -> str | None:
    if len(args) == 2 and isinstance(args[1], str):
        try:
            _network(args[1])
        except ScriptError as err:
            return str(err)
    return None


@namespace.native(check=_check)
def in_network(ip, network) -> bool:
    """in_network(ip, network): whether the address ``ip`` is in ``network`` ("192.0.2.0/24",
    "2001:db8::/32", or one address); an IPv4-mapped IPv6 address counts as IPv4. A value
    that is no address is in no network; a bad network is an error."""
    if not isinstance(ip, str) or not isinstance(network, str):
        raise ScriptError("net::in_network takes two strings")
    net = _network(network)
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    address = plain_address(address)
    return address.version == net.version and address in net
