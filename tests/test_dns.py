"""dns:: natives against the real test DNS server (tests/zones), through scripts."""
from __future__ import annotations

import asyncio
import gc
import time

import dns.asyncresolver
import pytest

from vsl.stdlib import new_engine
from vsl.stdlib.dns import DnsDefaults, parse_nameserver
from vsl.engine import Engine
from vsl.errors import ScriptError, VslError
from vsl.limits import Limits

SCRIPT = """
const R = dns::resolver(#{{ nameservers: ["127.0.0.1:{port}"], timeout: 0.5 }});
fn ips(name) {{ global::R.lookup(name) }}
fn records(name, type) {{ dns::lookup(#{{ dns_resolver: global::R, name: name, type: type }}) }}
fn names(ip) {{ dns::rlookup(#{{ dns_resolver: global::R, ip: ip }}) }}
fn guarded(name) {{
    let out = ();
    try {{ out = global::R.lookup(name); }} catch (err) {{ out = `error: ${{err}}`; }}
    out
}}
"""


@pytest.fixture
def script(dns_server):
    dns_server.reset()
    return new_engine().load_source(SCRIPT.format(port=dns_server.port), "dns.vsl")


def sent(script) -> int:
    return script.constants["R"].sent


def test_addresses_a_then_aaaa(script):
    assert script.call("ips", "mail.example.test") == ["192.0.2.7", "2001:db8::7"]


@pytest.mark.parametrize("name, rtype, expected", [
    ("example.test", "MX", ["10 mail.example.test"]),
    ("example.test", "txt", ["v=spf1 ip4:192.0.2.0/24 -all"]),
    ("relay.example.test", "A", ["192.0.2.7"]),          # CNAME chain followed
    ("x.wild.example.test", "A", ["203.0.113.9"]),       # wildcard
    ("nope.example.test", "A", []),                      # NXDOMAIN: empty
    ("mail.example.test", "MX", []),                     # NODATA: empty
    ("ent.example.test", "A", []),                       # empty non-terminal
])
def test_records(script, name, rtype, expected):
    assert script.call("records", name, rtype) == expected


def test_reverse(script):
    assert script.call("names", "192.0.2.7") == ["mail.example.test"]
    assert script.call("names", "2001:db8::7") == ["mail.example.test"]


def test_truncated_answer_is_retried_over_tcp(script, dns_server):
    assert len(script.call("records", "big.example.test", "TXT")) == 20
    transports = {t for name, _, t in dns_server.queries if name == "big.example.test."}
    assert transports == {"udp", "tcp"}


@pytest.mark.parametrize("fault", ["servfail", "drop"])
def test_failures_are_catchable_errors(script, dns_server, fault):
    getattr(dns_server, fault)("bad.example.test.")
    out = script.call("guarded", "bad.example.test")
    assert out.startswith("error: DNS temporary failure")
    assert ("timed out" in out) == (fault == "drop")


def test_cache_answers_repeated_lookups(script, dns_server):
    script.call("ips", "mail.example.test")
    before = sent(script), len(dns_server.queries)
    for _ in range(50):
        script.call("ips", "mail.example.test")
    assert (sent(script), len(dns_server.queries)) == before


def test_the_spellings_of_a_name_share_one_cache_entry(script):
    assert script.call("records", "mail.example.test", "A") == ["192.0.2.7"]
    for name, rtype in (("MAIL.Example.TEST", "a"), ("mail.example.test.", "A")):
        assert script.call("records", name, rtype) == ["192.0.2.7"]
    assert sent(script) == 1


def test_a_cached_answer_is_given_without_waiting(script):
    """A cache hit completes the script call in its first step: no task, no turn of an
    event loop (none runs here); Resolver.cached tells what the cache holds."""
    script.call("records", "mail.example.test", "A")
    call = script.call_async("records", "mail.example.test", "A")
    with pytest.raises(StopIteration) as done:
        call.send(None)
    assert done.value.value == ["192.0.2.7"]
    resolver = script.constants["R"]
    assert [r.address for r in resolver.cached("Mail.example.test.", "A")] == ["192.0.2.7"]
    assert resolver.cached("mail.example.test", "AAAA") is None


def test_negative_answers_are_cached(script, dns_server):
    script.call("ips", "nope.example.test")
    before = len(dns_server.queries)
    script.call("ips", "nope.example.test")
    assert len(dns_server.queries) == before


