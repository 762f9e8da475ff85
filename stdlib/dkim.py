"""``dkim::`` -- DKIM signatures (RFC 6376; rsa-sha256, and ed25519-sha256 of RFC 8463).

    const KEY = dkim::key("keys/example.test.pem");      // read and checked at load
    dkim::sign(ctx, #{ sdid: "example.test", selector: "s1", private_key: global::KEY });
    let res = dkim::verify(ctx, #{ dns_resolver: global::resolver });
    if res == "pass" { ... }   // res.signatures: one map per signature checked

dkimpy does the cryptography; its key look-ups are answered through the ``dns::``
resolver (:mod:`stdlib.support.dnsbridge`), and hashing and signing run in a worker thread.
"""
# dkimpy is imported where it is used (with dnspython's resolver, ~100 ms): ``vsl lint``
# needs only this module's declarations. The same in arc.py and support/signing.py.
from __future__ import annotations

from typing import TYPE_CHECKING

import authres

from vsl.errors import ScriptError
from vsl.natives import Namespace
from vsl.values import FrozenMap

from .dns import DnsTempError, Resolver
from .support.dnsbridge import Answers, Missing
from .support.signing import (ALGORITHMS, MIN_RSA_BITS, UNREADABLE, DkimKey, dns_labels, has_field,
                       key_records, load_key, message_of, new_fields, parse_message,
                       script_dir, short_reason, signing_key)
from .support import telemetry
from .support.options import Options
from .support.result import CheckResult

if TYPE_CHECKING:  # for annotations only: imported where used (above)
    import dkim

namespace = Namespace("dkim", "DKIM signing and verification (RFC 6376, RFC 8463)")

MAX_SIGNATURES = 5   # checked per message unless max_signatures says otherwise
# The overall result: the first of these that a signature has.
_RANKS = ("pass", "temperror", "fail", "policy", "neutral", "permerror")
_CANONICAL = ("simple", "relaxed")


# ---- keys ----------------------------------------------------------------------------

namespace.register_type(DkimKey)


@namespace.native
def key(path):
    """key(path): a private key for dkim::sign and arc::seal (PEM, RSA of 1024 bits or more,
    or Ed25519), read now (so a top-level constant fails at load); a relative path is
    relative to the script's directory.

    RSA keys may be PKCS#1 or PKCS#8, Ed25519 keys PKCS#8 or the bare base64 seed of
    dkimpy's `dknewkey`; encrypted keys are refused. A key is read again only when its
    file changes."""
    if type(path) is not str or not path:
        raise ScriptError("dkim::key takes the path of a key file")
    return load_key(script_dir() / path, "dkim::key")


# ---- verifying -----------------------------------------------------------------------

class Signature:
    """One DKIM-Signature field and what checking it gave."""

    def __init__(self, value: bytes, result: str, reason: str = ""):
        from dkim.util import InvalidTagValueList, parse_tag_value

        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList:
            tags = {}
        self.domain, self.selector, self.algorithm, self.identity = (
            tags.get(tag, b"").decode("ascii", "replace") for tag in (b"d", b"s", b"a", b"i"))
        self.result, self.reason = result, reason

    def as_map(self) -> FrozenMap:
        return FrozenMap(domain=self.domain, selector=self.selector, algorithm=self.algorithm,
                         result=self.result, reason=self.reason)

    def auth_result(self) -> authres.DKIMAuthenticationResult:
        return authres.DKIMAuthenticationResult(
            result=self.result, reason=self.reason or None, header_d=self.domain or None,
            header_i=self.identity or None, header_s=self.selector or None,
            header_a=self.algorithm or None)


class _Clauses(authres.core.BaseAuthenticationResult):
    """Several result clauses standing as one entry (one per signature)."""

    def __init__(self, clauses: list):
        self.clauses = clauses

    def __str__(self) -> str:
        return "; ".join(map(str, self.clauses))


