"""vsl migrate verify: scenarios from transcripts, the replaying client, the comparison
of two servers (two in-process aiosmtpd servers that differ on a few commands), the CLI."""
from __future__ import annotations

import json
import socket
import socketserver
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner

from vsl.cli.migrate_verify import verify
from vsl.server import maillog, replay, replay_report
from vsl.server.config import parse_listen
from vsl.server.replay import Scenario
from vsl.server.transcript import parse

from tests.support.mailsink import free_port

TRANSCRIPTS = Path(__file__).parent / "transcripts" / "stages"

CONVERSATION = """\
# client-ip: 127.0.0.3
S: 220 *
C: EHLO client.test
S: 250-*
S: 250 *
C: MAIL FROM:<a@sender.test>
S: 250 *
C: RCPT TO:<bob@example.test>
S: 250 *
C: RCPT TO:<bad@example.test>
S: 550 5.1.1 *
C: RCPT TO:<odd@example.test>
S: 250 *
C: DATA
S: 354 *
C: Subject: hi
C:
C: body
C: .
S: 250 *
C: NOOP
S: 250 *
C: QUIT
S: 221 *
"""


class _Handler:
    """Refuses ``bad...`` recipients; ``odd`` is refused too when ``strict``."""

    def __init__(self, bad_reply: str, strict: bool = False):
        self.bad_reply, self.strict, self.peers = bad_reply, strict, []
        self.messages: list[bytes] = []

    async def handle_RCPT(self, server, session, envelope, address, options):
        self.peers.append(session.peer[0])
        local = address.partition("@")[0]
        if local == "bad" or (self.strict and local == "odd"):
            return self.bad_reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.content)
        return "250 2.0.0 Ok: queued"


@contextmanager
def smtp_server(handler):
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield f"127.0.0.1:{controller.port}"
    finally:
        controller.stop()


@contextmanager
def raw_server(script):
    """A TCP server that runs ``script(rfile, wfile)`` for each connection."""

    class Handle(socketserver.StreamRequestHandler):
        def handle(self):
            script(self.rfile, self.wfile)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _scenario(tmp_path: Path, text: str = CONVERSATION) -> Scenario:
    path = tmp_path / "one.transcript"
    path.write_text(text)
    return replay.from_transcript(parse(path))


def _target(text: str) -> tuple[str, int]:
    where = parse_listen(text)
    return where.host, where.port


# ---- scenarios -------------------------------------------------------------------------

def test_a_transcript_becomes_turns_with_their_expected_replies(tmp_path):
    scenario = _scenario(tmp_path)
    assert scenario.client_ip == "127.0.0.3"
    assert [turn.label() for turn in scenario.turns] == [
        "(connect)", "EHLO client.test", "MAIL FROM:<a@sender.test>",
        "RCPT TO:<bob@example.test>", "RCPT TO:<bad@example.test>",
        "RCPT TO:<odd@example.test>", "DATA", "(message, 3 lines)", "NOOP", "QUIT"]
    assert scenario.turns[1].expected == ("250-*", "250 *")
    assert scenario.turns[7].lines == ("Subject: hi", "", "body", ".")
    assert scenario.turns[7].message


def test_commands_sent_together_take_their_replies_in_order(tmp_path):
    scenario = _scenario(tmp_path, "S: 220 *\nC: MAIL FROM:<a@b.test>\nC: RCPT TO:<c@d.test>\n"
                                   "S: 250 2.1.0 *\nS: 550 5.1.1 *\n")
    assert [(turn.lines, turn.expected) for turn in scenario.turns[1:]] == [
        (("MAIL FROM:<a@b.test>",), ("250 2.1.0 *",)),
        (("RCPT TO:<c@d.test>",), ("550 5.1.1 *",))]


def test_a_scenario_written_as_a_transcript_reads_back_the_same(tmp_path):
    scenario = _scenario(tmp_path)
    path = tmp_path / "again.transcript"
    path.write_text(replay.to_transcript(scenario))
    again = replay.load([path])[0]
    assert (again.turns, again.client_ip) == (scenario.turns, scenario.client_ip)


def test_every_shipped_transcript_is_a_scenario():
    scenarios = replay.load([path for path in sorted(TRANSCRIPTS.iterdir()) if path.is_dir()])
    assert len(scenarios) == len(list(TRANSCRIPTS.rglob("*.transcript"))) > 10
    assert all(scenario.turns[0].label() == "(connect)" for scenario in scenarios)


