"""``spf::`` -- SPF checks (RFC 7208) of the HELO and MAIL FROM identities.

    let spf = spf::check_host(#{ ip: ctx.client_ip, helo: ctx.helo,
                                 mail_from: ctx.sender, dns_resolver: global::R });
    if spf == "fail" { return status::deny(`550 5.7.23 ${spf.explanation}`); }

pyspf evaluates the records; its look-ups are answered from a table of this
check's answers, never from the network. A look-up missing from the table
stops the evaluation; the check then awaits it on the ``dns::`` resolver (the
event loop never blocks) and evaluates again from the start. Given the same
answers the evaluation is the same, so the run that needs nothing more is the
result (the loop of :class:`stdlib.support.dnsbridge.Answers`, as for DKIM and ARC).
An ``exp=`` explanation that is not printable ASCII once expanded (a sender's domain
writing control characters, or a second reply line, into a refusal) is replaced by the
default one, as RFC 7208 6.2 says to do with one that does not parse.
"""
# pyspf (and with it dnspython's resolver) is imported where it is used, its adaptation in
# support/spf_query.py: ``vsl lint`` needs only this module's declarations.
from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass

import authres

from vsl.errors import ScriptError
from vsl.natives import Namespace

from .dns import DnsTempError, Resolver
from .support.dnsbridge import Answers
from .support.mail import Mailbox
from .support import telemetry
from .support.options import Options
from .support.result import CheckResult

namespace = Namespace("spf", "SPF checks (RFC 7208)")

MAX_RUNS = 40  # evaluations of one check (one more after each round of look-ups)
MAX_NAMES = 10  # MX and PTR names whose addresses pyspf looks up (pyspf.MAX_MX, MAX_PTR)
# an explanation, once expanded: printable ASCII (RFC 7208 6.2: macro-literal is %x21-7E)
_PRINTABLE = re.compile(r"[\x20-\x7e]*")

_COMMENTS = {  # the Received-SPF comment of each result (RFC 7208 §9.1)
    "pass": "domain of {sender} designates {ip} as permitted sender",
    "fail": "domain of {sender} does not designate {ip} as permitted sender",
    "softfail": "domain of transitioning {sender} does not designate {ip} as permitted sender",
    "neutral": "{ip} is neither permitted nor denied by domain of {sender}",
    "none": "domain of {sender} does not designate permitted sender hosts",
    "permerror": "permanent error in processing domain of {sender}",
    "temperror": "temporary error in processing during lookup of {sender}",
}


@dataclass(eq=False)
class SpfResult(CheckResult):
    """The outcome of spf::check_host; compares equal to its value string."""

    vsl_type = "spf_result"
    vsl_props = frozenset({"value", "identity", "domain", "explanation", "mechanism",
                           "client_ip", "helo", "sender"})
    mechanism_name = "spf"

    value: str        # none neutral pass fail softfail temperror permerror
    identity: str     # helo or mailfrom
    domain: str       # the domain whose record was checked
    client_ip: str
    helo: str
    sender: str       # the checked address (postmaster@<helo> for HELO and the null sender)
    explanation: str = ""
    mechanism: str = "default"  # the mechanism that matched

    @property
    def auth_key(self) -> str:
        """Where ctx.store keeps this result: one SPF result per identity."""
        return f"spf_{self.identity}"

    def received_spf(self, receiver: str) -> str:
        """The value of a Received-SPF header field (RFC 7208 §9.1)."""
        comment = _COMMENTS[self.value].format(sender=self.sender, ip=self.client_ip)
        pairs = [("client-ip", self.client_ip)]
        if self.identity == "mailfrom":
            pairs.append(("envelope-from", self.sender))
        pairs += [("helo", self.helo), ("receiver", receiver)]
        if self.value in ("permerror", "temperror"):
            pairs.append(("problem", self.explanation))
        if self.mechanism != "default":
            pairs.append(("mechanism", self.mechanism))
        pairs.append(("identity", self.identity))
        from spf import quote_value

        fields = " ".join(f"{key}={quote_value(value)};" for key, value in pairs)
        return f"{self.value} ({_ctext(f'{receiver}: {comment}')}) {fields}"

    def auth_result(self) -> authres.SPFAuthenticationResult:
        """This result as an RFC 8601 Authentication-Results entry."""
        if self.identity == "helo":
            return authres.SPFAuthenticationResult(result=self.value, smtp_helo=self.helo)
        return authres.SPFAuthenticationResult(result=self.value, smtp_mailfrom=self.sender)


namespace.register_type(SpfResult)


def _ctext(text: str) -> str:
    """Text that can stand inside a header comment."""
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


_CHECK_HOST = Options({"ip": str, "helo": str, "dns_resolver": Resolver},
                      {"mail_from": (str, Mailbox)})


