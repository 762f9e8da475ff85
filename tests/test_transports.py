"""Transports against real receivers on 127.0.0.1: an aiosmtpd sink, a second vSL server,
a tiny LMTP server, the test DNS server (tests/zones/delivery.test.zone), real files.
Also the transport:: natives that choose the routes."""
from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import replace

import pytest

from vsl.server.config import ConfigError, DeliveryConfig, Listener
from vsl.server.dnsd import DnsServer
from vsl.server.relay_logins import RelayLogins
from vsl.server.transports import TRANSPORTS, Transports, check_registry
from vsl.server.transports.smtp import dot_stuffed
from vsl.server.transports.local import append_mbox
from vsl.server.transports.outcome import Outcome
from vsl.stdlib.ctx import Context, Stage
from vsl.stdlib.dns import Resolver, parse_nameserver
from vsl.stdlib.support.mail import Mailbox
from vsl.stdlib.transport import ROUTE_KINDS, Route, RouteKind, parse_route
from vsl.stdlib import new_engine
from vsl.errors import ScriptError
from vsl.lint import Linter
from tests.support.mailsink import MESSAGE, LmtpServer, Sink, free_port
from tests.support.servers import config_for, running
from tests.support.smtp_tools import tls_setup, wait_for

CONFIG = DeliveryConfig(connect_timeout=2, command_timeout=2, idle_timeout=5)


def run(coro):
    return asyncio.run(coro)


async def send(route: str, recipients=("bob@example.test",), config=CONFIG, resolver=None,
               sender="alice@example.org", data=MESSAGE, transports=None,
               plaintext_fallback=False):
    own = transports is None
    transports = transports or Transports(config, "out.test", resolver)
    try:
        return await transports.deliver(parse_route(route), sender, list(recipients), data,
                                        plaintext_fallback)
    finally:
        if own:
            await transports.close()


# ---- SMTP forwarding ----------------------------------------------------------------------

def test_forward_to_a_sink():
    async def main():
        async with Sink() as sink:
            outcomes = await send(f"smtp://127.0.0.1:{sink.port}",
                                  ["bob@example.test", "carol@example.test"])
            return outcomes, sink.messages

    outcomes, messages = run(main())
    assert {o.status for o in outcomes.values()} == {"delivered"}
    assert outcomes["bob@example.test"].reply == "250 2.0.0 Ok: queued"
    assert outcomes["bob@example.test"].remote_mta == "127.0.0.1"
    (message,) = messages
    assert message.sender == "alice@example.org"
    assert message.recipients == ["bob@example.test", "carol@example.test"]
    assert message.data == MESSAGE and not message.tls  # dots unstuffed again


def test_forward_to_a_vsl_server(tmp_path):
    with running(config_for(tmp_path)) as receiver:
        outcomes = run(send(f"smtp://127.0.0.1:{receiver.port()}?tls=none"))
        assert outcomes["bob@example.test"].status == "delivered"
        assert wait_for(lambda: asyncio.run(receiver.spool.list("deliver")))
        (entry,) = asyncio.run(receiver.spool.list("deliver"))
    assert entry.envelope.sender == "alice@example.org"
    assert entry.envelope.helo == "out.test" and entry.envelope.tls is False
    assert asyncio.run(receiver.spool.message(entry.id)).endswith(MESSAGE)


@pytest.mark.parametrize("tls", ["opportunistic", "required"])
def test_starttls_when_offered(tmp_path, tls):
    tls_config, _, _ = tls_setup(tmp_path)
    with running(config_for(tmp_path, tls=tls_config)) as receiver:
        outcomes = run(send(f"smtp://127.0.0.1:{receiver.port()}?tls={tls}"))
        assert outcomes["bob@example.test"].status == "delivered"
        assert wait_for(lambda: asyncio.run(receiver.spool.list("deliver")))
        assert asyncio.run(receiver.spool.list("deliver"))[0].envelope.tls is True


def test_smtps(tmp_path):
    tls_config, _, _ = tls_setup(tmp_path)
    config = config_for(tmp_path, tls=tls_config,
                        listen=(Listener("127.0.0.1", 0, "smtps"),))
    with running(config) as receiver:
        outcomes = run(send(f"smtps://127.0.0.1:{receiver.port('smtps')}"))
        assert outcomes["bob@example.test"].status == "delivered"
        assert wait_for(lambda: asyncio.run(receiver.spool.list("deliver")))
        assert asyncio.run(receiver.spool.list("deliver"))[0].envelope.tls is True


def test_tls_required_without_starttls_is_a_temporary_failure():
    async def main():
        async with Sink() as sink:
            return await send(f"smtp://127.0.0.1:{sink.port}?tls=required"), sink.messages

    outcomes, messages = run(main())
    outcome = outcomes["bob@example.test"]
    assert outcome.status == "deferred" and "STARTTLS" in outcome.reply
    assert outcome.reply.startswith("451 4.4.1 ") and messages == []


def test_connection_refused_is_a_temporary_failure():
    port = free_port()
    outcome = run(send(f"smtp://127.0.0.1:{port}"))["bob@example.test"]
    assert outcome.status == "deferred"
    assert outcome.reply.startswith(f"451 4.4.1 cannot deliver to 127.0.0.1:{port}: ")


def test_each_recipient_gets_its_own_answer():
    async def main():
        async with Sink() as sink:
            outcomes = await send(f"smtp://127.0.0.1:{sink.port}",
                                  ["ok@example.test", "temp@example.test", "bad@example.test"])
            return outcomes, sink.messages

    outcomes, messages = run(main())
    assert {r: (o.status, o.reply) for r, o in outcomes.items()} == {
        "ok@example.test": ("delivered", "250 2.0.0 Ok: queued"),
        "temp@example.test": ("deferred", "451 4.2.0 try again later"),
        "bad@example.test": ("failed", "550 5.1.1 no such user")}
    assert [m.recipients for m in messages] == [["ok@example.test"]]


