"""dkim:: against the real test DNS server: sign-then-verify round trips for both
algorithms, the RFC 6376 and RFC 8463 examples and a dkimpy test message, tampering,
key-record problems, DNS failures, keys, and two servers (one signs, one verifies)."""
from __future__ import annotations

import asyncio

import base64
import re
import shutil
from dataclasses import replace

import authres
import dkim as dkimpy
import pytest

from vsl.server.config import DeliveryConfig, DnsConfig, Listener
from vsl.server.config import load as load_config
from vsl.server.dnsd import DnsServer
from vsl.stdlib.ctx import Stage
from vsl.stdlib.dkim import DkimResult
from vsl.stdlib.support.signing import DkimKey
from tests.authdata import HERE, SIGNED_BODY, context, message, script
from tests.support.servers import config_for, running
from tests.support.smtp_tools import client, wait_for
from vsl.stdlib import new_engine
from vsl.errors import VslError

SCRIPT = """
fn verify(port, ctx) { dkim::verify(ctx, #{ dns_resolver: resolver(port) }) }
fn verify_first(port, ctx, n) {
    dkim::verify(ctx, #{ dns_resolver: resolver(port), max_signatures: n })
}
fn sign(ctx, options) { dkim::sign(ctx, options) }
fn header(ctx, result) {
    ctx.store(result);
    auth::create_header(ctx, #{ auth_serv_id: "mx.example.test" })
}
fn in_script(port, ctx) {
    let r = verify(port, ctx);
    [r == "pass", `${r}`, type_of(r), r.signatures[0].domain, r.signatures[0].selector,
     r.signatures.len()]
}
fn key(path) { dkim::key(path) }
"""
KEYS = {"rsa-sha256": ("rsa2048.pem", "rsa"), "ed25519-sha256": ("ed25519.pem", "ed")}


@pytest.fixture(scope="module")
def natives():
    return script(SCRIPT)


def signed(natives, algorithm="rsa-sha256", data=SIGNED_BODY, **options):
    """A ctx whose message dkim::sign signed with the key of ``algorithm``."""
    path, selector = KEYS[algorithm]
    ctx = context(data)
    natives.call("sign", ctx, {"sdid": "dkim.test", "selector": selector,
                               "private_key": path, **options})
    return ctx


def dkimpy_signed(data=SIGNED_BODY, key="rsa2048.pem", selector=b"rsa", **options) -> bytes:
    """``data`` signed by dkimpy itself (for signatures dkim::sign refuses to make)."""
    field = dkimpy.sign(data, selector, b"dkim.test", (HERE / key).read_bytes(), **options)
    return field + data


# ---- round trips -------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", KEYS)
@pytest.mark.parametrize("canonicalization", ["simple/simple", "relaxed/relaxed",
                                              "relaxed/simple", "simple/relaxed", "relaxed"])
def test_sign_then_verify(natives, server, algorithm, canonicalization):
    ctx = signed(natives, algorithm, canonicalization=canonicalization)
    header = ctx.message.get("DKIM-Signature")
    assert f"a={algorithm};" in header and "d=dkim.test;" in header
    assert f"c={canonicalization if '/' in canonicalization else 'relaxed/simple'};" in header
    result = natives.call("verify", server.port, ctx)
    assert isinstance(result, DkimResult) and result.value == "pass"
    assert dict(result.signatures[0]) == {
        "domain": "dkim.test", "selector": KEYS[algorithm][1], "algorithm": algorithm,
        "result": "pass", "reason": ""}
    assert ctx.message.to_bytes().endswith(SIGNED_BODY)  # nothing else changed


@pytest.mark.parametrize("algorithm", KEYS)
def test_the_result_in_scripts_and_in_authentication_results(natives, server, algorithm):
    ctx = signed(natives, algorithm)
    assert natives.call("in_script", server.port, ctx) == [
        True, "pass", "dkim_result", "dkim.test", KEYS[algorithm][1], 1]
    value = natives.call("header", ctx, natives.call("verify", server.port, ctx))
    assert value == ("mx.example.test; dkim=pass header.d=dkim.test header.i=@dkim.test "
                     f"header.a={algorithm} header.s={KEYS[algorithm][1]}")
    assert ctx.stored()["dkim"].value == "pass"


