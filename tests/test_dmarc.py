"""dmarc:: against the real test DNS server (tests/zones/dmarc.test.zone): a table of
alignment and policy cases over stored SPF and DKIM results, From: fields of no, one and
several domains, DNS failures, and SPF and DKIM computed when none is stored."""
from __future__ import annotations

import authres
import pytest

import vsl.stdlib.dmarc
from vsl.stdlib.dkim import DkimResult, Signature
from vsl.stdlib.dmarc import DmarcResult, parse_record
from vsl.stdlib.spf import SpfResult
from tests.authdata import SIGNED_BODY, context, script
from vsl.errors import VslError

SCRIPT = """
fn check(port, ctx) { dmarc::check(ctx, #{ dns_resolver: resolver(port) }) }
fn header(ctx, result) {
    ctx.store(result);
    auth::create_header(ctx, #{ auth_serv_id: "mx.example.test" })
}
fn in_script(port, ctx) {
    let r = check(port, ctx);
    [r == "fail", `${r}`, type_of(r), r.policy, r.domain, r.spf_aligned, r.dkim_aligned,
     r.spf.value, r.dkim.value]
}
fn sign(ctx) {
    dkim::sign(ctx, #{ sdid: "dkim.test", selector: "rsa", private_key: "rsa2048.pem" })
}
"""


@pytest.fixture(scope="module")
def natives():
    return script(SCRIPT)


def spf_result(value: str, domain: str) -> SpfResult:
    return SpfResult(value=value, identity="mailfrom", domain=domain, client_ip="192.0.2.7",
                     helo="mail.dkim.test", sender=f"bounce@{domain}")


def dkim_result(*signatures: tuple[str, str]) -> DkimResult:
    """DKIM results of signatures given as (d=, result)."""
    return DkimResult([Signature(f"d={d}; s=s1; a=rsa-sha256".encode(), result)
                       for d, result in signatures])


def stored(from_field: str, spf=("fail", "other.test"), dkim=()):
    """A ctx whose message has ``from_field`` and whose SPF and DKIM results are stored."""
    ctx = context(f"{from_field}\r\nSubject: s\r\n\r\nbody\r\n".encode())
    ctx.store(spf_result(*spf))
    ctx.store(dkim_result(*dkim))
    return ctx


