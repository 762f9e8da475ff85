"""arc:: against the real test DNS server: forwarders that check, record and seal, the
chains they make (one and two sets), a mailing list that changes the message, tampering,
DNS failures and seal errors."""
from __future__ import annotations

import authres
import pytest

from vsl.stdlib.arc import ArcResult
from tests.authdata import SIGNED_BODY, context, script
from vsl.errors import VslError

SCRIPT = """
fn verify(port, ctx) { arc::verify(ctx, #{ dns_resolver: resolver(port) }) }
fn forward(port, ctx, serv_id) {
    // a forwarder: check the message, record the results, seal them
    let r = resolver(port);
    ctx.store(spf::check_host(#{ ip: ctx.client_ip, helo: ctx.helo, mail_from: ctx.sender,
                                 dns_resolver: r }));
    ctx.store(dkim::verify(ctx, #{ dns_resolver: r }));
    ctx.store(arc::verify(ctx, #{ dns_resolver: r }));
    auth::add_header(ctx, #{ auth_serv_id: serv_id });
    seal(ctx, serv_id, "rsa2048.pem");
}
fn seal(ctx, serv_id, key) {
    arc::seal(ctx, #{ sdid: "dkim.test", selector: "rsa", private_key: key,
                      auth_serv_id: serv_id });
}
fn sign(ctx) {
    dkim::sign(ctx, #{ sdid: "dkim.test", selector: "rsa", private_key: "rsa2048.pem" })
}
fn header(ctx, result) {
    ctx.store(result);
    auth::create_header(ctx, #{ auth_serv_id: "mx.example.test" })
}
"""


@pytest.fixture(scope="module")
def natives():
    return script(SCRIPT)


def hop(natives, port, data: bytes, serv_id: str) -> bytes:
    """The message as a forwarder passes it on: checked, recorded and sealed."""
    ctx = context(data)
    natives.call("forward", port, ctx, serv_id)
    return ctx.message.to_bytes()


def signed(natives) -> bytes:
    ctx = context(SIGNED_BODY)
    natives.call("sign", ctx)
    return ctx.message.to_bytes()


def test_no_chain_is_none(natives, server):
    ctx = context(SIGNED_BODY)
    result = natives.call("verify", server.port, ctx)
    assert isinstance(result, ArcResult)
    assert (result.value, result.instances, result.domain, result.reason) == ("none", 0, "", "")
    assert natives.call("header", ctx, result) == "mx.example.test; arc=none"


def test_one_forwarder(natives, server):
    data = hop(natives, server.port, signed(natives), "fwd1.test")
    assert data.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=dkim.test; s=rsa;")
    aar = context(data).message.get("ARC-Authentication-Results")
    assert aar.startswith("i=1; fwd1.test;") and "dkim=pass" in aar and "spf=pass" in aar
    ctx = context(data)
    result = natives.call("verify", server.port, ctx)
    assert (result.value, result.instances, result.domain) == ("pass", 1, "dkim.test")
    value = natives.call("header", ctx, result)
    assert value == "mx.example.test; arc=pass (i=1) header.as-d=dkim.test"
    [entry] = authres.all_features().parse(f"Authentication-Results: {value}").results
    assert (entry.method, entry.result, entry.header_as_d) == ("arc", "pass", "dkim.test")


def test_two_forwarders(natives, server):
    data = hop(natives, server.port, signed(natives), "fwd1.test")
    data = hop(natives, server.port, data, "fwd2.test")
    assert b"ARC-Seal: i=2; cv=pass;" in data
    assert b"arc=pass (i=1)" in data  # what the second forwarder recorded and sealed
    result = natives.call("verify", server.port, context(data))
    assert (result.value, result.instances) == ("pass", 2)


LIST = """
fn forward(port, ctx) {
    // a mailing list: checks and records, changes the subject, then seals
    let r = resolver(port);
    ctx.store(dkim::verify(ctx, #{ dns_resolver: r }));
    ctx.store(arc::verify(ctx, #{ dns_resolver: r }));
    auth::add_header(ctx, #{ auth_serv_id: "list.test" });
    ctx.set_header("Subject", "[list] the plan");
    arc::seal(ctx, #{ sdid: "dkim.test", selector: "rsa", private_key: "rsa2048.pem",
                      auth_serv_id: "list.test" });
}
fn dkim(port, ctx) { dkim::verify(ctx, #{ dns_resolver: resolver(port) }) }
"""


