"""Delivery against hostile domains: MX hosts and addresses capped per attempt (Postfix's
smtp_mx_address_limit and smtp_mx_session_limit), one attempt bounded in time; a DNS
cache bounded by bytes against large answers; Maildir and mbox paths built from hostile
local parts ("../../etc"@example.test) confined below their root.

A domain with 300 MX hosts of 20 addresses each is served by the real test DNS server;
every address is on loopback (127.0.0.2 to 127.0.0.21), where counting mail servers
listen on one port."""
from __future__ import annotations

import asyncio
import gc
import os
import random
import smtplib
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest

from vsl.server.config import DeliveryConfig, DnsConfig
from vsl.server.dnsd import DnsServer
from vsl.server.dsn import build_dsn
from vsl.server.envelope import Envelope, RecipientState
from vsl.server.transports import Outcome, Transports
from vsl.stdlib import dns as dns_natives
from vsl.stdlib.dns import Resolver, parse_nameserver
from vsl.stdlib.transport import Route, parse_route
from vsl.errors import ScriptError
from tests.support.mailsink import MESSAGE, Sink, free_port
from tests.support.servers import config_for, running
from tests.support.smtp_tools import wait_for

ADDRESSES = [f"127.0.0.{n}" for n in range(2, 22)]
HOSTILE = {
    "many.hostile.test.": [("MX", f"10 mx{i}.hosts.hostile.test.") for i in range(300)],
    "*.hosts.hostile.test.": [("A", address) for address in ADDRESSES],
    "nowhere.hostile.test.": [("MX", f"10 mx{i}.nowhere.hostile.test.") for i in range(300)],
    "*.big.hostile.test.": [("TXT", ["x" * 250] * 248)],  # 62 KB answers
    # A live MX behind ten stale ones; and one behind a refusing host and nine stale ones.
    "stale.hostile.test.": [*((("MX", f"{i} gone{i}.hostile.test.") for i in range(10))),
                            ("MX", "99 live.hostile.test.")],
    "mixed.hostile.test.": [("MX", "0 refusing.hostile.test."), ("MX", "99 live.hostile.test."),
                            *((("MX", f"{i} gone{i}.hostile.test.") for i in range(1, 10)))],
    # Thirty MX hosts of equal preference, one of them live.
    "equal.hostile.test.": [*((("MX", f"10 gone{i}.hostile.test.") for i in range(29))),
                            ("MX", "10 live.hostile.test.")],
    "live.hostile.test.": [("A", "127.0.0.1")],
    "refusing.hostile.test.": [("A", "127.0.0.2")],  # nothing listens on the sink's port
}
CONFIG = DeliveryConfig(connect_timeout=2, command_timeout=2, idle_timeout=0)


@pytest.fixture(scope="module")
def hostile_dns():
    with DnsServer.from_records(HOSTILE) as server:
        yield server


class CountingMta:
    """A mail server on every address of ADDRESSES, one port: counts connections and
    sessions (MAIL commands). ``greeting`` None: never says anything; else its greeting,
    and every MAIL gets 451."""

    def __init__(self, greeting: str | None = "220 mta.test ESMTP"):
        self.greeting = greeting
        self.connections = self.sessions = 0
        self.servers: list[asyncio.base_events.Server] = []
        self.clients: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self.port = free_port()

    async def __aenter__(self) -> "CountingMta":
        for address in ADDRESSES:
            self.servers.append(await asyncio.start_server(self._client, address, self.port))
        return self

    async def __aexit__(self, *exc) -> None:
        for server in self.servers:
            server.close()
        for writer in self.clients.values():
            writer.close()  # the clients' read ends: they return
        if self.clients:
            await asyncio.wait(self.clients)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.connections += 1
        self.clients[asyncio.current_task()] = writer
        try:
            await self._converse(reader, writer)
        except ConnectionError:
            pass
        writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        if self.greeting is None:
            await reader.read()
            return
        writer.write(f"{self.greeting}\r\n".encode())
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"MAIL":
                self.sessions += 1
            writer.write({b"MAIL": b"451 4.3.0 busy\r\n",
                          b"QUIT": b"221 2.0.0 bye\r\n"}.get(verb, b"250 ok\r\n"))


def resolver_for(dns: DnsServer, **options) -> Resolver:
    return Resolver([parse_nameserver(f"127.0.0.1:{dns.port}")], timeout=2, **options)


