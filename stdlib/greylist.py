"""``greylist::`` -- greylisting as postgrey does it, in ``on_rcpt_to``::

    fn on_rcpt_to(ctx) {
        let g = greylist::check(ctx, #{ delay: 300, auto_whitelist: 5 });
        if g.value == "greylisted" { return status::deny("451 4.7.1 Greylisted, try again later") }
        if g.value == "temperror" { return status::deny("451 4.3.0 Try again later") }
        status::next()
    }

The first attempt of a triplet (client network, sender, recipient) is ``greylisted``
for ``delay`` seconds; a retry after the delay and within ``retry_window`` of the first
attempt passes, and the triplet then passes for ``expire`` seconds, renewed by its
passes (at most once an hour); a retry after the window starts over. A client network
whose triplets passed after a retry ``auto_whitelist`` times, counted at most once an
``auto_whitelist_interval``, is ``whitelisted`` for ``expire`` seconds (renewed by its
mail, at most once an hour); the ``whitelist`` option's networks (the client) and
domains and addresses (the recipient) are ``whitelisted`` without asking the store. A
store that cannot answer gives ``temperror``.
"""
# Design: the state, in the engine's StateStore (bound by namespace_for), every key
# expiring; <triplet> is <key kind>:<network>:<digest>:
#   greylist:seen:<triplet> -> the first attempt's time, for retry_window (deleted by the
#       first pass, so that a triplet whose pass expired starts over)
#   greylist:passed:<triplet> -> when it first passed or was last renewed, for expire
#       (a pass renews it, at most once a RENEW_INTERVAL)
#   greylist:counted:<network> -> a retry of the network was counted, for
#       auto_whitelist_interval
#   greylist:retries:<network> -> the network's counted retries, for expire
#   greylist:whitelisted:<network> -> when it was auto-whitelisted or last renewed, for
#       expire
# The common calls, an auto-whitelisted network and a triplet that passed before, take one
# store step, a read (StateStore.first_present: one SQLite call, one Lua script on Redis;
# their entries are written again at most once a RENEW_INTERVAL); an attempt of an unknown triplet one more (its
# first attempt's time, read or stored: StateStore.get_or_add). Processes share the store
# and interleave, so each decision that must happen once is one atomic step: the first
# attempt's time (get_or_add), the triplet's first pass (a set-if-absent: only the process
# that makes the passed key counts the retry), and the network's count of an interval (a
# set-if-absent). The digest (of the lower-cased sender and recipient) keeps every key
# short whatever the addresses, and keeps the addresses out of the store (postgrey's
# --privacy).
# A store that hangs or fails raises StateUnavailable within the script's network time
# (the stores' own io_time_left bound), which is temperror here.
from __future__ import annotations

import hashlib
import ipaddress
import math
from dataclasses import dataclass
from functools import lru_cache

from vsl.errors import ScriptError
from vsl.natives import Namespace
from vsl.resolve import DYNAMIC
from vsl.values import FrozenMap, type_name

from .ctx import Context, Stage
from .net import plain_address
from .support.mail import AddressError, Mailbox, domain_key
from .support.options import Options
from .support.result import CheckResult
from .support.state import StateStore, StateUnavailable

namespace = Namespace("greylist", "Greylisting (postgrey's triplets) in on_rcpt_to")

KEY_KINDS = ("triplet", "client_sender")
RENEW_INTERVAL = 3600  # seconds: a passed triplet's or a whitelisted network's entry is
                       # written again at most this often, or a tenth of expire when that
                       # is shorter (its expiry counts from then)
IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NUMBER = (int, float)


class GreylistResult(CheckResult):
    """The outcome of greylist::check: ``.value`` (pass, greylisted, whitelisted,
    temperror) and ``.retry_in`` (seconds until a retry passes; 0 unless greylisted)."""

    vsl_type = "greylist_result"
    vsl_props = frozenset({"value", "retry_in"})
    mechanism_name = "greylist"

    def __init__(self, value: str, retry_in: int = 0):
        self.value, self.retry_in = value, retry_in


namespace.register_type(GreylistResult)


