"""vsl milter behind a real Postfix (tests/support/postfix.py): Postfix's smtpd asks vSL
at every command and at end of message, relays what it accepts to a loopback sink, and
the SMTP client sees vSL's refusals with the script's code and text."""
from __future__ import annotations

import asyncio
import shutil
import smtplib
import time

import dkim as dkimpy
import dns.resolver
import pytest

from vsl.server.config import DnsConfig
from vsl.server.milter.server import MilterServer
from tests.authdata import HERE
from tests.support.mailsink import Sink, free_port
from tests.support.postfix import PrivatePostfix
from tests.support.servers import config_for, in_thread

POLICY = """
const resolver = dns::resolver();
const KEY = dkim::key("rsa2048.pem");

fn on_rcpt_to(ctx) {
    switch ctx.rcpt.local_part {
        "refused" => status::deny("550 5.7.1 No mail for refused here, says vSL"),
        "later" => status::deny("451 4.7.1 Try later, says vSL"),
        _ => status::next(),
    }
}

fn on_pre_queue(ctx) {
    switch ctx.get_header("Subject") {
        "reject me" => { return status::deny("554 5.7.1 This message is refused by vSL"); }
        "hold me" => { return status::quarantine("suspect"); }
    }
    ctx.store(dkim::verify(ctx, #{ dns_resolver: global::resolver }));
    auth::add_header(ctx, #{ auth_serv_id: "mx.example.test" });
    ctx.set_header("X-Policy", `checked, ${ctx.count_header("Received")} Received`);
    ctx.remove_header("X-Remove-Me");
    ctx.set_header("To", "Bob <bob@example.test>");
    dkim::sign(ctx, #{ sdid: "dkim.test", selector: "rsa", private_key: global::KEY });
    status::next()
}
"""

MESSAGE = ("From: alice@client.example\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
           "X-Remove-Me: yes\r\n\r\nHello through Postfix and vSL.\r\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, dns_server):
    """vSL's milter and the sink in one thread's loop, a Postfix calling the milter and
    relaying to the sink."""
    tmp = tmp_path_factory.mktemp("milter")
    config = config_for(tmp, POLICY, dns=DnsConfig(
        nameservers=(f"127.0.0.1:{dns_server.port}",), timeout=2))
    shutil.copy(HERE / "rsa2048.pem", config.scripts)
    with in_thread(MilterServer(config, f"inet:127.0.0.1:{free_port()}")) as milter:
        sink = asyncio.run_coroutine_threadsafe(Sink().start(), milter.loop).result(10)
        sink.accept_all = True
        with PrivatePostfix({
                "smtpd_milters": milter.address, "milter_default_action": "tempfail",
                "relayhost": f"[127.0.0.1]:{sink.port}", "relay_transport": "smtp",
                "default_transport": "smtp"}) as postfix:
            yield postfix, sink


def send(postfix, subject="hello", rcpts=("bob@example.test",)):
    """Send one message to Postfix; the refusals smtplib reports, by recipient."""
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as client:
        return client.sendmail("alice@client.example", list(rcpts),
                               MESSAGE.format(subject=subject))


def delivered(sink, subject: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in sink.messages:
            if f"Subject: {subject}".encode() in message.data:
                return message
        time.sleep(0.1)
    pytest.fail(f"nothing with Subject: {subject} reached the sink")


def public_key(port):
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], port

    def dnsfunc(name, timeout=5):
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(answer[0].strings)
    return dnsfunc


def test_an_accepted_message_is_signed_and_has_authentication_results(setup, dns_server):
    postfix, sink = setup
    assert send(postfix, "signed") == {}
    message = delivered(sink, "signed")
    data = message.data
    assert b"Authentication-Results: mx.example.test;" in data
    assert b"dkim=none" in data
    assert b"X-Policy: checked, 0 Received" in data  # Postfix's own is not passed on
    assert b"\r\nFrom: alice@client.example\r\nTo: Bob <bob@example.test>\r\nSubject: signed" \
        in data  # a changed field keeps its place
    assert b"X-Remove-Me" not in data
    assert dkimpy.verify(data, dnsfunc=public_key(dns_server.port))


def test_a_signature_made_before_postfix_verifies_in_the_milter(setup):
    """The milter sees the header fields and body byte for byte: dkim::verify passes."""
    postfix, sink = setup
    data = (MESSAGE.format(subject="presigned").replace(
        "\r\n\r\n", "\r\nDate: Sun, 6 Dec 2026 12:00:00 +0000\r\n"
        "Message-ID: <presigned@client.example>\r\n\r\n")).encode()
    signature = dkimpy.sign(data, b"rsa", b"dkim.test", (HERE / "rsa2048.pem").read_bytes())
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as client:
        assert client.sendmail("alice@client.example", ["bob@example.test"],
                               signature + data) == {}
    assert b"dkim=pass header.d=dkim.test" in delivered(sink, "presigned").data


def test_a_refusal_at_rcpt_reaches_the_client(setup):
    postfix, _ = setup
    refused = send(postfix, "some refused", rcpts=("bob@example.test", "refused@example.test"))
    assert refused == {"refused@example.test": (550, b"5.7.1 No mail for refused here, says vSL")}


def test_an_unqualified_sender_is_accepted_as_postfix_accepts_it(setup):
    """MAIL FROM:<root> (a host of mynetworks): Postfix takes it, so does the milter, and
    the script still decides on its recipients."""
    postfix, _ = setup
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as client:
        client.ehlo("client.example")
        replies = [client.mail("root"), client.rcpt("refused@example.test")]
    assert [code for code, _ in replies] == [250, 550]
    assert replies[1][1].endswith(b"No mail for refused here, says vSL")


def test_a_temporary_refusal_at_rcpt(setup):
    postfix, _ = setup
    with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        send(postfix, "later", rcpts=("later@example.test",))
    assert caught.value.recipients == {
        "later@example.test": (451, b"4.7.1 Try later, says vSL")}


def test_a_refusal_at_end_of_message_reaches_the_client(setup):
    postfix, _ = setup
    with pytest.raises(smtplib.SMTPDataError) as caught:
        send(postfix, "reject me")
    assert (caught.value.smtp_code, caught.value.smtp_error) == (
        554, b"5.7.1 This message is refused by vSL")


def test_a_quarantine_puts_the_message_on_the_hold_queue(setup):
    postfix, _ = setup
    assert send(postfix, "hold me") == {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not list((postfix.spool / "hold").glob("*")):
        time.sleep(0.1)
    held = list((postfix.spool / "hold").glob("*"))
    assert len(held) == 1
    assert b"Subject: hold me" in held[0].read_bytes()
