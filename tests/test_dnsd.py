"""Tests of the test DNS server, queried over the network with dnspython."""

import socket
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from vsl.server.dnsd import DnsServer, ZoneError

HOST = "127.0.0.1"
ZONE = Path(__file__).parent / "zones" / "example.test.zone"


@pytest.fixture
def resolver(server):
    """A stub resolver that asks only the test server."""
    stub = dns.resolver.Resolver(configure=False)
    stub.nameservers = [HOST]
    stub.port = server.port
    stub.lifetime = 2.0
    return stub


def ask(server, name, rdtype="A", tcp=False, **query_options):
    """Send one query over UDP (or TCP) and return the response as received."""
    query = dns.message.make_query(name, rdtype, **query_options)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, HOST, port=server.port, timeout=2.0)


def texts(answer):
    return {rdata.to_text() for rdata in answer}


def test_records_are_answered_authoritatively(resolver):
    answer = resolver.resolve("mail.example.test", "A")
    assert answer.response.flags & dns.flags.AA
    assert texts(answer) == {"192.0.2.7"}
    assert texts(resolver.resolve("mail.example.test", "AAAA")) == {"2001:db8::7"}
    assert texts(resolver.resolve("example.test", "MX")) == {"10 mail.example.test."}
    assert texts(resolver.resolve("example.test", "TXT")) == {
        '"v=spf1 ip4:192.0.2.0/24 -all"'
    }


@pytest.mark.parametrize(
    "address, name, confirmed",
    [
        ("192.0.2.7", "mail.example.test.", True),
        ("2001:db8::7", "mail.example.test.", True),
        ("192.0.2.8", "forged.example.test.", False),
        ("192.0.2.9", "ghost.example.test.", False),
    ],
)
def test_reverse_zones(resolver, address, name, confirmed):
    (ptr,) = resolver.resolve_address(address)
    assert ptr.target.to_text() == name
    rdtype = "AAAA" if ":" in address else "A"
    try:
        forward = texts(resolver.resolve(ptr.target, rdtype))
    except dns.resolver.NXDOMAIN:
        forward = set()
    assert (address in forward) is confirmed


def test_cname_chain_is_chased_within_served_zones(server, resolver):
    answer = resolver.resolve("relay.example.test", "A")
    assert answer.canonical_name.to_text() == "mail.example.test."
    assert texts(answer) == {"192.0.2.7"}
    assert len(answer.response.answer) == 3  # relay -> smtp -> mail A
    assert server.queries == [("relay.example.test.", "A", "udp")]


def test_cname_out_of_served_zones_is_left_to_the_client(server):
    response = ask(server, "external.example.test")
    assert response.rcode() == dns.rcode.NOERROR
    assert [texts(rrset) for rrset in response.answer] == [{"host.elsewhere.test."}]


def test_cname_loop_is_servfail(server):
    response = ask(server, "loop-a.example.test")
    assert response.rcode() == dns.rcode.SERVFAIL
    assert response.answer == []


def test_wildcard_synthesises_the_queried_name(resolver):
    answer = resolver.resolve("anything.deep.wild.example.test", "TXT")
    assert answer.rrset.name.to_text() == "anything.deep.wild.example.test."
    assert texts(answer) == {'"wildcard"'}
    assert texts(resolver.resolve("real.wild.example.test", "A")) == {"203.0.113.10"}


@pytest.mark.parametrize(
    "name, rdtype, rcode, zone",
    [
        ("nothing.example.test", "A", dns.rcode.NXDOMAIN, "example.test."),
        ("mail.example.test", "MX", dns.rcode.NOERROR, "example.test."),
        ("ent.example.test", "A", dns.rcode.NOERROR, "example.test."),
        ("wild.example.test", "A", dns.rcode.NOERROR, "example.test."),
        ("real.wild.example.test", "TXT", dns.rcode.NOERROR, "example.test."),
        ("below.real.wild.example.test", "A", dns.rcode.NXDOMAIN, "example.test."),
        ("1.2.0.192.in-addr.arpa", "PTR", dns.rcode.NXDOMAIN, "2.0.192.in-addr.arpa."),
    ],
)
def test_negative_answers_carry_the_zone_soa(server, name, rdtype, rcode, zone):
    response = ask(server, name, rdtype)
    assert response.rcode() == rcode
    assert response.flags & dns.flags.AA
    assert response.answer == []
    (soa,) = response.authority
    assert (soa.name.to_text(), soa.rdtype) == (zone, dns.rdatatype.SOA)


@pytest.mark.parametrize("name", ["example.com", "test", "other.test"])
def test_names_outside_served_zones_do_not_exist(server, name):
    response = ask(server, name)
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA
    (soa,) = response.authority
    assert (soa.name, soa.rdtype) == (dns.name.root, dns.rdatatype.SOA)


def test_an_unknown_domain_and_a_missing_ptr_are_nxdomain(resolver):
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("no-such-domain.example", "MX")
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve_address("203.0.113.200")