# (From:, SPF (value, MAIL FROM domain), DKIM [(d=, result)]) -> (value, policy, spf aligned,
# dkim aligned)
CASES = {
    "spf aligned, same domain": (
        "a@relaxed.dmarc.test", ("pass", "relaxed.dmarc.test"), [],
        ("pass", "reject", True, False)),
    "dkim aligned, same domain": (
        "a@relaxed.dmarc.test", ("fail", "relaxed.dmarc.test"),
        [("relaxed.dmarc.test", "pass")], ("pass", "reject", False, True)),
    "relaxed spf: same organizational domain": (
        "a@relaxed.dmarc.test", ("pass", "bounces.dmarc.test"), [],
        ("pass", "reject", True, False)),
    "relaxed dkim: parent domain": (
        "a@relaxed.dmarc.test", ("fail", "x.test"), [("dmarc.test", "pass")],
        ("pass", "reject", False, True)),
    "strict spf: subdomain is not aligned": (
        "a@strict.dmarc.test", ("pass", "mail.strict.dmarc.test"), [],
        ("fail", "reject", False, False)),
    "strict dkim: parent is not aligned": (
        "a@strict.dmarc.test", ("fail", "x.test"), [("dmarc.test", "pass")],
        ("fail", "reject", False, False)),
    "strict dkim: same domain": (
        "a@strict.dmarc.test", ("fail", "x.test"), [("STRICT.dmarc.test", "pass")],
        ("pass", "reject", False, True)),
    "unaligned spf and dkim": (
        "a@relaxed.dmarc.test", ("pass", "other.test"), [("other.test", "pass")],
        ("fail", "reject", False, False)),
    "aligned spf softfail": (
        "a@relaxed.dmarc.test", ("softfail", "relaxed.dmarc.test"), [],
        ("fail", "reject", False, False)),
    "aligned dkim that fails": (
        "a@relaxed.dmarc.test", ("fail", "x.test"), [("relaxed.dmarc.test", "fail")],
        ("fail", "reject", False, False)),
    "one passing aligned signature among others": (
        "a@relaxed.dmarc.test", ("fail", "x.test"),
        [("relaxed.dmarc.test", "fail"), ("other.test", "pass"), ("dmarc.test", "pass")],
        ("pass", "reject", False, True)),
    "p=quarantine": (
        "a@quarantine.dmarc.test", ("fail", "x.test"), [], ("fail", "quarantine", False, False)),
    "p=none": (
        "a@monitor.dmarc.test", ("fail", "x.test"), [], ("fail", "none", False, False)),
    "upper-case tags and values": (
        "a@upper.dmarc.test", ("fail", "x.test"), [("dmarc.test", "pass")],
        ("fail", "reject", False, False)),
    "record in several strings": (
        "a@split.dmarc.test", ("fail", "x.test"), [], ("fail", "quarantine", False, False)),
    "sub-domain policy: sp= of the organizational domain": (
        "a@sub.dmarc.test", ("fail", "x.test"), [], ("fail", "quarantine", False, False)),
    "sub-domain policy of a name that does not exist": (
        "a@no.such.name.dmarc.test", ("fail", "x.test"), [], ("fail", "quarantine", False, False)),
    "sub-domain passing": (
        "a@sub.dmarc.test", ("fail", "x.test"), [("dmarc.test", "pass")],
        ("pass", "quarantine", False, True)),
    "organizational domain itself: p=": (
        "a@dmarc.test", ("fail", "x.test"), [], ("fail", "reject", False, False)),
    "TXT records that are not DMARC: the organizational domain's": (
        "a@notdmarc.dmarc.test", ("fail", "x.test"), [], ("fail", "quarantine", False, False)),
    "pct=0: reject becomes quarantine": (
        "a@sampled.dmarc.test", ("fail", "x.test"), [], ("fail", "quarantine", False, False)),
    "pct=0: quarantine becomes none": (
        "a@sampledq.dmarc.test", ("fail", "x.test"), [], ("fail", "none", False, False)),
    "pct=0 does not touch a pass": (
        "a@sampled.dmarc.test", ("pass", "sampled.dmarc.test"), [],
        ("pass", "reject", True, False)),
    "bad p= with rua=: p=none": (
        "a@badp-rua.dmarc.test", ("fail", "x.test"), [], ("fail", "none", False, False)),
    "no record anywhere": (
        "a@example.test", ("pass", "example.test"), [], ("none", "none", False, False)),
    "no record for a sub-domain either": (
        "a@mail.example.test", ("pass", "mail.example.test"), [],
        ("none", "none", False, False)),
    "several records": (
        "a@two.dmarc.test", ("pass", "two.dmarc.test"), [], ("permerror", "none", False, False)),
    "bad p= without rua=": (
        "a@badp.dmarc.test", ("fail", "x.test"), [], ("permerror", "none", False, False)),
    "bad pct=": (
        "a@badpct.dmarc.test", ("fail", "x.test"), [], ("permerror", "none", False, False)),
    "a tag without a value": (
        "a@badtag.dmarc.test", ("fail", "x.test"), [], ("permerror", "none", False, False)),
    "display name, angle brackets, upper case": (
        '"Alice A." <Alice@Relaxed.DMARC.test>', ("pass", "relaxed.dmarc.test"), [],
        ("pass", "reject", True, False)),
}


@pytest.mark.parametrize("author, spf, dkim, expected", CASES.values(), ids=CASES)
def test_policy_table(natives, server, author, spf, dkim, expected):
    result = natives.call("check", server.port, stored(f"From: {author}", spf, dkim))
    assert isinstance(result, DmarcResult)
    assert (result.value, result.policy, result.spf_aligned, result.dkim_aligned) == expected
    assert result.domain == author.rstrip(">").rpartition("@")[2].lower()