def test_default_headers_are_signed_and_from_twice(natives, server):
    tags = dkimpy.util.parse_tag_value(signed(natives).message.get("DKIM-Signature").encode())
    assert tags[b"h"].replace(b" ", b"") == b"from:to:subject:date:message-id:from"


def test_chosen_headers(natives, server):
    ctx = signed(natives, headers=["From", "Subject"])
    tags = dkimpy.util.parse_tag_value(ctx.message.get("DKIM-Signature").encode())
    assert tags[b"h"].replace(b" ", b"") == b"from:subject"
    ctx.message.set("To", "mallory@example.test")  # not signed: may change
    assert natives.call("verify", server.port, ctx) == "pass"


def test_signing_in_on_post_queue_adds_the_header_to_the_message(natives, server):
    ctx = context(SIGNED_BODY, Stage.POST_QUEUE)
    natives.call("sign", ctx, {"sdid": "dkim.test", "selector": "rsa",
                               "private_key": "rsa2048.pem"})
    assert ctx.message.to_bytes().startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert natives.call("verify", server.port, ctx) == "pass"


# ---- published examples ------------------------------------------------------------------

def test_rfc8463_example_both_algorithms(natives, server):
    result = natives.call("verify", server.port, context(message("rfc8463.eml")))
    assert result == "pass"
    assert [(s["algorithm"], s["selector"], s["result"]) for s in result.signatures] == [
        ("ed25519-sha256", "brisbane", "pass"), ("rsa-sha256", "test", "pass")]
    assert {s["domain"] for s in result.signatures} == {"football.example.com"}


def test_rfc6376_example(natives, server):
    result = natives.call("verify", server.port, context(message("rfc6376.eml")))
    assert result == "pass"
    assert dict(result.signatures[0]) == {
        "domain": "example.com", "selector": "brisbane", "algorithm": "rsa-sha256",
        "result": "pass", "reason": ""}


def test_dkimpy_ed25519_test_message(natives, server):
    assert natives.call("verify", server.port, context(message("dkimpy-ed25519.eml"))) == "pass"


# ---- tampering ---------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", KEYS)
@pytest.mark.parametrize("tamper, reason", [
    (lambda m: m.replace(b"Subject: the plan", b"Subject: the plan!"), "bad signature"),
    (lambda m: m.replace(b"Meet at noon.", b"Meet at one."), "body hash mismatch"),
    (lambda m: m + b"P.S. bring cash\r\n", "body hash mismatch"),
    (lambda m: m.replace(b"To: bob", b"From: mallory@evil.test\r\nTo: bob"), "bad signature"),
])
def test_tampered_messages_fail(natives, server, algorithm, tamper, reason):
    data = signed(natives, algorithm).message.to_bytes()
    result = natives.call("verify", server.port, context(tamper(data)))
    assert (result.value, result.signatures[0]["reason"]) == ("fail", reason)


def test_relaxed_canonicalization_tolerates_whitespace(natives, server):
    data = signed(natives, canonicalization="relaxed/relaxed").message.to_bytes()
    changed = data.replace(b"Subject: the plan", b"Subject:   the  plan") \
        .replace(b"Meet at noon.", b"Meet  at noon.  ")
    assert natives.call("verify", server.port, context(changed)) == "pass"
    simple = signed(natives, canonicalization="simple/simple").message.to_bytes()
    changed = simple.replace(b"Subject: the plan", b"Subject:   the  plan")
    assert natives.call("verify", server.port, context(changed)) == "fail"


# ---- what else a signature can give ------------------------------------------------------

@pytest.mark.parametrize("selector, value, reason", [
    (b"missing", "permerror", "no key at missing._domainkey.dkim.test"),
    (b"revoked", "permerror", "the key at revoked._domainkey.dkim.test is revoked (empty p=)"),
    (b"garbled", "permerror", "bad key at garbled._domainkey.dkim.test: "),
    (b"wrongtype", "permerror",
     "the key at wrongtype._domainkey.dkim.test is ed25519, not for rsa-sha256"),
    (b"web", "permerror", "the key at web._domainkey.dkim.test is not for email"),
    (b"rsa", "pass", ""),
])
def test_key_records(natives, server, selector, value, reason):
    result = natives.call("verify", server.port, context(dkimpy_signed(selector=selector)))
    assert result.value == value and result.signatures[0]["reason"].startswith(reason)


