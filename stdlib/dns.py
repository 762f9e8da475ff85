"""``dns::`` -- DNS look-ups on dnspython's asynchronous resolver, with a TTL cache.

    const resolver = dns::resolver(#{ nameservers: ["127.0.0.1:5353"], timeout: 2 });
    let ips = resolver.lookup("mail.example.test");          // A and AAAA
    let mx  = dns::lookup(#{ dns_resolver: resolver, name: "example.test", type: "MX" });

A name that does not exist (or has no record of the type) gives an empty
array. A timeout, SERVFAIL or unreachable server raises :class:`DnsTempError`,
which scripts can catch. Every resolver caches answers for their TTL (negative
answers for the zone's SOA minimum), in an LRU bounded by entries and by bytes
(estimated from each answer's wire size), and concurrent look-ups
of the same name share one query, so a flood does not reach the DNS server.

Options a script leaves out (name servers, timeout, cache size) come from the
server's `[dns]` section in vsl.toml.
"""
# The [dns] defaults are a frozen DnsDefaults bound into each engine's own copy of this
# namespace (namespace_for, called by stdlib.default_namespaces), never a module global:
# engines in one process do not share them.
# dnspython is imported by the functions that use it: its resolver takes ~50 ms to import,
# which ``vsl lint`` (reading only the declarations) would pay for nothing.
from __future__ import annotations

import dataclasses
import functools
import ipaddress
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from vsl.errors import ScriptError
from vsl.natives import Namespace, io_time_left
from vsl.values import NativeObject, method

from .support import telemetry
from .support.options import Options

if TYPE_CHECKING:  # for annotations only: imported where used (above)
    import asyncio
    import dns.name
    import dns.nameserver
    import dns.rdatatype

namespace = Namespace("dns", "DNS look-ups")

PUBLIC = {  # name -> (addresses, DNS-over-TLS host name)
    "google": (["8.8.8.8", "8.8.4.4", "2001:4860:4860::8888"], "dns.google"),
    "cloudflare": (["1.1.1.1", "1.0.0.1", "2606:4700:4700::1111"], "cloudflare-dns.com"),
    "quad9": (["9.9.9.9", "149.112.112.112", "2620:fe::fe"], "dns.quad9.net"),
}
CONFIGS = ("system", *PUBLIC, *(f"{name}_tls" for name in PUBLIC))
MAX_TTL = 86_400        # never cache longer than a day, whatever the zone says
NEGATIVE_TTL = 60       # for negative answers without an SOA
DEFAULT_TIMEOUT = 5.0
DEFAULT_CACHE_SIZE = 10_000
DEFAULT_CACHE_BYTES = 4 * 1024 * 1024  # per resolver; [dns] cache_bytes
_ENTRY_OVERHEAD = 640   # bytes of a cache entry besides its records (key, tuple, list)
_RECORD_OVERHEAD = 140  # bytes of one parsed record besides its wire size
QUERY_NAMES = 2048      # parsed query names kept (process-wide: _parse_query)


class DnsTempError(ScriptError):
    """A DNS failure that may go away on retry: timeout, SERVFAIL, no server reachable."""


class _Cache:
    """A bounded LRU of (name, type) -> (expiry, records, size); expired entries are
    dropped. Bounded twice: ``size`` entries and ``max_bytes`` bytes (each entry's
    estimate, :func:`answer_size`), so a flood of large answers cannot fill the memory."""

    def __init__(self, size: int, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.size, self.max_bytes = size, max_bytes
        self.entries: OrderedDict = OrderedDict()
        self.bytes = 0  # the sum of the entries' sizes

    def get(self, key):
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self._drop(key)
            return None
        self.entries.move_to_end(key)
        return entry[1]

    def put(self, key, records: list, ttl: float, size: int) -> None:
        """Keep ``records`` for ``ttl`` seconds; an answer over the whole bound is not
        kept, and the least recently used entries make room for the others."""
        if self.size <= 0 or ttl <= 0 or size > self.max_bytes:
            return
        if key in self.entries:
            self._drop(key)
        self.entries[key] = (time.monotonic() + min(ttl, MAX_TTL), records, size)
        self.bytes += size
        while len(self.entries) > self.size or self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)))

    def _drop(self, key) -> None:
        self.bytes -= self.entries.pop(key)[2]


