"""``dnsbl::`` -- DNS block lists (RFC 5782): client addresses (DNSBL) and domains (RHSBL).

    let r = dnsbl::check(#{ ip: ctx.client_ip, zones: ["zen.example"], dns_resolver: R });
    if r.listed { return status::deny(`554 5.7.1 Listed by ${r.zone}: ${r.reason}`); }
    let s = dnsbl::score(#{ ip: ctx.client_ip, dns_resolver: R, zones: [
        #{ zone: "zen.example", codes: ["127.0.0.2", "127.0.0.3"], weight: 3 }, "bl.example"] });

What an A answer for ``<reversed ip or domain>.<zone>`` means, per zone:

- NXDOMAIN, or no A record: not listed.
- ``127.0.0.0/8`` but its error answers: listed, with those codes -- unless the zone
  has a ``codes`` filter and none of them is in it (then not listed).
- an error answer: ``127.255.255.x``, the list refuses to answer (Spamhaus: public
  resolver, rate limit, bad query); ``127.0.0.1``, which RFC 5782 §2.1 reserves (URIBL
  answers it when it refuses); a code of the zone's ``errors`` (a DBL's ``127.0.1.255``,
  an IP address queried as a domain): ``temperror``, never listed.
- outside ``127.0.0.0/8``: not a list's answer (a resolver that turns NXDOMAIN into the
  address of a web page): ignored, so not listed.
- a timeout or SERVFAIL: ``temperror``.

A check's value is ``listed`` when a zone of positive weight lists it (the first in the
order given is ``.zone``), else ``temperror`` when a zone could not answer, else ``pass``.
Every zone is asked at once through the script's resolver and its cache; the TXT reason
is asked only of a zone that lists.
"""
# Zones, their filters and the queried subject are checked when the script calls (and by
# `vsl lint` when it spells them out: _lint); the look-ups themselves never raise, a DNS
# failure being one zone's temperror.
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

from vsl.errors import ScriptError
from vsl.natives import Namespace
from vsl.resolve import DYNAMIC
from vsl.values import FrozenMap, type_name

from .ctx import Context
from .dns import DnsTempError, Resolver, record_text
from .net import plain_address
from .support import telemetry
from .support.options import Options
from .support.result import CheckResult

namespace = Namespace("dnsbl", "DNS block lists of addresses (DNSBL) and domains (RHSBL)")

HEADER = "X-DNSBL"  # RFC 8601's registry has no DNSBL method (RFC 8904's dnswl is for allow lists)
MAX_NAME = 253  # bytes of a DNS name, without the final dot (RFC 1035 §2.3.4)
MAX_ZONES = 32  # zones asked by one call
MAX_CODES = 64  # codes (and errors) a zone map lists
ZONE_WORK = 512  # what a zone's look-up is charged: a UDP DNS answer's bytes (RFC 1035 §2.3.4)
MAX_REASON = 300  # bytes of a TXT reason kept
MEMO_IP_TEXT = 64  # characters of an ip kept parsed: any address, with a scope of up to 18
LISTED = ipaddress.ip_network("127.0.0.0/8")
REFUSED = ipaddress.ip_network("127.255.255.0/24")  # the list's error answers, with:
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")  # never a listing (RFC 5782 §2.1)
ONE_SUBJECT = "takes ip or domain: one of them, not both"
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]+")


# -- results ---------------------------------------------------------------------------

def error_answer(address: ipaddress.IPv4Address) -> bool:
    """Whether an A answer is an error answer of every list (127.255.255.x, 127.0.0.1)."""
    return address in REFUSED or address == LOOPBACK


