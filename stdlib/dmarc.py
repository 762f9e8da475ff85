"""``dmarc::`` -- DMARC (RFC 7489): the From: domain's policy against aligned SPF and DKIM.

    let res = dmarc::check(ctx, #{ dns_resolver: global::resolver });   // on_pre_queue
    if res == "fail" && res.policy == "reject" { return status::deny("550 5.7.1 DMARC"); }

The SPF (MAIL FROM) and DKIM results stored in ``ctx`` are used when there are some;
otherwise they are computed (``.spf`` and ``.dkim`` give the ones used). The policy
record is looked up at ``_dmarc.<From domain>``, then at its organizational domain,
found with the Public Suffix List bundled in the ``publicsuffixlist`` package.
"""
from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING

import authres.dmarc

from vsl.errors import ScriptError
from vsl.natives import Namespace

from . import spf as spf_natives
from .dkim import DkimResult, verify_message
from .dns import DnsTempError, Resolver
from .support.signing import message_of
from .support import telemetry
from .support.options import Options
from .support.result import CheckResult
from .spf import SpfResult

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList  # loaded by _load_list, on first use

namespace = Namespace("dmarc", "DMARC policy checks (RFC 7489)")

POLICIES = ("none", "quarantine", "reject")  # from the mildest
_RECORD = re.compile(r"v\s*=\s*DMARC1\s*(;|$)")
_LIST: list[PublicSuffixList] = []  # loaded on first use, off the event loop


class DmarcResult(CheckResult):
    """The outcome of dmarc::check; compares equal to its value string."""

    vsl_type = "dmarc_result"
    vsl_props = frozenset({"value", "policy", "domain", "reason", "spf_aligned",
                           "dkim_aligned", "spf", "dkim"})
    mechanism_name = "dmarc"

    def __init__(self, value: str, domain: str = "", policy: str = "none", reason: str = "",
                 spf_aligned: bool = False, dkim_aligned: bool = False):
        self.value, self.domain, self.policy, self.reason = value, domain, policy, reason
        self.spf_aligned, self.dkim_aligned = spf_aligned, dkim_aligned
        self.spf: SpfResult | None = None
        self.dkim: DkimResult | None = None

    def auth_result(self) -> authres.dmarc.DMARCAuthenticationResult:
        """This result as an RFC 8601 Authentication-Results entry: the domain's policy as
        a comment, and as policy.dmarc when it applies (the message failed)."""
        evaluated = self.value in ("pass", "fail")
        return authres.dmarc.DMARCAuthenticationResult(
            result=self.value, result_comment=f"p={self.policy}" if evaluated else None,
            reason=None if evaluated else self.reason or None, header_from=self.domain or None,
            policy=self.policy if self.value == "fail" else None)


namespace.register_type(DmarcResult)


_CHECK = Options({"dns_resolver": Resolver})


@namespace.native(options=_CHECK.keys, uses="body")
@telemetry.counted_check("dmarc")
async def check(ctx, config) -> DmarcResult:
    """check(ctx, #{ dns_resolver }): pass | fail | none | temperror | permerror, with
    .policy (none quarantine reject, after sp= and pct=), .domain and the results used.

    From `on_pre_queue`. No record is `none`; several records, or a bad `adkim=`, `aspf=`
    or `pct=`, are `permerror`; a missing or bad `p=` counts as `none` when the record has
    `rua=`, else `permerror`. Zero or several From: fields, a From: without an address (a
    group) or an address without a domain give `permerror` without a look-up; a From: of
    several addresses gives the worst of its domains' results (`fail`, then `temperror`,
    `permerror`, `pass`, `none`). Reports (`rua=`, `ruf=`) are never sent; `fo=`, `rf=`
    and `ri=` are ignored."""
    import asyncio
    where = "dmarc::check"
    opts = _CHECK.parse(config, where)
    message, resolver = message_of(ctx, where), opts["dns_resolver"]
    domains, problem = author_domains(message.get_all("From"))
    spf = _stored(ctx, SpfResult, lambda r: r.identity == "mailfrom") or \
        await spf_natives.check_host({"ip": ctx.client_ip, "helo": ctx.helo or "",
                                      "mail_from": ctx.sender, "dns_resolver": resolver})
    dkim = _stored(ctx, DkimResult) or await verify_message(message.to_bytes(), resolver)
    if problem:
        result = DmarcResult("permerror", reason=problem)
    else:
        suffixes = _LIST[0] if _LIST else await _load_list()
        results = await asyncio.gather(*(_evaluate(d, spf, dkim, resolver, suffixes)
                                         for d in domains))
        result = min(results, key=_severity)
    result.spf, result.dkim = spf, dkim
    return result