def test_cache_honours_the_ttl(script, dns_server):
    assert script.call("records", "short.example.test", "A") == ["192.0.2.77"]
    script.call("records", "short.example.test", "A")
    assert sent(script) == 1
    time.sleep(1.1)
    script.call("records", "short.example.test", "A")
    assert sent(script) == 2


def test_concurrent_lookups_share_one_query(script, dns_server):
    async def flood():
        return await asyncio.gather(*(script.call_async("ips", "smtp.example.test")
                                      for _ in range(100)))
    results = asyncio.run(flood())
    assert all(r == ["192.0.2.7", "2001:db8::7"] for r in results)
    assert sent(script) == 2  # one A and one AAAA query for the whole flood


def test_lookups_do_not_block_the_event_loop(script, dns_server):
    dns_server.drop("slow.example.test.")

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.ensure_future(ticker())
        await script.call_async("guarded", "slow.example.test")
        task.cancel()
        return ticks

    assert asyncio.run(main()) >= 20  # the loop kept running during the 0.5 s timeout


def test_cache_can_be_disabled(dns_server):
    source = SCRIPT.format(port=dns_server.port).replace("timeout: 0.5", "cache: false")
    script = new_engine().load_source(source, "nocache.vsl")
    script.call("ips", "mail.example.test")
    script.call("ips", "mail.example.test")
    assert sent(script) == 4


@pytest.mark.parametrize("options, message", [
    ('#{ nameservers: ["example.test"] }', "not an IP address"),
    ('#{ nameservers: ["127.0.0.1:99999"] }', "bad port"),
    ('#{ nameservers: [53] }', "must be strings"),
    ('#{ config: "opendns" }', "unknown config 'opendns'"),
    ('#{ timeout: 0 }', "timeout must be between"),
    ('#{ timeout: "5" }', "option 'timeout' must be"),
    ('#{ cach: true }', "unknown option 'cach'"),
])
def test_bad_resolver_options(options, message):
    with pytest.raises(ScriptError, match=message):
        new_engine().load_source(f"dns::resolver({options})", "opts.vsl")


@pytest.mark.parametrize("call, message", [
    ('global::R.lookup("a..b")', "not a valid DNS name"),
    ('global::R.lookup("example.test", "BOGUS")', "unknown DNS record type"),
    ('global::R.rlookup("300.1.1.1")', "not an IP address"),
    ('dns::lookup(#{ name: "x" })', "option 'dns_resolver' is required"),
    ('dns::lookup(#{ dns_resolver: 1, name: "x" })', "option 'dns_resolver' must be"),
])
def test_bad_lookups_are_script_errors(call, message):
    source = 'const R = dns::resolver(#{ nameservers: ["127.0.0.1:9"] });\nfn f() { ' + call + " }"
    with pytest.raises(ScriptError, match=message):
        new_engine().load_source(source, "bad.vsl").call("f")


def test_public_configs_build_without_network():
    for config in ("google", "cloudflare_tls", "quad9"):
        script = new_engine().load_source(f'const R = dns::resolver(#{{ config: "{config}" }});',
                                          "public.vsl")
        assert "dns_resolver(" in script.constants["R"].vsl_display()


def engine_with(**defaults) -> Engine:
    """An engine whose dns::resolver() fills in these [dns] defaults."""
    return new_engine(dns_defaults=DnsDefaults(**defaults))


def nameserver_of(resolver) -> str:
    (server,) = resolver._resolver.nameservers
    return f"{server.address}:{server.port}"


def test_each_engine_has_its_own_dns_defaults(dns_server):
    served = f"127.0.0.1:{dns_server.port}"
    source = 'const R = dns::resolver();\nfn make() { dns::resolver() }\n' \
             'fn ips() { dns::resolver().lookup("mail.example.test") }'
    first = engine_with(nameservers=(served,), timeout=1.5).load_source(source, "a.vsl")
    second = engine_with(nameservers=("127.0.0.1:9",), timeout=2.5).load_source(source, "b.vsl")
    built_in = new_engine().load_source(source, "c.vsl")  # made last, with no defaults given
    for script, server, timeout in ((first, served, 1.5), (second, "127.0.0.1:9", 2.5)):
        for resolver in (script.constants["R"], script.call("make")):
            assert nameserver_of(resolver) == server and resolver._resolver.lifetime == timeout
    assert first.call("ips") == ["192.0.2.7", "2001:db8::7"]  # answered by the first engine's servers
    resolver = built_in.call("make")
    assert resolver._resolver.lifetime == 5.0
    assert str(resolver._resolver.nameservers) == str(dns.asyncresolver.Resolver().nameservers)


