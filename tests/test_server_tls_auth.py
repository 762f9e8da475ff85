"""TLS (STARTTLS and implicit TLS) and AUTH (PLAIN, LOGIN, users file, on_auth)."""
from __future__ import annotations

import asyncio
import base64
import logging
import smtplib
import socket
import time
from dataclasses import replace

import pytest

from vsl.server import implicit_tls
from vsl.server.admission import Admission
from vsl.server.config import AuthConfig, Listener, SmtpLimits
from tests.support.servers import config_for, running
from tests.support.smtp_tools import (FALLBACK, Raw, all_messages, client, queued_id,
                                      ssl_client, tls_setup, users_file, wait_for)

SECURED_POLICY = """
fn on_connect(ctx) { ctx.store("at_connect", ctx.is_secured()); status::next() }
fn on_mail_from(ctx) { ctx.store("at_mail", ctx.is_secured()); status::next() }
fn on_pre_queue(ctx) {
    ctx.append_header("X-Secured", `${ctx.get("at_connect")} ${ctx.get("at_mail")}`);
    let who = if ctx.is_authenticated() { ctx.auth.authid } else { "-" };
    ctx.append_header("X-Auth", `${ctx.is_authenticated()} ${who}`);
    status::next()
}
"""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def plain(user: str, password: str, authz: str = "") -> str:
    return b64(f"{authz}\0{user}\0{password}")


def header(data: bytes, name: str) -> str | None:
    for line in data.split(b"\r\n"):
        if line.lower().startswith(name.lower().encode() + b":"):
            return line.split(b":", 1)[1].strip().decode()
    return None


def send(smtp, sender="alice@example.org", rcpt="bob@example.test") -> bytes:
    assert smtp.mail(sender)[0] == 250
    assert smtp.rcpt(rcpt)[0] == 250
    code, text = smtp.data(b"Subject: tls\r\n\r\nbody\r\n")
    assert code == 250, (code, text)
    return text


def received_with(data: bytes) -> str:
    """The protocol keyword of the Received header ("with ESMTPS")."""
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    return head.split("\twith ", 1)[1].split("\r\n", 1)[0]


@pytest.fixture
def tls(tmp_path):
    return tls_setup(tmp_path)


# ---- STARTTLS ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["smtp", "submission"])
def test_starttls_secures_the_session(tmp_path, tls, kind):
    tls_config, context, _ = tls
    config = config_for(tmp_path, SECURED_POLICY, tls=tls_config,
                        listen=(Listener("127.0.0.1", 0, kind),))
    with running(config) as server:
        with client(server, kind) as smtp:
            smtp.ehlo()
            assert smtp.has_extn("starttls")
            assert not smtp.has_extn("auth")  # nothing can check credentials here
            assert smtp.starttls(context=context)[0] == 220
            smtp.ehlo()
            assert not smtp.has_extn("starttls")
            secured = asyncio.run(server.spool.message(queued_id(send(smtp))))
        with client(server, kind) as smtp:  # the same listener without STARTTLS
            smtp.ehlo()
            plain_msg = asyncio.run(server.spool.message(queued_id(send(smtp))))
    assert header(secured, "X-Secured") == "false true"
    assert received_with(secured) == "ESMTPS"
    assert header(plain_msg, "X-Secured") == "false false"
    assert received_with(plain_msg) == "ESMTP"
    entries = {e.envelope.tls for e in all_messages(server)}
    assert entries == {True, False}


def test_starttls_is_not_offered_without_a_certificate(tmp_path):
    with running(config_for(tmp_path)) as server:
        with Raw(server) as raw:
            code, text = raw.cmd("EHLO c.test")
            assert code == 250 and b"STARTTLS" not in text
            code, _ = raw.cmd("STARTTLS")
            assert code in (454, 502), code
            assert raw.cmd("NOOP")[0] == 250