@dataclass(frozen=True)
class Zone:
    """One list to ask: its name, the codes that count as listed (empty: any), the codes
    that are its own error answers, its weight."""

    name: str
    codes: frozenset = frozenset()
    errors: frozenset = frozenset()
    weight: int | float = 1

    def refuses(self, code: str) -> bool:
        """Whether an A answer (an address as dnspython writes it) is an error answer of
        this zone, not a listing."""
        return error_answer(answer_address(code)) or code in self.errors

    def answer(self, records) -> ZoneAnswer:
        """What this zone's A records say: temperror if one is an error answer, else
        listed with the codes its filter counts (sorted by address), else pass."""
        answered = sorted((r.address for r in records), key=answer_address)
        if any(self.refuses(code) for code in answered):
            return ZoneAnswer(self, "temperror")
        codes = tuple(code for code in answered if answer_address(code) in LISTED
                      and (not self.codes or code in self.codes))
        return ZoneAnswer(self, "listed", codes) if codes else ZoneAnswer(self, "pass")


@lru_cache(maxsize=256)
def answer_address(code: str) -> ipaddress.IPv4Address:
    """An A answer's address, parsed once: lists answer a few codes, over and over."""
    return ipaddress.IPv4Address(code)


@dataclass(frozen=True)
class ZoneAnswer:
    """What one zone said: pass, listed (with its codes) or temperror."""

    zone: Zone
    value: str
    codes: tuple = ()
    reason: str | None = None

    @property
    def makes_listed(self) -> bool:
        """Whether this answer makes a check's result listed: a listing by a zone of
        positive weight (one of weight 0 or less, such as an allow list, only counts in a
        score)."""
        return self.value == "listed" and self.zone.weight > 0

    def as_map(self) -> FrozenMap:
        """This answer as a script sees it in ``score(...).results``."""
        return FrozenMap(zone=self.zone.name, value=self.value, codes=self.codes,
                         reason=self.reason, weight=self.zone.weight)


class DnsblResult(CheckResult):
    """The outcome of dnsbl::check and check_domain; compares equal to its value string."""

    vsl_type = "dnsbl_result"
    vsl_props = frozenset({"value", "listed", "zone", "codes", "reason", "subject"})
    mechanism_name = "dnsbl"

    def __init__(self, subject: str, answers: list[ZoneAnswer]):
        self.subject = subject
        first = next((a for a in answers if a.makes_listed), None)
        self.listed = first is not None
        if first is not None:
            self.value, self.zone, self.codes, self.reason = \
                "listed", first.zone.name, first.codes, first.reason
        else:
            temporary = any(a.value == "temperror" for a in answers)
            self.value = "temperror" if temporary else "pass"
            self.zone, self.codes, self.reason = None, (), None

    def header_value(self) -> str:
        """What :data:`HEADER` says of this result: its value, subject and fields, and the
        reason as a comment."""
        text = " ".join([self.value, self.subject, *self.header_fields()])
        if self.reason:
            text += " (" + re.sub(r"([()\\])", r"\\\1", self.reason) + ")"
        return text

    def header_fields(self) -> list[str]:
        """The ``name=value`` fields of :meth:`header_value`."""
        return [f"zone={self.zone}", f"codes={','.join(self.codes)}"] if self.listed else []


class DnsblScore(DnsblResult):
    """The outcome of dnsbl::score: a check's result, plus ``.score`` (the sum of the
    weights of the zones that list it) and ``.results`` (one map per zone, in order)."""

    vsl_type = "dnsbl_score"
    vsl_props = DnsblResult.vsl_props | {"score", "results"}

    def __init__(self, subject: str, answers: list[ZoneAnswer]):
        super().__init__(subject, answers)
        self.score = sum(a.zone.weight for a in answers if a.value == "listed")
        self.results = tuple(a.as_map() for a in answers)

    def header_fields(self) -> list[str]:
        return [*super().header_fields(), f"score={self.score}"]


namespace.register_type(DnsblResult)
namespace.register_type(DnsblScore)


