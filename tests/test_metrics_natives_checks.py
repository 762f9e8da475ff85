"""What the natives report to the telemetry sink (the server counts it as
vsl_dns_queries_total, vsl_dns_cache_total, vsl_dns_seconds and vsl_check_results_total),
against the real test DNS server (tests/zones): a query's type and result, cache hits,
and each check's result in its own value set (a DNSBL ``pass`` is ``not_listed``)."""
from __future__ import annotations

import pytest

from vsl.stdlib import new_engine
from vsl.stdlib.support import telemetry

SCRIPT = """
const R = dns::resolver(#{{ nameservers: ["127.0.0.1:{port}"], timeout: 2 }});
fn records(name, type) {{ dns::lookup(#{{ dns_resolver: global::R, name: name, type: type }}) }}
fn spf(ip, helo) {{ spf::check_host(#{{ ip: ip, helo: helo, dns_resolver: global::R }}) }}
fn iprev(ip) {{ iprev::check(#{{ ip: ip, dns_resolver: global::R }}) }}
fn dnsbl(ip) {{ dnsbl::check(#{{ ip: ip, zones: ["bl.dnsbl.test"], dns_resolver: global::R }}) }}
"""


class Recording:
    """A sink that keeps every report: (kind, name, labels)."""

    def __init__(self):
        self.reports: list[tuple[str, str, dict]] = []

    def count(self, name, amount=1, **labels):
        self.reports.append(("count", name, labels))

    def observe(self, name, value, **labels):
        assert 0 <= value < 5
        self.reports.append(("observe", name, labels))

    def named(self, name: str) -> list[dict]:
        return [labels for _, found, labels in self.reports if found == name]


@pytest.fixture
def reported(server):
    recording = Recording()
    telemetry.install(recording)
    yield recording, new_engine().load_source(SCRIPT.format(port=server.port), "t.vsl")
    telemetry.install(None)


def test_dns_queries_their_results_and_the_cache(reported):
    sink, script = reported
    script.call("records", "example.test", "MX")
    script.call("records", "example.test", "MX")
    script.call("records", "nope.example.test", "A")
    script.call("records", "mail.example.test", "MX")
    assert sink.named("vsl_dns_cache_total") == [{"result": "miss"}, {"result": "hit"},
                                                 {"result": "miss"}, {"result": "miss"}]
    assert sink.named("vsl_dns_queries_total") == [
        {"rdtype": "MX", "result": "ok"}, {"rdtype": "A", "result": "nxdomain"},
        {"rdtype": "MX", "result": "nodata"}]
    assert len(sink.named("vsl_dns_seconds")) == 3


@pytest.mark.parametrize("check, arguments, result", [
    ("spf", ("192.0.2.7", "pass.spf.test"), "pass"),
    ("iprev", ("192.0.2.7",), "pass"),
    ("iprev", ("192.0.2.200",), "permerror"),
    ("dnsbl", ("127.0.0.2",), "listed"),
    ("dnsbl", ("192.0.2.10",), "not_listed"),
])
def test_each_check_reports_its_result(reported, check, arguments, result):
    sink, script = reported
    script.call(check, *arguments)
    assert sink.named("vsl_check_results_total") == [{"check": check, "result": result}]