def test_starttls_forgets_the_plaintext_session(tmp_path, tls):
    """RFC 3207 4.2: after TLS the client starts over (EHLO again); commands pipelined
    behind STARTTLS in the clear are discarded, never run inside the TLS session."""
    tls_config, context, _ = tls
    with running(config_for(tmp_path, tls=tls_config)) as server:
        raw = Raw(server)
        assert raw.cmd("EHLO c.test")[0] == 250
        raw.send(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
        assert raw.reply()[0] == 220
        raw.sock = context.wrap_socket(raw.sock, server_hostname="127.0.0.1")
        raw.buffer = b""
        # the first reply inside TLS answers our command, not the injected MAIL FROM
        assert raw.cmd("NOOP") == (250, b"2.0.0 Ok")
        assert raw.cmd("STARTTLS") == (554, b"5.5.1 Error: TLS already active")  # Postfix's
        assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 503  # EHLO first
        assert raw.cmd("EHLO c.test")[0] == 250
        assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250
        raw.close()


# ---- implicit TLS ---------------------------------------------------------------------------

def test_implicit_tls_on_smtps(tmp_path, tls):
    tls_config, context, _ = tls
    config = config_for(tmp_path, SECURED_POLICY, tls=tls_config,
                        listen=(Listener("127.0.0.1", 0, "smtps"),))
    with running(config) as server:
        with ssl_client(server, context) as smtp:
            smtp.ehlo()
            assert not smtp.has_extn("starttls")
            assert smtp.docmd("STARTTLS") == (554, b"5.5.1 Error: TLS already active")
            data = asyncio.run(server.spool.message(queued_id(send(smtp))))
    assert header(data, "X-Secured") == "true true"
    assert received_with(data) == "ESMTPS"


def test_smtps_counts_a_connection_before_its_handshake(tmp_path, tls, caplog):
    """An smtps connection holds its slot from the accept: one that never says hello
    fills connections_per_ip, the next is closed at once (no TLS spent on it), and the
    slot is free again when the first one's handshake fails."""
    caplog.set_level(logging.INFO)
    tls_config, context, _ = tls
    config = config_for(tmp_path, tls=tls_config, listen=(Listener("127.0.0.1", 0, "smtps"),),
                        limits=replace(SmtpLimits(), connections_per_ip=1))
    with running(config) as server:
        idle = socket.create_connection(("127.0.0.1", server.port("smtps")), timeout=5)
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", server.port("smtps")), timeout=5) as over:
            assert over.recv(100) == b""
        assert "127.0.0.1: connection refused, limit reached" in caplog.text
        idle.close()
        assert wait_for(lambda: "SSL_accept error from unknown[127.0.0.1]: lost connection"
                        in caplog.text)
        for _ in range(2):  # the slot is free again when a session ends
            with ssl_client(server, context) as smtp:
                assert smtp.ehlo()[0] == 250
            assert wait_for(lambda: server.services.admission.total == 0)


def test_an_smtps_handshake_that_takes_too_long_is_timed_out(tmp_path, tls, caplog,
                                                             monkeypatch):
    monkeypatch.setattr(implicit_tls, "HANDSHAKE_TIMEOUT", 0.3)
    caplog.set_level(logging.INFO)
    tls_config, _, _ = tls
    config = config_for(tmp_path, tls=tls_config, listen=(Listener("127.0.0.1", 0, "smtps"),))
    with running(config) as server:
        with socket.create_connection(("127.0.0.1", server.port("smtps")), timeout=5) as idle:
            assert idle.recv(100) == b""  # closed by the server
        assert wait_for(lambda: "SSL_accept error from unknown[127.0.0.1]: timed out"
                        in caplog.text)
        assert wait_for(lambda: server.services.admission.total == 0)


def test_an_smtps_client_gone_before_its_accept_is_dropped_uncounted():
    """A client that reset before the connection was made has no address: the
    connection is aborted, and nothing is counted."""
    class Gone:
        aborted = False

        def get_extra_info(self, name):
            return None

        def abort(self):
            self.aborted = True

    admission = Admission(SmtpLimits())
    transport = Gone()
    implicit_tls.ImplicitTls(lambda: None, None, admission).connection_made(transport)
    assert transport.aborted and admission.total == 0


def test_smtps_offers_auth(tmp_path, tls):
    tls_config, context, _ = tls
    config = config_for(tmp_path, SECURED_POLICY, tls=tls_config,
                        auth=AuthConfig(users_file=users_file(tmp_path, alice="secret")),
                        listen=(Listener("127.0.0.1", 0, "smtps"),))
    with running(config) as server:
        with ssl_client(server, context) as smtp:
            smtp.ehlo()
            assert smtp.has_extn("auth"), "no AUTH on an implicit-TLS listener"
            assert smtp.login("alice", "secret")[0] == 235
            msg_id = queued_id(send(smtp, rcpt="far@elsewhere.test"))
            data = asyncio.run(server.spool.message(msg_id))
    assert received_with(data) == "ESMTPSA"


# ---- AUTH with a users file -----------------------------------------------------------------

@pytest.fixture
def auth_server(tmp_path, tls):
    """A submission listener with TLS and a users file (alice/secret, mallory/secret)."""
    tls_config, context, _ = tls
    users = users_file(tmp_path, alice="secret", mallory="secret")
    policy = SECURED_POLICY + """
fn on_auth(ctx) {
    if ctx.auth.authid == "mallory" { return status::deny("535 5.7.8 account locked"); }
    if ctx.auth.authid == "alice" { return status::accept(); }  // never beats a bad password
    status::next()
}
fn on_rcpt_to(ctx) {
    if ctx.is_authenticated() {
        ctx.store("rcpt_auth", `${ctx.auth.authid} ${ctx.auth.mechanism} ${ctx.auth.password}`);
    }
    status::next()
}
"""
    policy = policy.replace('fn on_pre_queue(ctx) {', 'fn on_pre_queue(ctx) {\n'
                            '    ctx.append_header("X-Rcpt-Auth", ctx.get("rcpt_auth") ?? "");')
    config = config_for(tmp_path, policy, tls=tls_config, auth=AuthConfig(users_file=users),
                        listen=(Listener("127.0.0.1", 0, "submission"),))
    with running(config) as server:
        server.context = context
        yield server


def tls_client(server):
    smtp = client(server, "submission")
    smtp.ehlo()
    smtp.starttls(context=server.context)
    smtp.ehlo()
    return smtp


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("initial_response", [True, False])
def test_auth_success_and_failure(auth_server, mechanism, initial_response):
    with tls_client(auth_server) as smtp:
        assert set(smtp.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        method = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
        for user, password in (("alice", "wrong"), ("nobody", "secret"), ("ALICE", "secret")):
            smtp.user, smtp.password = user, password
            with pytest.raises(smtplib.SMTPAuthenticationError) as err:
                smtp.auth(mechanism, method, initial_response_ok=initial_response)
            assert err.value.smtp_code == 535 and err.value.smtp_error.startswith(b"5.7.8")
        smtp.user, smtp.password = "alice", "secret"
        code, text = smtp.auth(mechanism, method, initial_response_ok=initial_response)
        assert (code, text) == (235, b"2.7.0 Authentication successful")
        assert smtp.docmd("AUTH", f"PLAIN {plain('alice', 'secret')}")[0] == 503  # once only
        msg_id = queued_id(send(smtp, rcpt="far@elsewhere.test"))
        data = asyncio.run(auth_server.spool.message(msg_id))
    assert received_with(data) == "ESMTPSA"
    assert header(data, "X-Auth") == "true alice"
    # later stages see who authenticated, never the password
    assert header(data, "X-Rcpt-Auth") == f"alice {mechanism} ()"
    [entry] = all_messages(auth_server)
    assert entry.envelope.authenticated_as == "alice"


def test_on_auth_can_deny_a_correct_password(auth_server):
    with tls_client(auth_server) as smtp:
        code, text = smtp.docmd("AUTH", f"PLAIN {plain('mallory', 'secret')}")
        assert (code, text) == (535, b"5.7.8 account locked")
        assert smtp.mail("m@example.org")[0] == 250
        assert smtp.rcpt("far@elsewhere.test")[0] == 554  # not authenticated


def test_auth_is_not_offered_before_tls(auth_server):
    with Raw(auth_server, "submission") as raw:
        code, text = raw.cmd("EHLO c.test")
        assert code == 250 and b"AUTH" not in text and b"STARTTLS" in text
        code, text = raw.cmd(f"AUTH PLAIN {plain('alice', 'secret')}")
        assert code == 538 and text.startswith(b"5.7.11"), (code, text)
        assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250
        assert raw.cmd("RCPT TO:<far@elsewhere.test>")[0] == 554


def test_auth_exchange_errors(auth_server):
    with tls_client(auth_server) as smtp:
        assert smtp.docmd("AUTH", "PLAIN")[0] == 334
        assert smtp.docmd("*") == (501, b"5.7.0 Authentication aborted")  # Postfix's
        assert smtp.docmd("AUTH") == (501, b"5.5.4 Syntax: AUTH mechanism")
        assert smtp.docmd("AUTH", "PLAIN a b") == (501, b"5.5.4 Syntax: AUTH mechanism")
        assert smtp.docmd("AUTH", "PLAIN not-base64!")[0] == 501
        assert smtp.docmd("AUTH", f"PLAIN {b64('no separators')}")[0] == 501
        assert smtp.docmd("AUTH", "LOGIN")[0] == 334
        assert smtp.docmd(b64("alice"))[0] == 334
        assert smtp.docmd("*")[0] == 501
        assert smtp.docmd("AUTH", "CRAM-MD5")[0] == 504
        assert smtp.noop()[0] == 250
        assert smtp.docmd("AUTH", f"PLAIN {plain('alice', 'secret')}")[0] == 235
        assert smtp.docmd("AUTH", "PLAIN") == (503, b"5.5.1 Error: already authenticated")


def test_authenticated_client_may_relay(auth_server):
    with tls_client(auth_server) as smtp:
        assert smtp.mail("a@example.org")[0] == 250
        assert smtp.rcpt("far@elsewhere.test") == (554, b"5.7.1 Relay access denied")
        assert smtp.rset()[0] == 250
        assert smtp.login("alice", "secret")[0] == 235
        assert smtp.mail("a@example.org")[0] == 250
        assert smtp.rcpt("far@elsewhere.test")[0] == 250


def test_allow_plaintext_offers_auth_without_tls(tmp_path):
    users = users_file(tmp_path, alice="secret")
    config = config_for(tmp_path, auth=AuthConfig(users_file=users, allow_plaintext=True))
    with running(config) as server:
        with client(server) as smtp:
            smtp.ehlo()
            assert smtp.has_extn("auth")
            assert smtp.login("alice", "secret")[0] == 235
            msg_id = queued_id(send(smtp, rcpt="far@elsewhere.test"))
            data = asyncio.run(server.spool.message(msg_id))
    assert received_with(data) == "ESMTPA"


def test_auth_plain_acting_for_another_user_fails(tmp_path, caplog):
    """RFC 4616 2: an authorization identity other than the user's own is refused (no one
    may act for another here); the user's own, or none, logs in."""
    users = users_file(tmp_path, alice="secret", bob="other")
    config = config_for(tmp_path, auth=AuthConfig(users_file=users, allow_plaintext=True))
    with running(config) as server:
        with client(server) as smtp:
            smtp.ehlo()
            code, text = smtp.docmd("AUTH", f"PLAIN {plain('alice', 'secret', authz='bob')}")
            assert (code, text) == (535, b"5.7.8 Error: authentication failed: "
                                         b"authentication failure")
            assert smtp.docmd("AUTH", f"PLAIN {plain('alice', 'secret', authz='alice')}")[0] \
                == 235
    assert "SASL PLAIN authentication failed" in caplog.text


def test_auth_mechanisms_are_configurable(tmp_path):
    users = users_file(tmp_path, alice="secret")
    config = config_for(tmp_path, auth=AuthConfig(mechanisms=("LOGIN",), users_file=users,
                                                  allow_plaintext=True))
    with running(config) as server:
        with client(server) as smtp:
            smtp.ehlo()
            assert smtp.esmtp_features["auth"].split() == ["LOGIN"]
            assert smtp.docmd("AUTH", f"PLAIN {plain('alice', 'secret')}")[0] == 504
            smtp.user, smtp.password = "alice", "secret"
            assert smtp.auth("LOGIN", smtp.auth_login)[0] == 235


def test_auth_is_not_offered_when_nothing_checks_credentials(tmp_path):
    config = config_for(tmp_path, "fn on_helo(ctx) { status::next() }",
                        auth=AuthConfig(allow_plaintext=True))
    with running(config) as server:
        with Raw(server) as raw:
            code, text = raw.cmd("EHLO c.test")
            assert b"AUTH" not in text
            code, _ = raw.cmd(f"AUTH PLAIN {plain('alice', 'secret')}")
            assert code in (502, 504), code
            assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250
            assert raw.cmd("RCPT TO:<far@elsewhere.test>")[0] == 554


# ---- on_auth alone (no users file) ----------------------------------------------------------

ON_AUTH_ALONE = """
fn on_auth(ctx) {
    if ctx.auth.authid == "boom" { throw "auth backend down"; }
    if ctx.auth.authid == "temp" { return status::deny("454 4.7.0 try again later"); }
    if ctx.auth.authid == "bob" && ctx.auth.password == "hunter2" {
        return status::accept(`235 2.7.0 welcome ${ctx.auth.authid} (${ctx.auth.mechanism})`);
    }
    if ctx.auth.authid == "carol" { return status::next(); }
    status::deny("535 5.7.8 no")
}
"""


def test_on_auth_decides_alone(tmp_path, caplog):
    config = config_for(tmp_path, ON_AUTH_ALONE, auth=AuthConfig(allow_plaintext=True))
    with running(config) as server:
        with Raw(server) as raw:
            code, text = raw.cmd("EHLO c.test")
            assert b"AUTH LOGIN PLAIN" in text
            assert raw.cmd(f"AUTH PLAIN {plain('bob', 'wrong')}") == (535, b"5.7.8 no")
            # next without a users file: nothing accepted the password
            assert raw.cmd(f"AUTH PLAIN {plain('carol', 'x')}")[0] == 535
            assert raw.cmd(f"AUTH PLAIN {plain('temp', 'x')}") == \
                (454, b"4.7.0 try again later")
            assert raw.cmd(f"AUTH PLAIN {plain('boom', 'x')}") == FALLBACK
            assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250
            assert raw.cmd("RCPT TO:<far@elsewhere.test>")[0] == 554  # still anonymous
            assert raw.cmd("RSET")[0] == 250
            assert raw.cmd("AUTH LOGIN")[0] == 334
            assert raw.cmd(b64("bob"))[0] == 334
            assert raw.cmd(b64("hunter2")) == (235, b"2.7.0 welcome bob (LOGIN)")
            assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250
            assert raw.cmd("RCPT TO:<far@elsewhere.test>")[0] == 250
    assert "auth backend down" in caplog.text


def test_on_auth_accept_never_beats_a_wrong_password(auth_server):
    """With a users file, the file must accept the password; on_auth can only refuse."""
    with tls_client(auth_server) as smtp:
        assert smtp.docmd("AUTH", f"PLAIN {plain('alice', 'not-her-password')}")[0] == 535
        assert smtp.mail("a@example.org")[0] == 250
        assert smtp.rcpt("far@elsewhere.test")[0] == 554


def test_authentication_is_per_connection(tmp_path, tls):
    """One client's AUTH does not authenticate another connection."""
    tls_config, context, _ = tls
    users = users_file(tmp_path, alice="secret")
    config = config_for(tmp_path, tls=tls_config, auth=AuthConfig(users_file=users),
                        listen=(Listener("127.0.0.1", 0, "submission"),))
    with running(config) as server:
        server.context = context
        with tls_client(server) as first:
            assert first.login("alice", "secret")[0] == 235
            with tls_client(server) as second:
                assert second.mail("a@example.org")[0] == 250
                assert second.rcpt("far@elsewhere.test")[0] == 554
            assert first.mail("a@example.org")[0] == 250
            assert first.rcpt("far@elsewhere.test")[0] == 250


def test_a_failed_auth_leaves_no_faccept_behind(tmp_path):
    """on_auth may faccept a trusted account, but when the users file then refuses the
    password, the session must not keep that faccept (it would skip every later stage)."""
    policy = """
fn on_auth(ctx) { if ctx.auth.authid == "trusted" { status::faccept() } else { status::next() } }
fn on_mail_from(ctx) { status::deny("550 5.7.1 on_mail_from ran") }
"""
    users = users_file(tmp_path, trusted="right")
    config = config_for(tmp_path, policy, auth=AuthConfig(users_file=users, allow_plaintext=True))
    with running(config) as server:
        with Raw(server) as raw:
            raw.cmd("EHLO c.test")
            assert raw.cmd(f"AUTH PLAIN {plain('trusted', 'wrong')}")[0] == 535
            assert raw.cmd("MAIL FROM:<a@example.org>") == (550, b"5.7.1 on_mail_from ran")
        with Raw(server) as raw:  # with the right password the faccept holds
            raw.cmd("EHLO c.test")
            assert raw.cmd(f"AUTH PLAIN {plain('trusted', 'right')}")[0] == 235
            assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250
