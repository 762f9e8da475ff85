"""bounce::classify and bounce::parse from scripts, their lint, and the fallback to the
status-code mapping when the model file is missing or corrupt."""
from __future__ import annotations

import asyncio
import logging
import time
import zlib

import numpy as np
import pytest

from tests.support.servers import config_for, running
from tests.support.smtp_tools import client
from vsl.errors import LimitError
from vsl.limits import Limits
from vsl.lint import Linter
from vsl.stdlib import bounce, new_engine
from vsl.stdlib.ctx import Context, Stage, entry_points
from vsl.stdlib.support.bounce import SHIPPED
from vsl.stdlib.support.bounce.shared import SharedClassifier
from vsl.stdlib.support.mail import Mailbox, Message

DSN = b"""\
From: MAILER-DAEMON@mx.example.net\r
To: alice@example.test\r
Subject: Undelivered Mail Returned to Sender\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r
\r
--B\r
Content-Type: text/plain\r
\r
I could not deliver your message to two recipients.\r
--B\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; mx.example.net\r
\r
Final-Recipient: rfc822; gone@example.net\r
Action: failed\r
Status: 5.1.1\r
Remote-MTA: dns; in.example.net\r
Diagnostic-Code: smtp; 550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown\r
\r
Final-Recipient: rfc822; full@example.net\r
Action: failed\r
Status: 5.2.2\r
Remote-MTA: dns; in.example.net\r
Diagnostic-Code: smtp; 552 5.2.2 <full@example.net>: mailbox is over quota\r
--B--\r
"""

ARF = b"""\
From: feedback@isp.example\r
To: abuse@example.test\r
Subject: complaint\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=feedback-report; boundary="F"\r
\r
--F\r
Content-Type: text/plain\r
\r
This is an abuse report for a message received from you.\r
--F\r
Content-Type: message/feedback-report\r
\r
Feedback-Type: abuse\r
User-Agent: Example-FBL/1.0\r
Version: 1\r
--F--\r
"""

AUTOREPLY = b"""\
From: carol@example.net\r
To: alice@example.test\r
Subject: Out of office\r
Auto-Submitted: auto-replied\r
\r
I am away until Monday and will read your message when I return.\r
"""

PARSE_POLICY = """
fn on_pre_queue(ctx) {
    for entry in bounce::parse(ctx) {
        ctx.append_header("X-Bounce", `${entry.kind} ${entry.recipient} ${entry.status} ${entry.reason} ${entry.hard}`);
    }
    status::next()
}
"""


def _ctx_with(raw: bytes) -> Context:
    ctx = Context("192.0.2.7", 40000, "192.0.2.25", 25, "mx.example.test")
    ctx.message = Message(raw)
    return ctx


def run_script(source: str, fn: str = "check"):
    return new_engine().load_source(source, "t.vsl").call(fn)


def run_pre_queue(source: str, raw: bytes) -> Message:
    """Runs on_pre_queue of ``source`` on a message; returns the message after it."""
    script = new_engine().load_source(source, "p.vsl")
    ctx = Context("192.0.2.7", 40000, "192.0.2.25", 25, "mx.example.test")
    ctx.begin_transaction(Mailbox.parse("<>"))
    ctx.add_recipient(Mailbox.parse("alice@example.test"))
    ctx.message, ctx.stage = Message(raw), Stage.PRE_QUEUE
    asyncio.run(script.call_async("on_pre_queue", ctx))
    return ctx.message


def test_classify_a_reply_line_from_a_script():
    result = run_script('fn check() { let r = bounce::classify("550 5.1.1 <bob@example.net>: '
                        'no such user here"); [`${r}`, r.reason, r.confidence, r.hard, '
                        'r.status, r.diagnostic, r == r.reason] }')
    printed, reason, confidence, hard, status, diagnostic, equal = result
    assert printed == reason and equal
    assert reason == "userunknown" and 0 < confidence <= 1
    assert hard is True and status == "5.1.1" and "no such user" in diagnostic


def test_a_bare_line_with_a_colon_is_not_read_as_headers():
    result = bounce.classify("Error: 552 5.2.2 mailbox full, quota exceeded")
    assert result.status == "5.2.2" and result.diagnostic.startswith("Error: 552")


def test_classify_a_whole_message():
    result = bounce.classify(DSN.decode())
    assert result.reason == "userunknown" and result.status == "5.1.1"


@pytest.mark.parametrize("text", ["550 5.1.1 " + "mail box " * 1_000_000,
                                  "Subject: x\n\n" + "552 5.2.2 mailbox full " * 400_000])