def attempt(dns: DnsServer, mta: CountingMta, rcpt: str = "bob@many.hostile.test",
            resolver: Resolver | None = None, **limits):
    """One MX delivery attempt to ``rcpt``: (outcome, seconds)."""
    config = replace(CONFIG, mx_port=mta.port, **limits)
    resolver = resolver or resolver_for(dns)

    async def main():
        transports = Transports(config, "out.test", resolver)
        start = time.monotonic()
        try:
            async with mta:
                outcomes = await transports.deliver(Route("mx"), "alice@example.org",
                                                    [rcpt], MESSAGE)
        finally:
            await transports.close()
        return outcomes[rcpt], time.monotonic() - start

    return asyncio.run(main())


def test_one_attempt_tries_at_most_the_address_limit(hostile_dns):
    mta = CountingMta(greeting="421 4.3.2 not now")  # no session: the next address
    outcome, _ = attempt(hostile_dns, mta)
    assert mta.connections == 5  # smtp_mx_address_limit, not 300 x 20
    assert outcome.status == "deferred" and outcome.reply.startswith("451 4.4.1 ")


def test_a_smaller_address_limit_holds_exactly(hostile_dns):
    mta = CountingMta(greeting="421 4.3.2 not now")
    attempt(hostile_dns, mta, mx_address_limit=3)
    assert mta.connections == 3


def test_sessions_that_defer_go_to_the_next_host_up_to_the_session_limit(hostile_dns):
    mta = CountingMta()  # a session, then 451 to MAIL
    outcome, _ = attempt(hostile_dns, mta)
    assert (mta.connections, mta.sessions) == (2, 2)  # smtp_mx_session_limit
    assert outcome.status == "deferred" and outcome.reply == "451 4.3.0 busy"


@pytest.mark.parametrize("limits, hosts", [({}, 10), ({"mx_host_limit": 4}, 4)])
def test_mail_exchangers_without_addresses_cost_at_most_the_host_limit(hostile_dns, limits,
                                                                       hosts):
    """300 MX hosts, none with an address: each host looked up costs two queries (A and
    AAAA); without a cap on hosts, one attempt sent 601 queries. The hosts left unlooked
    up might have had one: the mail waits, it does not bounce."""
    resolver = resolver_for(hostile_dns)
    outcome, _ = attempt(hostile_dns, CountingMta(), "bob@nowhere.hostile.test", resolver,
                         **limits)
    assert resolver.sent == 1 + 2 * hosts  # the MX query, then A and AAAA of each host
    assert outcome == Outcome("deferred", (
        f"451 4.4.4 none of the first {hosts} mail exchangers of nowhere.hostile.test has "
        f"an address; {300 - hosts} more not looked up (delivery.mx_host_limit)"))


def sink_attempt(dns: DnsServer, domain: str, **limits) -> tuple[Outcome, int]:
    """One MX delivery attempt to bob@``domain``, every address on the port of a sink
    that accepts: (outcome, the sink's connections)."""
    async def main():
        async with Sink() as sink:
            transports = Transports(replace(CONFIG, mx_port=sink.port, **limits), "out.test",
                                    resolver_for(dns))
            try:
                outcomes = await transports.deliver(Route("mx"), "alice@example.org",
                                                    [f"bob@{domain}"], MESSAGE)
            finally:
                await transports.close()
        return outcomes[f"bob@{domain}"], sink.connections

    return asyncio.run(main())


def test_stale_better_mail_exchangers_never_bounce_the_mail(hostile_dns):
    """Ten MX hosts without an address (preference 0 to 9) before a live one (99): before
    the host cap the live one got the mail; with it, the attempt bounced (550 5.4.4) with
    no connection made. The cut leaves hosts unknown: the mail waits."""
    outcome, connections = sink_attempt(hostile_dns, "stale.hostile.test")
    assert outcome.status == "deferred" and outcome.reply.startswith("451 4.4.4 ")
    assert connections == 0
    outcome, _ = sink_attempt(hostile_dns, "stale.hostile.test", mx_host_limit=11)
    assert (outcome.status, outcome.remote_mta) == ("delivered", "live.hostile.test")


def test_only_hosts_without_an_address_count_against_the_host_limit(hostile_dns):
    """A host with an address (that refuses connections) and nine without one come before
    the live host: ten hosts, but only nine without an address, so the live one is
    reached (the cut at ten hosts deferred the mail)."""
    outcome, connections = sink_attempt(hostile_dns, "mixed.hostile.test")
    assert (outcome.status, outcome.remote_mta) == ("delivered", "live.hostile.test")
    assert connections == 1