@dataclass(frozen=True)
class Whitelist:
    """Who is never greylisted: client networks, and recipient domains (with their
    subdomains), addresses and local parts (``postmaster@``), as postgrey's
    whitelist_clients and whitelist_recipients. Domains are kept as lower-cased A-labels
    (:func:`domain_key`), addresses as (lower-cased local part, domain)."""

    networks: tuple = ()
    domains: frozenset = frozenset()
    addresses: frozenset = frozenset()
    local_parts: frozenset = frozenset()

    def covers(self, client: ipaddress.IPv4Address | ipaddress.IPv6Address,
               rcpt: Mailbox) -> bool:
        """Whether the client address or the recipient is whitelisted."""
        if any(client in network for network in self.networks):
            return True
        local, domain = rcpt.local_part.lower(), domain_key(rcpt.domain)
        return ((local, domain) in self.addresses or local in self.local_parts
                or any(suffix in self.domains for suffix in _suffixes(domain)))


def _suffixes(domain: str):
    """The domain and each domain it is under (``a.b.example``, ``b.example``, ``example``)."""
    labels = domain.split(".")
    return (".".join(labels[start:]) for start in range(len(labels)))


def whitelist_of(entries) -> Whitelist:
    """The whitelist of a script's ``whitelist`` option, its entries checked to be strings."""
    for entry in entries:
        if not isinstance(entry, str):
            raise ScriptError("greylist::check: whitelist entries are strings, not "
                              f"{type_name(entry)}")
    return parse_whitelist(tuple(entries))


@lru_cache(maxsize=256)
def parse_whitelist(entries: tuple[str, ...]) -> Whitelist:
    """The whitelist of ``entries``: ``"192.0.2.0/24"`` or an address (the client),
    ``"example.com"`` (a recipient domain and its subdomains), ``"user@example.com"``
    (a recipient), ``"postmaster@"`` (that local part at any domain)."""
    networks, domains, addresses, local_parts = [], set(), set(), set()
    for entry in entries:
        if entry.endswith("@") and entry.count("@") == 1 and len(entry) > 1:
            local_parts.add(entry[:-1].lower())
        elif "@" in entry:
            mailbox = _whitelisted(entry, entry)
            addresses.add((mailbox.local_part.lower(), domain_key(mailbox.domain)))
        elif "/" in entry or ":" in entry or entry.replace(".", "").isdigit():
            networks.append(_network(entry))
        else:
            domains.add(domain_key(_whitelisted(f"postmaster@{entry}", entry).domain))
    return Whitelist(tuple(networks), frozenset(domains), frozenset(addresses),
                     frozenset(local_parts))