class DkimResult(CheckResult):
    """The outcome of dkim::verify; compares equal to its value string."""

    vsl_type = "dkim_result"
    vsl_props = frozenset({"value", "signatures"})
    mechanism_name = "dkim"

    def __init__(self, checks: list[Signature]):
        self.checks = checks
        self.value = next((r for r in _RANKS if any(s.result == r for s in checks)), "none")
        self.signatures = tuple(s.as_map() for s in checks)

    def passing_domains(self) -> list[str]:
        """The d= domains of the signatures that pass."""
        return [s.domain.lower() for s in self.checks if s.result == "pass"]

    def auth_result(self):
        """This result as RFC 8601 Authentication-Results entries, one per signature."""
        if not self.checks:
            return authres.DKIMAuthenticationResult(result="none")
        if len(self.checks) == 1:
            return self.checks[0].auth_result()
        return _Clauses([s.auth_result() for s in self.checks])


namespace.register_type(DkimResult)


async def verify_message(data: bytes, resolver: Resolver,
                         limit: int = MAX_SIGNATURES) -> DkimResult:
    """Check the first ``limit`` signatures of a message (a Python API for dmarc::)."""
    answers = Answers(key_records(resolver))

    def evaluate() -> list[Signature]:
        import dkim

        try:
            verifier = parse_message(dkim.DKIM, data, "dkim::verify")
        except ScriptError:
            return [Signature(b"", "neutral", UNREADABLE)] \
                if has_field(data, b"DKIM-Signature") else []
        fields = [v for name, v in verifier.headers if name.lower() == b"dkim-signature"]
        checks = []
        for index, value in enumerate(fields[:limit]):
            try:
                checks.append(_check(verifier, index, value, answers))
            except Missing:
                continue  # this run is void, but the other keys get noted too
            except Exception as err:  # noqa: BLE001 - dkimpy on malformed input
                reason = f"cannot be checked: {short_reason(err)}"
                checks.append(Signature(value, "neutral", reason))
        return checks

    # Two runs: the first notes every key, the second has them all.
    return DkimResult(await answers.run(evaluate, rounds=2, offload=True))


def _check(verifier: dkim.DKIM, index: int, value: bytes, answers: Answers) -> Signature:
    import dkim

    try:
        tags = verifier.verify_headerprep(index)[0]
    except dkim.DKIMException as err:
        return Signature(value, "neutral", f"bad signature field: {short_reason(err)}")
    algorithm = tags[b"a"].decode("ascii")
    if algorithm not in ALGORITHMS.values():
        return Signature(value, "policy", f"{algorithm} is not accepted (RFC 8301)")
    name = tags[b"s"] + b"._domainkey." + tags[b"d"] + b"."
    try:
        record = answers.get(name)
    except DnsTempError as err:
        return Signature(value, "temperror", str(err))
    problem = _key_problem(name, record, algorithm)
    if problem is not None:
        return Signature(value, *problem)
    try:
        valid = verifier.verify(index, dnsfunc=lambda _name, timeout=None: record)
    except dkim.DKIMException as err:
        return Signature(value, "fail", short_reason(err))
    return Signature(value, "pass") if valid else Signature(value, "fail", "bad signature")


def _key_problem(name: bytes, record: bytes | None, algorithm: str) -> tuple[str, str] | None:
    """Why the key record cannot check a signature of ``algorithm``: (result, reason)."""
    import dkim
    from dkim.util import parse_tag_value

    where = name.decode("ascii", "replace").removesuffix(".")
    if record is None:
        return "permerror", f"no key at {where}"
    try:
        if not parse_tag_value(record).get(b"p"):
            return "permerror", f"the key at {where} is revoked (empty p=)"
        _, bits, kind, tlsrpt = dkim.evaluate_pk(name, record)
    except Exception as err:  # noqa: BLE001 - dkimpy's parsers raise many kinds
        return "permerror", f"bad key at {where}: {short_reason(err)}"
    if kind is None or tlsrpt:  # s= names another service
        return "permerror", f"the key at {where} is not for email"
    if ALGORITHMS.get(kind.decode()) != algorithm:
        return "permerror", f"the key at {where} is {kind.decode()}, not for {algorithm}"
    if kind == b"rsa" and bits < MIN_RSA_BITS:
        return "fail", f"the key at {where} has {bits} bits (at least {MIN_RSA_BITS})"
    return None