def test_a_huge_text_is_classified_within_bounds(text):
    bounce.classify("550 5.1.1 warm up")
    started = time.perf_counter()
    result = bounce.classify(text)
    assert time.perf_counter() - started < 0.5 and len(result.diagnostic) <= 4000


CHARGED = """
fn classify_ten(text) { for i in 0..10 { bounce::classify(text); } "done" }
fn parse_ten(ctx) { for i in 0..10 { bounce::parse(ctx); } "done" }
"""
BIG = "550 5.1.1 the mailbox is unknown here " * 2_500  # 100 KB: 1,563 operations a read


@pytest.mark.parametrize("function, big, small, budget", [
    ("classify_ten", BIG, "550 5.1.1 no such user", 10_000),
    ("parse_ten", _ctx_with(DSN + BIG.encode()), _ctx_with(DSN), 40_000)],
    ids=["classify", "parse"])
def test_the_natives_are_charged_for_the_bytes_they_read(function, big, small, budget):
    """Ten reads of 100 KB more cost what a script walking them would (15,000 operations
    more) on top of the classifications' charge (32 KiB read each: 513 operations, six
    for the six '@' of the DSN): over the budget; ten reads of a short text stay within."""
    script = new_engine(Limits(max_operations=budget)).load_source(CHARGED, "c.vsl")
    assert script.call(function, small) == "done"
    with pytest.raises(LimitError, match="too many operations"):
        script.call(function, big)


def test_parse_is_charged_for_each_recipient_it_classifies():
    """A 4 KB report naming 100 recipients makes bounce::parse classify 100 times (about
    0.2 s): ten such parses run out of 10,000 operations, ten of a report as long naming
    one do not."""
    many = b"".join(b"Final-Recipient: rfc822; user%d@example.net\nAction: failed\n"
                    b"Status: 5.1.1\n\n" % n for n in range(100))
    one = b"Final-Recipient: rfc822; user@example.net\nAction: failed\nStatus: 5.1.1\n\n" \
        + b"X" * len(many)
    head = b"From: MAILER-DAEMON\nSubject: Undelivered\n\nReporting-MTA: dns; mx.test\n\n"
    script = new_engine(Limits(max_operations=10_000)).load_source(CHARGED, "c.vsl")
    assert script.call("parse_ten", _ctx_with(head + one)) == "done"
    with pytest.raises(LimitError, match="too many operations"):
        script.call("parse_ten", _ctx_with(head + many))


def test_classify_takes_a_string():
    with pytest.raises(Exception, match="takes a string"):
        run_script("fn check() { bounce::classify(42) }")


def test_parse_a_dsn_gives_one_entry_per_failed_recipient():
    headers = run_pre_queue(PARSE_POLICY, DSN).get_all("X-Bounce")
    assert headers == ["dsn gone@example.net 5.1.1 userunknown true",
                       "dsn full@example.net 5.2.2 mailboxfull true"]


def test_parse_entries_have_every_field():
    entries = bounce.parse(_ctx_with(DSN))
    assert set(entries[0]) == {"recipient", "action", "status", "remote_mta", "diagnostic",
                               "reason", "confidence", "hard", "kind"}
    assert entries[0]["action"] == "failed" and entries[0]["remote_mta"] == "in.example.net"
    assert "User unknown" in entries[0]["diagnostic"]


def test_parse_a_feedback_report():
    [entry] = bounce.parse(_ctx_with(ARF))
    assert entry["kind"] == "feedback" and entry["reason"] == "feedback"


def test_parse_an_autoreply():
    [entry] = bounce.parse(_ctx_with(AUTOREPLY))
    assert entry["kind"] == "autoreply" and entry["recipient"] == ""


ORDINARY = b"""\
From: Carol <carol@example.net>\r
To: alice@example.test\r
Subject: lunch\r
\r
Shall we have lunch on Friday? Bring bob@example.org along; he said 550 times\r
that the new place is good.\r
"""


@pytest.mark.parametrize("raw, sender, entries", [
    (ORDINARY, "carol@example.net", 0),        # ordinary mail: no bounce, no entry
    (ORDINARY, "<>", 1),                       # from the null sender: read as a bounce
    (DSN, "relay@example.net", 2),             # a report, whoever sent it
    (ARF, "feedback@isp.example", 1),
    (AUTOREPLY, "carol@example.net", 1),
    (b"From: MAILER-DAEMON@mx.example.net\r\nSubject: failure\r\n\r\n"   # a system sender
     b"<bob@example.org>: 550 5.1.1 no such user\r\n", "bounces@mx.example.net", 1),
    (b"From: mail@mx.example.net\r\nX-Failed-Recipients: bob@example.org\r\n\r\n"
     b"bob@example.org: 550 5.1.1 no such user\r\n", "bounces@mx.example.net", 1),
])
def test_parse_reads_as_a_bounce_only_what_shows_itself_one(raw, sender, entries):
    """A policy may call bounce::parse on every message: ordinary mail, which names
    addresses and numbers too, gives no entry."""
    ctx = Context("192.0.2.7", 40000, "192.0.2.25", 25, "mx.example.test")
    ctx.begin_transaction(Mailbox.parse(sender))
    ctx.message = Message(raw)
    assert len(bounce.parse(ctx)) == entries