def answer_size(response, records: list) -> int:
    """What an answer costs in the cache, in bytes, estimated from its wire size: a
    quarter more for the parsed objects, and Python's overhead per entry and per record
    (measured with tracemalloc: a 62 KB TXT answer takes 77 KB, one A record 780 bytes)."""
    wire = len(getattr(response, "wire", None) or b"")
    return wire * 5 // 4 + _ENTRY_OVERHEAD + _RECORD_OVERHEAD * len(records)


def parse_nameserver(text: str) -> dns.nameserver.Nameserver:
    """"ip", "ip:port" or "[ipv6]:port" -> a dnspython nameserver."""
    import dns.nameserver

    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = _port(rest.lstrip(":"), text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ScriptError(f"nameserver '{text}' is not an IP address[:port]") from None
    return dns.nameserver.Do53Nameserver(host, port)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ScriptError(f"nameserver '{whole}' has a bad port")
    return int(text)


def _nameservers(config: str | None, listed) -> list:
    import dns.asyncresolver
    import dns.exception
    import dns.nameserver

    if listed:
        return [parse_nameserver(n) if isinstance(n, str) else _bad_nameserver(n)
                for n in listed]
    config = config or "system"
    if config == "system":
        try:
            return list(dns.asyncresolver.Resolver(configure=True).nameservers)
        except dns.exception.DNSException as err:
            raise ScriptError(f"dns::resolver: cannot read the system configuration: {err}") \
                from None
    name, _, tls = config.partition("_")
    if name not in PUBLIC or tls not in ("", "tls"):
        raise ScriptError(f"dns::resolver: unknown config '{config}' (use {', '.join(CONFIGS)})")
    addresses, hostname = PUBLIC[name]
    if tls:
        return [dns.nameserver.DoTNameserver(a, 853, hostname=hostname) for a in addresses]
    return [dns.nameserver.Do53Nameserver(a, 53) for a in addresses]


def _bad_nameserver(value):
    raise ScriptError("dns::resolver: nameservers must be strings such as \"127.0.0.1:53\"")


def _negative_ttl(response) -> float:
    import dns.rdatatype

    for rrset in getattr(response, "authority", ()):
        if rrset.rdtype == dns.rdatatype.SOA:
            return min(rrset.ttl, rrset[0].minimum)
    return NEGATIVE_TTL


def record_text(rdata) -> str:
    """How one record reads in a script: names without the final dot, TXT strings joined."""
    import dns.rdatatype

    rdtype = rdata.rdtype
    if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return rdata.address
    if rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings).decode("utf-8", "replace")
    if rdtype == dns.rdatatype.MX:
        return f"{rdata.preference} {rdata.exchange.to_text(omit_final_dot=True)}"
    if rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME, dns.rdatatype.NS):
        return rdata.target.to_text(omit_final_dot=True)
    return rdata.to_text()


