"""The RFC 7208 test suite (tests/spf/rfc7208-tests.yml, see tests/spf/README.md).

Each scenario's zone data is served by a real DNS server on 127.0.0.1, and each case
runs through spf::check_host from one .vsl script.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
import spf as pyspf
import yaml

from vsl.server.dnsd import DnsServer
from vsl.stdlib import new_engine

SUITE = Path(__file__).parent / "spf" / "rfc7208-tests.yml"
SCENARIOS = list(yaml.safe_load_all(SUITE.read_text(encoding="ascii")))
QUERY_TYPES = {"A", "AAAA", "MX", "PTR", "TXT", "SPF"}  # what an SPF check can ask for

# Cases that fail, with the reason. Empty: every case passes.
KNOWN_FAILURES: dict[str, str] = {}

SCRIPT = """
fn check(port, ip, helo, mail_from) {
    let resolver = dns::resolver(#{ nameservers: [`127.0.0.1:${port}`], timeout: 0.4 });
    let r = spf::check_host(#{ ip: ip, helo: helo, mail_from: mail_from,
                               dns_resolver: resolver });
    [r.value, r.explanation]
}
"""


def zone(zonedata: dict) -> tuple[dict, dict]:
    """A scenario's zone data as DnsServer.from_records input, and the types that time out.

    As in the suite's own drivers: SPF records are published as TXT too, unless the
    name lists TXT entries (``TXT: NONE`` lists one that is no record); ``TIMEOUT``
    makes every type the name has no records of time out. A record of no strings
    (``SPF: []``, "null text") is left out: TXT needs one or more (RFC 1035), and
    dnspython refuses to send it.
    """
    records, timeouts = {}, {}
    for name, entries in zonedata.items():
        listed = [next(iter(e.items())) for e in entries if e != "TIMEOUT"]
        found = [(rdtype, _value(rdtype, v)) for rdtype, v in listed if v not in ("NONE", [])]
        if all(rdtype != "TXT" for rdtype, _ in listed):
            found += [("TXT", v) for rdtype, v in found if rdtype == "SPF"]
        records[name] = found
        if "TIMEOUT" in entries:
            timeouts[name] = QUERY_TYPES - {rdtype for rdtype, _ in found}
    return records, timeouts


def _value(rdtype: str, value):
    """MX entries are [preference, exchange] lists (exchange "": the root, a null MX)."""
    if rdtype == "MX":
        return f"{value[0]} {value[1] or '.'}"
    return value


def _cases() -> list:
    cases = []
    for index, scenario in enumerate(SCENARIOS):
        for case_id, case in scenario["tests"].items():
            marks = [pytest.mark.xfail(reason=KNOWN_FAILURES[case_id], strict=True)] \
                if case_id in KNOWN_FAILURES else []
            cases.append(pytest.param(index, case, id=case_id, marks=marks))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def script():
    return new_engine().load_source(SCRIPT, "rfc7208.vsl")


@pytest.fixture(scope="module")
def server_for():
    """server_for(scenario index): its DNS server, started on first use."""
    with contextlib.ExitStack() as stack:
        servers: dict[int, DnsServer] = {}

        def server(index: int) -> DnsServer:
            if index not in servers:
                records, timeouts = zone(SCENARIOS[index]["zonedata"])
                servers[index] = stack.enter_context(DnsServer.from_records(records))
                for name, rdtypes in timeouts.items():
                    for rdtype in rdtypes:
                        servers[index].drop(name, rdtype)
            return servers[index]

        yield server


@pytest.fixture(scope="module")
def passed(request):
    """Case ids that passed; their count is reported at the end of the module."""
    ids: list[str] = []
    yield ids
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\nRFC 7208 suite: {len(ids)} of {len(CASES)} cases passed")


@pytest.mark.parametrize("index, case", CASES)
def test_case(request, script, server_for, passed, index, case):
    port = server_for(index).port
    value, explanation = script.call("check", port, case["host"], case["helo"],
                                     case["mailfrom"])
    expected = case["result"] if isinstance(case["result"], list) else [case["result"]]
    assert value in expected
    if "explanation" in case:
        # "DEFAULT" stands for the checker's own default explanation: pyspf's.
        wanted = case["explanation"]
        assert explanation == (pyspf.EXPLANATIONS[value] if wanted == "DEFAULT" else wanted)
    passed.append(request.node.callspec.id)


def test_server_serves_the_suite_records():
    """Several strings in one TXT, type SPF (99), and a TIMEOUT for some types only."""
    records, timeouts = zone({
        "null.example.com": [{"SPF": ["v=spf1 ip4:", "192.0.2.5 -all"]}, {"SPF": []}],
        "t.example.com": [{"TXT": "v=spf1 -all"}, "TIMEOUT"],
        "mx.example.com": [{"MX": [10, "mail.example.com"]}, {"TXT": "NONE"}],
    })
    assert records == {
        "null.example.com": [("SPF", ["v=spf1 ip4:", "192.0.2.5 -all"]),
                             ("TXT", ["v=spf1 ip4:", "192.0.2.5 -all"])],
        "t.example.com": [("TXT", "v=spf1 -all")],
        "mx.example.com": [("MX", "10 mail.example.com")],
    }
    assert timeouts == {"t.example.com": QUERY_TYPES - {"TXT"}}

    with DnsServer.from_records(records) as server:
        server.drop("t.example.com", "A")

        def ask(name, rdtype):
            query = dns.message.make_query(name, rdtype)
            return dns.query.udp(query, "127.0.0.1", port=server.port, timeout=0.5)

        (txt,) = ask("null.example.com", "TXT").answer
        assert txt[0].strings == (b"v=spf1 ip4:", b"192.0.2.5 -all")
        assert ask("null.example.com", "SPF").answer[0].rdtype == 99
        assert str(ask("mx.example.com", "MX").answer[0][0]) == "10 mail.example.com."
        assert ask("t.example.com", "TXT").answer
        with pytest.raises(dns.exception.Timeout):
            ask("t.example.com", "A")
        assert ask("nowhere.example.com", "A").rcode() == dns.rcode.NXDOMAIN