@dataclass(frozen=True)
class Subject:
    """What a check looks up: ``text`` as results show it, ``prefix`` its part of the
    query names (None: nothing a list can list), ``is_domain`` whether it is a domain."""

    text: str
    prefix: str | None
    is_domain: bool

    def query_name(self, zone_name: str) -> str | None:
        """``prefix.zone``; None when there is nothing to ask (no prefix, or a domain too
        long to look up in this zone, which therefore cannot list it)."""
        if self.prefix is None:
            return None
        name = f"{self.prefix}.{zone_name}"
        if len(name) <= MAX_NAME:
            return name
        if self.is_domain:
            return None
        raise ScriptError(f"zone '{zone_name[:40]}...' is too long to look up {self.text} in: "
                          f"a query name is at most {MAX_NAME} bytes and the address's "
                          f"reversed form takes {len(self.prefix) + 1} of them")


# -- checking what scripts give ----------------------------------------------------------

def dns_name(text, what: str) -> str:
    """``text`` as a lower-case DNS name without the final dot, or a ScriptError."""
    if not isinstance(text, str):
        raise ScriptError(f"{what} must be a string, not {type_name(text)}")
    name = text[:-1] if text.endswith(".") else text
    if not name or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ScriptError(f"{what} '{text}' is not a DNS name (labels of 1 to 63 letters, "
                          "digits, '-' or '_', separated by dots)")
    if len(name) > MAX_NAME:
        raise ScriptError(f"{what} '{text[:40]}...' is over {MAX_NAME} bytes")
    return name.lower()


def ip_subject(ip: str) -> Subject:
    """An address as results show it (canonical, without a scope such as ``%eth0``; an
    IPv4-mapped IPv6 address as its IPv4 address), queried by its reversed octets (IPv4)
    or nibbles (IPv6). Parsed once for an address asked often (a client's, stage after
    stage), unless its text is longer than any address with a short scope."""
    if len(ip) > MEMO_IP_TEXT:
        return parse_ip_subject.__wrapped__(ip)
    return parse_ip_subject(ip)


@lru_cache(maxsize=1024)
def parse_ip_subject(ip: str) -> Subject:
    """:func:`ip_subject`, kept for the addresses asked last."""
    try:
        address = plain_address(ipaddress.ip_address(ip))
    except ValueError:
        raise ScriptError(f"ip '{ip}' is not an IP address") from None
    prefix = address.reverse_pointer.rsplit(".", 2)[0]  # less .in-addr.arpa / .ip6.arpa
    return Subject(str(address), prefix, is_domain=False)


def domain_subject(domain: str) -> Subject:
    """A domain to look up: in lower case, in its ASCII form (IDNA: ``xn--`` labels) and
    without the final dot. What no list can list by name is not looked up: an address
    literal or an IP address (a last label of digits, RFC 3696 §2), a single label, what
    is not a DNS name or is too long for one (client input, such as a HELO name)."""
    # a name longer than a DNS name is not converted (IDNA's ASCII form is never shorter)
    name = ascii_name(domain) if len(domain) <= MAX_NAME + 1 else None
    if name is None or not _listable(name):
        return Subject(printable_ascii(name or domain, MAX_NAME), None, is_domain=True)
    return Subject(name, name, is_domain=True)


def ascii_name(domain: str) -> str | None:
    """``domain`` in lower case without its final dot, internationalised labels in their
    ``xn--`` form; None if it has no such form."""
    name = domain.lower().removesuffix(".")
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def _listable(name: str) -> bool:
    """Whether an ASCII name can be in a domain list: a DNS name of two labels or more
    whose last label is not all digits."""
    labels = name.split(".")
    return (len(labels) > 1 and len(name) <= MAX_NAME and not labels[-1].isdigit()
            and all(_LABEL.fullmatch(label) for label in labels))


def printable_ascii(text: str, limit: int) -> str:
    """``text`` with each run of anything but printable ASCII (controls, line and
    paragraph separators, bidi and zero-width characters, any non-ASCII) replaced by one
    space, cut to ``limit`` bytes: safe in an SMTP reply and a header field."""
    return _NOT_PRINTABLE.sub(" ", text).strip()[:limit].rstrip()