def test_a_mailing_list_that_changes_the_message(natives, server):
    # Downstream the author's DKIM signature is broken; the chain vouches for what it was.
    mailing_list = script(LIST)
    ctx = context(signed(natives))
    mailing_list.call("forward", server.port, ctx)
    data = ctx.message.to_bytes()
    assert mailing_list.call("dkim", server.port, context(data)) == "fail"
    result = natives.call("verify", server.port, context(data))
    assert (result.value, result.instances) == ("pass", 1)
    assert "dkim=pass" in context(data).message.get("ARC-Authentication-Results")


@pytest.mark.parametrize("tamper, reason", [
    (lambda m: m.replace(b"Subject: the plan", b"Subject: the plot"),
     "Most recent ARC-Message-Signature did not validate"),
    (lambda m: m.replace(b"Meet at noon.", b"Meet at one."),
     "Most recent ARC-Message-Signature did not validate"),
    (lambda m: m.replace(b"ARC-Seal: i=2; cv=pass;", b"ARC-Seal: i=2; cv=none;"),
     "ARC-Seal[2] did not validate"),
    (lambda m: m.replace(b"ARC-Authentication-Results: i=1;", b"X-Gone: i=1;"),
     "Incomplete ARC set for instance 1"),
])
def test_tampered_chains_fail(natives, server, tamper, reason):
    data = hop(natives, server.port, signed(natives), "fwd1.test")
    data = hop(natives, server.port, data, "fwd2.test")
    result = natives.call("verify", server.port, context(tamper(data)))
    assert (result.value, result.instances, result.reason) == ("fail", 2, reason)


@pytest.mark.parametrize("fault", ["servfail", "drop"])
def test_dns_failure_fails_the_chain(natives, server, fault):
    data = hop(natives, server.port, signed(natives), "fwd1.test")
    getattr(server, fault)("rsa._domainkey.dkim.test")
    result = natives.call("verify", server.port, context(data))
    assert result.value == "fail"
    assert result.reason.startswith("temporary DNS failure:")
    assert "rsa._domainkey.dkim.test" in result.reason


def test_a_malformed_set_fails(natives, server):
    data = hop(natives, server.port, signed(natives), "fwd1.test")
    data = data.replace(b"ARC-Message-Signature: i=1;", b"ARC-Message-Signature:i=1;")
    result = natives.call("verify", server.port, context(data))
    assert result.value == "fail" and result.reason.startswith("cannot be checked")


def test_too_many_sets(natives, server):
    fields = b"".join(b"ARC-Seal: i=%d; cv=pass; a=rsa-sha256; d=dkim.test; s=rsa; b=AAAA\r\n"
                      % i for i in range(1, 52))
    result = natives.call("verify", server.port, context(fields + SIGNED_BODY))
    assert (result.value, result.instances, result.reason) == ("fail", 51,
                                                               "more than 50 ARC sets")
    assert server.queries == []


def test_seal_errors(natives, server):
    ctx = context(SIGNED_BODY)
    with pytest.raises(VslError, match="arc::seal: nothing to seal: the message needs an "
                                       "Authentication-Results header of fwd1.test"):
        natives.call("seal", ctx, "fwd1.test", "rsa2048.pem")
    with pytest.raises(VslError, match="arc::seal: option 'private_key': ARC seals with RSA "
                                       "keys only, not ed25519-sha256"):
        natives.call("seal", ctx, "mx.example.test", "ed25519.pem")
    with pytest.raises(VslError, match="arc::seal: option 'auth_serv_id' is required"):
        script("fn f(c) { arc::seal(c, #{ sdid: \"a.test\", selector: \"s\", "
               "private_key: \"rsa2048.pem\" }) }").call("f", ctx)


@pytest.mark.parametrize("data, value", [
    (b" folded first line\r\nFrom: a@dkim.test\r\n\r\nbody\r\n", "none"),
    (b"From: a@dkim.test\r\nnot a field\r\nARC-Seal: i=1\r\n\r\nbody\r\n", "fail"),
])
def test_a_header_dkimpy_cannot_read(natives, server, data, value):
    result = natives.call("verify", server.port, context(data))
    assert (result.value, result.reason) == (value, "dkimpy cannot read the message header")
