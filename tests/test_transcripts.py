"""`vsl test`: transcripts replayed through the real protocol code."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vsl.server.transcript import TranscriptError, matches, parse, replay

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").rglob("*.transcript"))
TEST_TRANSCRIPTS = sorted((ROOT / "tests" / "transcripts").rglob("*.transcript"))
VSL = Path(sys.executable).parent / "vsl"


@pytest.mark.parametrize("path", EXAMPLES + TEST_TRANSCRIPTS,
                         ids=[str(p.relative_to(ROOT)) for p in EXAMPLES + TEST_TRANSCRIPTS])
def test_every_transcript_passes(path):
    outcome = replay(parse(path), None)
    assert outcome.passed, outcome.problems


def test_every_example_policy_has_transcripts():
    policies = {p.parent for p in (ROOT / "examples").rglob("main.vsl")}
    assert policies and policies <= {p.parent for p in EXAMPLES}


def test_a_wrong_expectation_fails_with_a_diff(tmp_path):
    (tmp_path / "main.vsl").write_text('fn on_helo(ctx) { status::deny("550 5.7.1 no") }\n')
    path = tmp_path / "t.transcript"
    path.write_text("S: 220 *\nC: HELO x.test\nS: 250 *\nC: QUIT\nS: 221 *\n")
    result = subprocess.run([VSL, "test", str(path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "FAIL" in result.stdout
    assert "line 3: expected 'S: 250 *', got 'S: 550 5.7.1 no'" in result.stdout
    assert "0 passed, 1 failed" in result.stdout


@pytest.mark.parametrize("ehlo, problem", [
    (["S: 250 *"], None),                              # one last line: the whole reply
    (["S: 250-*", "S: 250 *"], None),                  # the continuation lines, then the rest
    (["S: 250 SMTPUTF8"], "line 4: expected 'S: 250 SMTPUTF8', got 'S: 250 ENHANCEDSTATUSCODES'"),
    (["S: 251 *"], "line 4: expected 'S: 251 *', got 'S: 250-mx.test'"),  # not its code
])
def test_a_last_line_stands_for_a_multi_line_reply(tmp_path, ehlo, problem):
    """Adding an extension to EHLO breaks no transcript that says `S: 250 *` for it."""
    path = tmp_path / "t.transcript"
    path.write_text("\n".join(["# config: vsl.toml", "S: 220 *", "C: EHLO c.test", *ehlo,
                               "C: NOOP", "S: 250 2.0.0 Ok", "C: QUIT", "S: 221 *"]) + "\n")
    (tmp_path / "vsl.toml").write_text('[server]\nhostname = "mx.test"\n')
    problems = replay(parse(path), None).problems
    assert problems[:1] == ([problem] if problem else [])


def test_cli_passes(tmp_path):
    result = subprocess.run([VSL, "test", *map(str, EXAMPLES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert f"{len(EXAMPLES)} passed, 0 failed" in result.stdout


def test_the_client_ip_header_reaches_the_policy(tmp_path):
    (tmp_path / "main.vsl").write_text(
        'fn on_connect(ctx) { if ctx.client_ip == "198.51.100.4" { status::deny('
        '"554 5.7.1 not you") } else { status::next() } }\n')
    path = tmp_path / "t.transcript"
    path.write_text("# client-ip: 198.51.100.4\nS: 554 5.7.1 not you\n")
    assert replay(parse(path), None).passed


@pytest.mark.parametrize("text, message", [
    ("X: nope\n", "expected 'C: ', 'S: ', 'Q: ' or '#'"),
    ("# client-ip: banana\nS: 220 *\n", "not an IP address"),
    ("C: QUIT\n", "no 'S:' line"),
    ("# zones: example.zone\nS: 220 *\n",
     "bad.transcript:1: unknown directive '# zones:', did you mean '# zone:'"),
    ("# client_ip: 192.0.2.9\n", "unknown directive '# client_ip:', did you mean '# client-ip:'"),
    ("# Note: the server must refuse\n", "unknown directive '# note:' .known: client-ip, zone"),
])
def test_bad_transcripts(tmp_path, text, message):
    path = tmp_path / "bad.transcript"
    path.write_text(text)
    with pytest.raises(TranscriptError, match=message):
        parse(path)


def test_matching():
    assert matches("250 *", "250 2.0.0 ok") and not matches("250 *", "550 no")
    assert matches("221 Bye", "221 Bye") and not matches("221 Bye", "221 Byeee")


def test_comments_are_not_directives(tmp_path):
    path = tmp_path / "t.transcript"
    path.write_text("# The server greets: then we quit.\n#zone without colon\n"
                    "# Config: vsl.toml\nS: 220 *\n")
    transcript = parse(path)
    assert transcript.zones == [] and transcript.config == tmp_path / "vsl.toml"


def test_a_domain_outside_the_zones_does_not_exist(tmp_path):
    (tmp_path / "main.vsl").write_text(
        'fn on_mail_from(ctx) {\n'
        '    if dns::resolver().lookup(ctx.sender.domain, "MX") == [] {\n'
        '        return status::deny("550 5.1.8 unknown sender domain");\n'
        '    }\n'
        '    status::next()\n'
        '}\n')
    (tmp_path / "known.zone").write_text("$ORIGIN known.test.\n$TTL 300\n@ MX 10 mx\n")
    path = tmp_path / "t.transcript"
    path.write_text("# zone: known.zone\nS: 220 *\nC: HELO x.test\nS: 250 *\n"
                    "C: MAIL FROM:<a@known.test>\nS: 250 *\nC: RSET\nS: 250 *\n"
                    "C: MAIL FROM:<a@nowhere.example>\nS: 550 5.1.8 unknown sender domain\n")
    outcome = replay(parse(path), None)
    assert outcome.passed, outcome.problems


def test_a_bad_zone_file_is_an_error_not_a_traceback(tmp_path):
    (tmp_path / "main.vsl").write_text("fn on_helo(ctx) { status::next() }\n")
    (tmp_path / "nosoa.zone").write_text("$ORIGIN known.test.\n$TTL 300\n@ MX 10 mx\n")
    path = tmp_path / "t.transcript"
    path.write_text("# zone: nosoa.zone\n# zone: missing.zone\nS: 220 *\n")
    result = subprocess.run([VSL, "test", str(path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "missing.zone: cannot read: No such file or directory" in result.stdout


MESSAGE = ("S: 220 *\nC: HELO x.test\nS: 250 *\nC: MAIL FROM:<a@b.test>\nS: 250 *\n"
           "C: RCPT TO:<bob@x.test>\nS: 250 *\nC: DATA\nS: 354 *\nC: Subject: x\nC:\nC: body\n"
           "C: .\n")


def test_a_transcript_must_check_the_reply_to_its_last_client_line(tmp_path):
    (tmp_path / "main.vsl").write_text("fn on_rcpt_to(ctx) { status::accept() }\n")
    path = tmp_path / "t.transcript"
    path.write_text(MESSAGE)
    result = subprocess.run([VSL, "test", str(path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert (f"ERROR {path}: {path}:13: 'C: .' is the last line, so its reply is never "
            "checked: end with the S: line that answers it") in result.stdout
    assert "Traceback" not in result.stderr


def test_a_session_ending_while_the_message_is_spooled_ends_cleanly(tmp_path):
    """replay() waits for the spool's writer: it reports to the session's event loop."""
    (tmp_path / "main.vsl").write_text("fn on_rcpt_to(ctx) { status::accept() }\n")
    path = tmp_path / "t.transcript"
    path.write_text(MESSAGE + "S: 250 *\n")
    code = ("import sys; from pathlib import Path; from server.transcript import parse, replay\n"
            "for _ in range(3):\n"
            "    transcript = parse(Path(sys.argv[1]))\n"
            "    del transcript.steps[-1]  # the session ends before the 250 of '.'\n"
            "    assert replay(transcript, None).passed\n")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr


# ---- Q: lines, what the session queued ----------------------------------------------------

QUEUEING = """
fn on_rcpt_to(ctx) {
    if ctx.rcpt.local_part == "lmtp" { transport::lmtp(ctx, "lmtp://127.0.0.1:24"); }
    status::next()
}
fn on_pre_queue(ctx) {
    ctx.append_header("X-Policy", "checked by vsl");
    if ctx.sender.local_part == "bad" { return status::quarantine("bad"); }
    status::next()
}
"""


def queued(sender):
    return (f"C: MAIL FROM:<{sender}>\nS: 250 *\nC: RCPT TO:<lmtp@example.test>\nS: 250 *\n"
            "C: RCPT TO:<bob@example.test>\nS: 250 *\n"
            "C: DATA\nS: 354 *\nC: Subject: x\nC:\nC: body\nC: .\nS: 250 2.0.0 *\n")


def run(tmp_path, dialogue, checks):
    (tmp_path / "main.vsl").write_text(QUEUEING)
    (tmp_path / "vsl.toml").write_text('[server]\nlocal_domains = ["example.test"]\n')
    path = tmp_path / "t.transcript"
    path.write_text("# config: vsl.toml\nS: 220 *\nC: HELO c.test\nS: 250 *\n" + dialogue
                    + "C: QUIT\nS: 221 *\n" + "".join(f"Q: {check}\n" for check in checks))
    return replay(parse(path), None).problems


TWO_MESSAGES = queued("a@example.org") + queued("bad@example.org")
LAST = 4 + 2 * 13 + 2 + 1  # the first Q: line: greeting and HELO, two messages, QUIT


@pytest.mark.parametrize("check, got", [
    ("quarantine/bad", None),
    ("deliver", "got 'Q: quarantine/bad'"),
    ("messages 2", None),
    ("messages 1", "got 2 messages queued"),
    ("none", "got 2 messages queued"),
    ("header X-Policy: checked by vsl", None),
    ("header x-policy: checked*", None),
    ("header X-Policy: unchecked", "got 'Q: header X-Policy: checked by vsl'"),
    ("header X-Other: *", "got no X-Other header"),
    ("no header X-Other", None),
    ("no header X-Policy", "got 'Q: header X-Policy: checked by vsl'"),
    ("sender bad@example.org", None),
    ("sender a@example.org", "got 'Q: sender bad@example.org'"),
    ("recipients lmtp@example.test bob@example.test", None),
    ("recipients bob@example.test", "got 'Q: recipients lmtp@example.test bob@example.test'"),
    ("route lmtp@example.test lmtp://127.0.0.1:24", None),
    ("route lmtp@example.test lmtp://*", None),
    ("route bob@example.test lmtp://*", "got 'Q: route bob@example.test maildir:"),
    ("route carol@example.test mx", "got no recipient carol@example.test"),
    ("message 3", "got 2 messages queued"),
])
def test_a_queue_check_passes_or_says_what_it_got(tmp_path, check, got):
    problems = run(tmp_path, TWO_MESSAGES, [check])
    if got:  # (a local recipient's maildir path depends on the configuration)
        assert len(problems) == 1 and problems[0].startswith(
            f"line {LAST}: expected 'Q: {check}', {got}"), problems
    else:
        assert problems == []


def test_message_n_picks_the_message_the_next_checks_look_at(tmp_path):
    checks = ["message 1", "deliver", "sender a@example.org", "message 2", "quarantine/bad"]
    assert run(tmp_path, TWO_MESSAGES, checks) == []
    assert run(tmp_path, TWO_MESSAGES, ["message 1", "quarantine/bad"]) == \
        [f"line {LAST + 1}: expected 'Q: quarantine/bad', got 'Q: deliver'"]


def test_nothing_queued(tmp_path):
    assert run(tmp_path, "", ["none"]) == []
    assert run(tmp_path, "", ["deliver", "header X: y"]) == [
        "line 7: expected 'Q: deliver', got no message to check",
        "line 8: expected 'Q: header X: y', got no message to check"]


@pytest.mark.parametrize("text, message", [
    ("S: 220 *\nQ: deliverr\n",
     "bad.transcript:2: unknown check 'Q: deliverr', did you mean 'Q: deliver'"),
    ("S: 220 *\nQ: sent\n",
     r"bad.transcript:2: unknown check 'Q: sent' \(checks: a queue \(deliver"),
    ("S: 220 *\nQ: headers X: y\n",
     "bad.transcript:2: unknown check 'Q: headers X: y', did you mean 'Q: header NAME: VALUE'"),
    ("S: 220 *\nQ: header X-Policy\n",
     "bad.transcript:2: malformed check 'Q: header X-Policy': write 'Q: header NAME: VALUE'"),
    ("S: 220 *\nQ: messages 0\n", "malformed check 'Q: messages 0': write 'Q: messages N'"),
    ("S: 220 *\nQ: route bob@x.test\n", "write 'Q: route ADDRESS ROUTE'"),
    ("S: 220 *\nQ: quarantine/no such\n", "unknown check 'Q: quarantine/no such'"),
    ("S: 220 *\nQ: none\nC: QUIT\nS: 221 *\n",
     "bad.transcript:3: 'C: QUIT' follows a 'Q:' line: move the Q: lines after the dialogue"),
])
def test_bad_queue_checks(tmp_path, text, message):
    path = tmp_path / "bad.transcript"
    path.write_text(text)
    with pytest.raises(TranscriptError, match=message):
        parse(path)


@pytest.mark.parametrize("policy, dialogue, problem", [
    ('status::deny("421 4.7.0 busy")', "S: 421 4.7.0 busy\nS: <closed>\n", None),
    ('status::deny("554 5.7.1 not you")', "S: 554 *\nC: QUIT\nS: 221 *\nS: <closed>\n", None),
    ('status::deny("554 5.7.1 not you")', "S: 554 *\nS: <closed>\n",
     "line 2: expected 'S: <closed>', got no reply in"),  # it waits for QUIT
    ("status::next()", "S: 220 *\nC: HELO c.test\nS: <closed>\n",
     "line 3: expected 'S: <closed>', got 'S: 250 "),
    ('status::deny("421 4.7.0 busy")', "S: 421 *\nS: 220 *\n",
     "line 2: expected 'S: 220 *', got 'S: <closed>'"),
])
def test_a_closed_connection(tmp_path, monkeypatch, policy, dialogue, problem):
    """``S: <closed>``: the server closed the connection (a problem starts so)."""
    monkeypatch.setattr("vsl.server.transcript.REPLY_TIMEOUT", 1.0)
    (tmp_path / "main.vsl").write_text(f"fn on_connect(ctx) {{ {policy} }}\n")
    path = tmp_path / "t.transcript"
    path.write_text(dialogue)
    problems = replay(parse(path), None).problems
    if problem:
        assert len(problems) == 1 and problems[0].startswith(problem), problems
    else:
        assert problems == []