def _answer_code(code) -> ipaddress.IPv4Address:
    """A code a list may answer: an address in ``127.0.0.0/8``."""
    if not isinstance(code, str):
        raise ScriptError(f"a code must be a string such as '127.0.0.2', not {type_name(code)}")
    try:
        address = ipaddress.IPv4Address(code)
    except ValueError:
        address = None
    if address is None or address not in LISTED:
        raise ScriptError(f"code {code!r} is not a list's answer (an address in 127.0.0.0/8)")
    return address


def _listing_code(code) -> str:
    """A code of a ``codes`` filter: a list's answer that is not always an error."""
    address = _answer_code(code)
    if error_answer(address):
        raise ScriptError(f"code {code!r} is not a listing answer (127.0.0.1 and "
                          "127.255.255.x are error answers)")
    return str(address)


_ZONE = Options({"zone": str},
                {"codes": (list, tuple), "errors": (list, tuple), "weight": (int, float)})


def zone(spec) -> Zone:
    """A zone as scripts give it: ``"name"`` or ``#{ zone, codes?, errors?, weight? }``."""
    if isinstance(spec, str):
        return named_zone(spec)
    opts = _ZONE.parse(spec, "a zone map")
    name = dns_name(opts["zone"], "zone")
    if "codes" in opts and not opts["codes"]:
        raise ScriptError(f"zone '{name}': codes is empty (without codes, every listing "
                          "code counts)")
    for key in ("codes", "errors"):
        if len(opts.get(key, ())) > MAX_CODES:
            raise ScriptError(f"zone '{name}': {key} has {len(opts[key])} codes: a zone "
                              f"lists at most {MAX_CODES}")
    codes = frozenset(_listing_code(c) for c in opts.get("codes", ()))
    errors = frozenset(str(_answer_code(c)) for c in opts.get("errors", ()))
    if codes & errors:
        raise ScriptError(f"zone '{name}': code '{min(codes & errors)}' is in both its "
                          "codes and its errors")
    return Zone(name, codes, errors, opts.get("weight", 1))


@lru_cache(maxsize=256)
def named_zone(name: str) -> Zone:
    """A zone given by its name alone, checked once for a name given call after call."""
    return Zone(dns_name(name, "zone"))


def zones(specs) -> list[Zone]:
    """The zones option: an array of 1 to MAX_ZONES zones."""
    check_zone_count(specs)
    return [zone(spec) for spec in specs]


def check_zone_count(specs) -> None:
    """Refuse a zones option that is not an array of 1 to MAX_ZONES items: each zone is a
    query, and all of them must be answered within the stage's time."""
    if not isinstance(specs, (list, tuple)) or not specs:
        raise ScriptError("zones must be a non-empty array of zone names or maps")
    if len(specs) > MAX_ZONES:
        raise ScriptError(f"zones has {len(specs)} zones: a call asks at most {MAX_ZONES}")


def zone_work(query) -> int:
    """What a check charges to the script's operations: a DNS answer read per zone, the
    codes its map lists, and the domain read."""
    if not isinstance(query, (dict, FrozenMap)):
        return 0
    specs, domain = query.get("zones"), query.get("domain")
    work = len(domain) if isinstance(domain, str) else 0
    if isinstance(specs, (list, tuple)):
        work += sum(ZONE_WORK + _codes_work(spec) for spec in specs)
    return work


def _codes_work(spec) -> int:
    """What a zone map's codes and errors cost to read: an address's bytes each."""
    if not isinstance(spec, (dict, FrozenMap)):
        return 0
    return 16 * sum(len(spec.get(key)) for key in ("codes", "errors")
                    if isinstance(spec.get(key), (list, tuple)))