def test_parse_before_the_message_is_an_error():
    ctx = Context("192.0.2.7", 40000, "192.0.2.25", 25, "mx.example.test")
    with pytest.raises(Exception, match="no message before on_pre_queue"):
        bounce.parse(ctx)


def test_lint_knows_the_natives_and_where_parse_works():
    linter = Linter(new_engine(), entry_points())
    assert linter.lint_source(PARSE_POLICY + 'fn on_helo(ctx) { log("bounce", "info", '
                              'bounce::classify(ctx.helo).reason); status::next() }\n',
                              "ok.vsl", None) == []
    findings = linter.lint_source("fn on_rcpt_to(ctx) { bounce::parse(ctx); status::next() }\n",
                                  "early.vsl", None)
    assert [d.code for d in findings] and "bounce::parse()" in findings[0].message
    assert "on_pre_queue" in findings[0].message


@pytest.mark.parametrize("damage", ["missing", "truncated", "damaged", "bad deflate"])
def test_a_broken_model_falls_back_to_the_status_codes(tmp_path, caplog, damage, monkeypatch):
    path = tmp_path / "model.npz"
    if damage == "truncated":
        path.write_bytes(SHIPPED.read_bytes()[:5000])
    if damage == "damaged":
        data = bytearray(SHIPPED.read_bytes())
        data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
        path.write_bytes(data)
    if damage == "bad deflate":  # what some single flipped bits make np.load raise
        monkeypatch.setattr(np, "load", lambda *_, **__: zlib.decompress(b"damaged"))
    model = SharedClassifier(path)
    with caplog.at_level(logging.ERROR, logger="vsl.bounce"):
        first = model.classify_text("550 5.1.1 no such user")
        second = model.classify_text("452 4.2.2 over quota")
        third = model.classify_text("554 transaction failed")
    assert (first.reason, first.confidence, first.hard, first.status) == \
        ("userunknown", 0.0, True, "5.1.1")
    assert (second.reason, second.hard) == ("mailboxfull", False)
    assert (third.reason, third.status) == ("rejected", "5.0.0")
    [record] = caplog.records
    assert str(path) in record.getMessage() and "vsl bounce train" in record.getMessage()
    assert "Reinstall" in record.getMessage()


def test_the_model_is_loaded_once_and_shared(monkeypatch):
    model = SharedClassifier(SHIPPED)
    monkeypatch.setattr(bounce, "shipped", lambda: model)
    bounce.classify("550 5.1.1 no such user")
    loaded = model.get()
    bounce.classify("550 5.1.1 no such user")
    assert loaded is not None and model.get() is loaded


def test_classify_from_a_script_in_a_real_server(tmp_path):
    policy = """
fn on_rcpt_to(ctx) {
    let why = bounce::classify(`550 5.1.1 <${ctx.rcpt}>: no such user`);
    if why == "userunknown" { return status::deny(`550 5.1.1 ${why.reason} ${why.status}`); }
    status::next()
}
"""
    with running(config_for(tmp_path, policy)) as server:
        with client(server) as smtp:
            smtp.ehlo()
            assert smtp.mail("alice@example.org")[0] == 250
            code, text = smtp.rcpt("bob@example.test")
    assert code == 550 and text == b"5.1.1 userunknown 5.1.1"


def test_a_parsed_recipient_is_judged_with_the_whole_bounce_marks_included():
    """bounce::parse's entry for the one recipient of a bounce says what bounce::classify
    says of the whole message: the header marks (X-Failed-Recipients, MAILER-DAEMON) count."""
    raw = ("From: Mail Delivery System <MAILER-DAEMON@mx.example>\n"
           "X-Failed-Recipients: bob@example.org\nAuto-Submitted: auto-replied\n"
           "Subject: Mail delivery failed\n\n"
           "This message was created automatically by mail delivery software.\n\n"
           "  bob@example.org\n    mailbox is full: retry timeout exceeded\n")
    parsed = bounce.parse_message(raw.encode())
    assert parsed.marks
    whole = bounce.shipped().classify(parsed)
    entry = bounce.recipient_entry(parsed, 0)
    assert (entry["reason"], entry["confidence"]) == (whole.reason, whole.confidence)
