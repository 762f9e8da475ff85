"""spf:: against the real test DNS server (tests/zones/spf.test.zone)."""
from __future__ import annotations

import asyncio

import pytest

import vsl.stdlib.spf
from vsl.stdlib.spf import SpfResult
from vsl.stdlib import new_engine
from vsl.errors import VslError

SCRIPT = """
fn check(port, query) {
    query.dns_resolver = dns::resolver(#{ nameservers: [`127.0.0.1:${port}`], timeout: 0.5,
                                          cache: false });
    spf::check_host(query)
}
fn in_script(port, query) {
    let r = check(port, query);
    [r == r.value, r.value == r, `${r}`, type_of(r), r in ["pass"],
     switch r { "pass" => "matched", _ => "other" }, r.identity, r.sender]
}
"""
CLIENT, HELO = "192.0.2.7", "mail.spf.test"


@pytest.fixture
def check(server):
    """check(ip=..., helo=..., [mail_from=...]): spf::check_host through a script."""
    script = new_engine().load_source(SCRIPT, "spf.vsl")

    def run(ip=CLIENT, helo=HELO, **query):
        return script.call("check", server.port, {"ip": ip, "helo": helo, **query})

    run.script = script
    return run


@pytest.mark.parametrize("mail_from, value, mechanism", [
    ("user@pass.spf.test", "pass", "ip4:192.0.2.0/24"),
    ("user@fail.spf.test", "fail", "-all"),
    ("user@softfail.spf.test", "softfail", "~all"),
    ("user@neutral.spf.test", "neutral", "?all"),
    ("user@nospf.spf.test", "none", "default"),        # no record
    ("user@nowhere.spf.test", "none", "default"),      # no such domain
    ("user@split.spf.test", "pass", "ip4:192.0.2.7"),  # strings joined, other TXT ignored
    ("user@include.spf.test", "pass", "include:pass.spf.test"),
    ("user@redirect.spf.test", "pass", "ip4:192.0.2.0/24"),
    ("user@mx.spf.test", "pass", "mx"),                # the third exchange
    ("user@ptr.spf.test", "pass", "ptr:example.test"),  # 192.0.2.7 -> mail.example.test
    ("user@lookups10.spf.test", "fail", "-all"),
    ("user@lookups11.spf.test", "permerror", "default"),
    ("user@void2.spf.test", "fail", "-all"),
    ("user@void3.spf.test", "permerror", "default"),
    ("user@two.spf.test", "permerror", "default"),     # two records
])
def test_mail_from_results(check, mail_from, value, mechanism):
    result = check(mail_from=mail_from)
    assert isinstance(result, SpfResult)
    assert (result.value, result.mechanism) == (value, mechanism)
    assert (result.identity, result.sender) == ("mailfrom", mail_from)
    assert result.domain == mail_from.split("@")[1]
    assert result.auth_key == "spf_mailfrom"


def test_explanations(check):
    # The exp= record, expanded. pyspf fetches it under a bare "except:", which the
    # missing look-up cannot escape: check_host notices the look-up all the same.
    assert check(mail_from="u@fail.spf.test").explanation == \
        "192.0.2.7 is not one of fail.spf.test's senders"
    assert check(mail_from="u@softfail.spf.test").explanation == \
        "domain owner discourages use of this host"
    # control characters (a CR LF and a second reply line): as if there were no exp=
    assert check(mail_from="u@hostile.spf.test").explanation == "SPF fail - not authorized"
    assert "Void lookup limit" in check(mail_from="u@void3.spf.test").explanation
    assert "Two or more" in check(mail_from="u@two.spf.test").explanation


def test_the_result_in_scripts(check, server):
    view = check.script.call("in_script", server.port,
                             {"ip": CLIENT, "helo": HELO, "mail_from": "u@pass.spf.test"})
    assert view == [True, True, "pass", "spf_result", True, "matched", "mailfrom",
                    "u@pass.spf.test"]


def test_helo_identity_of_a_multi_label_name(check):
    result = check(helo="mail.spf.test")
    assert (result.value, result.identity, result.domain) == ("pass", "helo", "mail.spf.test")
    assert (result.sender, result.mechanism) == ("postmaster@mail.spf.test", "a")
    assert result.auth_key == "spf_helo"
    assert check(helo="bare.spf.test") == "none"
    assert check(ip="198.51.100.1", helo="mail.spf.test") == "fail"


@pytest.mark.parametrize("helo", ["localhost", "[192.0.2.7]", "192.0.2.7", "[IPv6:2001:db8::7]",
                                  "mail..spf.test", "a" * 64 + ".spf.test", ""])
def test_helo_that_is_not_a_domain_is_none_without_lookups(check, server, helo):
    result = check(helo=helo)
    assert (result.value, result.identity, result.domain) == ("none", "helo", helo)
    assert check(helo=helo, mail_from="") == "none"  # the null sender is postmaster@helo
    assert server.queries == []


