"""``arc::`` -- ARC (RFC 8617): verify the chain of a forwarded message, add our own set.

    let chain = arc::verify(ctx, #{ dns_resolver: global::resolver });
    ctx.store(chain);                                   // arc= in Authentication-Results
    auth::add_header(ctx, #{ auth_serv_id: "mx.example.test" });
    arc::seal(ctx, #{ sdid: "example.test", selector: "arc", private_key: global::KEY,
                      auth_serv_id: "mx.example.test" });

dkimpy checks and makes the sets (rsa-sha256 only, as RFC 8617 says); its key look-ups
go through the ``dns::`` resolver, fetched before it runs in a worker thread.
"""
# dkimpy is imported where it is used, as in dkim.py.
from __future__ import annotations

import authres.arc

from vsl.errors import ScriptError
from vsl.natives import Namespace

from .support.signing import (UNREADABLE, DkimKey, dns_labels, has_field, key_records, message_of,
                       new_fields, parse_message, short_reason, signing_key)
from .dns import DnsTempError, Resolver
from .support.dnsbridge import Answers
from .support import telemetry
from .support.options import Options
from .support.result import CheckResult

namespace = Namespace("arc", "ARC chains of forwarded mail (RFC 8617)")

MAX_INSTANCES = 50  # RFC 8617 §4.2.1
_SET = {b"arc-seal", b"arc-message-signature"}  # the signed fields of a set


class ArcResult(CheckResult):
    """The outcome of arc::verify; compares equal to its value string."""

    vsl_type = "arc_result"
    vsl_props = frozenset({"value", "instances", "domain", "reason"})
    mechanism_name = "arc"

    def __init__(self, value: str, instances: int = 0, domain: str = "", reason: str = ""):
        self.value, self.instances, self.domain, self.reason = value, instances, domain, reason

    def auth_result(self) -> authres.arc.ARCAuthenticationResult:
        """This result as an RFC 8601 Authentication-Results entry."""
        return authres.arc.ARCAuthenticationResult(
            result=self.value, result_comment=f"i={self.instances}" if self.instances else None,
            reason=self.reason or None, header_as_d=self.domain or None)


namespace.register_type(ArcResult)


_VERIFY = Options({"dns_resolver": Resolver})


@namespace.native(options=_VERIFY.keys, uses="body")
@telemetry.counted_check("arc")
async def verify(ctx, config) -> ArcResult:
    """verify(ctx, #{ dns_resolver }): none | pass | fail, with .instances (the sets in the
    chain), .domain (d= of the newest ARC-Seal) and .reason.

    More than 50 sets fail without a look-up; a DNS failure on a key gives `fail` too
    (there is no `temperror`)."""
    import asyncio
    import dkim

    where = "arc::verify"
    opts = _VERIFY.parse(config, where)
    data = message_of(ctx, where).to_bytes()
    try:
        chain = await asyncio.to_thread(parse_message, dkim.ARC, data, where)
    except ScriptError:
        return ArcResult("fail" if has_field(data, b"ARC-Seal") else "none", reason=UNREADABLE)
    count, fields = chain.sorted_arc_headers()
    if count == 0:
        return ArcResult("none")
    if count > MAX_INSTANCES:
        return ArcResult("fail", count, reason=f"more than {MAX_INSTANCES} ARC sets")
    answers = Answers(key_records(opts["dns_resolver"]))
    await answers.fetch(_key_names(fields))
    try:
        outcome, sets, reason = await answers.run(
            lambda: chain.verify(dnsfunc=lambda name, timeout=None: answers.get(name)),
            rounds=1 + count * 2, offload=True)
    except DnsTempError as err:
        return ArcResult("fail", count, reason=f"temporary DNS failure: {err}")
    except Exception as err:  # noqa: BLE001 - dkimpy on malformed sets
        return ArcResult("fail", count, reason=f"cannot be checked: {short_reason(err)}")
    domain = sets[0].get("as-domain", b"").decode("ascii", "replace") if sets else ""
    if outcome == dkim.CV_Pass:
        return ArcResult("pass", count, domain)
    return ArcResult("fail", count, domain, reason)


def _key_names(fields) -> list[bytes]:
    """The names of the key records the chain's seals and message signatures use."""
    from dkim.util import InvalidTagValueList, parse_tag_value

    names = []
    for _, (name, value) in fields:
        if name.lower() in _SET:
            try:
                tags = parse_tag_value(value)
                names.append(tags[b"s"] + b"._domainkey." + tags[b"d"] + b".")
            except (InvalidTagValueList, KeyError):
                continue  # dkimpy reports the set as broken
    return names


_SEAL = Options({"sdid": str, "selector": str, "private_key": (str, DkimKey),
                 "auth_serv_id": str})


@namespace.native(options=_SEAL.keys, uses="body")
async def seal(ctx, config):
    """seal(ctx, #{ sdid, selector, private_key, auth_serv_id }): prepend an ARC set over
    the Authentication-Results header of auth_serv_id (its arc= result gives cv=).

    The set is ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results; RSA keys
    only (RFC 8617). `auth::add_header` must come first; with an existing chain, store the
    `arc::verify` result before it."""
    import asyncio
    import dkim

    where = "arc::seal"
    opts = _SEAL.parse(config, where)
    signer = signing_key(opts["private_key"], where)
    if signer.algorithm != "rsa-sha256":
        raise ScriptError(f"{where}: option 'private_key': ARC seals with RSA keys only, "
                          f"not {signer.algorithm}")
    message = message_of(ctx, where)
    sdid = dns_labels(opts["sdid"], where, "sdid")
    selector = dns_labels(opts["selector"], where, "selector")
    serv_id = opts["auth_serv_id"].lower()
    data = message.to_bytes()
    try:
        fields = await asyncio.to_thread(
            lambda: parse_message(dkim.ARC, data, where).sign(
                selector.encode(), sdid.encode(), signer.private, serv_id.encode()))
    except dkim.DKIMException as err:
        raise ScriptError(f"{where}: {short_reason(err)}") from None
    if not fields:
        raise ScriptError(f"{where}: nothing to seal: the message needs an "
                          f"Authentication-Results header of {serv_id} (auth::add_header), "
                          "with an arc= result if it has ARC sets already")
    new_fields(message, fields)