def _whitelisted(address: str, entry: str) -> Mailbox:
    try:
        return Mailbox.parse(address)
    except AddressError:
        raise ScriptError(f"greylist::check: whitelist entry '{entry}' is not a network, "
                          "a domain or an address") from None


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The network of an entry; IPv4-mapped IPv6 (``::ffff:192.0.2.0/120``) as the IPv4
    network it maps, since clients are compared as IPv4 (:func:`client_address`)."""
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ScriptError(f"greylist::check: whitelist entry '{entry}' is not an IP network "
                          "(CIDR)") from None
    if network.version == 6 and network.subnet_of(IPV4_MAPPED):
        return ipaddress.IPv4Network((network.network_address.ipv4_mapped,
                                      network.prefixlen - IPV4_MAPPED.prefixlen))
    return network


@dataclass(frozen=True)
class Settings:
    """greylist::check's options, checked (the defaults are postgrey's)."""

    delay: float = 300
    retry_window: float = 2 * 86400
    expire: float = 35 * 86400
    key: str = "triplet"
    auto_whitelist: int = 5
    auto_whitelist_interval: float = 3600
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    whitelist: Whitelist = Whitelist()


_CHECK = Options({}, {"delay": _NUMBER, "retry_window": _NUMBER, "expire": _NUMBER,
                      "key": str, "auto_whitelist": int, "auto_whitelist_interval": _NUMBER,
                      "ipv4_prefix": int, "ipv6_prefix": int, "whitelist": (list, tuple)})
_RULES = {  # option -> (whether a value is right, what it must be)
    "delay": (lambda v: v >= 0, "0 or more seconds"),
    "expire": (lambda v: v > 0, "more than 0 seconds"),
    "key": (lambda v: v in KEY_KINDS, " or ".join(f"'{kind}'" for kind in KEY_KINDS)),
    "auto_whitelist": (lambda v: v >= 0, "0 (off) or more"),
    "auto_whitelist_interval": (lambda v: v > 0, "more than 0 seconds"),
    "ipv4_prefix": (lambda v: 0 <= v <= 32, "0 to 32"),
    "ipv6_prefix": (lambda v: 0 <= v <= 128, "0 to 128"),
}


def settings(options) -> Settings:
    """The checked settings of an option map (a ScriptError for a bad one). A script
    passes the same options call after call: settings are cached by their values."""
    options = options or {}
    frozen = _frozen(options)
    return _settings(options) if frozen is None else _cached_settings(frozen)


_SCALARS = (str, int, float, bool)


def _frozen(options) -> tuple | None:
    """An option map as a hashable key that keeps what checking tells apart (each value
    with its type: ``1``, ``1.0`` and ``true`` differ; the keys in their order), or None
    when it cannot be one (not a map, a value neither a scalar nor an array of them)."""
    if type(options) is not dict and type(options) is not FrozenMap:
        return None
    items = []
    for name, value in options.items():
        if type(value) in (list, tuple) and all(type(e) in _SCALARS for e in value):
            items.append((name, type(value), tuple((type(e), e) for e in value)))
        elif type(value) in _SCALARS:
            items.append((name, type(value), value))
        else:
            return None
    return tuple(items)


@lru_cache(maxsize=256)
def _cached_settings(frozen: tuple) -> Settings:
    """The settings of the option map that :func:`_frozen` made ``frozen``."""
    return _settings({name: kind(e for _, e in value) if kind in (list, tuple) else value
                      for name, kind, value in frozen})


def _settings(options) -> Settings:
    """The checked settings of an option map, not cached."""
    found = Settings(**_checked(options))
    if found.retry_window <= found.delay:
        raise ScriptError("greylist::check: retry_window must be longer than delay")
    return found


def _checked(options) -> dict:
    """The options with their types and values checked, the whitelist parsed."""
    opts = _CHECK.parse(options, "greylist::check")
    for name, value in opts.items():
        right, wanted = _RULES.get(name, (None, ""))
        if right is not None and not right(value):
            raise ScriptError(f"greylist::check: {name} must be {wanted}, not {value!r}")
    if "whitelist" in opts:
        opts["whitelist"] = whitelist_of(opts["whitelist"])
    return opts


def _lint(args) -> str | None:
    """What is wrong with the literal options of a call (vsl lint), or None."""
    if len(args) < 2 or not isinstance(args[1], dict):
        return None
    literal = {k: v for k, v in args[1].items() if k in _CHECK.keys and v is not DYNAMIC}
    if isinstance(literal.get("whitelist"), tuple):
        literal["whitelist"] = tuple(e for e in literal["whitelist"] if e is not DYNAMIC)
    try:
        if len(literal) == len(args[1]):
            settings(literal)
        else:  # a value known only when it runs: no check across options
            _checked(literal)
    except ScriptError as err:
        return err.message.removeprefix("greylist::check: ")
    return None


@lru_cache(maxsize=4096)
def client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The client's address (an IPv4-mapped IPv6 address counts as IPv4: net's
    plain_address)."""
    try:
        return plain_address(ipaddress.ip_address(ip))
    except ValueError:
        raise ScriptError(f"greylist::check: the client address '{ip}' is not an IP "
                          "address") from None


@lru_cache(maxsize=4096)
def client_network(address, prefix: int) -> str:
    """The network a client address is greylisted by, as text (``192.0.2.0/24``)."""
    return str(ipaddress.ip_network((address, prefix), strict=False))


def triplet_key(network: str, ctx: Context, kind: str) -> str:
    """``<kind>:<network>:<digest>``: the client network, and the digest of the sender
    (``<>`` for the null sender) and, for ``triplet``, the recipient, lower-cased."""
    parts = [ctx.sender.address.lower() or "<>"]
    if kind == "triplet":
        parts.append(ctx.rcpt.address.lower())
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()
    return f"{kind}:{network}:{digest}"


async def greylist(store: StateStore, ctx: Context, found: Settings) -> GreylistResult:
    """The check of the current recipient (a Python API for the server and tests)."""
    address = client_address(ctx.client_ip)
    if found.whitelist.covers(address, ctx.rcpt):
        return GreylistResult("whitelisted")
    network = client_network(address, found.ipv4_prefix if address.version == 4
                             else found.ipv6_prefix)
    triplet = triplet_key(network, ctx, found.key)
    try:
        known = await _known(store, network, triplet, found)
        return known or await _attempt(store, triplet, network, found)
    except StateUnavailable:
        return GreylistResult("temperror")


