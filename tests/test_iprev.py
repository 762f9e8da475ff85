"""iprev:: against the real test DNS server (tests/zones)."""
from __future__ import annotations

import pytest

from vsl.stdlib import new_engine

SCRIPT = """
const R = dns::resolver(#{{ nameservers: ["127.0.0.1:{port}"], timeout: 0.5, cache: false }});
fn check(ip) {{
    let r = iprev::check(#{{ ip: ip, dns_resolver: global::R }});
    [r.value, r.ip, r.fqdn, r == r.value, `${{r}}`]
}}
"""


@pytest.fixture
def script(dns_server):
    dns_server.reset()
    return new_engine().load_source(SCRIPT.format(port=dns_server.port), "iprev.vsl")


@pytest.mark.parametrize("ip, expected", [
    ("192.0.2.7", ["pass", "192.0.2.7", "mail.example.test"]),     # PTR and A agree
    ("2001:db8::7", ["pass", "2001:db8::7", "mail.example.test"]),  # over IPv6 too
    ("192.0.2.8", ["fail", "192.0.2.8", "forged.example.test"]),    # PTR name points elsewhere
    ("192.0.2.9", ["fail", "192.0.2.9", "ghost.example.test"]),     # PTR name does not exist
    ("192.0.2.200", ["permerror", "192.0.2.200", None]),            # no PTR at all
])
def test_results(script, ip, expected):
    value = script.call("check", ip)
    assert value[:3] == expected
    assert value[3] is True and value[4] == expected[0]


def test_dns_failure_is_temperror(script, dns_server):
    dns_server.servfail("7.2.0.192.in-addr.arpa.")
    assert script.call("check", "192.0.2.7")[0] == "temperror"


def test_forward_timeout_is_temperror(script, dns_server):
    dns_server.drop("mail.example.test.")
    assert script.call("check", "192.0.2.7")[0] == "temperror"


def test_bad_address_is_a_catchable_error(script):
    source = SCRIPT.format(port=1) + """
fn bad() { let r = (); try { iprev::check(#{ ip: "not-an-ip", dns_resolver: global::R }); }
           catch (e) { r = e; } r }"""
    assert "not an IP address" in new_engine().load_source(source, "b.vsl").call("bad")
