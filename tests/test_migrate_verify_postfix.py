"""vsl migrate verify against a real Postfix (a private instance, tests/support/postfix.py):
scenarios from the mail log it writes, and Postfix against vSL with a policy written to
give the same replies, served by ``vsl serve`` (no difference), then one deliberate
difference."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from vsl.cli.migrate_verify import verify
from vsl.server import maillog, replay, replay_report
from vsl.server.replay import Scenario, Turn
from vsl.server.transcript_queue import matches

from tests.support.crash import stop_process
from tests.support.mailsink import free_port, listening
from tests.support.postfix import PrivatePostfix
from tests.support.smtp_tools import wait_for
from tests.support.tools import require

VSL = Path(sys.executable).with_name("vsl")

ACCESS = """\
nobody@example.test   550 5.1.1 User unknown
full@example.test     452 4.2.2 Mailbox full
spam@example.test     REJECT
"""

# What the Postfix above does, as a policy; spam@ is left out: the deliberate difference.
POLICY = """\
fn on_rcpt_to(ctx) {
    let rejected = `<${ctx.rcpt}>: Recipient address rejected:`;
    if ctx.rcpt.local_part == "nobody" {
        return status::deny(`550 5.1.1 ${rejected} User unknown`);
    }
    if ctx.rcpt.local_part == "full" {
        return status::deny(`452 4.2.2 ${rejected} Mailbox full`);
    }
    if ctx.rcpt.domain != "example.test" && ctx.client_ip != "127.0.0.1" {
        return status::deny(`454 4.7.1 <${ctx.rcpt}>: Relay access denied`);
    }
    status::accept()
}
"""

MESSAGE = ("Subject: replayed", "", "hello", ".")


@pytest.fixture(scope="module")
def postfix():
    """Postfix relaying for mynetworks (127.0.0.1 only) and example.test, whose
    recipient access map refuses nobody@, full@ and spam@."""
    with PrivatePostfix({"mynetworks": "127.0.0.1/32"}) as instance:
        access = instance.table("access", ACCESS)
        instance.settings["smtpd_recipient_restrictions"] = (
            f"check_recipient_access {access}, permit_mynetworks, reject_unauth_destination")
        instance.reload()
        time.sleep(1)  # the reloaded smtpd processes read the new settings
        yield instance


@pytest.fixture(scope="module")
def vsl_port(tmp_path_factory):
    """``vsl serve`` with POLICY (delivery off: nothing leaves), stopped by its PID."""
    directory = tmp_path_factory.mktemp("vsl")
    (directory / "main.vsl").write_text(POLICY)
    (directory / "vsl.toml").write_text("[delivery]\nenabled = false\n")
    port, log = free_port(), directory / "serve.log"
    with log.open("w") as output:
        proc = subprocess.Popen(
            [str(VSL), "serve", "--config", str(directory / "vsl.toml"), "--scripts",
             str(directory), "--listen", f"127.0.0.1:{port}", "--queue-dir",
             str(directory / "queue"), "--hostname", "mx.example.test"],
            stdin=subprocess.DEVNULL, stdout=output, stderr=output)
    try:
        assert wait_for(lambda: listening(port) or proc.poll() is not None, 30)
        assert proc.poll() is None, log.read_text()
        yield port
    finally:
        stop_process(proc)



def conversation(client_ip: str, *recipients: str, sender: str = "a@sender.test") -> Scenario:
    """EHLO, one transaction to ``recipients`` with a message, QUIT."""
    turns = [Turn(()), Turn(("EHLO client.test",)), Turn((f"MAIL FROM:<{sender}>",))]
    turns += [Turn((f"RCPT TO:<{recipient}>",)) for recipient in recipients]
    turns += [Turn(("DATA",)), Turn(MESSAGE, message=True), Turn(("QUIT",))]
    return Scenario(f"to {', '.join(recipients)} from {client_ip}", turns, client_ip)


SCENARIOS = [
    conversation("127.0.0.1", "bob@example.test", "x@other.test", "nobody@example.test"),
    conversation("127.0.0.2", "nobody@example.test", "bob@example.test", "x@other.test"),
    conversation("127.0.0.3", "full@example.test", "nobody@example.test", sender=""),
    conversation("127.0.0.4", "carol@example.test"),
]


def _log_since(postfix: PrivatePostfix, before: str, sessions: int, messages: int) -> str:
    """What the mail log gained after ``before``, once ``sessions`` more connections
    ended and ``messages`` more messages were delivered (to the discard transport) and
    removed (or after 20 seconds)."""
    def written() -> str:
        return postfix.maillog()[len(before):]

    def done(log: str) -> bool:
        return (log.count(" disconnect from ") >= sessions
                and log.count(": removed") >= messages)

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not done(written()):
        time.sleep(0.1)
    return written()


def test_scenarios_from_the_mail_log_replay_what_postfix_answered(postfix, vsl_port, tmp_path):
    target = ("127.0.0.1", postfix.port)
    before = postfix.maillog()
    for scenario in SCENARIOS:
        replay.replay(scenario, target, send_messages=True)
    log_path = tmp_path / "mail.log"
    log_path.write_text(_log_since(postfix, before, len(SCENARIOS), 3))
    from_log = [scenario for scenario in maillog.scenarios(log_path)
                if len(scenario.turns) > 1][-len(SCENARIOS):]

    assert [scenario.client_ip for scenario in from_log] == [
        "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
    relayed, refused, nothing, plain = (
        [(turn.label(), turn.expected[0]) for turn in scenario.turns] for scenario in from_log)
    assert refused == [
        ("(connect)", "220 *"), ("EHLO client.test", "250*"),
        ("MAIL FROM:<a@sender.test>", "250 *"),
        ("RCPT TO:<nobody@example.test>",
         "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown"),
        ("RCPT TO:<x@other.test>", "454 4.7.1 <x@other.test>: Relay access denied"),
        ("RCPT TO:<bob@example.test>", "250 *"),
        ("DATA", "354 *"), ("(message, 4 lines)", "250 *"), ("QUIT", "221 *")]
    assert relayed[3] == (
        "RCPT TO:<nobody@example.test>",
        "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown")
    assert {label for label, _ in relayed[4:6]} == {  # from the delivery lines
        "RCPT TO:<bob@example.test>", "RCPT TO:<x@other.test>"}
    assert nothing[2:5] == [
        ("MAIL FROM:<>", "250 *"),
        ("RCPT TO:<full@example.test>",
         "452 4.2.2 <full@example.test>: Recipient address rejected: Mailbox full"),
        ("RCPT TO:<nobody@example.test>",
         "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown")]
    assert [label for label, _ in nothing][5:] == ["QUIT"]  # no DATA: nothing was accepted
    assert [label for label, _ in plain][3:5] == ["RCPT TO:<carol@example.test>", "DATA"]

    for scenario in from_log:  # Postfix, asked again, gives the replies of its log
        replies = replay.replay(scenario, target)
        for turn, reply in zip(scenario.turns, replies):
            if reply != replay.WITHHELD:
                assert matches(turn.expected[0], reply.lines[0]), (turn, reply)
    report = replay_report.compare(from_log, target, ("127.0.0.1", vsl_port),
                                   names=("postfix", "vsl"))
    assert (report.conversations, report.commands, len(report.differences)) == (4, 31, 0), \
        replay_report.render(report)  # (no DATA in the log's conversation to full@, nobody@)


def test_postfix_and_vsl_with_the_same_policy_give_the_same_replies(postfix, vsl_port):
    report = replay_report.compare(SCENARIOS, ("127.0.0.1", postfix.port),
                                   ("127.0.0.1", vsl_port), names=("postfix", "vsl"))
    assert (report.conversations, report.commands, len(report.differences)) == (4, 33, 0), \
        replay_report.render(report)


def test_a_deliberate_difference_is_the_only_one_found(postfix, vsl_port, tmp_path):
    scenarios = SCENARIOS + [conversation("127.0.0.2", "bob@example.test", "spam@example.test")]
    for number, scenario in enumerate(scenarios):
        (tmp_path / f"{number}.transcript").write_text(replay.to_transcript(scenario))
    result = CliRunner().invoke(verify, [
        "--scenarios", str(tmp_path), "--a", f"127.0.0.1:{postfix.port}",
        "--b", f"127.0.0.1:{vsl_port}"])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1] == "5 conversations, 41 commands, 1 differ"
    difference = result.output.splitlines()[2]
    assert difference.split()[:4] == ["RCPT", "TO:<spam@example.test>", "554", "5.7.1"]
    assert "250 2.1.5 Ok" in difference


def _queued(postfix: PrivatePostfix) -> str:
    """What ``postqueue -j`` lists in the instance's queue (one JSON object a message)."""
    return subprocess.run([require("postqueue", "postfix"), "-c", str(postfix.etc), "-j"],
                          capture_output=True, text=True, check=True, timeout=60).stdout


def test_postfix_queues_nothing_unless_the_messages_are_sent(postfix, vsl_port):
    """127.0.0.1 is in mynetworks: a completed message to x@other.test would be relayed."""
    servers = ("127.0.0.1", postfix.port), ("127.0.0.1", vsl_port)
    before = postfix.maillog()
    report = replay_report.compare(SCENARIOS, *servers, names=("postfix", "vsl"))
    withheld = 3  # the conversations whose DATA got 354, each going on over a new connection
    log = _log_since(postfix, before, len(SCENARIOS) + withheld, 0)
    assert (report.commands, len(report.differences)) == (33, 0)
    assert log.count("lost connection after DATA") == withheld
    assert (_queued(postfix), log.count(": removed"), log.count("status=")) == ("", 0, 0)

    before = postfix.maillog()
    replay_report.compare(SCENARIOS, *servers, names=("postfix", "vsl"), send_messages=True)
    assert _log_since(postfix, before, len(SCENARIOS), 3).count(": removed") == 3