# -- asking the lists ---------------------------------------------------------------------
# What the resolver's cache holds is answered at once; only the rest is asked, all at once
# (a task each): a check whose answers are all cached never waits.

def known_answer(resolver: Resolver, name: str | None, zone_: Zone) -> ZoneAnswer | None:
    """What ``zone_`` says of ``name`` (the whole query name; None: nothing to ask, not
    listed) if that needs no query: None when its A records are not cached."""
    if name is None:
        return ZoneAnswer(zone_, "pass")
    records = resolver.cached(name, "A")
    return None if records is None else zone_.answer(records)


async def ask(resolver: Resolver, name: str, zone_: Zone) -> ZoneAnswer:
    """What ``zone_`` says of ``name``, asked of the resolver, without its reason."""
    try:
        records = await resolver.query(name, "A")
    except DnsTempError:
        return ZoneAnswer(zone_, "temperror")
    return zone_.answer(records)


def known_reason(resolver: Resolver, name: str, answer: ZoneAnswer) -> ZoneAnswer | None:
    """``answer`` with its reason (see with_reason) if the zone's TXT records are cached,
    else None."""
    records = resolver.cached(name, "TXT")
    return None if records is None else reasoned(answer, records)


async def with_reason(resolver: Resolver, name: str, answer: ZoneAnswer) -> ZoneAnswer:
    """``answer`` with the zone's TXT text for ``name``, asked of the resolver; unchanged
    if there is none."""
    try:
        records = await resolver.query(name, "TXT")
    except DnsTempError:
        return answer
    return reasoned(answer, records)


def reasoned(answer: ZoneAnswer, records: list) -> ZoneAnswer:
    """``answer`` with the text of TXT ``records`` as its reason (printable ASCII only, at
    most MAX_REASON bytes, for SMTP replies and headers; none if they say nothing)."""
    reason = printable_ascii(" ".join(record_text(r) for r in records), MAX_REASON)
    return ZoneAnswer(answer.zone, answer.value, answer.codes, reason or None)


async def settle(known: list, ask_for) -> list:
    """``known`` with each None replaced by what ``ask_for(i)`` (a coroutine) gives for
    its index ``i``: those asked all at once, and nothing awaited when none is None."""
    import asyncio
    missing = [i for i, item in enumerate(known) if item is None]
    if missing:
        for i, item in zip(missing, await asyncio.gather(*(ask_for(i) for i in missing))):
            known[i] = item
    return known


async def lookup(resolver: Resolver, names: list[str | None], zone_list: list[Zone],
                 all_reasons: bool) -> list[ZoneAnswer]:
    """Every zone's answer for its query name, with the reason of the first answer that
    makes the result listed (or of every listing, with ``all_reasons``)."""
    answers = await settle([known_answer(resolver, n, z) for n, z in zip(names, zone_list)],
                           lambda i: ask(resolver, names[i], zone_list[i]))
    if all_reasons:
        wanted = [i for i, a in enumerate(answers) if a.value == "listed"]
    else:
        wanted = [i for i, a in enumerate(answers) if a.makes_listed][:1]
    found = await settle([known_reason(resolver, names[i], answers[i]) for i in wanted],
                         lambda j: with_reason(resolver, names[wanted[j]], answers[wanted[j]]))
    for i, answer in zip(wanted, found):
        answers[i] = answer
    return answers


# -- natives ------------------------------------------------------------------------------

def subject(opts: dict) -> Subject:
    """What a check looks up: its ``ip`` or its ``domain``, one of them."""
    if ("ip" in opts) == ("domain" in opts):
        raise ScriptError(ONE_SUBJECT)
    return ip_subject(opts["ip"]) if "ip" in opts else domain_subject(opts["domain"])