def author_domains(fields: list[str]) -> tuple[list[str], str]:
    """The domains of the From: field's addresses, or why there are none to check (RFC 5322
    wants exactly one From: field, with at least one address)."""
    import email.utils  # (here: the email package is slow to import, for vsl lint too)

    if len(fields) != 1:
        return [], f"{'no' if not fields else len(fields)} From: fields"
    domains = []
    for _, address in email.utils.getaddresses(fields):
        if not address:  # a group (undisclosed-recipients:;) or nothing
            continue
        local, at, domain = address.rpartition("@")
        domain = _a_label(domain.strip().removesuffix("."))
        if not (local and at and domain):
            return [], f"From: has an address without a domain: '{address}'"
        if domain not in domains:
            domains.append(domain)
    return domains, "" if domains else "From: has no address"


def _a_label(domain: str) -> str:
    try:
        return domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return domain.lower()


def _stored(ctx, kind: type, accept=lambda result: True):
    """The last result of ``kind`` the script stored, if any."""
    return next((v for v in reversed(ctx.stored().values())
                 if isinstance(v, kind) and accept(v)), None)


async def _load_list() -> PublicSuffixList:
    import asyncio

    from publicsuffixlist import PublicSuffixList
    _LIST[:] = [await asyncio.to_thread(PublicSuffixList)]
    return _LIST[0]


def _severity(result: DmarcResult) -> tuple:
    """Sort key: the result that decides for a From: of several domains (RFC 7489 §6.6.1:
    the strictest policy among those that fail), first."""
    order = ("fail", "temperror", "permerror", "pass", "none").index(result.value)
    return order, -POLICIES.index(result.policy)


async def _evaluate(domain: str, spf: SpfResult, dkim: DkimResult, resolver: Resolver,
                    suffixes: PublicSuffixList) -> DmarcResult:
    """The DMARC result of one author domain (RFC 7489 §6.6)."""
    organization = suffixes.privatesuffix(domain) or domain
    try:
        records, at_organization = await _records(resolver, domain), False
        if not records and organization != domain:
            records, at_organization = await _records(resolver, organization), True
    except DnsTempError as err:
        return DmarcResult("temperror", domain, reason=str(err))
    if not records:
        return DmarcResult("none", domain)
    if len(records) > 1:
        return DmarcResult("permerror", domain, reason="several DMARC records")
    tags = parse_record(records[0])
    if isinstance(tags, str):
        return DmarcResult("permerror", domain, reason=tags)

    def aligned(other: str, mode: str) -> bool:
        other = other.lower()
        return other == domain or mode == "r" and (
            (suffixes.privatesuffix(other) or other) == organization)

    spf_aligned = spf.value == "pass" and aligned(spf.domain, tags["aspf"])
    dkim_aligned = any(aligned(d, tags["adkim"]) for d in dkim.passing_domains())
    policy = tags["sp"] if at_organization else tags["p"]
    passed = spf_aligned or dkim_aligned
    if not passed and random.randrange(100) >= tags["pct"]:
        policy = POLICIES[max(POLICIES.index(policy) - 1, 0)]  # §6.6.4: one step milder
    return DmarcResult("pass" if passed else "fail", domain, policy, "", spf_aligned,
                       dkim_aligned)


async def _records(resolver: Resolver, domain: str) -> list[str]:
    """The DMARC records at ``_dmarc.<domain>`` (TXT records starting with v=DMARC1)."""
    try:
        found = await resolver.query(f"_dmarc.{domain}", "TXT")
    except DnsTempError:
        raise
    except ScriptError:  # a name DNS cannot carry has no record
        return []
    texts = (b"".join(r.strings).decode("utf-8", "replace") for r in found)
    return [t for t in texts if _RECORD.match(t)]


def parse_record(record: str) -> dict | str:
    """The tags of a DMARC record with defaults, or what is wrong with it. A missing or
    bad p= counts as p=none when the record asks for reports (rua=), else the record is
    unusable (RFC 7489 §6.6.3); a bad sp= counts as none given."""
    tags: dict = {}
    for part in filter(str.strip, record.split(";")):
        name, sep, value = part.partition("=")
        if not sep:
            return f"bad tag '{part.strip()}' in the DMARC record"
        tags.setdefault(name.strip().lower(), value.strip())
    policy = tags.get("p", "").lower()
    if policy not in POLICIES:
        if not tags.get("rua"):
            return f"the DMARC record has no valid p= ('{tags.get('p', '')}')"
        policy = "none"
    sub = tags.get("sp", policy).lower()
    for name in ("adkim", "aspf"):
        if tags.setdefault(name, "r").lower() not in ("r", "s"):
            return f"bad {name}= in the DMARC record ('{tags[name]}')"
    pct = tags.get("pct", "100")
    if not pct.isdigit() or int(pct) > 100:
        return f"bad pct= in the DMARC record ('{pct}')"
    return {"p": policy, "sp": sub if sub in POLICIES else policy,
            "adkim": tags["adkim"].lower(), "aspf": tags["aspf"].lower(), "pct": int(pct)}