def test_keys_shorter_than_1024_bits_fail(natives, server):
    data = dkimpy_signed(key="rsa512.pem", selector=b"short")
    result = natives.call("verify", server.port, context(data))
    assert (result.value, result.signatures[0]["reason"]) == (
        "fail", "the key at short._domainkey.dkim.test has 512 bits (at least 1024)")


def test_rsa_sha1_is_not_accepted(natives, server):
    result = natives.call("verify", server.port,
                          context(dkimpy_signed(signature_algorithm=b"rsa-sha1")))
    assert (result.value, result.signatures[0]["algorithm"]) == ("policy", "rsa-sha1")


@pytest.mark.parametrize("field, reason", [
    (b"DKIM-Signature: v=1; a=rsa-sha256; d=dkim.test; s=rsa; h=from; b=AAAA\r\n",
     "bad signature field: missing bh="),
    (b"DKIM-Signature: v=2; a=rsa-sha256; d=dkim.test; s=rsa; h=from; bh=AAAA; b=AAAA\r\n",
     "bad signature field: v= value is not 1"),
    (b"DKIM-Signature: v=1; a=rsa-md5; d=dkim.test; s=rsa; h=from; bh=AAAA; b=AAAA\r\n",
     "bad signature field: unknown signature algorithm: rsa-md5"),
    (b"DKIM-Signature: this is not a tag list\r\n", "bad signature field: "),
])
def test_malformed_signatures_are_neutral(natives, server, field, reason):
    result = natives.call("verify", server.port, context(field + SIGNED_BODY))
    assert result.value == "neutral" and result.signatures[0]["reason"].startswith(reason)


def test_no_signature_is_none(natives, server):
    ctx = context(SIGNED_BODY)
    result = natives.call("verify", server.port, ctx)
    assert (result.value, result.signatures) == ("none", ())
    assert natives.call("header", ctx, result) == "mx.example.test; dkim=none"
    assert server.queries == []


def test_every_signature_is_checked_and_reported(natives, server):
    data = signed(natives, "ed25519-sha256").message.to_bytes()
    data = dkimpy_signed(data, selector=b"missing")
    ctx = context(data)
    result = natives.call("verify", server.port, ctx)
    assert result == "pass"  # one good signature is enough
    assert [s["result"] for s in result.signatures] == ["permerror", "pass"]
    value = natives.call("header", ctx, result)
    header = authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {value}")
    assert [(r.method, r.result, r.header_s) for r in header.results] == [
        ("dkim", "permerror", "missing"), ("dkim", "pass", "ed")]
    keys = sorted(q[0] for q in server.queries)
    assert keys == ["ed._domainkey.dkim.test.", "missing._domainkey.dkim.test."]


def test_signatures_past_the_limit_are_not_checked(natives, server):
    data = SIGNED_BODY
    for selector in (b"rsa", b"missing", b"revoked"):
        data = dkimpy_signed(data, selector=selector)
    ctx = context(data)
    assert len(natives.call("verify", server.port, ctx).signatures) == 3
    first = natives.call("verify_first", server.port, ctx, 1)
    assert [s["selector"] for s in first.signatures] == ["revoked"]
    with pytest.raises(VslError, match="option 'max_signatures' must be 1 or more"):
        natives.call("verify_first", server.port, ctx, 0)


@pytest.mark.parametrize("fault", ["servfail", "drop"])
def test_dns_failure_is_temperror(natives, server, fault):
    getattr(server, fault)("rsa._domainkey.dkim.test")
    result = natives.call("verify", server.port, signed(natives))
    assert result.value == "temperror"
    assert "rsa._domainkey.dkim.test" in result.signatures[0]["reason"]