async def run(query, options: Options, where: str, result: type[DnsblResult]) -> DnsblResult:
    """One native's check: its options checked (errors named after ``where``), every zone
    asked, the answers made into ``result`` (a score gets every listing zone's reason)."""
    opts = options.parse(query, where)
    try:
        subject_ = subject(opts)
        zone_list = zones(opts["zones"])
        names = [subject_.query_name(z.name) for z in zone_list]
    except ScriptError as err:
        raise ScriptError(f"{where}: {err.message}") from None
    answers = await lookup(opts["dns_resolver"], names, zone_list,
                           all_reasons=result is DnsblScore)
    return result(subject_.text, answers)


def _lint(args) -> str | None:
    """The lint hook of the checks: what the option map spells out of ip, domain and zones."""
    opts = args[0] if args and isinstance(args[0], dict) else {}
    try:
        if all(_given(opts.get(key)) for key in ("ip", "domain")):
            raise ScriptError(ONE_SUBJECT)
        if isinstance(opts.get("ip"), str):
            ip_subject(opts["ip"])
        if isinstance(opts.get("zones"), tuple):
            _lint_zones(opts["zones"])
    except ScriptError as err:
        return err.message
    return None


def _lint_zones(specs: tuple) -> None:
    """Check the number of zones, and the zones a script spells out."""
    check_zone_count(specs)
    for spec in specs:
        if _spelled_out(spec):
            zone(spec)


def _given(value) -> bool:
    """Whether a lint argument is surely given: spelled out, and not ``()`` (which, as at
    run time, is as if the key were absent)."""
    return value is not None and _spelled_out(value)


def _spelled_out(value) -> bool:
    """Whether a lint argument holds no dynamic part."""
    if isinstance(value, dict):
        return all(_spelled_out(v) for v in value.values())
    if isinstance(value, tuple):
        return all(_spelled_out(v) for v in value)
    return value is not DYNAMIC


_CHECK = Options({"ip": str, "zones": (list, tuple), "dns_resolver": Resolver})
_counted = telemetry.counted_check("dnsbl", {"pass": "not_listed"})
_CHECK_DOMAIN = Options({"domain": str, "zones": (list, tuple), "dns_resolver": Resolver})
_SCORE = Options({"zones": (list, tuple), "dns_resolver": Resolver}, {"ip": str, "domain": str})


@namespace.native(options=_CHECK.keys, check=_lint, charges=zone_work)
@_counted
async def check(query) -> DnsblResult:
    """check(#{ ip, zones, dns_resolver }): listed | pass | temperror, with .zone (the
    first that lists), .codes, .reason (its TXT) and .listed. IPv4 and IPv6."""
    return await run(query, _CHECK, "dnsbl::check", DnsblResult)


@namespace.native(options=_CHECK_DOMAIN.keys, check=_lint, charges=zone_work)
@_counted
async def check_domain(query) -> DnsblResult:
    """check_domain(#{ domain, zones, dns_resolver }): as check, for a domain (RHSBL:
    HELO, sender or URI domains)."""
    return await run(query, _CHECK_DOMAIN, "dnsbl::check_domain", DnsblResult)


@namespace.native(options=_SCORE.keys, check=_lint, charges=zone_work)
@_counted
async def score(query) -> DnsblScore:
    """score(#{ ip or domain, zones, dns_resolver }): a check's result with .score, the sum
    of the weights of the zones that list it, and .results, one map per zone."""
    return await run(query, _SCORE, "dnsbl::score", DnsblScore)


@namespace.native(uses="prepend_header")
def add_header(ctx, result) -> None:
    """add_header(ctx, result): prepend an X-DNSBL field recording a check's result, such as
    `X-DNSBL: listed 192.0.2.1 zone=zen.example codes=127.0.0.2 (reason)`."""
    if not isinstance(ctx, Context):
        raise ScriptError("dnsbl::add_header takes ctx as its first argument")
    if not isinstance(result, DnsblResult):
        raise ScriptError("dnsbl::add_header takes a dnsbl:: result as its second argument, "
                          f"not {type_name(result)}")
    ctx.prepend_header(HEADER, result.header_value())
