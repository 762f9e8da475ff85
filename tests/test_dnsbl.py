"""dnsbl:: against the real test DNS server (tests/zones/dnsbl.test.zone), and in a real
`vsl serve` session."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from vsl.errors import LimitError, ScriptError
from vsl.limits import Limits
from vsl.lint import Linter
from vsl.server.config import DnsConfig
from vsl.stdlib import new_engine
from vsl.stdlib.ctx import entry_points
from tests.support.contexts import session
from tests.support.loop_gaps import LoopGaps
from tests.support.servers import config_for, running
from tests.support.smtp_tools import Raw, wait_for

BL, SECOND, DBL = "bl.dnsbl.test", "second.dnsbl.test", "dbl.dnsbl.test"
SILENT = "silent.dnsbl.test"  # no such zone: its queries are dropped by the tests

SCRIPT = """
const R = dns::resolver(#{{ nameservers: ["127.0.0.1:{port}"], timeout: 5 }});
fn check(ip, zones) {{
    let r = dnsbl::check(#{{ ip: ip, zones: zones, dns_resolver: global::R }});
    [r.value, r.zone, r.codes, r.reason, r.listed, r == r.value, `${{r}}`]
}}
fn domain(d, zones) {{
    let r = dnsbl::check_domain(#{{ domain: d, zones: zones, dns_resolver: global::R }});
    [r.value, r.zone, r.codes, r.reason, r.subject]
}}
fn tag(ctx, ip) {{
    let r = if ip == "" {{ "listed" }} else {{
        dnsbl::check(#{{ ip: ip, zones: ["bl.dnsbl.test"], dns_resolver: global::R }})
    }};
    dnsbl::add_header(ctx, r);
    ctx.get_header("X-DNSBL")
}}
fn subject(ip) {{
    dnsbl::check(#{{ ip: ip, zones: ["bl.dnsbl.test"], dns_resolver: global::R }}).subject
}}
fn score(query) {{
    query.dns_resolver = global::R;
    let s = dnsbl::score(query);
    [s.value, s.score, s.zone, s.results]
}}
"""


@pytest.fixture
def script(server):
    """A script whose resolver asks the test DNS server; each test starts anew (a new
    resolver, so a new cache) with no faults and an empty query log."""
    return new_engine(Limits(max_time=1.0)).load_source(SCRIPT.format(port=server.port),
                                                        "dnsbl.vsl")


def asked(server, rdtype: str) -> list[str]:
    return [name for name, qtype, _ in server.queries if qtype == rdtype]


# ---- answers ----------------------------------------------------------------------------

@pytest.mark.parametrize("ip, expected", [
    ("127.0.0.2", ["listed", BL, ("127.0.0.2",), "Listed: the RFC 5782 test entry"]),
    ("192.0.2.7", ["listed", BL, ("127.0.0.2", "127.0.0.4"),
                   "Spam source, see https://bl.dnsbl.test/q?192.0.2.7"]),
    ("192.0.2.8", ["listed", BL, ("127.0.0.3",), None]),             # no TXT published
    ("2001:db8::7", ["listed", BL, ("127.0.0.2",), "IPv6 spam source"]),  # nibbles
    ("::ffff:192.0.2.8", ["listed", BL, ("127.0.0.3",), None]),       # IPv4-mapped
    ("127.0.0.1", ["pass", None, (), None]),                          # NXDOMAIN
    ("2001:db8::8", ["pass", None, (), None]),
    ("192.0.2.9", ["temperror", None, (), None]),     # 127.255.255.254: the list refuses
    ("192.0.2.12", ["temperror", None, (), None]),    # 127.0.0.1 (and .2): it refuses too
    ("192.0.2.10", ["pass", None, (), None]),         # 192.0.2.99: a hijacking resolver's page
])
def test_an_address_is_listed_or_not(script, ip, expected):
    value = script.call("check", ip, [BL])
    assert value[:4] == expected
    assert value[4:] == [expected[0] == "listed", True, expected[0]]


@pytest.mark.parametrize("ip, subject", [
    ("2001:DB8:0::7", "2001:db8::7"),
    ("fe80::1%eth0", "fe80::1"),                      # a scope is not part of the address
    ("::ffff:192.0.2.8%x", "192.0.2.8"),              # looked up as its IPv4 address
])
def test_the_subject_is_the_address_looked_up(script, ip, subject):
    assert script.call("subject", ip) == subject


def test_the_reason_is_asked_only_of_a_zone_that_lists(script, server):
    script.call("check", "127.0.0.1", [BL])
    script.call("check", "192.0.2.9", [BL])
    assert asked(server, "TXT") == []
    script.call("check", "192.0.2.7", [BL])
    assert asked(server, "TXT") == ["7.2.0.192.bl.dnsbl.test."]


@pytest.mark.parametrize("ip, reason", [
    ("192.0.2.11", "two lines"),
    ("192.0.2.13", "caf  spam line two evil x"),  # a space for each run of non-ASCII
    ("192.0.2.14", "x" * 250 + "y" * 50),        # 300 bytes
])
def test_a_reason_keeps_printable_ascii_only(script, ip, reason):
    assert script.call("check", ip, [BL])[3] == reason


def test_a_domain_is_listed_or_not(script):
    assert script.call("domain", "Spammer.Example.", [DBL]) == [
        "listed", DBL, ("127.0.1.2",), "Spam domain", "spammer.example"]
    assert script.call("domain", "example.test", [DBL])[0] == "pass"
    assert script.call("domain", "München.Example", [DBL]) == [  # IDNA
        "listed", DBL, ("127.0.1.2",), None, "xn--mnchen-3ya.example"]


LONG_NAME = ".".join(["a" * 60] * 4)  # 243 bytes: too long with a zone after it


@pytest.mark.parametrize("domain, subject", [
    ("[127.0.0.1]", "[127.0.0.1]"), ("[IPv6:2001:db8::1]", "[ipv6:2001:db8::1]"),
    ("192.0.2.1", "192.0.2.1"), ("2001:db8::1", "2001:db8::1"),   # addresses
    ("a.b.1", "a.b.1"),                                            # a last label of digits
    ("LocalHost.", "localhost"),                                   # a single label
    (LONG_NAME, LONG_NAME), (LONG_NAME + ".example", LONG_NAME + ".example"),
    ("not a\r\nname!", "not a name!"), ("a..b", "a..b"), ("-a.example", "-a.example"),
    ("\u2028.example", ".example"),                               # no IDNA form
])
def test_what_no_list_can_list_is_not_looked_up(script, server, domain, subject):
    """Client input such as a HELO name: what a domain list cannot hold is not listed."""
    assert script.call("domain", domain, [DBL]) == ["pass", None, (), None, subject]
    assert server.queries == []


# ---- zones, filters, scores ----------------------------------------------------------------

def test_a_code_filter_counts_only_its_codes(script):
    only_4 = [{"zone": BL, "codes": ["127.0.0.4"]}]
    assert script.call("check", "192.0.2.7", only_4)[:3] == ["listed", BL, ("127.0.0.4",)]
    assert script.call("check", "192.0.2.8", only_4)[:3] == ["pass", None, ()]


def test_a_zone_s_errors_are_temperror_never_listed(script, server):
    """A DBL answers 127.0.1.255 to an IP address queried as a domain (here by check, which
    asks 192.0.2.1 for 1.2.0.192): an error."""
    dbl = [{"zone": DBL, "errors": ["127.0.1.255"]}]
    assert script.call("check", "1.2.0.192", [DBL])[:3] == ["listed", DBL, ("127.0.1.255",)]
    assert script.call("check", "1.2.0.192", dbl)[:3] == ["temperror", None, ()]
    assert script.call("domain", "spammer.example", dbl)[:3] == ["listed", DBL, ("127.0.1.2",)]


def test_the_first_zone_in_order_that_lists_is_the_one(script, server):
    assert script.call("check", "192.0.2.7", [SECOND, BL])[:4] == [
        "listed", SECOND, ("127.0.0.10",), None]
    assert asked(server, "TXT") == ["7.2.0.192.second.dnsbl.test."]  # only the first's
    assert script.call("check", "192.0.2.8", [DBL, BL])[1] == BL


def test_a_listing_outweighs_a_zone_that_failed(script, server):
    server.servfail("7.2.0.192.second.dnsbl.test.")
    assert script.call("check", "192.0.2.7", [SECOND, BL])[:2] == ["listed", BL]
    assert script.call("check", "192.0.2.7", [SECOND, DBL])[:2] == ["temperror", None]


def test_score_sums_the_weights_of_the_zones_that_list(script):
    zones = [{"zone": BL, "weight": 3}, {"zone": SECOND, "weight": 1.5}, DBL]
    value, total, zone, results = script.call("score", {"ip": "192.0.2.8", "zones": zones})
    assert (value, total, zone) == ("listed", 4.5, BL)
    assert [dict(r) for r in results] == [
        {"zone": BL, "value": "listed", "codes": ("127.0.0.3",), "reason": None, "weight": 3},
        {"zone": SECOND, "value": "listed", "codes": ("127.0.0.10",), "reason": "Second list",
         "weight": 1.5},
        {"zone": DBL, "value": "pass", "codes": (), "reason": None, "weight": 1}]
    assert script.call("score", {"ip": "127.0.0.1", "zones": zones})[:2] == ["pass", 0]
    assert script.call("score", {"domain": "spammer.example", "zones": [DBL]})[:2] == [
        "listed", 1]
    assert script.call("score", {"ip": None, "domain": "spammer.example", "zones": [DBL]})[:2] \
        == ["listed", 1]  # () is no value


def test_a_zone_without_positive_weight_only_counts_in_the_score(script):
    """An allow list (a DNSWL) lowers the score; it does not make the result listed."""
    allow = {"zone": SECOND, "weight": -5}
    assert script.call("score", {"ip": "192.0.2.8", "zones": [allow]})[:3] == ["pass", -5, None]
    assert script.call("score", {"ip": "192.0.2.8", "zones": [allow, {"zone": BL, "weight": 3}]}
                       )[:3] == ["listed", -2, BL]
    assert script.call("check", "192.0.2.8", [{"zone": BL, "weight": 0}])[:2] == ["pass", None]
    assert script.call("check", "192.0.2.7", [{"zone": SECOND, "weight": -1}, BL])[:4] == [
        "listed", BL, ("127.0.0.2", "127.0.0.4"),
        "Spam source, see https://bl.dnsbl.test/q?192.0.2.7"]


# ---- failures and time ----------------------------------------------------------------------

def test_a_silent_zone_is_temperror_with_time_left(script, server):
    """The resolver would wait 5 s: the check ends by the call's network deadline
    (four fifths of max_time, 1 s) and the other zones' answers still count."""
    server.drop(f"7.2.0.192.{SILENT}.")
    start = time.monotonic()
    assert script.call("check", "192.0.2.7", [SILENT])[0] == "temperror"
    assert time.monotonic() - start < 1.0
    start = time.monotonic()
    assert script.call("check", "192.0.2.7", [SILENT, BL])[:2] == ["listed", BL]
    assert time.monotonic() - start < 1.0


def test_the_most_zones_that_are_silent_end_in_temperror_with_time_left(script, server):
    silent = [f"z{i}.{SILENT}" for i in range(32)]
    for zone in silent:
        server.drop(f"7.2.0.192.{zone}.")
    start = time.monotonic()
    assert script.call("check", "192.0.2.7", silent)[0] == "temperror"
    assert time.monotonic() - start < 1.0


def test_a_check_is_charged_per_zone(server):
    """A zone's look-up costs 8 operations, so a script cannot ask a list without bound."""
    engine = new_engine(Limits(max_operations=200))
    script = engine.load_source(SCRIPT.format(port=server.port), "dnsbl.vsl")
    assert script.call("check", "127.0.0.1", [BL] * 20)[0] == "pass"
    with pytest.raises(LimitError, match="too many operations"):
        script.call("check", "127.0.0.1", [BL] * 30)


def test_a_second_check_is_answered_from_the_cache(script, server):
    for ip in ("192.0.2.7", "127.0.0.1"):
        first = script.call("check", ip, [BL, SECOND])
        sent = len(server.queries)
        assert script.call("check", ip, [BL, SECOND]) == first
        assert len(server.queries) == sent


@pytest.mark.parametrize("fn, args", [
    ("check", ("192.0.2.7", [BL, SECOND])),
    ("score", ({"ip": "192.0.2.8", "zones": [BL, SECOND]},)),  # every listing's reason
])
def test_a_check_answered_from_the_cache_makes_no_task(script, fn, args):
    """With every answer cached, the call asks nothing and gathers nothing: no task per
    zone (it only hands the event loop over once, after the check)."""
    first = script.call(fn, *args)
    tasks = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_task_factory(lambda loop, coro, **kw: tasks.append(coro) or
                              asyncio.Task(coro, loop=loop, **kw))
        try:
            return await script.call_async(fn, *args)
        finally:
            loop.set_task_factory(None)
    assert asyncio.run(main()) == first
    assert tasks == []


def test_a_huge_domain_is_not_converted(script):
    """A name longer than any DNS name is no name to look up, found without running IDNA
    on it (seconds for a megabyte)."""
    started = time.monotonic()
    assert script.call("domain", "é" * 1_000_000 + ".example", [DBL])[0] == "pass"
    assert time.monotonic() - started < 0.5


def test_checks_answered_from_the_cache_hand_the_loop_over_between_them(server):
    """A stage that cannot run long runs on the event loop; its checks answered from the
    cache, one after another, must still let other sessions run between them."""
    zone = '#{ zone: "bl.dnsbl.test", codes: ["127.0.0.2", "127.0.0.3", "127.0.0.4"] }'
    line = f"    dnsbl::check(#{{ ip: ip, zones: [{', '.join([zone] * 32)}], dns_resolver: global::R }});\n"
    source = (f'const R = dns::resolver(#{{ nameservers: ["127.0.0.1:{server.port}"] }});\n'
              f"fn checks(ip) {{\n{line * 60}    status::next()\n}}\n")
    script = new_engine().load_source(source, "many.vsl")
    assert ("checks", 1) in script.quick

    async def main():
        await script.call_async("checks", "192.0.2.7")  # fills the cache
        async with LoopGaps() as gaps:
            started = time.monotonic()
            await script.call_async("checks", "192.0.2.7")
            took = time.monotonic() - started
        return took, gaps.longest
    took, longest = asyncio.run(main())
    assert longest < took / 10, (took, longest)  # 60 checks: turns between them


def test_only_what_the_cache_lacks_is_asked(script, server):
    script.call("check", "192.0.2.8", [BL])
    server.reset()
    assert script.call("score", {"ip": "192.0.2.8", "zones": [BL, SECOND]})[:2] == ["listed", 2]
    assert asked(server, "A") == asked(server, "TXT") == ["8.2.0.192.second.dnsbl.test."]


# ---- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("fn, args, message", [
    ("check", ("not-an-ip", [BL]), "dnsbl::check: ip 'not-an-ip' is not an IP address"),
    ("check", ("fe80::1%", [BL]), "ip 'fe80::1%' is not an IP address"),
    ("check", ("192.0.2.7", []), "zones must be a non-empty array"),
    ("check", ("192.0.2.7", [{"zone": BL, "codes": ["127.0.0.2"] * 65}]),
     "codes has 65 codes: a zone lists at most 64"),
    ("check", ("192.0.2.7", [BL] * 33), "zones has 33 zones: a call asks at most 32"),
    ("check", ("192.0.2.7", ["bad zone"]), "zone 'bad zone' is not a DNS name"),
    ("check", ("192.0.2.7", [""]), "zone '' is not a DNS name"),
    ("check", ("192.0.2.7", ["a..b"]), "zone 'a..b' is not a DNS name"),
    ("check", ("192.0.2.7", ["x" * 64 + ".test"]), "is not a DNS name"),
    ("check", ("192.0.2.7", [".".join(["x" * 60] * 4) + ".test.example"]),
     "zone 'x+...' is over 253 bytes"),
    ("check", ("2001:db8::7", [".".join(["x" * 50] * 4)]),
     "zone 'x+...' is too long to look up 2001:db8::7 in: a query name is at most 253 bytes "
     "and the address's reversed form takes 64 of them"),
    ("check", ("192.0.2.7", [7]), "a zone map takes a map of options"),
    ("check", ("192.0.2.7", [{"zone": BL, "codes": ["127.0.0.x"]}]),
     "code '127.0.0.x' is not a list's answer"),
    ("check", ("192.0.2.7", [{"zone": BL, "codes": ["10.0.0.2"]}]), "not a list's answer"),
    ("check", ("192.0.2.7", [{"zone": BL, "codes": [{"x": 1}]}]),
     "a code must be a string such as '127.0.0.2', not map"),
    ("check", ("192.0.2.7", [{"zone": BL, "codes": ["127.255.255.254"]}]),
     "not a listing answer"),
    ("check", ("192.0.2.7", [{"zone": BL, "codes": ["127.0.0.1"]}]),
     r"code '127.0.0.1' is not a listing answer \(127.0.0.1 and 127.255.255.x are error"),
    ("check", ("192.0.2.7", [{"zone": BL, "errors": ["10.0.0.1"]}]),
     r"code '10.0.0.1' is not a list's answer \(an address in 127.0.0.0/8\)"),
    ("check", ("192.0.2.7", [{"zone": BL, "codes": ["127.0.1.255", "127.0.0.2"],
                              "errors": ["127.0.1.255"]}]),
     "zone 'bl.dnsbl.test': code '127.0.1.255' is in both its codes and its errors"),
    ("check", ("192.0.2.7", [{"zone": BL, "codes": []}]),
     r"zone 'bl.dnsbl.test': codes is empty \(without codes, every listing code counts\)"),
    ("check", ("192.0.2.7", [{"zone": BL, "weight": "2"}]), "option 'weight' must be"),
    ("check", ("192.0.2.7", [{"name": BL}]), "unknown option 'name'"),
    ("domain", (7, [DBL]), "option 'domain' must be a string"),
    ("score", ({"zones": [BL]},), "dnsbl::score: takes ip or domain"),
    ("score", ({"ip": "192.0.2.7", "domain": "a.test", "zones": [BL]},),
     "dnsbl::score: takes ip or domain"),
])
def test_bad_input_is_an_error_at_the_call(script, fn, args, message):
    with pytest.raises(ScriptError, match=message) as info:
        script.call(fn, *args)
    assert info.value.pos is not None and info.value.pos.file == "dnsbl.vsl"


def test_add_header_records_a_result_and_refuses_anything_else(script):
    assert script.call("tag", session(), "192.0.2.8") == \
        "listed 192.0.2.8 zone=bl.dnsbl.test codes=127.0.0.3"
    assert script.call("tag", session(), "127.0.0.1") == "pass 127.0.0.1"
    assert script.call("tag", session(), "::ffff:192.0.2.8%x\r\nBcc: a@b.example") == \
        "listed 192.0.2.8 zone=bl.dnsbl.test codes=127.0.0.3"  # the scope is dropped
    with pytest.raises(ScriptError, match="add_header takes a dnsbl:: result as its second "
                                          "argument, not string"):
        script.call("tag", session(), "")


# ---- a real server ------------------------------------------------------------------------

POLICY = """
const R = dns::resolver();
const ZONES = ["bl.dnsbl.test"];
fn on_connect(ctx) {
    let r = dnsbl::check(#{ ip: ctx.client_ip, zones: global::ZONES, dns_resolver: global::R });
    if r.listed { return status::deny(`554 5.7.1 ${r.reason}`); }
    status::next()
}
"""
TAGGING = """
const R = dns::resolver();
fn on_mail_from(ctx) {
    let r = dnsbl::score(#{ ip: ctx.client_ip, zones: [#{ zone: "bl.dnsbl.test", weight: 2 }],
                           dns_resolver: global::R });
    ctx.store("dnsbl", r);
    status::next()
}
fn on_pre_queue(ctx) {
    dnsbl::add_header(ctx, ctx.get("dnsbl"));
    status::next()
}
"""


def _config(tmp_path, dns_server, script: str):
    dns = DnsConfig(nameservers=(f"127.0.0.1:{dns_server.port}",), timeout=2)
    return config_for(tmp_path, script, dns=dns)


def test_a_listed_client_is_refused_with_the_zone_reason(server, tmp_path):
    with running(_config(tmp_path, server, POLICY)) as smtp_server:
        listed = Raw(smtp_server, source="127.0.0.2")
        assert listed.greeting == (554, b"5.7.1 Listed: the RFC 5782 test entry")
        clean = Raw(smtp_server, source="127.0.0.1")
        assert clean.greeting[0] == 220


def test_a_tagging_policy_records_the_listing_in_x_dnsbl(server, tmp_path):
    with running(_config(tmp_path, server, TAGGING)) as smtp_server:
        smtp = Raw(smtp_server, source="127.0.0.2")
        for line in ("EHLO client.test", "MAIL FROM:<a@client.test>",
                     "RCPT TO:<bob@example.test>", "DATA"):
            assert smtp.cmd(line)[0] in (250, 354)
        assert smtp.cmd("Subject: hi\r\n\r\nhello\r\n.")[0] == 250
        assert wait_for(lambda: asyncio.run(smtp_server.spool.list()), 5)
        [entry] = asyncio.run(smtp_server.spool.list())
        message = asyncio.run(smtp_server.spool.message(entry.id))
    assert message.replace(b"\r\n ", b" ").startswith(
        b"X-DNSBL: listed 127.0.0.2 zone=bl.dnsbl.test codes=127.0.0.2 score=2 "
        b"(Listed: the RFC 5782 test entry)\r\n")


def documented_policy() -> str:
    page = (Path(__file__).parent.parent / "docs" / "anti-abuse.md").read_text()
    return page.split("```rust\n", 1)[1].split("```", 1)[0]


def test_the_documented_policy_lints_clean():
    assert Linter(new_engine(), entry_points()).lint_source(documented_policy(), "doc.vsl",
                                                            None) == []


@pytest.mark.parametrize("helo, code", [
    ("client.example", 250), ("[127.0.0.1]", 250), ("[IPv6:::1]", 250), ("192.0.2.1", 250),
    ("localhost", 250), ("spammer.example", 550)])
def test_the_documented_policy_refuses_only_a_listed_helo(server, tmp_path, helo, code):
    policy = documented_policy().replace('"dbl.example"', f'"{DBL}"')
    with running(_config(tmp_path, server, policy)) as smtp_server:
        assert Raw(smtp_server, source="127.0.0.1").cmd(f"EHLO {helo}")[0] == code
