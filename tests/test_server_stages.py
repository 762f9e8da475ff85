"""Stage rules that need Python: a real smtplib (or raw socket) client against the real
server on loopback, the spool, the log or the server's state inspected afterwards.

Every other stage rule is a transcript, with its policy beside it, in
tests/transcripts/stages/ (run by tests/test_transcripts.py): its replies, the queue each
message went to, its envelope and headers (``Q:`` lines). What stays here a transcript
cannot check: the client's and server's real ports (a transcript runs over a socket
pair), the admission slot a refused connection frees, the order of the queued headers and
the body, text that must appear nowhere in the message (a hidden bcc), the log of a
failing stage, and a script directory that exists but is empty."""
from __future__ import annotations

import asyncio

from dataclasses import replace

import pytest

from tests.support.servers import config_for, running
from tests.support.smtp_tools import FALLBACK, Raw, all_messages, client, queued_id, wait_for
from vsl.limits import Limits


def deliver(smtp, sender="alice@example.org", rcpts=("bob@example.test",),
            body=b"Subject: test\r\n\r\nbody\r\n"):
    """One transaction that must succeed; returns the DATA reply."""
    assert smtp.mail(sender)[0] == 250
    for rcpt in rcpts:
        assert smtp.rcpt(rcpt)[0] == 250, rcpt
    code, text = smtp.data(body)
    assert code == 250, (code, text)
    return text


def header(data: bytes, name: str) -> str | None:
    for line in data.split(b"\r\n"):
        if line.lower().startswith(name.lower().encode() + b":"):
            return line.split(b":", 1)[1].strip().decode()
    return None


# ---- on_connect -----------------------------------------------------------------------

def test_on_connect_sees_the_connection(tmp_path):
    policy = """
fn on_connect(ctx) {
    ctx.store("conn", `${ctx.client_ip} ${ctx.server_ip} ${ctx.server_port} ${ctx.server_name}`);
    ctx.store("cport", ctx.client_port);
    status::next()
}
fn on_pre_queue(ctx) {
    ctx.append_header("X-Conn", ctx.get("conn"));
    ctx.append_header("X-Client-Port", `${ctx.get("cport")}`);
    status::next()
}
"""
    with running(config_for(tmp_path, policy)) as server:
        with client(server) as smtp:
            smtp.ehlo()
            local_port = smtp.sock.getsockname()[1]
            msg_id = queued_id(deliver(smtp))
        data = asyncio.run(server.spool.message(msg_id))
        assert header(data, "X-Conn") == f"127.0.0.1 127.0.0.1 {server.port()} mx.test"
        assert header(data, "X-Client-Port") == str(local_port)


@pytest.mark.parametrize("reply", ["554 5.7.1 not you", "421 4.7.0 busy, come back later"])
def test_on_connect_deny_frees_the_admission_slot(tmp_path, reply):
    """The replies and the closed connection are transcripts (stages/connect-deny-closes)."""
    policy = f'fn on_connect(ctx) {{ status::deny("{reply}") }}'
    with running(config_for(tmp_path, policy)) as server:
        with Raw(server) as raw:
            assert raw.greeting[0] == int(reply[:3])
            if reply.startswith("554"):  # RFC 5321 §3.1: the server waits for QUIT
                raw.cmd("QUIT")
            assert raw.closed(2)
        assert wait_for(lambda: not server.services.admission.per_ip, 2), \
            server.services.admission.per_ip


# ---- on_helo ----------------------------------------------------------------------------

def test_received_header_names_helo_or_ehlo(tmp_path):
    with running(config_for(tmp_path)) as server:
        with client(server) as smtp:
            assert smtp.helo("plain.test")[0] == 250
            first = queued_id(deliver(smtp))
            assert smtp.ehlo("extended.test")[0] == 250
            second = queued_id(deliver(smtp))
        first = asyncio.run(server.spool.message(first))
        second = asyncio.run(server.spool.message(second))
        assert first.startswith(b"Received: from plain.test ([127.0.0.1])")
        assert b"with SMTP\r\n" in first  # HELO: plain SMTP
        assert b"with ESMTP\r\n" in second


# ---- on_pre_queue ---------------------------------------------------------------------------

def test_on_pre_queue_header_edits_land_in_the_queued_message(tmp_path):
    policy = """
fn on_pre_queue(ctx) {
    ctx.prepend_header("X-First", "top");
    ctx.append_header("X-Last", "bottom");
    ctx.set_header("Subject", "rewritten");
    ctx.remove_header("X-Remove-Me");
    ctx.rename_header("X-Old", "X-New");
    ctx.append_header("X-Body", ctx.body.trim());
    ctx.append_header("X-Had-From", `${ctx.has_header("from")}`);
    status::next()
}
"""
    body = (b"From: a@example.org\r\nSubject: original\r\nX-Remove-Me: 1\r\nX-Old: kept\r\n"
            b"X-Remove-Me: 2\r\n\r\nthe body\r\n")
    with running(config_for(tmp_path, policy)) as server:
        with client(server) as smtp:
            smtp.ehlo()
            msg_id = queued_id(deliver(smtp, body=body))
        data = asyncio.run(server.spool.message(msg_id))
    head, _, rest = data.partition(b"\r\n\r\n")
    assert rest == b"the body\r\n"
    assert head.startswith(b"X-First: top\r\nReceived: ")
    assert b"X-Remove-Me" not in head and b"original" not in head
    assert b"\r\nSubject: rewritten\r\n" in head
    assert b"\r\nX-New: kept\r\n" in head and b"X-Old" not in head
    assert head.endswith(b"X-Last: bottom\r\nX-Body: the body\r\nX-Had-From: true")