def test_a_bad_target_or_scenario_is_an_error(tmp_path):
    with pytest.raises(ValueError):
        parse_listen("localhost")
    (tmp_path / "bad.transcript").write_text("C: HELO x\n")
    with pytest.raises(replay.ScenarioError, match="bad.transcript"):
        replay.load([tmp_path / "bad.transcript"])


# ---- the replaying client --------------------------------------------------------------

def test_the_replay_comes_from_the_scenarios_client_address(tmp_path):
    handler = _Handler("550 5.1.1 no such user")
    with smtp_server(handler) as target:
        replies = replay.replay(_scenario(tmp_path), _target(target))
    assert [reply.code for reply in replies] == [220, 250, 250, 250, 550, 250, 354, None, 250,
                                                 221]
    assert replies[4].enhanced == "5.1.1"
    assert set(handler.peers) == {"127.0.0.3"}


def test_the_message_is_withheld_unless_sending_is_asked_for(tmp_path):
    handler = _Handler("550 5.1.1 no such user")
    with smtp_server(handler) as target:
        withheld = replay.replay(_scenario(tmp_path), _target(target))
        assert handler.messages == []  # the connection was dropped in DATA
        sent = replay.replay(_scenario(tmp_path), _target(target), send_messages=True)
    assert [str(reply) for reply in withheld[6:]] == [
        "354 End data with <CR><LF>.<CR><LF>", "(message withheld)", "250 OK", "221 Bye"]
    assert [reply.code for reply in sent[6:]] == [354, 250, 250, 221]
    assert handler.messages == [b"Subject: hi\r\n\r\nbody\r\n"]


def test_after_a_withheld_message_the_next_transaction_is_played_on_a_new_connection(
        tmp_path):
    handler = _Handler("550 5.1.1 no such user")
    second = CONVERSATION.split("C: NOOP")[0].split("C: MAIL")[1]
    text = CONVERSATION.replace("C: NOOP", f"C: MAIL{second}C: NOOP")
    with smtp_server(handler) as target:
        replies = replay.replay(_scenario(tmp_path, text), _target(target))
    assert [reply.code for reply in replies[8:]] == [250, 250, 550, 250, 354, None, 250, 221]
    assert handler.messages == []
    assert len(handler.peers) == 6  # three RCPTs in each of the two transactions


def test_a_refused_mail_from_skips_its_recipients_and_data(tmp_path):
    def refuse_mail(rfile, wfile):
        wfile.write(b"220 raw ESMTP\r\n")
        for line in rfile:
            verb = line[:4].upper()
            wfile.write({b"MAIL": b"553 5.7.1 no\r\n", b"QUIT": b"221 2.0.0 bye\r\n"}
                        .get(verb, b"250 2.0.0 ok\r\n"))

    with raw_server(refuse_mail) as target:
        replies = replay.replay(_scenario(tmp_path), _target(target))
    assert [str(reply) for reply in replies[2:]] == [
        "553 5.7.1 no", "(not sent)", "(not sent)", "(not sent)", "(not sent)", "(not sent)",
        "250 2.0.0 ok", "221 2.0.0 bye"]


def test_data_is_not_sent_when_every_recipient_was_refused(tmp_path):
    handler = _Handler("550 5.1.1 no such user")
    text = CONVERSATION.replace("bob@", "bad@").replace("odd@", "bad@")
    with smtp_server(handler) as target:
        replies = replay.replay(_scenario(tmp_path, text), _target(target))
    assert [str(reply) for reply in replies[6:8]] == ["(not sent)", "(not sent)"]
    assert replies[8].code == 250


def test_a_closed_connection_and_a_silent_server_are_replies(tmp_path):
    def close_at_rcpt(rfile, wfile):
        wfile.write(b"220 raw ESMTP\r\n")
        for line in rfile:
            if line.upper().startswith(b"RCPT"):
                return
            wfile.write(b"250 ok\r\n")

    def silent_at_data(rfile, wfile):
        wfile.write(b"220 raw ESMTP\r\n")
        for line in rfile:
            if line.upper().startswith(b"DATA"):
                rfile.read()  # until the client gives up
                return
            wfile.write(b"250 ok\r\n")

    scenario = _scenario(tmp_path)
    with raw_server(close_at_rcpt) as target:
        closed = replay.replay(scenario, _target(target), timeout=2)
    with raw_server(silent_at_data) as target:
        silent = replay.replay(scenario, _target(target), timeout=0.5)
    assert [str(reply) for reply in closed[3:]] == ["(closed)"] * 7
    assert [str(reply) for reply in silent[6:]] == ["(timeout)"] + ["(not sent)"] * 3