@pytest.mark.parametrize("mail_from", ["", "<>", " <> "])
def test_null_sender_is_postmaster_at_helo(check, mail_from):
    result = check(mail_from=mail_from)
    assert (result.value, result.identity) == ("pass", "mailfrom")
    assert (result.sender, result.domain) == ("postmaster@mail.spf.test", "mail.spf.test")


def test_reverse_path_brackets_and_missing_local_part(check):
    assert check(mail_from="<u@pass.spf.test>").sender == "u@pass.spf.test"
    assert check(mail_from="@pass.spf.test").sender == "postmaster@pass.spf.test"


@pytest.mark.parametrize("fault", ["servfail", "drop"])
@pytest.mark.parametrize("mail_from, name", [
    ("u@broken.spf.test", "broken.spf.test"),        # the sender's own record
    ("u@via-broken.spf.test", "broken.spf.test"),    # an included record
    ("u@mx.spf.test", "mx3.spf.test"),               # an exchange's address
])
def test_dns_failures_are_temperror(check, server, fault, mail_from, name):
    getattr(server, fault)(name)
    result = check(mail_from=mail_from)
    assert result == "temperror"
    assert name in result.explanation and result.mechanism == "default"


def test_a_failed_ptr_lookup_is_no_match(check, server):
    server.servfail("7.2.0.192.in-addr.arpa")
    assert check(mail_from="u@ptr.spf.test") == "fail"  # RFC 7208 §5.5, not temperror


@pytest.mark.parametrize("mail_from", [
    "u@[192.0.2.7]", "u@", "@", "u", "%{l}@%{d}", "u@" + "a." * 130 + "test",
    "u@-.spf.test", "u@exämple.spf.test", "u@under_score.spf.test", "u@x\x00y.spf.test",
])
def test_odd_senders_are_none(check, mail_from):
    assert check(mail_from=mail_from) == "none"


def test_too_many_rounds_of_lookups_is_temperror(check, monkeypatch):
    monkeypatch.setattr(vsl.stdlib.spf, "MAX_RUNS", 2)
    assert check(mail_from="u@pass.spf.test") == "pass"  # one round of look-ups
    result = check(mail_from="u@include.spf.test")      # three rounds
    assert result == "temperror" and "more than 2 rounds" in result.explanation


def test_waiting_for_dns_does_not_block_the_event_loop(check, server):
    server.drop("slow.spf.test")
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def main():
        ticker = asyncio.create_task(tick())
        query = {"ip": CLIENT, "helo": HELO, "mail_from": "u@slow.spf.test"}
        result = await check.script.call_async("check", server.port, query)
        ticker.cancel()
        return result

    assert asyncio.run(main()) == "temperror"
    assert ticks >= 20  # the 0.5 s timeout passed while the loop ran


def test_received_spf_header(check):
    result = check(mail_from="x@pass.spf.test")
    assert result.received_spf("mydomain.tld") == (
        "pass (mydomain.tld: domain of x@pass.spf.test designates 192.0.2.7 as permitted "
        'sender) client-ip=192.0.2.7; envelope-from="x@pass.spf.test"; helo=mail.spf.test; '
        'receiver=mydomain.tld; mechanism="ip4:192.0.2.0/24"; identity=mailfrom;')
    helo = check(ip="2001:db8::9", helo="mail.spf.test")
    assert helo.received_spf("mx (east)") == (
        "fail (mx \\(east\\): domain of postmaster@mail.spf.test does not designate "
        '2001:db8::9 as permitted sender) client-ip="2001:db8::9"; helo=mail.spf.test; '
        'receiver="mx (east)"; mechanism=-all; identity=helo;')
    error = check(mail_from="x@two.spf.test").received_spf("mydomain.tld")
    assert error.startswith("permerror (mydomain.tld: permanent error in processing domain of "
                            "x@two.spf.test) ")
    assert 'problem="SPF Permanent Error: Two or more type TXT spf records found."' in error


def test_auth_result(check):
    assert str(check(mail_from="x@pass.spf.test").auth_result()) == \
        "spf=pass smtp.mailfrom=x@pass.spf.test"
    assert str(check().auth_result()) == "spf=pass smtp.helo=mail.spf.test"


@pytest.mark.parametrize("query, message", [
    ({"ip": "192.0.2", "helo": HELO}, "option 'ip' must be an IP address, not '192.0.2'"),
    ({"ip": 7, "helo": HELO}, "option 'ip' must be a string, not i64"),
    ({"ip": CLIENT}, "option 'helo' is required"),
    ({"ip": CLIENT, "helo": HELO, "mail_from": ["x"]}, "option 'mail_from' must be a string"),
    ({"ip": CLIENT, "helo": HELO, "sender": "x"}, "unknown option 'sender'"),
])
def test_bad_options_name_the_option(check, query, message):
    with pytest.raises(VslError, match=f"spf::check_host: {message}"):
        check.script.call("check", 1, query)