class Resolver(NativeObject):
    """A DNS resolver with its own cache, made by ``dns::resolver(...)``."""

    vsl_type = "dns_resolver"

    def __init__(self, nameservers: list, timeout: float = DEFAULT_TIMEOUT,
                 cache_size: int = DEFAULT_CACHE_SIZE,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        import dns.asyncresolver

        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = nameservers
        self._resolver.lifetime = timeout
        self._resolver.timeout = max(timeout / 2, 0.1)
        self._cache = _Cache(cache_size, cache_bytes)
        self._inflight: dict = {}
        self.sent = 0  # queries that reached the network (for tests and benchmarks)

    @property
    def cached_bytes(self) -> int:
        """What the cache holds now, in bytes (estimated: :func:`answer_size`)."""
        return self._cache.bytes

    def vsl_display(self) -> str:
        servers = ", ".join(str(n) for n in self._resolver.nameservers)
        return f"dns_resolver({servers})"

    # -- Python API, used by the other natives -------------------------------
    def cached(self, name: str, rdtype: str = "A") -> list | None:
        """The records of ``name`` if the cache holds them (see :meth:`query`), else None:
        for callers that answer what is cached at once and ask only for the rest."""
        return self._cache.get(_parse_query(name, rdtype)[0])

    async def query(self, name: str, rdtype: str = "A") -> list:
        """The records of ``name`` (dnspython rdata); [] when it does not exist. The wait
        ends by the script call's network deadline (io_time_left) with a DnsTempError.
        A cached answer returns without suspending."""
        import asyncio
        key, qname, rdtype_ = _parse_query(name, rdtype)
        cached = self._cache.get(key)
        telemetry.count("vsl_dns_cache_total", result="miss" if cached is None else "hit")
        if cached is not None:
            return cached
        task = self._inflight.get(key)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(self._fetch(key, qname, rdtype_))
            self._inflight[key] = task
            task.add_done_callback(lambda done, key=key: self._forget(key, done))
        left = io_time_left()
        try:
            return await asyncio.wait_for(asyncio.shield(task), None if left is None
                                          else max(left, 0))
        except TimeoutError:
            raise DnsTempError(f"DNS temporary failure for {qname} {rdtype_.name}: timed "
                               "out (the script's time limit is near)") from None

    def _forget(self, key, task: asyncio.Future) -> None:
        """A finished look-up leaves the in-flight table, its error retrieved: every
        caller may have stopped waiting at its deadline."""
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()

    async def _fetch(self, key: tuple, qname: dns.name.Name, rdtype) -> list:
        """Ask the network for ``qname`` and cache the answer under ``key``."""
        import dns.exception
        import dns.resolver

        self.sent += 1
        started, result = time.perf_counter(), "error"
        try:
            answer = await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False,
                                                  search=False)
            result = "ok" if answer.rrset is not None else "nodata"
        except dns.resolver.NXDOMAIN as err:
            result = "nxdomain"
            response = next(iter(err.responses().values()), None)
            self._cache.put(key, [], _negative_ttl(response),
                            answer_size(response, []))
            return []
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as err:
            result = "timeout" if isinstance(err, dns.exception.Timeout) else "servfail"
            raise DnsTempError(f"DNS temporary failure for {qname} {rdtype.name}: "
                               f"{_why(err)}") from None
        except dns.exception.DNSException as err:
            raise DnsTempError(f"DNS failure for {qname} {rdtype.name}: {err}") from None
        finally:
            telemetry.count("vsl_dns_queries_total", rdtype=rdtype.name, result=result)
            telemetry.observe("vsl_dns_seconds", time.perf_counter() - started)
        records = list(answer.rrset) if answer.rrset is not None else []
        self._cache.put(key, records, answer.chaining_result.minimum_ttl,
                        answer_size(answer.response, records))
        return records

    async def addresses(self, name: str) -> list[str]:
        """A then AAAA addresses of ``name``."""
        import asyncio
        v4, v6 = await asyncio.gather(self.query(name, "A"), self.query(name, "AAAA"))
        return [r.address for r in (*v4, *v6)]

    async def names(self, ip: str) -> list[str]:
        """PTR names of an address (without the final dot)."""
        import dns.exception
        import dns.reversename

        try:
            reverse = dns.reversename.from_address(str(ip))
        except (ValueError, dns.exception.SyntaxError):
            raise ScriptError(f"'{ip}' is not an IP address") from None
        return [record_text(r) for r in await self.query(reverse.to_text(), "PTR")]

    # -- script methods --------------------------------------------------------
    @method("lookup")
    async def lookup(self, name, rtype=None):
        """lookup(name [, type]): A and AAAA by default, else the records of that type."""
        _check_name(name)
        if rtype is None:
            return await self.addresses(name)
        return [record_text(r) for r in await self.query(name, _type_arg(rtype))]

    @method("rlookup")
    async def rlookup(self, ip):
        """rlookup(ip): the PTR names of an address."""
        return await self.names(_ip_arg(ip))


namespace.register_type(Resolver)


def _why(err) -> str:
    import dns.exception

    if isinstance(err, dns.exception.Timeout):
        return "timed out"
    return "no server answered (SERVFAIL or unreachable)"


def _check_name(name) -> None:
    if not isinstance(name, str) or not name:
        raise ScriptError("a DNS name must be a non-empty string")


@functools.lru_cache(maxsize=QUERY_NAMES)
def _parse_query(name: str, rdtype) -> tuple[tuple[str, int], dns.name.Name,
                                              dns.rdatatype.RdataType]:
    """A query's cache key (its name in canonical text, its type's number), its name and
    its type, parsed once for a name asked often (dnspython's parsing is slow)."""
    qname, rdtype_ = _qname(name), _rdtype(rdtype)
    return (qname.canonicalize().to_text(), int(rdtype_)), qname, rdtype_