def test_the_result_in_scripts_and_in_authentication_results(natives, server):
    ctx = stored("From: a@quarantine.dmarc.test")
    assert natives.call("in_script", server.port, ctx) == [
        True, "fail", "dmarc_result", "quarantine", "quarantine.dmarc.test", False, False,
        "fail", "none"]
    value = natives.call("header", ctx, natives.call("check", server.port, ctx))
    header = authres.all_features().parse(f"Authentication-Results: {value}")
    spf, dkim, dmarc = header.results
    assert (dmarc.method, dmarc.result, dmarc.header_from, dmarc.policy) == (
        "dmarc", "fail", "quarantine.dmarc.test", "quarantine")
    assert value.endswith("dmarc=fail (p=quarantine) header.from=quarantine.dmarc.test "
                          "policy.dmarc=quarantine")
    ctx = stored("From: a@quarantine.dmarc.test", dkim=[("dmarc.test", "pass")])
    value = natives.call("header", ctx, natives.call("check", server.port, ctx))
    assert value.endswith("dkim=pass header.d=dmarc.test header.a=rsa-sha256 header.s=s1; "
                          "dmarc=pass (p=quarantine) header.from=quarantine.dmarc.test")


def test_pct_samples_failing_messages(natives, server, monkeypatch):
    ctx = stored("From: a@half.dmarc.test")
    monkeypatch.setattr(vsl.stdlib.dmarc.random, "randrange", lambda n: 49)
    assert natives.call("check", server.port, ctx).policy == "reject"
    monkeypatch.setattr(vsl.stdlib.dmarc.random, "randrange", lambda n: 50)
    assert natives.call("check", server.port, ctx).policy == "quarantine"


def test_the_organizational_domain_is_asked_after_the_author_domain(natives, server):
    natives.call("check", server.port, stored("From: a@sub.dmarc.test"))
    assert [q[0] for q in server.queries] == ["_dmarc.sub.dmarc.test.", "_dmarc.dmarc.test."]
    server.reset()
    natives.call("check", server.port, stored("From: a@relaxed.dmarc.test"))
    assert [q[0] for q in server.queries] == ["_dmarc.relaxed.dmarc.test."]


@pytest.mark.parametrize("signer, value", [("example.co.uk", "pass"),
                                           ("other.co.uk", "fail")])
def test_organizational_domains_come_from_the_public_suffix_list(natives, server, signer,
                                                                 value):
    ctx = stored("From: a@mail.example.co.uk", dkim=[(signer, "pass")])
    result = natives.call("check", server.port, ctx)
    assert (result.value, result.policy) == (value, "reject")
    assert [q[0] for q in server.queries] == ["_dmarc.mail.example.co.uk.",
                                              "_dmarc.example.co.uk."]


# ---- the From: field (RFC 7489 §6.6.1) ---------------------------------------------------

@pytest.mark.parametrize("header, reason", [
    ("Subject: no author", "no From: fields"),
    ("From: a@relaxed.dmarc.test\r\nFrom: b@relaxed.dmarc.test", "2 From: fields"),
    ("From: undisclosed-recipients:;", "From: has no address"),
    ("From: alice", "From: has an address without a domain: 'alice'"),
])
def test_a_from_field_without_one_author_domain_is_permerror(natives, server, header, reason):
    result = natives.call("check", server.port, stored(header))
    assert (result.value, result.policy, result.domain, result.reason) == (
        "permerror", "none", "", reason)
    assert server.queries == []


@pytest.mark.parametrize("authors, dkim, expected", [
    # each domain is checked; the strictest policy among those that fail decides
    ("a@mail.example.co.uk, b@quarantine.dmarc.test", [("example.co.uk", "pass")],
     ("fail", "quarantine", "quarantine.dmarc.test")),
    ("a@relaxed.dmarc.test, b@strict.dmarc.test", [("relaxed.dmarc.test", "pass")],
     ("fail", "reject", "strict.dmarc.test")),
    ("a@quarantine.dmarc.test, b@relaxed.dmarc.test", [],
     ("fail", "reject", "relaxed.dmarc.test")),
    ("a@relaxed.dmarc.test, b@dmarc.test", [("dmarc.test", "pass")],
     ("pass", "reject", "relaxed.dmarc.test")),
    ("a@relaxed.dmarc.test, b@example.test", [("dmarc.test", "pass")],
     ("pass", "reject", "relaxed.dmarc.test")),
    ("a@relaxed.dmarc.test, B@Relaxed.dmarc.test", [], ("fail", "reject", "relaxed.dmarc.test")),
])
def test_several_authors(natives, server, authors, dkim, expected):
    result = natives.call("check", server.port, stored(f"From: {authors}", dkim=dkim))
    assert (result.value, result.policy, result.domain) == expected