async def _known(store: StateStore, network: str, triplet: str,
                 found: Settings) -> GreylistResult | None:
    """In one store step: ``whitelisted`` when the network is auto-whitelisted, else
    ``pass`` when the triplet passed before; None when neither. The entry found is
    renewed for ``expire`` when it was last written a RENEW_INTERVAL (or a tenth of
    ``expire``, when shorter) ago or more."""
    keys = [f"greylist:passed:{triplet}"]
    if found.auto_whitelist:
        keys.insert(0, f"greylist:whitelisted:{network}")
    present = await store.first_present(keys)
    if present is None:
        return None
    position, written = present
    now = store.clock()
    if now - _time_of(written) >= min(RENEW_INTERVAL, found.expire / 10):
        await store.set(keys[position], repr(now), found.expire)
    return GreylistResult("pass" if position == len(keys) - 1 else "whitelisted")


def _time_of(written: str) -> float:
    """When an entry's value says it was written (an entry of another form: long ago)."""
    try:
        return float(written)
    except ValueError:
        return -math.inf


async def _attempt(store: StateStore, triplet: str, network: str,
                   found: Settings) -> GreylistResult:
    """An attempt of a triplet that has not passed: greylisted until ``delay`` seconds
    after the first attempt, then passed (a retry after ``retry_window`` finds the first
    attempt expired, and starts over)."""
    passed, seen = f"greylist:passed:{triplet}", f"greylist:seen:{triplet}"
    waited = await _since_first_attempt(store, seen, found)
    if waited is None or waited < found.delay:
        return GreylistResult("greylisted", math.ceil(found.delay - (waited or 0)))
    if await store.set(passed, repr(store.clock()), found.expire, only_if_absent=True):
        await store.delete(seen)  # the first pass: once, however many processes retry
        if found.auto_whitelist:
            await _count_retry(store, network, found)
    return GreylistResult("pass")


async def _since_first_attempt(store: StateStore, key: str, found: Settings) -> float | None:
    """Seconds since the triplet's first attempt, or None when this is it (then stored,
    in the same step: of processes that see it at once, one stores its time)."""
    now = store.clock()
    seen = await store.get_or_add(key, repr(now), found.retry_window)
    return None if seen is None else now - float(seen)


async def _count_retry(store: StateStore, network: str, found: Settings) -> None:
    """Count a successful retry of the network, at most one an
    ``auto_whitelist_interval``; the ``auto_whitelist``-th whitelists it."""
    if not await store.set(f"greylist:counted:{network}", "1",
                           found.auto_whitelist_interval, only_if_absent=True):
        return
    if await store.incr(f"greylist:retries:{network}", 1, found.expire) >= found.auto_whitelist:
        await store.set(f"greylist:whitelisted:{network}", repr(store.clock()), found.expire)


@namespace.native(options=_CHECK.keys, uses="rcpt", check=_lint)
async def check(ctx, options=None, *, store: StateStore) -> GreylistResult:
    """check(ctx [, #{ delay, retry_window, expire, key, auto_whitelist,
    auto_whitelist_interval, whitelist, ipv4_prefix, ipv6_prefix }]): greylist the current
    recipient (on_rcpt_to only).

    ``.value``: ``greylisted`` (``.retry_in``: seconds until a retry passes), ``pass``,
    ``whitelisted`` or ``temperror`` (the state store did not answer: temp-fail then).
    Defaults: ``delay`` 300 s, ``retry_window`` 2 days, ``expire`` 35 days, ``key``
    ``"triplet"`` (or ``"client_sender"``), ``auto_whitelist`` 5 retries (0: off),
    counted at most once an ``auto_whitelist_interval`` (3600 s) per client network,
    prefixes /24 and /64; ``whitelist``: client networks, recipient domains and
    addresses (``"postmaster@"``). See docs/anti-abuse.md."""
    if not isinstance(ctx, Context):
        raise ScriptError("greylist::check takes ctx as its first argument")
    if ctx.stage != Stage.RCPT_TO:
        raise ScriptError(f"greylist::check works in on_rcpt_to only, not in "
                          f"{ctx.stage.function}")
    return await greylist(store, ctx, settings(options))


def namespace_for(store: StateStore) -> Namespace:
    """The ``greylist::`` namespace of one engine, keeping its state in ``store``."""
    return namespace.binding("check", store=store)