def test_envelope_edits_land_in_the_queued_envelope(tmp_path):
    policy = """
fn on_mail_from(ctx) { ctx.rewrite_mail_from("bounces@example.test"); status::next() }
fn on_rcpt_to(ctx) {
    if ctx.rcpt.local_part == "alias" { ctx.rewrite_rcpt(ctx.rcpt, "real@example.test"); }
    status::next()
}
fn on_pre_queue(ctx) {
    ctx.add_rcpt("added@example.test");
    ctx.remove_rcpt("dropped@example.test");
    ctx.bcc("archive@example.test");
    ctx.append_header("X-Recipients", ctx.recipients.join(" "));
    status::next()
}
"""
    with running(config_for(tmp_path, policy)) as server:
        with client(server) as smtp:
            smtp.ehlo()
            msg_id = queued_id(deliver(smtp, rcpts=("alias@example.test", "dropped@example.test",
                                                    "kept@example.test")))
        entry = asyncio.run(server.spool.get(msg_id))
        data = asyncio.run(server.spool.message(msg_id))
    assert entry.envelope.sender == "bounces@example.test"
    assert [r.address for r in entry.envelope.recipients] == \
        ["real@example.test", "kept@example.test", "added@example.test", "archive@example.test"]
    assert header(data, "X-Recipients") == "real@example.test kept@example.test added@example.test"
    assert b"archive" not in data  # bcc is hidden


# ---- failures: non-status, error, limit -> the fallback reply -------------------------------

FAILURES = {
    # (a literal would not lint): the log names the return and the vSL type, not Python's
    "not-a-status": ('let reply = "550 go away"; reply', "returned a string, not a status"),
    "throw": ('throw "policy exploded"', "policy exploded"),
    "runtime-error": ("1 / 0", "division by zero"),
    "limit": ("loop {} status::next()", "too many operations"),
}


TRIGGERS = {"on_helo": 'ctx.helo == "fail.test"',
            "on_mail_from": 'ctx.sender.local_part == "fail"',
            "on_rcpt_to": 'ctx.rcpt.local_part == "fail"',
            "on_pre_queue": 'ctx.has_header("X-Fail")'}


@pytest.mark.parametrize("stage", sorted(TRIGGERS))
@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_failing_stage_answers_the_fallback_and_the_session_goes_on(tmp_path, caplog, stage,
                                                                   failure):
    """The stage fails only for a trigger value; after the fallback reply the same
    session completes a normal transaction."""
    body, logged = FAILURES[failure]
    policy = f"fn {stage}(ctx) {{ if {TRIGGERS[stage]} {{ {body} }} else {{ status::next() }} }}"
    config = config_for(tmp_path, policy, script_limits=Limits(max_operations=1000, max_time=2))

    def step(command, fails_here, retry, ok=(250,)):
        reply = raw.cmd(command)
        if fails_here:
            assert reply == FALLBACK, (command, reply)
            reply = raw.cmd(retry)
        assert reply[0] in ok, (command, reply)

    with running(config) as server:
        with Raw(server) as raw:
            step("EHLO fail.test", stage == "on_helo", "EHLO client.test")
            step("MAIL FROM:<fail@example.org>", stage == "on_mail_from",
                 "MAIL FROM:<ok@example.org>")
            step("RCPT TO:<fail@example.test>", stage == "on_rcpt_to", "RCPT TO:<ok@example.test>")
            assert raw.cmd("DATA")[0] == 354
            reply = raw.cmd("X-Fail: yes\r\n\r\nbody\r\n.")
            if stage == "on_pre_queue":
                assert reply == FALLBACK
                assert all_messages(server) == []
                assert raw.cmd("MAIL FROM:<ok@example.org>")[0] == 250
                assert raw.cmd("RCPT TO:<ok@example.test>")[0] == 250
                assert raw.cmd("DATA")[0] == 354
                reply = raw.cmd("Subject: fine\r\n\r\nbody\r\n.")
            assert reply[0] == 250, reply
            assert raw.cmd("QUIT")[0] == 221
        [entry] = all_messages(server)
        assert entry.queue == "deliver"
    assert stage in caplog.text and logged in caplog.text, caplog.text
    if failure == "not-a-status":
        column = policy.index("reply }") + 1
        assert f"main.vsl:1:{column}: {stage} returned a string" in caplog.text, caplog.text


def test_failing_on_connect_answers_the_fallback(tmp_path, caplog):
    with running(config_for(tmp_path, "fn on_connect(ctx) { 1 / 0 }")) as server:
        with Raw(server) as raw:
            assert raw.greeting == (421, FALLBACK[1])  # a greeting is 220, 421 or 554
    assert "on_connect" in caplog.text and "division by zero" in caplog.text


# ---- the default rule: no open relay --------------------------------------------------------

def relay_check(server, accepted, refused):
    with client(server) as smtp:
        smtp.ehlo()
        assert smtp.mail("alice@example.org")[0] == 250
        for rcpt in accepted:
            assert smtp.rcpt(rcpt)[0] == 250, rcpt
        for rcpt in refused:
            assert smtp.rcpt(rcpt) == (554, b"5.7.1 Relay access denied"), rcpt


LOCAL = ["bob@example.test", "bob@EXAMPLE.TEST", "bob@mx.test", "postmaster@mx.test",
         "postmaster", "PostMaster"]
FOREIGN = ["bob@elsewhere.test", "postmaster@elsewhere.test", "bob@sub.example.test",
           "bob@example.test.evil.test", "bob@[192.0.2.1]"]


def test_empty_script_directory_is_no_open_relay(tmp_path):
    (tmp_path / "empty").mkdir()
    with running(replace(config_for(tmp_path), scripts=tmp_path / "empty")) as server:
        assert server.policy.script is None
        relay_check(server, LOCAL, FOREIGN)