def test_forced_dns_defaults_override_the_script(dns_server):
    served = f"127.0.0.1:{dns_server.port}"
    script = engine_with(nameservers=(served,), forced=True).load_source(
        'const R = dns::resolver(#{ nameservers: ["127.0.0.1:9"] });', "forced.vsl")
    assert nameserver_of(script.constants["R"]) == served


def test_nameserver_forms():
    assert (parse_nameserver("192.0.2.1").port, parse_nameserver("192.0.2.1:5353").port) == \
        (53, 5353)
    assert parse_nameserver("[2001:db8::1]:5353").address == "2001:db8::1"
    assert parse_nameserver("2001:db8::1").port == 53


def test_lint_knows_dns_signatures(tmp_path):
    from vsl.lint import Linter

    path = tmp_path / "p.vsl"
    path.write_text('fn f() { dns::lookup(1, 2) }\nfn g() { dns::lookpu(#{}) }\n')
    found = [str(d) for d in Linter(new_engine()).lint_file(path)]
    assert any("[arity]" in f for f in found) and any("did you mean 'lookup'" in f for f in found)


def test_script_cannot_see_the_python_resolver(script):
    with pytest.raises(VslError, match="has no property"):
        new_engine().load_source("let r = dns::resolver(#{ config: \"google\" }); r._resolver",
                                 "leak.vsl")


SILENT = """
const R = dns::resolver(#{{ nameservers: ["127.0.0.1:{port}"], timeout: {timeout} }});
fn lookup(name) {{ dns::lookup(#{{ dns_resolver: global::R, name: name, type: "A" }}) }}
fn guarded(name) {{
    let out = ();
    try {{ out = lookup(name); }} catch (err) {{ out = `caught: ${{err}}`; }}
    out
}}
fn iprev(ip) {{ iprev::check(#{{ ip: ip, dns_resolver: global::R }}).value }}
fn spf(helo) {{
    spf::check_host(#{{ ip: "192.0.2.7", helo: helo, dns_resolver: global::R }}).value
}}
"""


@pytest.fixture
def silent(dns_server):
    """A script whose resolver waits as long as max_time (1 s) on a server that does not
    answer (the defaults: 5 s and 5 s)."""
    dns_server.reset()
    for name in ("silent.example.test.", "7.2.0.192.in-addr.arpa."):
        dns_server.drop(name)
    yield new_engine(Limits(max_time=1.0)).load_source(
        SILENT.format(port=dns_server.port, timeout=1.0), "silent.vsl")
    dns_server.reset()


def _timed(fn, *args):
    start = time.monotonic()
    return fn(*args), time.monotonic() - start


@pytest.mark.parametrize("fn, arg", [("iprev", "192.0.2.7"), ("spf", "silent.example.test")])
def test_silent_dns_is_temperror_within_the_time_limit(silent, fn, arg):
    value, took = _timed(silent.call, fn, arg)
    assert value == "temperror"
    assert took < 1.0


def test_silent_dns_is_a_catchable_error_within_the_time_limit(silent):
    out, took = _timed(silent.call, "guarded", "silent.example.test")
    assert out.startswith("caught: DNS temporary failure for silent.example.test. A: timed out")
    assert took < 1.0
    with pytest.raises(ScriptError, match="DNS temporary failure") as info:
        silent.call("lookup", "silent.example.test")
    assert (info.value.pos.line, info.value.pos.col) == (3, 19)


def test_a_look_up_given_up_at_the_deadline_logs_nothing(silent, caplog):
    """The shared query still ends (its resolver timeout) after every caller stopped
    waiting: its error is not left for asyncio to log as never retrieved."""
    async def main():
        assert (await silent.call_async("guarded", "silent.example.test")).startswith("caught")
        await asyncio.sleep(0.6)  # the query's own 1 s timeout has passed
        gc.collect()
    asyncio.run(main())
    assert "never retrieved" not in caplog.text