def test_many_equal_mail_exchangers_some_stale_never_bounce(hostile_dns):
    """Thirty MX hosts of one preference, shuffled before the cut, 29 without an address:
    whichever ten come first, the mail is delivered or waits, never bounced."""
    outcomes = []
    for seed in range(12):
        random.seed(seed)
        outcomes.append(sink_attempt(hostile_dns, "equal.hostile.test")[0].status)
    assert "failed" not in outcomes and "delivered" in outcomes, outcomes


def test_one_attempt_is_bounded_in_time(hostile_dns):
    mta = CountingMta(greeting=None)  # every address hangs until connect_timeout
    outcome, seconds = attempt(hostile_dns, mta, connect_timeout=10, mx_attempt_timeout=1)
    assert outcome.status == "deferred"
    assert outcome.reply == ("451 4.4.2 delivery to many.hostile.test took longer than "
                             "1 s (delivery.mx_attempt_timeout)")
    assert seconds < 5  # not even one connect_timeout


# ---- the DNS cache, bounded by bytes --------------------------------------------------------

def big_answers(resolver: Resolver, names: range) -> list[int]:
    """Look up the 62 KB TXT of d<n>.big.hostile.test for each n: the cache's bytes after
    each look-up."""
    async def main():
        sizes = []
        for n in names:
            await resolver.query(f"d{n}.big.hostile.test", "TXT")
            sizes.append(resolver.cached_bytes)
        return sizes

    return asyncio.run(main())