def test_no_recipient_accepted_sends_no_data():
    async def main():
        async with Sink() as sink:
            return await send(f"smtp://127.0.0.1:{sink.port}", ["bad@example.test"]), sink

    outcomes, sink = run(main())
    assert outcomes["bad@example.test"].status == "failed" and sink.messages == []


@pytest.mark.parametrize("reply, status", [("554 5.6.0 content refused", "failed"),
                                           ("452 4.3.1 out of space", "deferred")])
def test_reply_after_data_decides(reply, status):
    async def main():
        async with Sink() as sink:
            sink.data_reply = reply
            return await send(f"smtp://127.0.0.1:{sink.port}")

    outcome = run(main())["bob@example.test"]
    assert (outcome.status, outcome.reply) == (status, reply)


class Scripted:
    """A hostile SMTP server on 127.0.0.1: the reply to each command by its verb (bytes,
    CRLF included), else 354 to DATA and 250 to the rest; the end of DATA answered
    ``after_data``."""

    def __init__(self, replies: dict[str, bytes], after_data: bytes = b"250 ok\r\n"):
        self.replies, self.after_data, self.got_data = replies, after_data, False
        self.connections = 0

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _serve(self, reader, writer):
        self.connections += 1
        writer.write(b"220 hostile.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line.split()[0].upper().decode() if line.split() else ""
            reply = self.replies.get(verb, b"354 go on\r\n" if verb == "DATA" else b"250 ok\r\n")
            writer.write(reply)
            if verb == "DATA" and reply[:1] == b"3":
                while (line := await reader.readline()) not in (b".\r\n", b""):
                    self.got_data = True
                writer.write(self.after_data)
        writer.close()


@pytest.mark.parametrize("rcpt, shown", [
    (b"550 5.1.1 bo\xc3\xaete d\xc3\xa9sactiv\xc3\xa9e\r\n",
     "550 5.1.1 bo\u00eete d\u00e9sactiv\u00e9e"),
    (b"550 5.1.1 user \x1b[2J\x1b]0;pwned\x07 nul\x00 \xff\xfe\r\n",
     "550 5.1.1 user ?[2J?]0;pwned? nul? ??"),
])
def test_a_remote_reply_is_kept_printable(rcpt, shown):
    """Control characters and bytes that are not UTF-8 become '?' (they reach logs, the
    queue and the sender's DSN); UTF-8 text stays."""
    async def main():
        async with Scripted({"RCPT": rcpt}) as remote:
            return await send(f"smtp://127.0.0.1:{remote.port}")

    outcome = run(main())["bob@example.test"]
    assert (outcome.status, outcome.reply) == ("failed", shown)


@pytest.mark.parametrize("replies, after_data, reply", [
    ({}, b"hello \x1b[31m\r\n", "451 4.4.2 unreadable reply: Malformed SMTP response line: "
                                 "hello ?[31m"),
])
def test_a_reply_that_does_not_say_the_message_was_taken_defers(replies, after_data, reply):
    """An end-of-DATA reply that cannot be read: deferred, never bounced (the remote may
    have taken the message)."""
    async def main():
        async with Scripted(replies, after_data) as remote:
            return await send(f"smtp://127.0.0.1:{remote.port}")

    outcome = run(main())["bob@example.test"]
    assert (outcome.status, outcome.reply) == ("deferred", reply)


async def _endless_greeting(reader, writer):
    try:
        while True:
            writer.write(b"220-" + b"z" * 1000 + b"\r\n")
            await writer.drain()
    except OSError:
        pass


async def _trickled_greeting(reader, writer):
    try:
        while True:
            writer.write(b"220-x\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
    except OSError:
        pass


@pytest.mark.parametrize("serve, why", [(_endless_greeting, "reply over 32768 bytes"),
                                        (_trickled_greeting, "no whole reply in 0.5 s")])
def test_an_lmtp_reply_is_bounded_in_size_and_time(serve, why):
    """An LMTP server that never ends its reply: deferred once the reply passes 32 KiB
    (its memory grew 55 MB a second) or command_timeout (each line moved it on)."""
    async def main():
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.wait_for(send(f"lmtp://127.0.0.1:{port}",
                                               config=replace(CONFIG, command_timeout=0.5)), 5)
        finally:
            server.close()

    outcome = run(main())["bob@example.test"]
    assert outcome.status == "deferred" and why in outcome.reply


@pytest.mark.parametrize("route", ["smtp", "lmtp"])
def test_a_2xx_to_mail_or_rcpt_goes_on_as_in_postfix(route):
    """Any 2xx to MAIL or RCPT goes on to DATA; only the end of DATA says delivered."""
    async def main():
        async with Scripted({"MAIL": b"252 2.1.0 sure\r\n", "RCPT": b"252 2.1.5 will try\r\n",
                             "LHLO": b"250 hostile.test\r\n"},
                            b"250 ok\r\n" if route == "smtp" else b"250 2.0.0 ok\r\n") as remote:
            outcomes = await send(f"{route}://127.0.0.1:{remote.port}")
            return outcomes, remote.got_data

    outcomes, got_data = run(main())
    assert outcomes["bob@example.test"].status == "delivered" and got_data


OFFERS_TLS = {"EHLO": b"250-hostile.test\r\n250 STARTTLS\r\n"}
BROKEN_TLS = {**OFFERS_TLS, "STARTTLS": b"220 go ahead\r\nthis is no TLS\r\n"}


@pytest.mark.parametrize("replies, shown", [
    ({"EHLO": b"421 4.7.0 too busy\r\n"}, "421 4.7.0 too busy"),   # closed: no HELO
    ({**OFFERS_TLS, "STARTTLS": b"421 4.3.2 shutting down\r\n"}, "421 4.3.2 shutting down"),
])
def test_a_421_while_opening_a_session_is_the_servers_answer(replies, shown):
    """A 421 closes the session: neither HELO nor going on in plaintext follows, and the
    outcome says what the server said."""
    async def main():
        async with Scripted(replies) as remote:
            outcomes = await send(f"smtp://127.0.0.1:{remote.port}")
            return outcomes["bob@example.test"], remote

    outcome, remote = run(main())
    assert outcome.status == "deferred" and shown in outcome.reply
    assert not remote.got_data


@pytest.mark.parametrize("replies, after_data, status", [
    ({"DATA": b"250 2.0.0 thanks\r\n"}, b"250 ok\r\n", "deferred"),  # state unknown
    ({}, b"250 queued\r\n250 extra\r\n", "delivered"),  # one reply too many
    ({}, b"421 4.3.0 closing\r\n", "deferred"),           # closes the session
])
def test_a_session_left_in_an_unknown_state_is_not_reused(replies, after_data, status):
    """The next message opens a new connection: on the old one each command would have
    read the reply of the one before (and waited command_timeout at the end)."""
    async def main():
        async with Scripted(replies, after_data) as remote:
            transports = Transports(CONFIG, "out.test")
            try:
                outcomes = [await send(f"smtp://127.0.0.1:{remote.port}",
                                       transports=transports) for _ in range(2)]
            finally:
                await transports.close()
            return [o["bob@example.test"].status for o in outcomes], remote.connections

    assert run(main()) == ([status] * 2, 2)


@pytest.mark.parametrize("tls, status", [("opportunistic", "delivered"),
                                         ("required", "deferred")])
def test_a_refused_starttls_goes_on_in_plaintext_when_opportunistic(tls, status):
    """As Postfix's "may": the server offered STARTTLS and then refused it, so the mail
    goes in plaintext on the same session, on the first attempt already."""
    async def main():
        async with Scripted({**OFFERS_TLS,
                             "STARTTLS": b"454 4.7.0 TLS not available\r\n"}) as remote:
            outcomes = await send(f"smtp://127.0.0.1:{remote.port}?tls={tls}")
            return outcomes["bob@example.test"], remote

    outcome, remote = run(main())
    assert (outcome.status, remote.got_data, remote.connections) == (
        status, status == "delivered", 1)
    if status == "deferred":
        assert "454 4.7.0 TLS not available" in outcome.reply


@pytest.mark.parametrize("route", ["smtp://127.0.0.1:{port}", "mx"])
def test_a_failed_tls_handshake_defers_a_new_message_and_a_waited_one_goes_in_plaintext(
        route, resolver):
    """Postfix's "may" level: the first attempt defers (TLS may work next time); once
    the message has waited (``plaintext_fallback``), a new connection carries it in
    plaintext at once. That session is not kept for another message."""
    async def main():
        async with Scripted(BROKEN_TLS) as remote:
            config = replace(CONFIG, mx_port=remote.port)
            transports = Transports(config, "out.test", resolver)
            try:
                url = route.format(port=remote.port)
                rcpt = ["bob@plain.delivery.test"]
                first = await send(url, rcpt, transports=transports)
                tried_once = remote.connections, remote.got_data
                later = [await send(url, rcpt, transports=transports, plaintext_fallback=True)
                         for _ in range(2)]
            finally:
                await transports.close()
            return first, tried_once, later, remote.connections

    first, tried_once, later, connections = run(main())
    outcome = first["bob@plain.delivery.test"]
    assert outcome.status == "deferred" and "cannot deliver to" in outcome.reply
    assert tried_once == (1, False)
    assert [o["bob@plain.delivery.test"].status for o in later] == ["delivered"] * 2
    assert connections == 1 + 2 * 2  # each later send: a TLS try, then a plaintext one


@pytest.mark.parametrize("tls", ["required", "verify"])
def test_a_failed_tls_handshake_never_falls_back_unless_opportunistic(tls):
    async def main():
        async with Scripted(BROKEN_TLS) as remote:
            outcomes = await send(f"smtp://127.0.0.1:{remote.port}?tls={tls}",
                                  plaintext_fallback=True)
            return outcomes["bob@example.test"], remote

    outcome, remote = run(main())
    assert (outcome.status, remote.got_data, remote.connections) == ("deferred", False, 1)


@pytest.mark.parametrize("route", ["smtp", "lmtp"])
def test_a_2xx_to_data_itself_defers(route):
    """No message was sent: it was counted delivered for every recipient (over SMTP,
    aiosmtplib's data() raised one error for DATA's reply and the end's)."""
    async def main():
        async with Scripted({"LHLO": b"250 hostile.test\r\n",
                             "DATA": b"250 2.0.0 thanks\r\n"}) as remote:
            return await send(f"{route}://127.0.0.1:{remote.port}",
                              ["bob@example.test", "carol@example.test"]), remote.got_data

    outcomes, got_data = run(main())
    assert not got_data
    assert {(o.status, o.reply, o.command) for o in outcomes.values()} == {(
        "deferred", "451 4.4.2 unexpected reply to DATA: 250 2.0.0 thanks", "DATA")}


@pytest.mark.parametrize("route", ["smtp", "lmtp"])
@pytest.mark.parametrize("reply, status", [(b"554 5.5.1 no valid recipients\r\n", "failed"),
                                           (b"451 4.3.0 try later\r\n", "deferred")])
def test_a_refused_data_is_the_reply_to_data(route, reply, status):
    """A refusal of DATA itself is reported "in reply to DATA command", not as the end
    of the message's."""
    async def main():
        async with Scripted({"LHLO": b"250 hostile.test\r\n", "DATA": reply}) as remote:
            return await send(f"{route}://127.0.0.1:{remote.port}")

    outcome = run(main())["bob@example.test"]
    assert (outcome.status, outcome.reply, outcome.command) == (
        status, reply.decode().strip(), "DATA")


def test_an_lmtp_reply_code_of_other_digits_is_no_reply():
    """"²²² x" passed str.isdigit() and then failed int(): the message went to hold."""
    async def main():
        async with Scripted({"RCPT": "\u00b2\u00b2\u00b2 weird\r\n".encode(),
                             "LHLO": b"250 hostile.test\r\n"}) as remote:
            return await send(f"lmtp://127.0.0.1:{remote.port}")

    outcome = run(main())["bob@example.test"]
    assert outcome.status == "deferred" and "bad reply" in outcome.reply


def test_timeout_mid_data_is_a_temporary_failure():
    async def main():
        async with Sink() as sink:
            sink.data_delay = 5
            return await send(f"smtp://127.0.0.1:{sink.port}",
                              config=replace(CONFIG, command_timeout=0.3))

    outcome = run(main())["bob@example.test"]
    assert outcome.status == "deferred"
    assert outcome.reply.startswith("451 4.4.2 lost connection with 127.0.0.1: ")


def test_connections_are_reused_per_destination():
    async def main():
        async with Sink() as sink:
            transports = Transports(CONFIG, "out.test")
            route = f"smtp://127.0.0.1:{sink.port}"
            for n in range(3):
                await send(route, [f"user{n}@example.test"], transports=transports)
            reused = sink.connections, transports.pool.opened
            sink.drop_connections()  # the server closed the idle connection: a new one
            await asyncio.sleep(0.05)
            outcome = (await send(route, transports=transports))["bob@example.test"]
            await transports.close()
            return reused, outcome, sink

    reused, outcome, sink = run(main())
    assert reused == (1, 1)
    assert outcome.status == "delivered" and sink.connections == 2 and len(sink.messages) == 4


@pytest.mark.parametrize("route", ["smtp://127.0.0.1:{port}", "mx"])
def test_a_destination_whose_sessions_stay_in_use_postpones_after_a_second(route, resolver):
    """destination_concurrency sessions in use for longer than BUSY_WAIT: the next
    message's recipients there are postponed (not tried, no backup MX)."""
    async def main():
        async with Sink() as sink:
            sink.data_delay = 2.5
            config = replace(CONFIG, destination_concurrency=1, mx_port=sink.port,
                             command_timeout=10)
            transports = Transports(config, "out.test", resolver)
            url, rcpt = route.format(port=sink.port), ["bob@plain.delivery.test"]
            try:
                first = asyncio.ensure_future(send(url, rcpt, transports=transports))
                await asyncio.sleep(0.3)  # the first is in its DATA
                started = asyncio.get_running_loop().time()
                second = await send(url, rcpt, transports=transports)
                waited = asyncio.get_running_loop().time() - started
                await first
                third = await send(url, rcpt, transports=transports)  # free again
            finally:
                await transports.close()
            return second, waited, third, sink.connections

    second, waited, third, connections = run(main())
    assert second["bob@plain.delivery.test"] == Outcome("postponed", "")
    assert 0.9 < waited < 1.9 and connections == 1
    assert third["bob@plain.delivery.test"].status == "delivered"


def test_a_busy_backup_mx_after_an_unreachable_primary_is_a_deferral():
    """The primary refused the connection and the backup's sessions are all in use: a
    deferral with the primary's error (an attempt, which counts toward max_age), not a
    postponement that would try the dead primary again every second."""
    records = {"two.test.": [("MX", "10 a.two.test."), ("MX", "20 b.two.test.")],
               "a.two.test.": [("A", "127.0.0.2")], "b.two.test.": [("A", "127.0.0.1")]}

    async def main(resolver):
        async with Sink() as sink:
            sink.data_delay = 2.5
            config = replace(CONFIG, destination_concurrency=1, mx_port=sink.port,
                             command_timeout=10)
            transports = Transports(config, "out.test", resolver)
            try:
                first = asyncio.ensure_future(send("mx", ["u1@two.test"], transports=transports))
                await asyncio.sleep(0.3)  # the backup's one session is in its DATA
                second = await send("mx", ["u2@two.test"], transports=transports)
                await first
            finally:
                await transports.close()
            return second["u2@two.test"]

    with DnsServer.from_records(records) as dns_server:
        resolver = Resolver([parse_nameserver(f"127.0.0.1:{dns_server.port}")], timeout=1)
        outcome = run(main(resolver))
    assert outcome.status == "deferred" and "127.0.0.2" in outcome.reply


def test_idle_connections_are_closed():
    async def main():
        async with Sink() as sink:
            transports = Transports(replace(CONFIG, idle_timeout=0.05), "out.test")
            route = f"smtp://127.0.0.1:{sink.port}"
            await send(route, transports=transports)
            await asyncio.sleep(0.3)
            closed = not transports.pool.idle
            await send(route, transports=transports)
            await transports.close()
            return closed, sink.connections

    assert run(main()) == (True, 2)


def test_dot_stuffing():
    assert dot_stuffed(b"a\n.b\r\n..c") == b"a\r\n..b\r\n...c\r\n.\r\n"


# ---- AUTH towards a relay ------------------------------------------------------------------

def relay_sink(tmp_path, **kwargs) -> Sink:
    """A sink offering STARTTLS (a throw-away certificate) and AUTH for alice."""
    return Sink(tls=server_context(tmp_path), users={"alice@example.org": "right pass"},
                **kwargs)


async def send_logged_in(tmp_path, sink: Sink, password="right pass",
                         route="smtp://127.0.0.1:{port}?tls=verify",
                         recipients=("bob@example.test",), **config):
    """Send one message with a credentials file that has a login for the sink (whose
    certificate's CA is trusted)."""
    path = tmp_path / "relay-credentials"
    path.write_text(f"# relay\n\n127.0.0.1:{sink.port}  alice@example.org  {password}\n")
    path.chmod(0o600)
    config = replace(CONFIG, credentials=path, ca_file=tmp_path / "certs/ca.pem", **config)
    return await send(route.format(port=sink.port), recipients, config=config)


def test_relay_login_over_starttls(tmp_path):
    async def main():
        async with relay_sink(tmp_path) as sink:
            outcomes = await send_logged_in(tmp_path, sink)
            return outcomes["bob@example.test"], sink

    outcome, sink = run(main())
    assert outcome.status == "delivered"
    assert sink.logins == [("alice@example.org", True)]
    assert [m.tls for m in sink.messages] == [True]


def test_relay_login_with_a_password_with_spaces(tmp_path):
    async def main():
        async with relay_sink(tmp_path) as sink:
            sink.users["alice@example.org"] = "correct horse battery"
            outcomes = await send_logged_in(tmp_path, sink, "correct horse battery")
            return outcomes["bob@example.test"], sink.logins

    outcome, logins = run(main())
    assert outcome.status == "delivered" and logins == [("alice@example.org", True)]


def test_relay_login_refused_defers(tmp_path):
    async def main():
        async with relay_sink(tmp_path) as sink:
            outcomes = await send_logged_in(tmp_path, sink, "wrong")
            return outcomes["bob@example.test"], sink

    outcome, sink = run(main())
    assert outcome.status == "deferred"  # our configuration is wrong: keep the mail
    assert "login as alice@example.org refused: 535" in outcome.reply
    assert sink.messages == []


@pytest.mark.parametrize("tls", ["none", "opportunistic", "required"])
@pytest.mark.parametrize("offers_tls", [True, False])
def test_no_password_without_verified_tls(tmp_path, tls, offers_tls):
    """Only a tls=verify route logs in: over unchecked TLS anyone in between could take
    the password (and over none, anyone on the path)."""
    async def main():
        context = server_context(tmp_path)  # (and the CA file send_logged_in trusts)
        async with Sink(tls=context if offers_tls else None, auth_in_clear=True,
                        users={"alice@example.org": "right pass"}) as sink:
            outcomes = await send_logged_in(tmp_path, sink,
                                            route=f"smtp://127.0.0.1:{{port}}?tls={tls}")
            return outcomes["bob@example.test"], sink

    outcome, sink = run(main())
    assert outcome.status == "deferred" and sink.logins == [] and sink.messages == []
    if offers_tls or tls != "required":
        assert "not sending the password of alice@example.org without verified TLS " \
            "(route option tls=verify)" in outcome.reply


def test_mx_delivery_never_logs_in(tmp_path):
    """A login is for relay routes: MX delivery to the same host:port goes without one
    (and so without a password over TLS whose certificate nobody checks)."""
    async def main():
        async with relay_sink(tmp_path) as sink:
            outcomes = await send_logged_in(tmp_path, sink, route="mx", mx_port=sink.port,
                                            recipients=["bob@[127.0.0.1]"])
            return outcomes["bob@[127.0.0.1]"], sink.logins

    outcome, logins = run(main())
    assert outcome.status == "delivered" and logins == []


def test_no_login_for_a_relay_without_credentials(tmp_path):
    async def main():
        async with relay_sink(tmp_path) as sink:
            outcomes = await send(f"smtp://127.0.0.1:{sink.port}")
            return outcomes["bob@example.test"], sink

    outcome, sink = run(main())
    assert outcome.status == "delivered" and sink.logins == []


def server_context(tmp_path) -> ssl.SSLContext:
    """A server-side TLS context with a certificate for mx.test and 127.0.0.1, signed by
    the throw-away CA at tmp_path/certs/ca.pem."""
    tls_config, _, _ = tls_setup(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_config.certificate, tls_config.key)
    return context


@pytest.mark.parametrize("scheme, implicit", [("smtp", False), ("smtps", True)])
@pytest.mark.parametrize("host, trusted, problem", [
    ("127.0.0.1", False, "certificate verify failed: unable to get local issuer certificate"),
    ("localhost", True, "Hostname mismatch, certificate is not valid for 'localhost'"),
    ("127.0.0.1", True, None),
])
def test_tls_verify(tmp_path, scheme, implicit, host, trusted, problem):
    async def main():
        async with Sink(tls=server_context(tmp_path), implicit_tls=implicit) as sink:
            config = replace(CONFIG, ca_file=tmp_path / "certs/ca.pem") if trusted else CONFIG
            outcomes = await send(f"{scheme}://{host}:{sink.port}?tls=verify", config=config)
            return outcomes["bob@example.test"], sink.messages

    outcome, messages = run(main())
    if problem is None:
        assert outcome.status == "delivered" and [m.tls for m in messages] == [True]
    else:
        assert outcome.status == "deferred" and messages == []
        assert problem in outcome.reply and "_ssl.c" not in outcome.reply


def test_an_unreadable_ca_file_is_a_config_error(tmp_path):
    (tmp_path / "ca.pem").write_text("not a certificate")
    for path in (tmp_path / "ca.pem", tmp_path / "missing.pem"):
        with pytest.raises(ConfigError, match="delivery.ca_file: cannot load"):
            Transports(replace(CONFIG, ca_file=path), "out.test")


def test_credentials_file(tmp_path, caplog):
    path = tmp_path / "credentials"
    path.write_text("# comment\n\nRelay.Example:587 alice  two words \n[::1]:25 bob pw\n")
    path.chmod(0o644)
    credentials = RelayLogins.load(path)
    assert credentials.get("relay.example", 587) == ("alice", "two words")
    assert credentials.get("::1", 25) == ("bob", "pw")
    assert credentials.get("relay.example", 25) is None
    assert "other users can read it" in caplog.text
    assert RelayLogins.load(None).get("relay.example", 587) is None


def test_credentials_file_with_a_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "credentials"
    path.write_bytes("\ufeffrelay.example:587 alice pw\r\n[::1]:25\tbob\tp w\r\n".encode())
    credentials = RelayLogins.load(path)
    assert credentials.get("relay.example", 587) == ("alice", "pw")
    assert credentials.get("::1", 25) == ("bob", "p w")


@pytest.mark.parametrize("text, problem", [
    (b"relay.example:587 alice\n", ":1: expected 'host:port user password'"),
    (b"# ok\nrelay.example alice pw\n", ":2: 'relay.example' is not host:port"),
    ("relay.example:2\u00b2 alice pw\n".encode(), ":1: 'relay.example:2\u00b2' is not"),
    (b"2001:db8::25 alice pw\n", ":1: '2001:db8::25' is not host:port (an IPv6 address in"),
    (b"a.example:25 x y\n\nA.Example:25 z w\n", ":3: A.Example:25 has a login at line 1"),
    ("relay.example:587 alice p\u00e4ss\n".encode("latin-1"), "is not UTF-8 text (line 1)"),
])
def test_bad_credentials_files(tmp_path, text, problem):
    path = tmp_path / "relay-credentials"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=re.escape(problem)) as caught:
        RelayLogins.load(path)
    assert "p\u00e4ss" not in str(caught.value) and "0xe4" not in str(caught.value) and \
        "\\xe4" not in str(caught.value)  # (the latin-1 case: no byte of the password)


def test_a_missing_credentials_file(tmp_path):
    with pytest.raises(ConfigError, match="delivery.credentials: cannot read"):
        RelayLogins.load(tmp_path / "missing")


# ---- MX ------------------------------------------------------------------------------------

@pytest.fixture
def resolver(dns_server):
    dns_server.reset()
    return Resolver([parse_nameserver(f"127.0.0.1:{dns_server.port}")], timeout=1)


def mx_send(resolver, domain: str, sink_port: int | None = None):
    config = replace(CONFIG, mx_port=sink_port or free_port())
    return send("mx", [f"bob@{domain}"], config=config, resolver=resolver)


@pytest.mark.parametrize("domain, host", [
    ("pref.delivery.test", "primary.delivery.test"),    # lowest preference first
    ("fallback.delivery.test", "backup.delivery.test"),  # the best MX has no address
    ("plain.delivery.test", "plain.delivery.test"),      # no MX: the domain's A record
])
def test_mx_delivery(resolver, domain, host):
    async def main():
        async with Sink() as sink:
            return (await mx_send(resolver, domain, sink.port))[f"bob@{domain}"], sink

    outcome, sink = run(main())
    assert (outcome.status, outcome.remote_mta) == ("delivered", host)
    assert sink.messages[0].recipients == [f"bob@{domain}"]


def test_recipients_a_session_defers_go_on_to_the_next_mx(resolver):
    async def main():
        async with Sink() as sink:
            config = replace(CONFIG, mx_port=sink.port)
            return await send("mx", ["bob@pref.delivery.test", "temp@pref.delivery.test"],
                              config=config, resolver=resolver), sink.messages

    outcomes, messages = run(main())
    bob, temp = outcomes["bob@pref.delivery.test"], outcomes["temp@pref.delivery.test"]
    assert (bob.status, bob.remote_mta) == ("delivered", "primary.delivery.test")
    assert (temp.status, temp.remote_mta) == ("deferred", "backup.delivery.test")
    assert [m.recipients for m in messages] == [["bob@pref.delivery.test"]]


def test_null_mx_fails_at_once(resolver):
    outcome = run(mx_send(resolver, "nullmx.delivery.test"))["bob@nullmx.delivery.test"]
    assert outcome.status == "failed" and outcome.reply.startswith("556 5.1.10 ")


def test_a_domain_without_mail_host_fails(resolver):
    outcome = run(mx_send(resolver, "nowhere.delivery.test"))["bob@nowhere.delivery.test"]
    assert outcome.status == "failed" and outcome.reply.startswith("550 5.4.4 ")


def test_dns_failure_and_unreachable_mx_defer(resolver, dns_server):
    dns_server.servfail("pref.delivery.test")
    outcome = run(mx_send(resolver, "pref.delivery.test"))["bob@pref.delivery.test"]
    assert outcome.status == "deferred" and outcome.reply.startswith("451 4.4.3 ")
    outcome = run(mx_send(resolver, "plain.delivery.test"))["bob@plain.delivery.test"]
    assert outcome.status == "deferred" and "Connection refused" in outcome.reply


# ---- LMTP ----------------------------------------------------------------------------------

@pytest.mark.parametrize("unix", [False, True])
def test_lmtp_answers_per_recipient_after_data(tmp_path, unix):
    async def main():
        path = str(tmp_path / "lmtp.sock") if unix else None
        server = await LmtpServer().start(path)
        route = f"lmtp://{path}" if unix else f"lmtp://127.0.0.1:{server.port}"
        try:
            return await send(route, ["ok@example.test", "temp@example.test",
                                      "bad@example.test"]), server.messages
        finally:
            await server.stop()

    outcomes, messages = run(main())
    assert {r: o.status for r, o in outcomes.items()} == {
        "ok@example.test": "delivered", "temp@example.test": "deferred",
        "bad@example.test": "failed"}
    assert outcomes["temp@example.test"].reply == "452 4.2.2 mailbox full"
    (message,) = messages
    assert message.recipients == ["ok@example.test", "temp@example.test"]
    assert message.data == MESSAGE


def test_lmtp_unreachable_defers():
    outcome = run(send(f"lmtp://127.0.0.1:{free_port()}"))["bob@example.test"]
    assert outcome.status == "deferred" and outcome.reply.startswith("451 4.4.1 ")


# ---- local files ---------------------------------------------------------------------------

def test_maildir(tmp_path):
    box = tmp_path / "mail" / "bob"
    outcomes = run(send(f"maildir:{box}", ["bob@example.test"]))
    run(send(f"maildir:{box}", ["bob@example.test"]))
    assert outcomes["bob@example.test"].status == "delivered"
    files = sorted((box / "new").iterdir())
    assert len(files) == 2 and files[0].name != files[1].name
    assert list((box / "tmp").iterdir()) == [] and (box / "cur").is_dir()
    assert files[0].read_bytes() == (b"Return-Path: <alice@example.org>\n"
                                     b"Delivered-To: bob@example.test\n" +
                                     MESSAGE.replace(b"\r\n", b"\n"))


def test_mbox(tmp_path):
    path = tmp_path / "spool" / "bob"
    run(send(f"mbox:{path}", data=b"Subject: one\r\n\r\nFrom here\r\n>From there\r\n"))
    run(send(f"mbox:{path}", sender="", data=b"Subject: two\r\n\r\nbye"))
    text = path.read_text()
    first, second = text.split("\n\nFrom ")
    assert first.startswith("From alice@example.org ")
    assert first.endswith("Subject: one\n\n>From here\n>>From there")
    assert second.startswith("MAILER-DAEMON ") and second.endswith("Subject: two\n\nbye\n\n")


def test_concurrent_mbox_appends_do_not_mix(tmp_path):
    path = tmp_path / "box"
    body = b"Subject: x\r\n\r\n" + b"line\r\n" * 5000

    async def main():
        await asyncio.gather(*(send(f"mbox:{path}", [f"u{n}@example.test"], data=body)
                               for n in range(20)))

    run(main())
    messages = path.read_bytes().split(b"\n\nFrom ")
    assert len(messages) == 20
    assert all(m.count(b"line") == 5000 for m in messages)


def test_mbox_keeps_no_partial_message(tmp_path, monkeypatch):
    path = tmp_path / "box"
    append_mbox(str(path), b"Subject: kept\n\nok\n", "a@example.org")
    size = path.stat().st_size

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("vsl.server.transports.local.write_all", full)
    outcome = run(send(f"mbox:{path}"))["bob@example.test"]
    assert outcome.status == "deferred" and "No space left" in outcome.reply
    assert path.stat().st_size == size


def test_maildir_keeps_no_partial_file(tmp_path, monkeypatch):
    def full(fd, data, fsync=True):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("vsl.server.files.write_all", full)
    outcome = run(send(f"maildir:{tmp_path / 'box'}"))["bob@example.test"]
    assert outcome.status == "deferred" and "No space left" in outcome.reply
    assert [list((tmp_path / "box" / sub).iterdir()) for sub in ("tmp", "new")] == [[], []]


def test_unwritable_maildir_defers(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    outcome = run(send(f"maildir:{tmp_path / 'file' / 'box'}"))["bob@example.test"]
    assert outcome.status == "deferred" and outcome.reply.startswith("451 4.3.0 mailbox ")


# ---- routes and the transport:: natives ---------------------------------------------------

@pytest.mark.parametrize("text, route", [
    ("smtp://relay.example", Route("smtp", "relay.example", 25)),
    ("smtp://relay.example:587?tls=required", Route("smtp", "relay.example", 587, "required")),
    ("smtp://[::1]:2525?tls=none", Route("smtp", "::1", 2525, "none")),
    ("smtps://relay.example", Route("smtps", "relay.example", 465)),
    ("smtp://relay.example:587?tls=verify", Route("smtp", "relay.example", 587, "verify")),
    ("smtps://relay.example?tls=verify", Route("smtps", "relay.example", 465, "verify")),
    ("lmtp://10.0.0.5", Route("lmtp", "10.0.0.5", 24)),
    ("lmtp:///run/dovecot/lmtp", Route("lmtp", path="/run/dovecot/lmtp")),
    ("mx", Route("mx")),
    ("maildir:/var/mail/bob", Route("maildir", path="/var/mail/bob")),
    ("mbox:/var/spool/mail/bob", Route("mbox", path="/var/spool/mail/bob")),
])
def test_routes_round_trip(text, route):
    assert parse_route(text) == route and parse_route(str(route)) == route


@pytest.mark.parametrize("text", [
    "", "ftp://x", "smtp://", "smtp://h:99999", "smtp://h?tls=maybe", "smtps://h?tls=none",
    "smtps://h?tls=required", "lmtp://h?tls=verify", "smtp://h?tls=verify&tls=none",
    "smtps://h?tls=verify&tls=opportunistic", "smtp://:secret@h", "smtp://u:secret@h:25",
    "smtps://h?tls=opportunistic", "lmtp://h?tls=opportunistic", "smtp://h?tls=verify&tls=",
    "smtp://h?tls=",
    "smtp://h?x=1", "smtp://user@h", "smtp://h/path", "maildir:relative", "mx:x", "smtp",
])
def test_bad_routes(text):
    with pytest.raises(ScriptError) as caught:
        parse_route(text)
    assert "secret" not in caught.value.message  # a password is never repeated


# ---- the registry of transports ------------------------------------------------------------

def test_every_route_kind_has_a_transport():
    assert set(TRANSPORTS) == set(ROUTE_KINDS)


def test_the_registry_check_names_what_does_not_match():
    with pytest.raises(RuntimeError, match=r"kinds without a transport: \['toy'\]"):
        check_registry({**ROUTE_KINDS, "toy": RouteKind("toy", "path")}, TRANSPORTS)
    with pytest.raises(RuntimeError, match=r"of no declared route kind: \['toy'\]"):
        check_registry(ROUTE_KINDS, {**TRANSPORTS, "toy": Keeper})


class Keeper:
    """A toy transport: keeps each message in memory, under its route's path."""

    kept: dict[str, list] = {}

    def __init__(self, setup):
        self.hostname = setup.hostname

    async def deliver(self, route, sender, recipients, data, plaintext_fallback=False):
        self.kept.setdefault(route.path, []).append((sender, recipients, data))
        return dict.fromkeys(recipients, Outcome("delivered", f"250 2.0.0 kept by "
                                                              f"{self.hostname}"))


def test_a_new_transport_is_a_class_a_registry_line_and_a_route_kind(monkeypatch):
    monkeypatch.setitem(ROUTE_KINDS, "keep", RouteKind("keep", "path"))
    monkeypatch.setitem(TRANSPORTS, "keep", Keeper)
    monkeypatch.setattr(Keeper, "kept", {})
    outcomes = run(send("keep:/shelf", ["bob@example.test", "carol@example.test"]))
    assert outcomes == dict.fromkeys(["bob@example.test", "carol@example.test"],
                                     Outcome("delivered", "250 2.0.0 kept by out.test"))
    assert Keeper.kept == {"/shelf": [("alice@example.org",
                                       ["bob@example.test", "carol@example.test"], MESSAGE)]}
    assert str(parse_route("keep:/shelf")) == "keep:/shelf"


SCRIPT = """
fn on_mail_from(ctx) { transport::deliver(ctx); status::next() }
fn on_rcpt_to(ctx) {
    if ctx.rcpt.domain == "lmtp.test" { transport::lmtp(ctx, "lmtp://127.0.0.1:24"); }
    status::next()
}
fn on_post_queue(ctx) {
    transport::maildir(ctx, "/var/mail/abuse", "abuse@example.test");
    status::next()
}
fn everyone(ctx) { transport::forward(ctx, "smtp://relay.test:587?tls=required") }
"""


def test_natives_route_this_recipient_or_all():
    script = new_engine().load_source(SCRIPT, "routes.vsl")
    ctx = Context("192.0.2.1", 4242, "192.0.2.25", 25, "mx.test")
    ctx.stage = Stage.MAIL_FROM
    ctx.begin_transaction(Mailbox.parse("alice@example.org"))
    script.call("on_mail_from", ctx)
    ctx.stage = Stage.RCPT_TO
    for address in ("bob@lmtp.test", "carol@remote.test", "abuse@example.test"):
        ctx.add_recipient(Mailbox.parse(address))
        script.call("on_rcpt_to", ctx)
    ctx.stage = Stage.POST_QUEUE
    script.call("on_post_queue", ctx)
    routes = {r.address: ctx.route_for(r) for r in ctx.recipients}
    assert routes == {"bob@lmtp.test": "lmtp://127.0.0.1:24", "carol@remote.test": "mx",
                      "abuse@example.test": "maildir:/var/mail/abuse"}
    script.call("everyone", ctx)  # for all: replaces the per-recipient routes
    assert {ctx.route_for(r) for r in ctx.recipients} == {
        "smtp://relay.test:587?tls=required"}
    ctx.reset()
    assert ctx.route_for(Mailbox.parse("bob@lmtp.test")) is None


def test_natives_check_their_arguments():
    engine = new_engine()
    ctx = Context("192.0.2.1", 4242, "192.0.2.25", 25, "mx.test")
    ctx.stage = Stage.HELO
    script = engine.load_source(
        'fn early(ctx) { transport::deliver(ctx) }\n'
        'fn relative(ctx) { transport::mbox(ctx, "box") }\n', "bad.vsl")
    with pytest.raises(ScriptError, match="not available before on_mail_from"):
        script.call("early", ctx)
    ctx.stage = Stage.MAIL_FROM
    ctx.begin_transaction(Mailbox.parse("alice@example.org"))
    with pytest.raises(ScriptError, match="must be absolute"):
        script.call("relative", ctx)
    findings = Linter(engine).lint_source(
        'fn on_rcpt_to(ctx) { transport::forward(ctx, "smtp://h?tls=x"); status::next() }',
        "lint.vsl", None)
    assert any("tls=none|opportunistic|required" in str(f) for f in findings)


class _Refusing:
    """A client whose server refuses MAIL, one RCPT, DATA or the message (``.``) with
    code-less replies."""

    def __init__(self, refuse: str):
        self.refuse = refuse

    def supports(self, extension: str) -> bool:
        return False

    async def command(self, verb: str, *args):
        if verb == self.refuse:
            return 550, "no such user here"
        return (354, "go on") if verb == "DATA" else (250, "ok")

    async def message(self, data: bytes, count: int):
        return [(550, "no such user here")] * count if self.refuse == "." else \
            [(250, "ok")] * count


@pytest.mark.parametrize("refuse, command", [
    ("MAIL", "MAIL FROM"), ("RCPT", "RCPT TO"), ("DATA", "DATA"), (".", "end of DATA")])
def test_an_outcome_names_the_command_its_reply_answered(refuse, command):
    from vsl.server.transports.smtp import transaction

    outcomes = asyncio.run(transaction(_Refusing(refuse), "a@x.test", ["b@y.test"], b"x",
                                       "mx.y.test"))
    assert outcomes["b@y.test"].command == command


def test_delivery_classifies_a_reply_with_the_command_it_answered():
    """The same code-less "no such user" is an address's refusal after RCPT TO and a
    filter's after DATA (the labels' convention): the classifier reads which from the
    Postfix-style "(in reply to ... command)" delivery adds."""
    from vsl.server.delivery import answered
    from vsl.stdlib.support.bounce.shared import shipped

    rcpt = Outcome("failed", "550 no such user here", "mx.y.test", "RCPT TO")
    data = Outcome("failed", "550 no such user here", "mx.y.test", "end of DATA")
    assert answered(rcpt) == "550 no such user here (in reply to RCPT TO command)"
    assert answered(Outcome("failed", "550 no", "mx.y.test")) == "550 no"
    assert shipped().classify_text(answered(rcpt)).reason == "userunknown"
    assert shipped().classify_text(answered(data)).reason == "filtered"