@namespace.native(options=_CHECK_HOST.keys)
@telemetry.counted_check("spf")
async def check_host(query) -> SpfResult:
    """check_host(#{ ip, helo, mail_from?, dns_resolver }): the SPF result of MAIL FROM
    (of HELO without mail_from; ``""`` or ``"<>"`` is the null sender, checked as postmaster@helo).

    The value is one of `none neutral pass fail softfail temperror permerror`; `.identity`
    is `helo` or `mailfrom`, `.mechanism` the matched mechanism or `default`. `mail_from`
    is a mailbox (`ctx.sender`) or a string. A HELO that is not a multi-label domain (a
    single label, an IP address) gives `none` without a look-up. Past the RFC's limits (ten
    DNS-querying mechanisms, two void look-ups, one record per domain) the result is
    `permerror`; DNS timeouts and SERVFAIL give `temperror`, never an error."""
    where = "spf::check_host"
    opts = _CHECK_HOST.parse(query, where)
    try:
        address = ipaddress.ip_address(opts["ip"])
    except ValueError:
        raise ScriptError(f"{where}: option 'ip' must be an IP address, not "
                          f"'{opts['ip']}'") from None
    helo, mail_from = opts["helo"], opts.get("mail_from")
    identity = "helo" if mail_from is None else "mailfrom"
    path = "" if mail_from is None else _reverse_path(mail_from)
    from spf import split_email

    local, domain = split_email(path, helo)
    result = SpfResult(value="none", identity=identity, domain=domain, client_ip=str(address),
                       helo=helo, sender=f"{local}@{domain}")
    if _checkable(domain):
        check = _Check(opts["dns_resolver"], address, path, helo)
        result.value, result.explanation, mechanism = await check.run()
        result.mechanism = mechanism or "default"
    return result


def _reverse_path(mail_from: "str | Mailbox") -> str:
    """The address of MAIL FROM:<...> ("" for the null reverse-path)."""
    if isinstance(mail_from, Mailbox):
        return mail_from.address
    path = mail_from.strip()
    if path.startswith("<") and path.endswith(">"):
        path = path[1:-1]
    return path


def _checkable(domain: str) -> bool:
    """RFC 7208 §4.3: only a well-formed multi-label domain name has a record to check
    (not a single label, an empty or over-long label, nor an IP address, bare or [literal])."""
    labels = domain.split(".")
    return (len(labels) > 1 and len(domain) <= 253 and all(0 < len(x) < 64 for x in labels)
            and not labels[-1].isdigit() and not domain.startswith("["))


class _Check:
    """One SPF check: pyspf runs over the DNS answers fetched so far (:class:`Answers`),
    until it lacks none."""

    def __init__(self, resolver: Resolver, address, sender: str, helo: str):
        self.resolver = resolver
        self.query_args = {"i": str(address), "s": sender, "h": helo}
        mapped = address.version == 6 and address.ipv4_mapped is not None
        self.address_type = "AAAA" if address.version == 6 and not mapped else "A"
        # (name, type) -> [((name, type), value)] as pyspf's dnspython driver gives them
        self.answers = Answers(self._fetch)

    async def run(self) -> tuple[str, str, str | None]:
        """(result, explanation, matched mechanism or None)."""
        from .support.spf_query import ACTIVE, Query  # (pyspf, on first use)

        timestamp = str(int(time.time()))

        def evaluate() -> tuple[str, str, str | None]:
            query = Query(**self.query_args)
            query.t = timestamp  # %{t}: the same in every run
            query.max_names = MAX_NAMES
            token = ACTIVE.set(self)
            try:
                result, _, explanation = query.check()
            finally:
                ACTIVE.reset(token)
            if not _PRINTABLE.fullmatch(explanation):  # RFC 7208 6.2: as if no exp=
                from spf import EXPLANATIONS
                explanation = EXPLANATIONS.get(result, "")
            return result, explanation, query.mechanism

        try:
            return await self.answers.run(evaluate, rounds=MAX_RUNS)
        except DnsTempError:
            return ("temperror", f"SPF Temporary Error: more than {MAX_RUNS} rounds of look-ups",
                    None)

    def lookup(self, name: str, qtype: str) -> list:
        """pyspf's DNSLookup: the known answer, else note the look-up and stop pyspf."""
        try:
            return self.answers.get((name, qtype))
        except DnsTempError as err:
            from spf import TempError

            raise TempError(str(err)) from None

    async def _fetch(self, key: tuple[str, str]) -> list:
        """The answer to one look-up as pyspf's dnspython driver gives it; for MX and PTR,
        the addresses of the names are fetched first, as pyspf asks for them next."""
        name, qtype = key
        try:
            records = await self.resolver.query(name, qtype)
        except DnsTempError:  # Answers keeps it as this key's answer
            raise
        except ScriptError:  # a name DNS cannot carry has no records
            records = []
        values = [_value(r) for r in records]
        if qtype in ("MX", "PTR"):
            names = {_key(v[1] if qtype == "MX" else v) for v in values[:MAX_NAMES]}
            await self.answers.fetch((n, self.address_type) for n in names if n)
        return [((name, qtype), v) for v in values]


def _key(name: str) -> str:
    """A name as pyspf looks it up."""
    return name.removesuffix(".").lower()


def _value(rdata):
    """One record as pyspf's dnspython driver gives it (TXT and SPF: bytes strings)."""
    rdtype = rdata.rdtype.name
    if rdtype in ("A", "AAAA"):
        return rdata.address
    if rdtype == "MX":
        return rdata.preference, rdata.exchange.to_text(omit_final_dot=True)
    if rdtype == "PTR":
        return rdata.target.to_text(omit_final_dot=True)
    return rdata.strings