def test_a_temperror_outranks_a_failure(natives, server):
    server.servfail("ed._domainkey.dkim.test")
    data = signed(natives, "ed25519-sha256").message.to_bytes()
    result = natives.call("verify", server.port, context(dkimpy_signed(data, selector=b"x")))
    assert [s["result"] for s in result.signatures] == ["permerror", "temperror"]
    assert result == "temperror"


# ---- keys --------------------------------------------------------------------------------

def test_a_key_is_read_once_and_again_when_it_changes(natives, tmp_path):
    path = tmp_path / "k.pem"
    shutil.copy(HERE / "rsa2048.pem", path)
    first = natives.call("key", str(path))
    assert isinstance(first, DkimKey) and first.algorithm == "rsa-sha256"
    assert natives.call("key", str(path)) is first
    shutil.copy(HERE / "ed25519.pem", path)
    assert natives.call("key", str(path)).algorithm == "ed25519-sha256"


def test_key_formats(natives, tmp_path):
    from cryptography.hazmat.primitives import serialization as ser

    rsa = ser.load_pem_private_key((HERE / "rsa2048.pem").read_bytes(), None)
    pkcs8 = tmp_path / "pkcs8.pem"
    pkcs8.write_bytes(rsa.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8,
                                        ser.NoEncryption()).replace(b"\n", b"\r\n"))
    ed = ser.load_pem_private_key((HERE / "ed25519.pem").read_bytes(), None)
    seed = tmp_path / "dknewkey.key"  # dkimpy's dknewkey writes the bare base64 seed
    seed.write_bytes(base64.b64encode(ed.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw,
                                                       ser.NoEncryption())) + b"\n")
    assert natives.call("key", str(pkcs8)).algorithm == "rsa-sha256"
    assert natives.call("key", str(seed)).algorithm == "ed25519-sha256"
    assert natives.call("key", str(HERE / "ed25519.pem")).private == \
        natives.call("key", str(seed)).private


def test_a_bad_key_file_fails_at_load(tmp_path):
    (tmp_path / "main.vsl").write_text('const KEY = dkim::key("keys/nothing.pem");\n')
    with pytest.raises(VslError) as err:
        new_engine().load(tmp_path / "main.vsl")
    assert "main.vsl:1:13" in str(err.value)
    assert f"dkim::key: cannot read {tmp_path}/keys/nothing.pem: No such file" in str(err.value)


@pytest.mark.parametrize("content, problem", [
    (b"hello", "not an unencrypted PEM private key"),
    (b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
     "not an unencrypted PEM private key"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
     "not an RSA or Ed25519 private key"),
    ((HERE / "rsa512.pem").read_bytes(), "an RSA key of 512 bits is too short (at least 1024)"),
])
def test_bad_key_files(natives, tmp_path, content, problem):
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(VslError, match=re.escape(f"dkim::key: {path}: {problem}")):
        natives.call("key", str(path))


# ---- option errors -----------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"canonicalization": "loose"}, "option 'canonicalization' must be header/body"),
    ({"sdid": "dkim test"}, "option 'sdid' must be DNS labels"),
    ({"selector": "_rsa"}, "option 'selector' must be DNS labels"),
    ({"headers": ["Subject"]}, "The From header field MUST be signed"),
    ({"headers": ["From", "Received"]}, "The received header field SHOULD NOT be signed"),
    ({"headers": ["From", 3]}, "option 'headers' must be an array of header names"),
    ({"private_key": "none.pem"}, "option 'private_key': cannot read"),
    ({"private_key": 5}, "option 'private_key' must be a string or dkim_key"),
    ({"domain": "dkim.test"}, "unknown option 'domain'"),
])
def test_sign_option_errors_name_the_option(natives, options, message):
    base = {"sdid": "dkim.test", "selector": "rsa", "private_key": "rsa2048.pem"}
    with pytest.raises(VslError, match=f"dkim::sign: {message}"):
        natives.call("sign", context(SIGNED_BODY), {**base, **options})


def test_there_is_no_message_before_on_pre_queue(natives, server):
    ctx = context(SIGNED_BODY, Stage.RCPT_TO)
    ctx.message = None
    with pytest.raises(VslError, match="dkim::verify: there is no message before on_pre_queue"):
        natives.call("verify", server.port, ctx)