# ---- DNS failures ------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["servfail", "drop"])
@pytest.mark.parametrize("name", ["_dmarc.sub.dmarc.test", "_dmarc.dmarc.test"])
def test_dns_failure_is_temperror(natives, server, fault, name):
    getattr(server, fault)(name)
    result = natives.call("check", server.port, stored("From: a@sub.dmarc.test"))
    assert (result.value, result.policy) == ("temperror", "none")
    assert name in result.reason
    header = natives.call("header", stored("From: a@sub.dmarc.test"), result)
    assert "dmarc=temperror reason=" in header


# ---- SPF and DKIM computed when none is stored -------------------------------------------

@pytest.mark.parametrize("client_ip, spf, aligned", [
    ("192.0.2.7", "pass", (True, True)),
    ("198.51.100.1", "fail", (False, True)),
])
def test_spf_and_dkim_computed_when_not_stored(natives, server, client_ip, spf, aligned):
    ctx = context(SIGNED_BODY, client_ip=client_ip)
    natives.call("sign", ctx)
    result = natives.call("check", server.port, ctx)
    assert (result.value, result.policy, result.domain) == ("pass", "reject", "dkim.test")
    assert (result.spf_aligned, result.dkim_aligned) == aligned
    assert (result.spf.value, result.spf.identity, result.dkim.value) == (spf, "mailfrom", "pass")
    assert ctx.stored() == {}  # nothing stored behind the script's back


def test_stored_results_are_used(natives, server):
    ctx = context(SIGNED_BODY)
    spf, dkim = spf_result("pass", "dkim.test"), dkim_result(("x.test", "fail"))
    ctx.store("my_spf", spf)
    ctx.store(dkim)
    result = natives.call("check", server.port, ctx)
    assert result.spf is spf and result.dkim is dkim
    assert [q[0] for q in server.queries] == ["_dmarc.dkim.test."]


def test_a_helo_spf_result_is_not_the_mail_from_one(natives, server):
    ctx = context(SIGNED_BODY)
    helo = SpfResult(value="pass", identity="helo", domain="dkim.test", client_ip="192.0.2.7",
                     helo="dkim.test", sender="postmaster@dkim.test")
    ctx.store(helo)
    assert natives.call("check", server.port, ctx).spf is not helo


def test_options_and_stages(natives, server):
    with pytest.raises(VslError, match="dmarc::check: option 'dns_resolver' is required"):
        script("fn f(ctx) { dmarc::check(ctx, #{}) }").call("f", context(SIGNED_BODY))
    ctx = context(SIGNED_BODY)
    ctx.message = None
    with pytest.raises(VslError, match="dmarc::check: there is no message before on_pre_queue"):
        natives.call("check", server.port, ctx)


@pytest.mark.parametrize("record, tags", [
    ("v=DMARC1; p=reject", {"p": "reject", "sp": "reject", "adkim": "r", "aspf": "r",
                            "pct": 100}),
    ("v=DMARC1;p=none;sp=reject;adkim=s;aspf=s;pct=20;", {
        "p": "none", "sp": "reject", "adkim": "s", "aspf": "s", "pct": 20}),
    ("v=DMARC1; p=quarantine; sp=junk", {"p": "quarantine", "sp": "quarantine",
                                        "adkim": "r", "aspf": "r", "pct": 100}),
    ("v=DMARC1; p=reject; aspf=x", "bad aspf= in the DMARC record ('x')"),
])
def test_parse_record(record, tags):
    assert parse_record(record) == tags
