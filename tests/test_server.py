"""The SMTP server, end to end: real clients against a real server on loopback."""
from __future__ import annotations

import asyncio
import smtplib
from dataclasses import replace

import dns.resolver
import pytest

from vsl.server.app import Server
from vsl.server.envelope import Envelope
from vsl.server.queue import Spool
from vsl.stdlib.dns import DnsDefaults
from tests.support.servers import config_for, running
from tests.support.smtp_tools import Raw


def client(server) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", server.port(), local_hostname="client.example.test",
                        timeout=10)


def test_no_script_accepts_local_domains_only(tmp_path):
    with running(config_for(tmp_path)) as server:
        with client(server) as smtp:
            assert smtp.ehlo()[0] == 250
            assert smtp.mail("a@example.org")[0] == 250
            assert smtp.rcpt("bob@example.test")[0] == 250
            assert smtp.rcpt("postmaster@mx.test")[0] == 250
            code, text = smtp.rcpt("victim@elsewhere.test")
            assert (code, text) == (554, b"5.7.1 Relay access denied")
            code, text = smtp.data(b"Subject: hi\r\n\r\nhello\r\n")
            assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
        msg_id = text.decode().rsplit(" ", 1)[1]
        entry = asyncio.run(server.spool.get(msg_id))
        assert entry.queue == "deliver"
        assert [r.address for r in entry.envelope.recipients] == \
            ["bob@example.test", "postmaster@mx.test"]
        data = asyncio.run(server.spool.message(msg_id))
        assert data.startswith(b"Received: from client.example.test ([127.0.0.1])\r\n\tby mx.test")
        assert data.endswith(b"Subject: hi\r\n\r\nhello\r\n")


@pytest.mark.parametrize("local_domains, hostname_is_local", [(None, True), ((), False)])
def test_an_empty_local_domains_list_is_a_relay_only_server(tmp_path, local_domains,
                                                            hostname_is_local):
    """Unset, the hostname is the local domain; listed empty, there is none (Postfix's
    empty mydestination, which vsl migrate writes so): only postmaster is accepted."""
    with running(config_for(tmp_path, local_domains=local_domains)) as server:
        with client(server) as smtp:
            assert smtp.ehlo()[0] == 250
            assert smtp.mail("a@example.org")[0] == 250
            assert smtp.rcpt("bob@mx.test")[0] == (250 if hostname_is_local else 554)
            assert smtp.rcpt("bob@example.test")[0] == 554
            assert smtp.rcpt("postmaster@mx.test")[0] == 250


def test_ehlo_lists_the_extensions(tmp_path):
    with running(config_for(tmp_path)) as server:
        with client(server) as smtp:
            smtp.ehlo()
            for ext in ("size", "pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes"):
                assert smtp.has_extn(ext), ext
            assert not smtp.has_extn("auth") and not smtp.has_extn("starttls")


def test_stage_statuses(tmp_path):
    policy = """
fn on_helo(ctx) { if ctx.helo == "bad.test" { status::deny("550 5.7.1 go away") } else { status::next() } }
fn on_mail_from(ctx) { if ctx.sender.domain == "blocked.test" { return status::deny("553 5.7.1 blocked"); } status::accept("250 2.1.0 welcome") }
fn on_rcpt_to(ctx) { if ctx.rcpt.local_part == "nobody" { status::deny("550 5.1.1 no such user") } else { status::next() } }
fn on_pre_queue(ctx) { ctx.append_header("X-Policy", "seen"); status::next() }
"""
    with running(config_for(tmp_path, policy)) as server:
        with client(server) as smtp:
            assert smtp.helo("bad.test") == (550, b"5.7.1 go away")
            assert smtp.ehlo("good.test")[0] == 250
            assert smtp.mail("x@blocked.test") == (553, b"5.7.1 blocked")
            assert smtp.mail("x@ok.test") == (250, b"2.1.0 welcome")
            assert smtp.rcpt("nobody@example.test") == (550, b"5.1.1 no such user")
            assert smtp.rcpt("bob@example.test")[0] == 250
            code, text = smtp.data(b"Subject: t\r\n\r\nbody\r\n")
            assert code == 250
        msg_id = text.decode().rsplit(" ", 1)[1]
        assert b"X-Policy: seen\r\n" in asyncio.run(server.spool.message(msg_id))
        assert [r.address for r in asyncio.run(server.spool.get(msg_id)).envelope.recipients] == \
            ["bob@example.test"]