# ---- two servers: one signs, one verifies ------------------------------------------------

SIGNER = """
const KEY = dkim::key("dkim.pem");  // beside main.vsl
fn STAGE(ctx) {
    dkim::sign(ctx, #{ sdid: "dkim.test", selector: "rsa", private_key: global::KEY });
    transport::forward(ctx, "smtp://127.0.0.1:PORT?tls=none");
    status::next()
}
"""
VERIFIER = """
const resolver = dns::resolver();
fn on_pre_queue(ctx) {
    let dkim = dkim::verify(ctx, #{ dns_resolver: global::resolver });
    ctx.store(dkim);
    auth::add_header(ctx, #{ auth_serv_id: "mx2.test" });
    if dkim != "pass" { return status::deny("550 5.7.20 No valid DKIM signature"); }
    status::next()
}
"""


@pytest.mark.parametrize("stage", ["on_pre_queue", "on_post_queue"])
def test_a_signed_message_relayed_to_a_verifying_server(dns_server, tmp_path, stage):
    """Signed by one server, delivered by its queue to a second that verifies it."""
    dns = DnsConfig(nameservers=(f"127.0.0.1:{dns_server.port}",), timeout=2)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    verifier_config = replace(config_for(tmp_path / "b", VERIFIER, dns=dns), hostname="mx2.test")
    with running(verifier_config) as verifier:
        signer_script = SIGNER.replace("STAGE", stage).replace("PORT", str(verifier.port()))
        signer_config = config_for(tmp_path / "a", signer_script, dns=dns)
        signer_config = replace(signer_config, delivery=DeliveryConfig(poll_interval=0.02))
        shutil.copy(HERE / "rsa2048.pem", signer_config.scripts / "dkim.pem")
        with running(signer_config) as signer:
            with client(signer) as smtp:
                smtp.sendmail("alice@dkim.test", ["bob@example.test"], SIGNED_BODY)
            assert wait_for(lambda: not asyncio.run(signer.spool.list())
                            and asyncio.run(verifier.spool.list()), 10)
        [entry] = asyncio.run(verifier.spool.list())
        received = asyncio.run(verifier.spool.message(entry.id))
    assert b"Authentication-Results: mx2.test; dkim=pass header.d=dkim.test" in received


def test_the_outbound_example_signs_what_it_queues(natives, tmp_path):
    example = HERE.parent.parent / "examples" / "outbound-signing"
    config = replace(load_config(example / "vsl.toml"), scripts=example,
                     queue_dir=tmp_path, listen=(Listener("127.0.0.1", 0),))
    with running(config) as server, client(server) as smtp:
        smtp.login("alice", "wonderland")
        smtp.sendmail("alice@example.test", ["carol@elsewhere.test"],
                      b"From: alice@example.test\r\nTo: carol@elsewhere.test\r\n"
                      b"Subject: hello\r\n\r\nHi Carol.\r\n")
        [entry] = asyncio.run(server.spool.list())
        data = asyncio.run(server.spool.message(entry.id))
    with DnsServer([example / "example.zone"]) as dns:
        result = natives.call("verify", dns.port, context(data))
    assert result == "pass"
    assert (result.signatures[0]["domain"], result.signatures[0]["selector"]) == (
        "example.test", "s2024")


@pytest.mark.parametrize("data, value", [
    (b" folded first line\r\nFrom: a@dkim.test\r\n\r\nbody\r\n", "none"),
    (b"From: a@dkim.test\r\nnot a field\r\nDKIM-Signature: v=1\r\n\r\nbody\r\n", "neutral"),
])
def test_a_header_dkimpy_cannot_read(natives, server, data, value):
    # The server takes the first line that is not a field for the start of the body;
    # dkimpy refuses such a header.
    result = natives.call("verify", server.port, context(data))
    assert result.value == value
    assert all(s["reason"] == "dkimpy cannot read the message header" for s in result.signatures)
    with pytest.raises(VslError, match="dkim::sign: dkimpy cannot read the message header"):
        natives.call("sign", context(data), {"sdid": "dkim.test", "selector": "rsa",
                                             "private_key": "rsa2048.pem"})