def test_a_server_that_cannot_be_reached_is_a_reply(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        replies = replay.replay(_scenario(tmp_path), ("127.0.0.1", port))
    assert replies[0].event.startswith("(cannot connect")
    assert {str(reply) for reply in replies[1:]} == {"(not sent)"}


# ---- two servers compared --------------------------------------------------------------

@contextmanager
def two_servers():
    """A and B differ on two replies: the enhanced code of bad@, and odd@ (B refuses)."""
    with smtp_server(_Handler("550 5.1.1 no such user")) as a, \
            smtp_server(_Handler("550 5.7.1 not here", strict=True)) as b:
        yield a, b


def test_the_differing_replies_are_counted_exactly(tmp_path):
    scenario = _scenario(tmp_path)
    with two_servers() as (a, b):
        report = replay_report.compare([scenario, scenario], _target(a), _target(b),
                                       names=(a, b))
        same = replay_report.compare([scenario], _target(a), _target(a), names=(a, a),
                                     text=True)
    assert (report.conversations, report.commands, len(report.differences)) == (2, 20, 4)
    assert [d.turn.label() for d in report.differences[:2]] == [
        "RCPT TO:<bad@example.test>", "RCPT TO:<odd@example.test>"]
    assert (str(report.differences[1].a), str(report.differences[1].b)) == (
        "250 2.1.5 Ok", "550 5.7.1 not here")
    assert replay_report.summary(report) == "2 conversations, 20 commands, 4 differ"
    assert same.differences == []  # the queue id-free text is the same too


def test_text_is_compared_only_when_asked(tmp_path):
    scenario = _scenario(tmp_path, CONVERSATION.replace("odd@", "bob@"))
    with smtp_server(_Handler("550 5.1.1 no such user")) as a, \
            smtp_server(_Handler("550 5.1.1 unknown user")) as b:
        codes = replay_report.compare([scenario], _target(a), _target(b), names=(a, b))
        texts = replay_report.compare([scenario], _target(a), _target(b), names=(a, b),
                                      text=True)
    assert len(codes.differences) == 0
    assert [d.turn.label() for d in texts.differences] == ["RCPT TO:<bad@example.test>"]


# ---- the command -----------------------------------------------------------------------

def test_the_command_prints_a_side_by_side_diff_and_fails(tmp_path):
    (tmp_path / "one.transcript").write_text(CONVERSATION)
    with two_servers() as (a, b):
        result = CliRunner().invoke(verify, ["--scenarios", str(tmp_path), "--a", a, "--b", b])
    lines = result.output.splitlines()
    assert result.exit_code == 1, result.output
    assert lines[0] == f"{tmp_path / 'one.transcript'}  (client 127.0.0.3)"
    assert lines[1].split() == ["command", "A", a, "B", b, "expected"]
    assert lines[2].split()[:6] == ["RCPT", "TO:<bad@example.test>", "550", "5.1.1", "no",
                                    "such"]
    assert "550 5.7.1 not here" in lines[3]
    assert lines[-1] == "1 conversations, 10 commands, 2 differ"


def test_the_command_reports_as_json_and_succeeds_when_nothing_differs(tmp_path):
    (tmp_path / "one.transcript").write_text(CONVERSATION)
    with smtp_server(_Handler("550 5.1.1 no such user")) as a:
        result = CliRunner().invoke(verify, ["--scenarios", str(tmp_path / "one.transcript"),
                                             "--a", a, "--b", a, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["conversations"], report["commands"], report["differ"]) == (1, 10, 0)


def test_the_command_sends_the_messages_only_with_send_messages(tmp_path):
    (tmp_path / "one.transcript").write_text(CONVERSATION)
    handler = _Handler("550 5.1.1 no such user")
    arguments = ["--scenarios", str(tmp_path)]
    with smtp_server(handler) as a:
        withheld = CliRunner().invoke(verify, arguments + ["--a", a, "--b", a])
        assert (withheld.exit_code, handler.messages) == (0, [])
        sent = CliRunner().invoke(verify, arguments + ["--a", a, "--b", a, "--send-messages"])
    assert sent.exit_code == 0, sent.output
    assert len(handler.messages) == 2


def test_the_command_needs_scenarios_and_two_servers(tmp_path):
    (tmp_path / "one.transcript").write_text(CONVERSATION)
    runner = CliRunner()
    assert runner.invoke(verify, ["--a", "h:1", "--b", "h:2"]).exit_code == 2
    assert runner.invoke(verify, ["--scenarios", str(tmp_path), "--a", "h:1"]).exit_code == 2
    bad = runner.invoke(verify, ["--scenarios", str(tmp_path), "--a", "h", "--b", "h:2"])
    assert bad.exit_code == 1 and "--a: 'h' is not host:port" in bad.output


# ---- scenarios from a mail log (a real Postfix's: tests/test_migrate_verify_postfix.py) --

MAILLOG = """\
Dec  6 10:00:00 mx postfix/smtpd[100]: connect from a.example[192.0.2.5]
Dec  6 10:00:00 mx postfix-out/submission/smtpd[200]: connect from unknown[192.0.2.9]
Dec  6 10:00:01 mx postfix/smtpd[100]: NOQUEUE: reject: MAIL from a.example[192.0.2.5]: \
553 5.7.1 <x@bad.test>: Sender address rejected: Access denied; from=<x@bad.test> \
proto=SMTP helo=<a.example>
Dec  6 10:00:01 mx postfix-out/submission/smtpd[200]: 4AB: client=unknown[192.0.2.9]
Dec  6 10:00:02 mx postfix/smtpd[100]: NOQUEUE: reject: RCPT from a.example[192.0.2.5]: \
550 5.1.1 <no@example.test>: Recipient address rejected: User unknown; from=<> \
to=<no@example.test> proto=SMTP helo=<a.example>
Dec  6 10:00:02 mx postfix/smtpd[100]: disconnect from a.example[192.0.2.5] helo=1 mail=2/2 \
rcpt=0/1 quit=1 commands=4/5
Dec  6 10:00:03 mx postfix-out/qmgr[300]: 4AB: from=<me@example.test>, size=300, nrcpt=1 \
(queue active)
Dec  6 10:00:03 mx postfix-out/smtp[400]: 4AB: to=<list@example.org>, \
orig_to=<friends@example.test>, relay=mx.example.org[198.51.100.1]:25, delay=1, dsn=2.0.0, \
status=sent (250 ok)
Dec  6 10:00:04 mx postfix-out/submission/smtpd[200]: 4AB: reject: END-OF-MESSAGE from \
unknown[192.0.2.9]: 550 5.7.1 too big for them; from=<me@example.test> proto=ESMTPSA helo=<pc>
"""


def test_a_mail_log_becomes_one_scenario_per_connection(tmp_path):
    log = tmp_path / "mail.log"
    log.write_text(MAILLOG)
    refused, submitted = maillog.scenarios(log)
    assert (refused.client_ip, submitted.client_ip) == ("192.0.2.5", "192.0.2.9")
    assert refused.name == f"{log}:1 a.example[192.0.2.5]"
    assert [(turn.label(), turn.expected[0]) for turn in refused.turns] == [
        ("(connect)", "220 *"), ("HELO a.example", "250*"),
        ("MAIL FROM:<x@bad.test>",
         "553 5.7.1 <x@bad.test>: Sender address rejected: Access denied"),
        ("MAIL FROM:<>", "250 *"),
        ("RCPT TO:<no@example.test>",
         "550 5.1.1 <no@example.test>: Recipient address rejected: User unknown"),
        ("QUIT", "221 *")]
    assert [(turn.label(), turn.expected[0]) for turn in submitted.turns] == [
        ("(connect)", "220 *"), ("EHLO pc", "250*"), ("MAIL FROM:<me@example.test>", "250 *"),
        ("RCPT TO:<friends@example.test>", "250 *"), ("DATA", "354 *"),
        ("(message, 4 lines)", "550 5.7.1 too big for them"),
        ("QUIT", "221 *")]  # the log ends before its disconnect line


def test_the_command_writes_the_log_scenarios_as_transcripts(tmp_path):
    log = tmp_path / "mail.log"
    log.write_text(MAILLOG)
    result = CliRunner().invoke(verify, ["--from-maillog", str(log),
                                         "--write", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    written = sorted((tmp_path / "out").iterdir())
    assert [path.name for path in written] == ["0001-192.0.2.5.transcript",
                                               "0002-192.0.2.9.transcript"]
    assert [scenario.turns for scenario in replay.load(written)] == [
        scenario.turns for scenario in maillog.scenarios(log)]