def test_large_answer_is_truncated_over_udp_and_whole_over_tcp(server, resolver):
    truncated = ask(server, "big.example.test", "TXT")
    assert truncated.flags & dns.flags.TC
    assert len(truncated.to_wire()) <= 512
    assert len(ask(server, "big.example.test", "TXT", tcp=True).answer[0]) == 20
    with_edns = ask(server, "big.example.test", "TXT", use_edns=0, payload=4096)
    assert not with_edns.flags & dns.flags.TC
    assert len(with_edns.answer[0]) == 20

    server.reset()
    assert len(resolver.resolve("big.example.test", "TXT")) == 20
    assert [transport for *_, transport in server.queries] == ["udp", "tcp"]


def test_servfail_injection(server, resolver):
    server.servfail("mail.example.test")
    assert ask(server, "mail.example.test").rcode() == dns.rcode.SERVFAIL
    with pytest.raises(dns.resolver.NoNameservers):
        resolver.resolve("mail.example.test", "A")


def test_drop_makes_queries_time_out(server, resolver):
    server.drop("mail.example.test")
    resolver.lifetime = 0.5
    with pytest.raises(dns.resolver.LifetimeTimeout):
        resolver.resolve("mail.example.test", "A")
    assert ("mail.example.test.", "A", "udp") in server.queries


def test_truncate_always_fails_over_both_transports(server, resolver):
    server.truncate_always("mail.example.test")
    assert ask(server, "mail.example.test").flags & dns.flags.TC
    with pytest.raises(EOFError):
        ask(server, "mail.example.test", tcp=True)
    with pytest.raises(dns.resolver.NoNameservers):
        resolver.resolve("mail.example.test", "A")


def test_query_log_shows_a_cache_hit(server, resolver):
    resolver.cache = dns.resolver.Cache()
    resolver.resolve("mail.example.test", "A")
    resolver.resolve("mail.example.test", "A")
    assert server.queries == [("mail.example.test.", "A", "udp")]


def test_bad_packets_get_formerr_or_notimp(server):
    def raw(wire):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2.0)
            sock.sendto(wire, (HOST, server.port))
            return dns.message.from_wire(sock.recv(4096))

    garbage = raw(b"\x12\x34\x00\x00" + b"\xff" * 28)
    assert (garbage.id, garbage.rcode()) == (0x1234, dns.rcode.FORMERR)
    no_question = dns.message.Message(id=7)
    assert raw(no_question.to_wire()).rcode() == dns.rcode.FORMERR
    notify = dns.message.make_query("example.test", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert raw(notify.to_wire()).rcode() == dns.rcode.NOTIMP


def test_garbage_does_not_kill_the_server(server):
    query = dns.message.make_query("mail.example.test", "A").to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for wire in (b"", b"\x00", query[:-3], b"\x00\x01\x80" + bytes(20)):
            udp.sendto(wire, (HOST, server.port))
    for stream in (b"\x00", b"\x00\x05abc", b"\x00\x03abc\x00\x10" + query):
        with socket.create_connection((HOST, server.port), timeout=2.0) as tcp:
            tcp.sendall(stream)
    assert ask(server, "mail.example.test").answer
    assert ask(server, "mail.example.test", tcp=True).answer


def test_restarts_on_the_same_port():
    with DnsServer([ZONE]) as first:
        port = first.port
        assert ask(first, "mail.example.test", tcp=True).answer
    with DnsServer([ZONE], port=port) as second:
        assert ask(second, "mail.example.test").answer


def test_a_zone_needs_no_soa_or_ns(tmp_path):
    zone = tmp_path / "bare.zone"
    zone.write_text("$ORIGIN bare.test.\n$TTL 300\nmail A 192.0.2.5\n")
    with DnsServer([zone]) as bare:
        assert texts(ask(bare, "mail.bare.test").answer[0]) == {"192.0.2.5"}
        missing = ask(bare, "none.bare.test")
        assert missing.rcode() == dns.rcode.NXDOMAIN
        assert missing.authority[0].name.to_text() == "bare.test."
        assert ask(bare, "bare.test", "NS").answer


@pytest.mark.parametrize("text, message", [
    (None, r"missing.zone: cannot read: No such file or directory"),
    ("mail 300 A 192.0.2.5\n", r"bad.zone: no \$ORIGIN line"),
    ("$ORIGIN bad.test.\nmail A 192.0.2.5\n", r"bad.zone:2: .*TTL.* \(write '\$TTL 300'"),
    ("$ORIGIN bad.test.\n$TTL 300\nmail A 192.0.2.500\nok A 192.0.2.1\n",
     r"bad.zone:3: Text input is malformed"),
    ("$ORIGIN bad.test.\n$TTL 300\n; a comment\n\nmail MX 10\nok A 192.0.2.1\n",
     r"bad.zone:5: expecting an identifier"),
])
def test_a_bad_zone_file_is_reported_by_file_and_line(tmp_path, text, message):
    path = tmp_path / ("missing.zone" if text is None else "bad.zone")
    if text is not None:
        path.write_text(text)
    with pytest.raises(ZoneError, match=message):
        DnsServer([path])