def _qname(name: str) -> dns.name.Name:
    import dns.exception
    import dns.name

    _check_name(name)
    try:
        return dns.name.from_text(name)
    except dns.exception.DNSException as err:
        raise ScriptError(f"'{name}' is not a valid DNS name: {err}") from None


def _rdtype(rdtype):
    import dns.rdatatype

    try:
        return dns.rdatatype.RdataType.make(rdtype.upper() if isinstance(rdtype, str)
                                            else rdtype)
    except (dns.rdatatype.UnknownRdatatype, ValueError, AttributeError):
        raise ScriptError(f"unknown DNS record type {rdtype!r}") from None


def _type_arg(rtype) -> str:
    if not isinstance(rtype, str):
        raise ScriptError("the record type must be a string such as \"MX\"")
    _rdtype(rtype)
    return rtype


def _ip_arg(ip) -> str:
    try:
        return str(ipaddress.ip_address(ip if isinstance(ip, str) else str(ip)))
    except ValueError:
        raise ScriptError(f"'{ip}' is not an IP address") from None


@dataclasses.dataclass(frozen=True)
class DnsDefaults:
    """What ``dns::resolver()`` uses for options a script leaves out (the server's [dns]
    configuration), given to one engine's namespaces (:func:`namespace_for`). ``forced``:
    every resolver uses these nameservers whatever the script says (`vsl test` answers
    from a transcript's zone files)."""

    config: str = "system"
    nameservers: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    cache_bytes: int = DEFAULT_CACHE_BYTES
    forced: bool = False


def namespace_for(defaults: DnsDefaults) -> Namespace:
    """The ``dns::`` namespace of one engine: its ``dns::resolver()`` fills in ``defaults``,
    so engines with different defaults do not see each other's."""
    return namespace.binding("resolver", defaults=defaults)


_RESOLVER = Options({}, {"config": str, "nameservers": (list, tuple), "timeout": (int, float),
                         "cache": bool, "cache_size": int})


@namespace.native(options=_RESOLVER.keys)
def resolver(config=None, *, defaults: DnsDefaults = DnsDefaults()) -> Resolver:
    """resolver(#{ config?, nameservers?, timeout?, cache?, cache_size? }): a resolver with
    its own cache; options left out come from the server's [dns] configuration.

    ``config``: ``system`` (the default), ``google``, ``cloudflare``, ``quad9``, or their
    ``_tls`` forms (DNS over TLS). ``nameservers``: ``"ip"``, ``"ip:port"`` or
    ``"[v6]:port"`` strings, overriding ``config``. ``timeout``: seconds (at most 60).
    ``cache``: false for no cache; ``cache_size``: the most entries it keeps (10,000).
    ``[dns] override`` in vsl.toml overrides both config and nameservers."""
    opts = _RESOLVER.parse(config or {}, "dns::resolver")
    if "config" not in opts and "nameservers" not in opts or defaults.forced:
        opts["config"], opts["nameservers"] = defaults.config, defaults.nameservers
    timeout = float(opts.get("timeout", defaults.timeout))
    if not 0 < timeout <= 60:
        raise ScriptError("dns::resolver: timeout must be between 0 and 60 seconds")
    size = opts.get("cache_size", DEFAULT_CACHE_SIZE) if opts.get("cache", True) else 0
    return Resolver(_nameservers(opts.get("config"), opts.get("nameservers")), timeout, size,
                    defaults.cache_bytes)


_LOOKUP = Options({"dns_resolver": Resolver, "name": str}, {"type": str})


@namespace.native(options=_LOOKUP.keys)
async def lookup(query):
    """lookup(#{ dns_resolver, name, type? }): the records as strings ([] if none).

    Names have no final dot, a TXT record's strings are joined, an MX record reads as
    `"10 mail.example.test"`. A look-up never waits into the last fifth of the script's
    `max_time`, whatever the resolver's timeout: a server that does not answer is then a
    DnsTempError the script can catch, with time left to act on it."""
    opts = _LOOKUP.parse(query, "dns::lookup")
    return await opts["dns_resolver"].lookup(opts["name"], opts.get("type"))


_RLOOKUP = Options({"dns_resolver": Resolver, "ip": str})


@namespace.native(options=_RLOOKUP.keys)
async def rlookup(query):
    """rlookup(#{ dns_resolver, ip }): the PTR names of an address."""
    opts = _RLOOKUP.parse(query, "dns::rlookup")
    return await opts["dns_resolver"].rlookup(opts["ip"])
