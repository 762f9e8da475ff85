"""vsl policyd behind a real Postfix (tests/support/postfix.py): Postfix asks the policy
service (``check_policy_service``) and its SMTP clients get the replies the script
decides, at each stage; HOLD puts the message in Postfix's hold queue and PREPEND adds
its header. ``vsl policyd`` is a subprocess, started and stopped by its PID."""
import itertools
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.mailsink import free_port, listening
from tests.support.postfix import PrivatePostfix
from tests.support.smtp_tools import wait_for
from tests.support.tools import require

POLICY = """
fn on_connect(ctx) {
    ctx.store("connects", if ctx.get("connects") == () { 1 } else { ctx.get("connects") + 1 });
    status::next()
}
fn on_helo(ctx) {
    ctx.store("helo", ctx.helo);
    if ctx.helo == "bad.helo.test" { return status::deny("550 5.7.1 HELO refused by vSL"); }
    status::next()
}
fn on_mail_from(ctx) {
    if ctx.sender.local_part == "spammer" { return status::deny("553 5.7.1 Sender refused by vSL"); }
    if ctx.sender.local_part == "suspect" { return status::quarantine("suspect"); }
    status::next()
}
fn on_rcpt_to(ctx) {
    let who = ctx.rcpt.local_part;
    if who == "nobody" { return status::deny("550 5.1.1 No such user here"); }
    if who == "later" { return status::deny("450 4.7.1 Greylisted by vSL"); }
    if who == "stages" {
        // a multi-stage policy: what on_connect and on_helo stored, once each
        return status::deny(`550 5.7.1 helo=${ctx.get("helo")} connects=${ctx.get("connects")}`);
    }
    status::next()
}
fn on_pre_queue(ctx) {
    ctx.prepend_header("X-vSL-Policy", `checked for ${ctx.recipients.len()} recipient(s)`);
    status::next()
}
"""


@pytest.fixture
def policyd(policyd_process):
    """A running `vsl policyd` on the POLICY scripts: its port."""
    return policyd_process[0]


@pytest.fixture
def policyd_process(tmp_path):
    """A running `vsl policyd` on the POLICY scripts: (its port, its process, main.vsl)."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "main.vsl").write_text(POLICY)
    port = free_port()
    vsl = Path(sys.executable).with_name("vsl")
    proc = subprocess.Popen([str(vsl), "policyd", "--scripts", str(scripts), "--listen",
                             f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc)
        yield port, proc, scripts / "main.vsl"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()


def _wait_listening(port: int, proc: subprocess.Popen) -> None:
    if wait_for(lambda: proc.poll() is not None or listening(port), 30, 0.05) and \
            proc.poll() is None:
        return
    pytest.fail(f"vsl policyd does not listen: {proc.stdout.read1().decode()}")


def check(port: int) -> str:
    return f"check_policy_service inet:127.0.0.1:{port}"


def refused(reply: tuple[int, str], code: int, enhanced_and_text: str) -> bool:
    """Whether ``reply`` is the script's: Postfix keeps the code and enhanced code, and puts
    what it rejects before the text (``<bob@example.test>: Recipient address rejected:``)."""
    enhanced, _, text = enhanced_and_text.partition(" ")
    return reply[0] == code and reply[1].startswith(enhanced + " ") and \
        reply[1].endswith(" rejected: " + text)


def transaction(postfix, helo: str, sender: str, recipient: str) -> list[tuple[int, str]]:
    """EHLO, MAIL, RCPT with smtplib: each command's (code, text)."""
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as smtp:
        replies = [smtp.ehlo(helo), smtp.mail(sender), smtp.rcpt(recipient)]
    return [(code, text.decode()) for code, text in replies]


def test_postfix_answers_what_the_script_decides_at_rcpt(policyd):
    """smtpd_delay_reject=yes (the default): every decision comes at RCPT."""
    settings = {"smtpd_recipient_restrictions":
                f"{check(policyd)}, permit_mynetworks, reject_unauth_destination"}
    with PrivatePostfix(settings) as postfix:
        ok = transaction(postfix, "client.test", "alice@client.test", "bob@example.test")
        helo = transaction(postfix, "bad.helo.test", "alice@client.test", "bob@example.test")
        sender = transaction(postfix, "client.test", "spammer@client.test", "bob@example.test")
        user = transaction(postfix, "client.test", "alice@client.test", "nobody@example.test")
        later = transaction(postfix, "client.test", "alice@client.test", "later@example.test")
        stages = transaction(postfix, "client.test", "alice@client.test",
                             "stages@example.test")
    assert [r[0] for r in ok] == [250, 250, 250]
    assert helo[1][0] == 250 and refused(helo[2], 550, "5.7.1 HELO refused by vSL")
    assert refused(sender[2], 553, "5.7.1 Sender refused by vSL")
    assert refused(user[2], 550, "5.1.1 No such user here")
    assert refused(later[2], 450, "4.7.1 Greylisted by vSL")
    assert refused(stages[2], 550, "5.7.1 helo=client.test connects=1")


def test_an_unqualified_sender_is_checked(policyd):
    """Postfix accepts MAIL FROM:<spammer> and asks with sender=spammer: the script still
    decides (on the address qualified with the server's name)."""
    settings = {"smtpd_recipient_restrictions":
                f"{check(policyd)}, permit_mynetworks, reject_unauth_destination"}
    with PrivatePostfix(settings) as postfix:
        replies = transaction(postfix, "client.test", "spammer", "bob@example.test")
    assert replies[1][0] == 250 and refused(replies[2], 553, "5.7.1 Sender refused by vSL")