def test_script_error_gives_the_fallback_reply(tmp_path, caplog):
    policy = 'fn on_mail_from(ctx) { let x = 1 / 0; status::next() }'
    with running(config_for(tmp_path, policy)) as server:
        with client(server) as smtp:
            smtp.ehlo()
            assert smtp.mail("a@example.org") == (
                451, b"4.3.0 Temporary local problem, try again later")
            assert smtp.noop()[0] == 250  # the session goes on
    assert "division by zero" in caplog.text and "main.vsl:1:34" in caplog.text


@pytest.mark.parametrize("policy", [
    'fn on_connect(ctx) { status::deny("554 5.7.1 not you") }',
])
def test_deny_at_connect_closes(tmp_path, policy):
    with running(config_for(tmp_path, policy)) as server:
        with pytest.raises(smtplib.SMTPConnectError) as err:
            client(server)
        assert err.value.smtp_code == 554


@pytest.mark.parametrize("script, error", [
    ("fn on_helo(ctx) { status::nxt() }\n",
     "main.vsl:1:19: error: unknown function 'status::nxt' (did you mean 'next'?)"),
    # a misspelled stage would never run: its deny rule would be silently off
    ("fn on_mailfrom(ctx) { status::deny() }\n",
     "main.vsl:1:4: error: 'on_mailfrom' is not a stage function (did you mean 'on_mail_from'?)"),
    ("fn on_helo(ctx) { if ctx.sender.domain == \"x\" { status::deny() } else { status::next() } }\n",
     "main.vsl:1:26: error: ctx.sender is not available in on_helo"),
])
def test_serve_refuses_to_start_on_scripts_that_do_not_lint(tmp_path, script, error):
    import subprocess
    import sys
    from pathlib import Path

    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "main.vsl").write_text(script)
    vsl = Path(sys.executable).parent / "vsl"
    result = subprocess.run([vsl, "serve", "--scripts", str(scripts), "--listen",
                             "127.0.0.1:1", "--queue-dir", str(tmp_path / "q")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "the scripts do not lint" in result.stderr
    assert error in result.stderr


def test_serve_names_a_bad_config_key(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    config = tmp_path / "vsl.toml"
    config.write_text("[limits]\nrecipients = \"many\"\n")
    vsl = Path(sys.executable).parent / "vsl"
    result = subprocess.run([vsl, "serve", "--config", str(config)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert "limits.recipients: must be an integer >= 1, not 'many'" in result.stderr


def test_serve_names_a_bad_line_of_the_relay_credentials(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "relay-credentials").write_text("smtp.provider.example:587 alice\n")
    config = tmp_path / "vsl.toml"
    config.write_text('[server]\nqueue_dir = "q"\n'
                      '[delivery]\ncredentials = "relay-credentials"\n')
    vsl = Path(sys.executable).parent / "vsl"
    result = subprocess.run([vsl, "serve", "--config", str(config)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert "relay-credentials:1: expected 'host:port user password'" in result.stderr


def test_a_message_never_acknowledged_is_held_at_start(tmp_path):
    """A message still in 'working' when the server stopped never got its 250: the next
    start moves it to 'hold' (its client sends it again; an operator may release it)."""
    config = config_for(tmp_path)
    msg_id = asyncio.run(Spool(config.queue_dir).put(
        Envelope("a@example.org"), b"Subject: hi\r\n\r\nhi\r\n"))
    with running(config) as server:
        assert asyncio.run(server.spool.get(msg_id)).queue == "hold"


@pytest.mark.parametrize("policy, greeting", [
    ('fn on_connect(ctx) { 1 / 0 }', (421, b"4.3.0 Temporary local problem, try again later")),
    ('fn on_connect(ctx) { status::deny("450 4.7.1 later") }', (421, b"4.7.1 later")),
    ('fn on_connect(ctx) { status::deny("550 5.7.1 go away") }', (554, b"5.7.1 go away")),
    ('fn on_connect(ctx) { status::deny("550 5.7.1 go\\n550 5.7.1 away") }',
     (554, b"5.7.1 go\n5.7.1 away")),
])
def test_a_refused_greeting_is_421_or_554(tmp_path, policy, greeting):
    """RFC 5321 §3.1, §4.2: a greeting is 220, 421 or 554, whatever the policy said."""
    with running(config_for(tmp_path, policy)) as server:
        with Raw(server) as raw:
            assert raw.greeting == greeting
            if greeting[0] == 421:
                assert raw.closed(), "a 421 greeting closes the connection at once"
            else:
                assert raw.cmd("QUIT") == (221, b"2.0.0 Bye")
                assert raw.closed()


BAD_SEQUENCE = (503, b"5.5.1 Error: bad sequence of commands")
DENY_CONNECT = 'fn on_connect(ctx) { status::deny("554 5.7.1 go away") }'


def test_after_a_554_greeting_only_quit_is_served(tmp_path):
    """RFC 5321 §3.1: after a 554 greeting the server waits for QUIT and answers any other
    command 503 (it no longer hangs up at once)."""
    with running(config_for(tmp_path, DENY_CONNECT)) as server:
        with Raw(server) as raw:
            assert raw.greeting == (554, b"5.7.1 go away")
            for command in ("EHLO client.test", "MAIL FROM:<a@example.org>", "NOOP", "",
                            "NO SUCH COMMAND", "quit now"):
                assert raw.cmd(command) == BAD_SEQUENCE, command
            assert raw.cmd("quit") == (221, b"2.0.0 Bye")
            assert raw.closed()


def test_after_a_554_greeting_the_error_limit_and_the_timeout_still_close(tmp_path):
    limits = replace(config_for(tmp_path).limits, errors=3, command_timeout=0.5)
    with running(config_for(tmp_path, DENY_CONNECT, limits=limits)) as server:
        with Raw(server) as raw:
            assert raw.cmd("EHLO client.test") == BAD_SEQUENCE
            assert raw.cmd("HELO client.test") == BAD_SEQUENCE
            assert raw.cmd("NOOP") == BAD_SEQUENCE
            assert raw.reply() == (421, b"4.7.0 mx.test Error: too many errors")
            assert raw.closed()
        with Raw(server) as raw:
            assert raw.reply(timeout=10) == (421, b"4.4.2 mx.test Error: timeout exceeded")
            assert raw.closed()


def test_an_accepted_greeting_is_220(tmp_path):
    with running(config_for(tmp_path, 'fn on_connect(ctx) { status::accept("250 hello") }')) \
            as server:
        with Raw(server) as raw:
            assert raw.greeting == (220, b"hello")


def test_one_id_in_the_reply_the_received_header_the_log_and_ctx(tmp_path, caplog):
    policy = 'fn on_pre_queue(ctx) { ctx.append_header("X-Id", ctx.message_id); status::next() }'
    caplog.set_level("INFO")
    with running(config_for(tmp_path, policy)) as server:
        with client(server) as smtp:
            smtp.ehlo()
            smtp.mail("a@example.org")
            smtp.rcpt("bob@example.test")
            code, text = smtp.data(b"Subject: t\r\n\r\nbody\r\n")
        msg_id = text.decode().rsplit(" ", 1)[1]
        data = asyncio.run(server.spool.message(msg_id))
        assert f"\tid {msg_id}\r\n".encode() in data
        assert f"X-Id: {msg_id}\r\n".encode() in data
        assert asyncio.run(server.spool.get(msg_id)).envelope.transaction == msg_id
    assert f"queued {msg_id} in working" in caplog.text


def logged_rejects(tmp_path, caplog, policy: str, talk) -> tuple[list[str], str]:
    """The reject lines logged while ``talk(smtp)`` runs against ``policy``, and the
    script's file."""
    caplog.set_level("INFO")
    with running(config_for(tmp_path, policy)) as server:
        with client(server) as smtp:
            talk(smtp)
        script = server.policy.script.file
    return [r.getMessage() for r in caplog.records if "reject:" in r.getMessage()], script


def test_every_reject_is_logged_with_who_decided(tmp_path, caplog):
    policy = ('fn on_helo(ctx) {\n    if ctx.helo == "bad.test" { return status::deny('
              '"550 5.7.1 go away"); }\n    status::next()\n}\n'
              'fn on_mail_from(ctx) { if ctx.sender.local_part == "fail" { throw "no"; } '
              'status::next() }\n')

    def talk(smtp):
        assert smtp.helo("bad.test")[0] == 550
        smtp.ehlo("good.test")
        assert smtp.mail("fail@example.org")[0] == 451
        smtp.mail("a@example.org")
        assert smtp.rcpt("victim@elsewhere.test")[0] == 554
    rejects, script = logged_rejects(tmp_path, caplog, policy, talk)
    assert rejects == [
        f"NOQUEUE: reject: HELO from unknown[127.0.0.1]: 550 5.7.1 go away; proto=SMTP "
        f"helo=<bad.test> decided_by=on_helo@{script}:2:40",
        "NOQUEUE: reject: MAIL from unknown[127.0.0.1]: 451 4.3.0 Temporary local problem, "
        "try again later; from=<fail@example.org> proto=ESMTP helo=<good.test> "
        "decided_by=fallback_reply@on_mail_from",
        "NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 554 5.7.1 Relay access denied; "
        "from=<a@example.org> to=<victim@elsewhere.test> proto=ESMTP helo=<good.test> "
        "decided_by=server"]
    assert all(r.levelname == "INFO" for r in caplog.records if "reject:" in r.getMessage())


def test_each_deny_is_logged_with_its_own_position(tmp_path, caplog):
    policy = ('fn on_rcpt_to(ctx) {\n'
              '    if ctx.rcpt.local_part == "a" { return status::deny("550 5.1.1 no a"); }\n'
              '    if ctx.rcpt.local_part == "b" {\n'
              '        return status::deny("550 5.1.1 no b");\n'
              '    }\n'
              '    status::next()\n'
              '}\n')

    def talk(smtp):
        smtp.ehlo()
        smtp.mail("x@example.org")
        assert smtp.rcpt("a@example.test")[0] == 550
        assert smtp.rcpt("b@example.test")[0] == 550
    rejects, script = logged_rejects(tmp_path, caplog, policy, talk)
    assert [line.rsplit(" ", 1)[1] for line in rejects] == [f"decided_by=on_rcpt_to@{script}:2:44",
                        f"decided_by=on_rcpt_to@{script}:4:16"]


def test_start_and_stop_are_logged(tmp_path, caplog):
    caplog.set_level("INFO")
    with running(config_for(tmp_path)):
        pass
    messages = [r.getMessage() for r in caplog.records if r.name == "vsl.server"]
    assert any(m.startswith("started: mx.test") for m in messages), messages
    assert messages[-2:] == ["stopping", "stopped"]


def test_a_script_directory_without_main_vsl_is_named_at_start(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    with running(replace(config_for(tmp_path), scripts=tmp_path / "empty")):
        pass
    assert "empty: no main.vsl, serving with the built-in rules only" in caplog.text


def test_serve_refuses_a_given_script_directory_without_main_vsl(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "scripts").mkdir()
    vsl = Path(sys.executable).parent / "vsl"
    result = subprocess.run([vsl, "serve", "--scripts", str(tmp_path / "scripts"), "--listen",
                             "127.0.0.1:1", "--queue-dir", str(tmp_path / "q")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"{tmp_path / 'scripts'}: no main.vsl" in result.stderr


def test_a_host_without_a_dns_configuration_still_starts(tmp_path, monkeypatch):
    """MX delivery's resolver is made at its first look-up, as before the transports
    became a table: a resolv.conf without nameservers defers MX mail, it does not stop
    `vsl serve` from starting."""
    def no_configuration(self, filename):
        raise dns.resolver.NoResolverConfiguration("no nameservers")

    monkeypatch.setattr(dns.resolver.BaseResolver, "read_resolv_conf", no_configuration)
    server = Server(config_for(tmp_path))
    assert server.delivery.transports.by_kind["mx"].dns_defaults == DnsDefaults()