_VERIFY = Options({"dns_resolver": Resolver}, {"max_signatures": int})


@namespace.native(options=_VERIFY.keys, uses="body")
@telemetry.counted_check("dkim")
async def verify(ctx, config) -> DkimResult:
    """verify(ctx, #{ dns_resolver, max_signatures? }): the DKIM result of the message
    (none pass fail neutral policy temperror permerror), with .signatures.

    From `on_pre_queue`. It checks the first `max_signatures` (default 5) DKIM-Signature
    fields from the top; `.signatures` holds one map per signature checked, with `domain`,
    `selector`, `algorithm`, `result` and `reason`. The value is the first of `pass
    temperror fail policy neutral permerror` that some signature has (one good signature
    is enough), `none` without any signature:

    | signature result | when |
    |---|---|
    | `pass` | the signature verifies |
    | `fail` | bad signature, body hash mismatch, an RSA key under 1024 bits |
    | `policy` | `rsa-sha1`, refused by RFC 8301 |
    | `neutral` | a malformed signature field (an unknown algorithm too), or a header dkimpy cannot read |
    | `permerror` | no key record, a revoked key (empty `p=`), a bad record, a key of another type or not for email |
    | `temperror` | a DNS timeout or SERVFAIL on the key record |"""
    where = "dkim::verify"
    opts = _VERIFY.parse(config, where)
    limit = opts.get("max_signatures", MAX_SIGNATURES)
    if limit < 1:
        raise ScriptError(f"{where}: option 'max_signatures' must be 1 or more, not {limit}")
    return await verify_message(message_of(ctx, where).to_bytes(), opts["dns_resolver"], limit)


# ---- signing -------------------------------------------------------------------------

_SIGN = Options({"sdid": str, "selector": str, "private_key": (str, DkimKey)},
                {"headers": (list, tuple), "canonicalization": str})


@namespace.native(options=_SIGN.keys, uses="body")
async def sign(ctx, config):
    """sign(ctx, #{ sdid, selector, private_key, headers?, canonicalization? }): prepend a
    DKIM-Signature (a= from the key; default relaxed/relaxed, dkimpy's header list).

    `a=` is `rsa-sha256` or `ed25519-sha256`, after the key; a bare `"relaxed"`
    canonicalization means `relaxed/simple`, as in the RFC. dkimpy's header list signs
    `From:` twice; a given `headers` must include `From` and may not include `Received`.
    `private_key` is a `dkim::key` or a path (relative to the script's directory). In
    `on_pre_queue` and `on_post_queue`; a signature added in `on_post_queue` is written to
    the spool before delivery."""
    import asyncio
    import dkim

    where = "dkim::sign"
    opts = _SIGN.parse(config, where)
    signer = signing_key(opts["private_key"], where)
    message = message_of(ctx, where)
    sdid = dns_labels(opts["sdid"], where, "sdid")
    selector = dns_labels(opts["selector"], where, "selector")
    headers = opts.get("headers")
    if headers is not None and not all(type(h) is str and h for h in headers):
        raise ScriptError(f"{where}: option 'headers' must be an array of header names")
    canonicalization = _canonicalization(opts.get("canonicalization", "relaxed/relaxed"), where)
    data = message.to_bytes()

    def signature() -> bytes:
        return parse_message(dkim.DKIM, data, where).sign(
            selector.encode(), sdid.encode(), signer.private, signer.algorithm.encode(),
            canonicalize=canonicalization,
            include_headers=None if headers is None else [h.encode() for h in headers])

    try:
        field = await asyncio.to_thread(signature)
    except dkim.DKIMException as err:
        raise ScriptError(f"{where}: {short_reason(err)}") from None
    new_fields(message, [field])


def _canonicalization(value: str, where: str) -> tuple[bytes, bytes]:
    header, _, body = value.lower().partition("/")
    if header not in _CANONICAL or (body or "simple") not in _CANONICAL:
        raise ScriptError(f"{where}: option 'canonicalization' must be header/body with "
                          f"simple or relaxed (\"relaxed/relaxed\"), not '{value}'")
    return header.encode(), (body or "simple").encode()