def test_swaks_gets_the_scripts_reply(policyd):
    swaks = require("swaks", "swaks")
    settings = {"smtpd_recipient_restrictions":
                f"{check(policyd)}, permit_mynetworks, reject_unauth_destination"}
    with PrivatePostfix(settings) as postfix:
        result = subprocess.run(
            [swaks, "--server", "127.0.0.1", "--port", str(postfix.port), "--helo",
             "client.test", "--from", "alice@client.test", "--to", "nobody@example.test",
             "--timeout", "20"], capture_output=True, text=True, timeout=60)
    assert "<** 550 5.1.1 <nobody@example.test>: Recipient address rejected: " \
        "No such user here" in result.stdout


def test_a_changed_script_is_reloaded(policyd_process):
    """Without Postfix: a request over the socket; the script changed, SIGHUP (or the file
    watcher, whichever comes first); the next message gets the new script's decision."""
    port, proc, main_vsl = policyd_process
    request = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.1\n"
               b"helo_name=client.test\nsender=a@client.test\nrecipient=b@example.test\n"
               b"instance=%d\n\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        replies = sock.makefile("rb")
        sock.sendall(request % 1)
        before = replies.readline()
        replies.readline()
        main_vsl.write_text('fn on_rcpt_to(ctx) { status::deny("550 5.7.1 Reloaded") }')
        os.kill(proc.pid, signal.SIGHUP)
        deadline, after = time.monotonic() + 20, b""
        for instance in itertools.count(2):  # a new message each time: on_rcpt_to runs
            if time.monotonic() > deadline or after == b"action=550 5.7.1 Reloaded\n":
                break
            time.sleep(0.2)
            sock.sendall(request % instance)
            after = replies.readline()
            replies.readline()
    assert before == b"action=DUNNO\n"
    assert after == b"action=550 5.7.1 Reloaded\n"


def test_each_restriction_list_asks_at_its_own_command(policyd):
    """smtpd_delay_reject=no: a request at EHLO, MAIL and RCPT; the session's ctx.store
    is kept across them and on_connect runs once for two messages."""
    settings = {"smtpd_delay_reject": "no",
                "smtpd_client_restrictions": check(policyd),
                "smtpd_helo_restrictions": check(policyd),
                "smtpd_sender_restrictions": check(policyd),
                "smtpd_recipient_restrictions":
                    f"{check(policyd)}, permit_mynetworks, reject_unauth_destination"}
    with PrivatePostfix(settings) as postfix:
        helo = transaction(postfix, "bad.helo.test", "alice@client.test", "bob@example.test")
        sender = transaction(postfix, "client.test", "spammer@client.test", "bob@example.test")
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as smtp:
            smtp.ehlo("client.test")
            first = [smtp.mail("alice@client.test"), smtp.rcpt("bob@example.test"),
                     smtp.rset()]
            second = [smtp.mail("carol@client.test"), smtp.rcpt("stages@example.test")]
    assert refused(helo[0], 550, "5.7.1 HELO refused by vSL"), helo
    assert refused(sender[1], 553, "5.7.1 Sender refused by vSL"), sender
    assert [r[0] for r in first] == [250, 250, 250]
    assert refused((second[1][0], second[1][1].decode()), 550,
                   "5.7.1 helo=client.test connects=1"), second


def test_hold_and_prepend_reach_the_queued_message(policyd):
    """quarantine -> HOLD (Postfix's hold queue); the header on_pre_queue adds -> PREPEND
    (smtpd_data_restrictions: the request before the message)."""
    postqueue, postcat = require("postqueue", "postfix"), require("postcat", "postfix")
    settings = {"smtpd_recipient_restrictions":
                f"{check(policyd)}, permit_mynetworks, reject_unauth_destination",
                "smtpd_data_restrictions": check(policyd),
                "defer_transports": "discard"}  # keep what is queued in the queue
    message = "From: alice@client.test\r\nSubject: hello\r\n\r\nhello\r\n"
    with PrivatePostfix(settings) as postfix:
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as smtp:
            smtp.sendmail("suspect@client.test", ["bob@example.test"], message)
            smtp.sendmail("alice@client.test", ["bob@example.test"], message)
        queue = _queue(postfix, postqueue)
        held = [e for e in queue if e["queue_name"] == "hold"]
        kept = [e for e in queue if e["sender"] == "alice@client.test"]
        assert [e["sender"] for e in held] == ["suspect@client.test"]
        assert len(kept) == 1
        content = subprocess.run([postcat, "-c", str(postfix.etc), "-hq", kept[0]["queue_id"]],
                                 capture_output=True, text=True, timeout=30).stdout
    assert "X-vSL-Policy: checked for 1 recipient(s)" in content


def _queue(postfix, postqueue: str) -> list[dict]:
    """Postfix's queue as `postqueue -j` lists it, once both messages are in it."""
    deadline = time.monotonic() + 20
    while True:
        out = subprocess.run([postqueue, "-c", str(postfix.etc), "-j"], capture_output=True,
                             text=True, timeout=30).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(entries) >= 2 or time.monotonic() > deadline:
            return entries
        time.sleep(0.2)