def traced() -> int:
    """The memory tracemalloc sees in use, cyclic garbage collected first."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_the_dns_cache_stays_under_its_bytes(hostile_dns):
    """By its own accounting, and in memory: once full, 30 more answers of 62 KB (2.2 MB
    in a cache bounded by entries only) leave it no bigger."""
    resolver = resolver_for(hostile_dns, cache_bytes=500_000)
    tracemalloc.start()
    try:
        sizes = big_answers(resolver, range(30))
        full = traced()
        sizes += big_answers(resolver, range(30, 60))
        grown = traced() - full
    finally:
        tracemalloc.stop()
    assert max(sizes) <= 500_000 and sizes[-1] > 400_000
    assert grown < 500_000, grown  # 2.2 MB without the bound
    sent = resolver.sent
    big_answers(resolver, range(59, 60))  # the latest answers are still cached
    assert resolver.sent == sent


def test_an_answer_larger_than_the_whole_cache_is_not_kept(hostile_dns):
    resolver = resolver_for(hostile_dns, cache_bytes=50_000)
    assert big_answers(resolver, range(1)) == [0]


def test_dns_cache_bytes_reaches_the_scripts_resolvers(hostile_dns):
    config = DnsConfig(nameservers=(f"127.0.0.1:{hostile_dns.port}",), cache_bytes=50_000)
    namespace = dns_natives.namespace_for(config.resolver_defaults())
    resolver = namespace.functions["resolver"].func()
    assert big_answers(resolver, range(1)) == [0]
    assert big_answers(resolver_for(hostile_dns), range(1))[0] > 62_000  # 4 MiB default


# ---- local paths from hostile local parts ---------------------------------------------------

BOXES = """
fn on_rcpt_to(ctx) {
    if ctx.rcpt.domain == "example.test" {
        transport::maildir(ctx, "ROOT/boxes/" + ctx.rcpt.local_part);
    } else if ctx.rcpt.domain == "mbox.test" {
        transport::mbox(ctx, "ROOT/boxes/" + ctx.rcpt.local_part);
    }
    status::next()
}
"""
HOSTILE_RCPTS = ['"../../escaped here"@example.test', '"a/../../../escaped,too"@example.test',
                 '"x\\"/../../../escaped"@example.test', '"../../escaped mbox"@mbox.test',
                 '""@mbox.test', '"/"@mbox.test', '""@example.test']  # the root itself
BENIGN_RCPTS = ['"a/b"@example.test', 'bob@mbox.test', '"../../escaped here"@mx.test']


def files_under(path: Path) -> set[str]:
    return {str(Path(d, f).relative_to(path)) for d, _, names in os.walk(path) for f in names}


def test_hostile_local_parts_write_nothing_outside_the_root(tmp_path):
    """Real SMTP, then delivery: a script's maildir/mbox route built from the local part,
    and the default route of a local domain (mx.test)."""
    root = tmp_path / "root"
    root.mkdir()
    config = config_for(root, BOXES.replace("ROOT", str(root)),
                        local_domains=("mx.test", "example.test", "mbox.test"),
                        delivery=DeliveryConfig(poll_interval=0.02))
    with running(config) as server:
        with smtplib.SMTP("127.0.0.1", server.port(), timeout=10) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("alice@example.org")
            refused = {r: smtp.docmd(f"RCPT TO:<{r}>")[0] for r in HOSTILE_RCPTS}
            accepted = {r: smtp.docmd(f"RCPT TO:<{r}>")[0] for r in BENIGN_RCPTS}
            assert smtp.data(MESSAGE)[0] == 250
        assert wait_for(lambda: not asyncio.run(server.spool.list()))
    assert os.listdir(tmp_path) == ["root"]
    assert refused == dict.fromkeys(HOSTILE_RCPTS, 451)  # the script's error: fallback reply
    assert accepted == dict.fromkeys(BENIGN_RCPTS, 250)
    delivered = {name.rsplit("/new/", 1)[0] for name in files_under(root / "boxes")}
    assert delivered == {"a/b", "bob"}
    assert [p.parent.parent.name for p in (root / "mail").glob("mx.test/*/new/*")] == \
        ["%2E.%2F..%2Fescaped%20here"]


@pytest.mark.parametrize("path", ["/var/mail/../../etc/passwd", "/var/mail/./bob",
                                  "/var/mail/..", "/var/mail/bob\x01", "/var/mail/\x00x",
                                  "/var/mail/", "/var/mail//bob", "/"])
@pytest.mark.parametrize("kind", ["maildir", "mbox"])
def test_a_route_path_may_not_climb_or_hold_control_characters(kind, path):
    with pytest.raises(ScriptError, match="'.' or '..' parts or control characters"):
        parse_route(f"{kind}:{path}")


def deliver_locally(route: str) -> Outcome:
    async def main():
        transports = Transports(CONFIG, "out.test")
        return (await transports.deliver(parse_route(route), "alice@example.org",
                                         ["bob@example.test"], MESSAGE))["bob@example.test"]

    return asyncio.run(main())


def test_an_mbox_that_is_a_symbolic_link_out_of_its_directory_is_not_written(tmp_path, caplog):
    (tmp_path / "boxes").mkdir()
    outside = tmp_path / "outside"
    outside.write_text("kept\n")
    (tmp_path / "boxes" / "bob").symlink_to(outside)
    outcome = deliver_locally(f"mbox:{tmp_path}/boxes/bob")
    assert outcome == Outcome("deferred", "451 4.3.0 mailbox unavailable: "
                                          "Operation not permitted")
    assert f"mbox {tmp_path}/boxes/bob: " in caplog.text and "leaves its directory" in caplog.text
    assert outside.read_text() == "kept\n"


@pytest.mark.parametrize("linked", ["tmp", "new"])
def test_a_maildir_whose_folders_lead_elsewhere_is_not_written(tmp_path, linked, caplog):
    box, outside = tmp_path / "box", tmp_path / "outside"
    outside.mkdir()
    box.mkdir()
    (box / linked).symlink_to(outside)
    outcome = deliver_locally(f"maildir:{box}")
    assert outcome.status == "deferred" and str(tmp_path) not in outcome.reply
    assert "leaves its directory" in caplog.text
    assert list(outside.iterdir()) == []


def test_local_replies_and_their_dsns_name_no_local_path(tmp_path, caplog):
    """A Maildir that cannot be made (a file where a directory should be), and one written:
    the replies, which go into DSNs to outside senders, say what happened, not where; the
    log keeps the path."""
    (tmp_path / "file").write_text("not a directory")
    failed = deliver_locally(f"maildir:{tmp_path}/file/bob")
    assert failed == Outcome("deferred", "451 4.3.0 mailbox unavailable: Not a directory")
    assert f"maildir {tmp_path}/file/bob: " in caplog.text
    dsn = build_dsn("out.test", Envelope("alice@example.org", id="0" * 12 + "-" + "1" * 12),
                    [RecipientState("bob@example.test", status="failed", reply=failed.reply)],
                    MESSAGE)
    assert b"mailbox unavailable: Not a directory" in dsn and str(tmp_path).encode() not in dsn
    delivered = deliver_locally(f"maildir:{tmp_path}/box")
    assert delivered == Outcome("delivered", "250 2.0.0 delivered to maildir")
