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
