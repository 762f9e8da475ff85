"""The bounce classifier: parsing of bounce formats, the shipped model, bounds, and a
held-out-family accuracy floor when the labelled data is present."""
from __future__ import annotations

import base64
import json
import time
import timeit
import zlib
from pathlib import Path

import numpy as np
import pytest

from vsl.stdlib.support.bounce import train
from vsl.stdlib.support.bounce.features import (BUCKETS, MAX_CLAUSES, clauses, featurize,
                                                focus_of)
from vsl.stdlib.support.bounce.message import MAX_PARTS, as_bounce, parse
from vsl.stdlib.support.bounce.model import (CLAUSE_WEIGHT, Classifier, Network,
                                             average_probabilities, batch_csr,
                                             reason_probabilities)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bounces-train.jsonl"

DSN = """\
From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.org>
To: alice@example.org
Subject: Returned mail: see transcript for details
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

Your message could not be delivered to two recipients.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; bob@remote.test
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.remote.test
Diagnostic-Code: smtp; 550 5.1.1 <bob@remote.test>: Recipient address rejected:
 User unknown in local recipient table

Final-Recipient: rfc822; carol@slow.test
Action: delayed
Status: 4.2.2
Diagnostic-Code: smtp; 452 4.2.2 Mailbox full

--B
Content-Type: message/rfc822

From: alice@example.org
To: bob@remote.test
Subject: hello

hi
--B--
"""

ARF = """\
From: fbl@isp.test
To: abuse@example.org
Subject: FW: hello
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="F"

--F
Content-Type: text/plain

This is an abuse report.
--F
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: fbl/1.0
Version: 1

--F
Content-Type: message/rfc822

From: alice@example.org
Subject: hello

hi
--F--
"""

AUTOREPLY = """\
From: bob@remote.test
To: alice@example.org
Subject: Out of office
Auto-Submitted: auto-replied

I am away until Monday.
"""

PLAIN = """\
From: MAILER-DAEMON@mx.example.org
To: alice@example.org
Subject: failure notice

Hi. This is the delivery program at mx.example.org.
I could not deliver your message to the following addresses.

<bob@remote.test>:
192.0.2.7 does not like recipient.
Remote host said: 550 5.1.1 No such user here
Giving up on 192.0.2.7.

--- Below this line is a copy of the message.

Return-Path: <alice@example.org>
Received: from client by mx.example.org
Subject: hello

hi
"""


@pytest.fixture(scope="module")
def classifier():
    return Classifier.load()


def test_dsn_gives_one_entry_per_recipient():
    bounce = parse(DSN)
    assert bounce.kind == "dsn"
    bob, carol = bounce.recipients
    assert (bob.address, bob.action, bob.status, bob.remote_mta, bob.reply_code) == (
        "bob@remote.test", "failed", "5.1.1", "mx.remote.test", "550")
    assert bob.diagnostic.endswith("User unknown in local recipient table")
    assert (carol.address, carol.action, carol.status, carol.reply_code) == (
        "carol@slow.test", "delayed", "4.2.2", "452")
    assert "could not be delivered" in bounce.text and "Subject: hello" not in bounce.text


def test_a_final_recipient_in_angle_brackets_is_its_address():
    bounce = parse(DSN.replace("Final-Recipient: rfc822; bob@remote.test",
                               "Final-Recipient: rfc822; <bob@remote.test>"))
    assert [r.address for r in bounce.recipients] == ["bob@remote.test", "carol@slow.test"]


def test_arf_autoreply_and_plain_kinds():
    assert parse(ARF).kind == "feedback"
    assert parse(AUTOREPLY).kind == "autoreply"
    plain = parse(PLAIN)
    assert plain.kind == "plain"
    assert [r.address for r in plain.recipients] == ["bob@remote.test"]
    assert (plain.first.status, plain.first.reply_code) == ("5.1.1", "550")
    assert "Received:" not in plain.text


def test_a_mail_systems_auto_submitted_notice_is_a_bounce_with_its_failed_recipients():
    notice = """\
From: Mail Delivery Subsystem <mailer-daemon@mx.example.org>
To: alice@example.org
Subject: Delivery Status Notification (Failure)
Auto-Submitted: auto-replied
X-Failed-Recipients: list@groups.remote.test

The group you wrote to may not exist, or you may not post to it.
"""
    bounce = parse(notice)
    assert bounce.kind == "plain"
    assert bounce.first.address == "list@groups.remote.test"
    assert bounce.marks == ["auto-submitted=auto-replied", "x-failed-recipients",
                            "from=mailer-daemon"]


def test_auto_reply_marks_are_kept():
    outlook = AUTOREPLY.replace("Auto-Submitted: auto-replied", "X-Auto-Response-Suppress: All")
    assert parse(outlook).marks == ["x-auto-response-suppress"]
    assert parse(AUTOREPLY).marks == ["auto-submitted=auto-replied"]


def test_an_exchange_auto_reply_is_an_autoreply_but_not_its_ndr():
    outlook = AUTOREPLY.replace("Auto-Submitted: auto-replied", "X-Auto-Response-Suppress: All")
    assert parse(outlook).kind == "autoreply"
    ndr = outlook.replace("From: bob@remote.test", "From: postmaster@remote.test")
    assert parse(ndr).kind == "plain"


INLINE_REPORT = """\
Your message could not be delivered.

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; bob@remote.test
Action: failed
Status: 5.2.2
Diagnostic-Code: smtp; 552 5.2.2 Quota exceeded
"""


@pytest.mark.parametrize("quote", ["", "> "])
def test_a_delivery_status_report_written_in_the_text_gives_the_recipients(quote):
    body = "".join(quote + line + "\n" for line in INLINE_REPORT.split("\n"))
    bounce = parse(plain_bounce(body))
    assert bounce.kind == "dsn"
    assert [(r.address, r.action, r.status, r.reply_code) for r in bounce.recipients] == [
        ("bob@remote.test", "failed", "5.2.2", "552")]
    assert bounce.first.diagnostic == "552 5.2.2 Quota exceeded"


QUOTED_REPORT = """\
I am away this week.

> Final-Recipient: rfc822; bob@remote.test
> Status: 5.1.1
"""


@pytest.mark.parametrize("header, kind", [
    ("From: alice@remote.test\nAuto-Submitted: auto-replied\n", "autoreply"),
    ("From: alice@remote.test\n", "plain"),                      # a human reply
    ("From: postmaster@remote.test\nAuto-Submitted: auto-replied\n", "plain"),
])
def test_a_report_quoted_in_a_reply_is_not_read_as_one(header, kind):
    bounce = parse(header + "Subject: Re: bounce\n\n" + QUOTED_REPORT)
    assert bounce.kind == kind


JAPANESE = "宛先のメールボックスがありません"
ISO_2022_JP = JAPANESE.encode("iso-2022-jp")


@pytest.mark.parametrize("raw, report_type", [
    (ISO_2022_JP, b"delivery-status"),
    (ISO_2022_JP[:9] + b"\n " + ISO_2022_JP[9:], b"delivery-status"),   # folded in a run
    (ISO_2022_JP[:10] + b"\n " + ISO_2022_JP[10:], b"delivery-status"),
    (JAPANESE.encode(), b"global-delivery-status"),                 # RFC 6533: UTF-8
    (JAPANESE.encode(), b"delivery-status"),
    (JAPANESE.encode("euc_jp"), b"delivery-status"),
    (JAPANESE.encode("shift_jis"), b"delivery-status"),
])
def test_a_diagnostic_code_written_raw_in_japanese_is_decoded(raw, report_type):
    dsn = DSN.encode().replace(b"message/delivery-status", b"message/" + report_type).replace(
        b"550 5.1.1 <bob@remote.test>: Recipient address rejected:\n"
        b" User unknown in local recipient table", b"550 " + raw)
    assert parse(dsn).first.diagnostic == "550 " + JAPANESE


PLAIN_JAPANESE = (f"次のあて先へのメッセージは送信できませんでした。\n<bob@example.jp>: 550 {JAPANESE}\n"
                  "An end cut in the middle of a character: 宛")


@pytest.mark.parametrize("content_type, body", [
    (b"", PLAIN_JAPANESE.encode("iso2022_jp")),                  # no charset: sniffed
    (b"Content-Type: text/plain\n", PLAIN_JAPANESE.encode("iso2022_jp")),
    (b"Content-Type: text/plain; charset=us-ascii\n", PLAIN_JAPANESE.encode("iso2022_jp")),
    (b"", PLAIN_JAPANESE.encode()[:-1]),                          # UTF-8 read to a bound
    (b"", PLAIN_JAPANESE.encode("euc_jp")),
    (b"Content-Type: text/plain; charset=iso-2022-jp\n", PLAIN_JAPANESE.encode("iso2022_jp")),
    (b"Content-Type: text/plain; charset=iso-2022-jp\n", PLAIN_JAPANESE.encode()[:-1]),  # UTF-8
    (b"Content-Type: text/plain; charset=iso-2022-jp\n",                 # with a UTF-8 footer
     PLAIN_JAPANESE.encode("iso2022_jp") + "\n-- Café".encode()),
])
def test_a_plain_bounce_in_japanese_is_decoded_whatever_it_declares(content_type, body):
    raw = (b"From: MAILER-DAEMON@example.jp\nSubject: Returned mail\nTo: a@example.org\n"
           b"MIME-Version: 1.0\n" + content_type + b"\n" + body)
    bounce = parse(raw)
    assert bounce.text.startswith(PLAIN_JAPANESE[:-1])
    assert f"550 {JAPANESE}" in bounce.first.diagnostic


def test_a_part_neither_its_charset_nor_utf_8_keeps_what_its_charset_decodes():
    raw = (b"From: MAILER-DAEMON@example.jp\nMIME-Version: 1.0\n"
           b"Content-Type: text/plain; charset=iso-2022-jp\n\n"
           + PLAIN_JAPANESE.encode("euc_jp"))
    bounce = parse(raw)
    assert "\ufffd" in bounce.text and bounce.first.address == "bob@example.jp"
    assert bounce.first.reply_code == "550"


GERMAN = "Empfänger unbekannt: Postfach gelöscht, Zustellung fehlgeschlagen"


@pytest.mark.parametrize("charset, body, text", [
    ("iso-8859-1", GERMAN.encode(), GERMAN),         # UTF-8 that declares Latin-1: no mojibake
    ("windows-1252", GERMAN.encode(), GERMAN),
    ("iso-8859-1", GERMAN.encode("latin-1"), GERMAN),  # what it declares
    ("shift_jis", JAPANESE.encode("shift_jis"), JAPANESE),  # not one byte a character
    ("shift_jis", "ﾂｱﾃｽ".encode("shift_jis"), "ﾂｱﾃｽ"),  # one-byte kana that are UTF-8 too
])
def test_a_part_declared_in_a_one_byte_charset_is_read_as_utf_8_when_it_is_that(
        charset, body, text):
    raw = (f"From: MAILER-DAEMON@example.de\nMIME-Version: 1.0\n"
           f"Content-Type: text/plain; charset={charset}\n\n<bob@example.de>: 550 ").encode() \
        + body + b"\n"
    bounce = parse(raw)
    assert "550 " + text in bounce.first.diagnostic


@pytest.mark.parametrize("content_type", [b"", b"Content-Type: text/plain; charset=us-ascii\n"])
def test_a_plain_bounce_in_latin_1_is_not_read_as_japanese(content_type):
    """Shift_JIS decodes most Latin-1 accented letters with the byte after them as one
    kanji: only a text with kana is taken for Japanese."""
    raw = (b"From: MAILER-DAEMON@example.de\nSubject: Unzustellbar\nMIME-Version: 1.0\n"
           + content_type + b"\n<bob@example.de>: 550 " + GERMAN.encode("latin-1") + b"\n")
    bounce = parse(raw)
    assert GERMAN in bounce.text
    assert "550 " + GERMAN in bounce.first.diagnostic


@pytest.mark.parametrize("text, encoding", [
    ("宛先不明", "euc_jp"), ("送信失敗：宛先不明", "shift_jis"),      # kanji, no kana
    ("Ações não concluídas", "latin-1"), ("Größe überschritten", "latin-1"),
    ("550 Adresse déléguée inexistante", "cp1252"),   # Shift_JIS made two kanji of it
])
def test_undeclared_8_bit_text_is_read_as_what_it_is(text, encoding):
    raw = (b"From: MAILER-DAEMON@example.org\nSubject: x\n\n<bob@example.org>: 550 "
           + text.encode(encoding) + b"\n")
    assert text in parse(raw).text


def test_a_subject_of_white_space_loses_nothing_else():
    """Its cut at white space found none: the IndexError emptied the whole bounce."""
    raw = b"Subject: " + b"\n " * 2000 + b"x\n" + DSN.encode().split(b"\n", 1)[1]
    assert parse(raw).first.address == "bob@remote.test"


def test_a_long_encoded_subject_is_decoded_to_its_kept_length():
    import email.charset
    import email.header
    quoted = email.charset.Charset("utf-8")
    quoted.header_encoding = email.charset.QP  # 9 bytes a character
    subject = "日本語の件名です" * 40
    raw = b"Subject: " + email.header.Header(subject, quoted).encode().encode() + b"\n\nx\n"
    assert parse(raw).subject == subject[:300]


def test_a_diagnostic_code_written_raw_in_latin_1_is_decoded():
    dsn = DSN.encode().replace(b"550 5.1.1 <bob@remote.test>: Recipient address rejected:\n"
                               b" User unknown in local recipient table",
                               b"550 " + GERMAN.encode("latin-1"))
    assert parse(dsn).first.diagnostic == "550 " + GERMAN


def test_a_diagnostic_code_in_other_iso_2022_jp_2_sets_is_decoded():
    raw = "550 ¡你好".encode("iso2022_jp_2")
    dsn = DSN.encode().replace(b"550 5.1.1 <bob@remote.test>: Recipient address rejected:\n"
                               b" User unknown in local recipient table", raw)
    assert parse(dsn).first.diagnostic == "550 ¡你好"


def test_an_empty_diagnostic_code_is_read_from_the_text_around_the_recipient():
    """Sendmail leaves Diagnostic-Code out when the failure was not a reply (a deferral
    that expired): its transcript in the readable part says what happened."""
    dsn = DSN.replace("Your message could not be delivered to two recipients.", """\
   ----- The following addresses had permanent fatal errors -----
<bob@remote.test>

   ----- Transcript of session follows -----
<bob@remote.test>... Deferred: Connection refused by mx.remote.test.
Message could not be delivered for 5 days""").replace(
        "Diagnostic-Code: smtp; 550 5.1.1 <bob@remote.test>: Recipient address rejected:\n"
        " User unknown in local recipient table\n", "")
    bob, carol = parse(dsn).recipients
    assert "Deferred: Connection refused" in bob.diagnostic
    assert "fatal errors" in bob.diagnostic and "Message could not" in bob.diagnostic
    assert carol.diagnostic == "452 4.2.2 Mailbox full"


def test_phase_comes_from_the_smtp_command_named():
    text = PLAIN.replace("does not like recipient.", "said after RCPT TO command:")
    assert parse(text).first.phase == "rcpt"


def test_a_command_marker_does_not_span_a_blank_line():
    text = DSN.replace("Your message could not be delivered to two recipients.",
                       "It was refused for\n\nData protection reasons.")
    assert parse(text).first.phase == ""


SENDMAIL_TRANSCRIPT = DSN.replace("Your message could not be delivered to two recipients.", """   ----- Transcript of session follows -----
... while talking to mx.remote.test.:
>>> MAIL From:<alice@example.org> SIZE=120
<<< 250 2.1.0 Ok
>>> DATA
<<< 550 Unknown user bob@remote.test
554 5.0.0 Service unavailable""").replace(
    "Diagnostic-Code: smtp; 550 5.1.1 <bob@remote.test>: Recipient address rejected:\n"
    " User unknown in local recipient table", "Diagnostic-Code: smtp; 550 Unknown user")


@pytest.mark.parametrize("layout, phase", [
    ("(in reply to RCPT TO command)", "rcpt"),              # Postfix
    ("(in reply to end of DATA command)", "data"),          # Postfix
    ("(in reply to end of\n    DATA command)", "data"),      # Postfix, folded at 80 columns
    ("(in reply to\n    RCPT TO command)", "rcpt"),
    ("SMTP error from remote mail server after MAIL FROM:<alice@example.org>:", "mail"),  # Exim
    ("SMTP error from remote mail server after end of data:", "data"),  # Exim
    ("mx.remote.test [192.0.2.7] did not like our RCPT TO:", "rcpt"),   # DragonFly
    ("Technical details: SMTP:RCPT host 192.0.2.7:", "rcpt"),           # X3
    ("Connected to 192.0.2.7 but sender was rejected.", "mail"),        # qmail
    ("192.0.2.7 failed after I sent the message.", "data"),             # qmail
    ("Connected to 192.0.2.7 but my name was rejected.", "helo"),       # qmail

])
def test_phase_in_the_layouts_mtas_write(layout, phase):
    text = PLAIN.replace("192.0.2.7 does not like recipient.", layout)
    assert parse(text).first.phase == phase


def test_phase_of_a_dsn_comes_from_its_session_transcript():
    """The Diagnostic-Code names no command: the transcript's last command before the
    reply does; the earlier MAIL FROM, answered with 250, is not the phase."""
    bounce = parse(SENDMAIL_TRANSCRIPT)
    assert bounce.kind == "dsn" and bounce.first.phase == "data"
    assert parse(DSN).first.phase == ""


def test_a_pipelined_rcpt_reply_printed_after_data_is_read_as_datas():
    """RFC 2920: RCPT TO and DATA went in one batch and the 550 answered the RCPT TO, but
    the bounce shows it after DATA, and the labels read it so (Sendmail's "550 5.0.0 ...
    User unknown" printed there is ``filtered``)."""
    pipelined = SENDMAIL_TRANSCRIPT.replace(
        "554 5.0.0 Service unavailable", "<<< 554 5.5.1 Error: no valid recipients")
    assert parse(pipelined).first.phase == "data"


def test_shipped_model_reads_the_formats(classifier):
    assert classifier.classify(DSN).reason == "userunknown"
    assert classifier.classify(PLAIN).reason == "userunknown"
    assert classifier.classify(ARF).reason == "feedback"
    assert classifier.classify(AUTOREPLY).reason == "vacation"
    result = classifier.classify(DSN)
    assert 0 < result.confidence <= 1 and result.hard and result.status == "5.1.1"


def test_a_model_reads_the_features_hashed_into_as_many_slots_as_it_has_rows(classifier):
    index, _ = featurize(parse(DSN), 1024)
    assert len(index) and index.max() < 1024
    small = Network({name: array[:1024] if name == "W1" else array
                     for name, array in classifier.networks[0].weights.items()},
                    classifier.labels)
    assert Classifier([small], classifier.meta).classify(DSN).reason in classifier.labels


@pytest.mark.parametrize("width", [32, 5])
def test_w1_is_stored_in_4_bits_per_weight_and_read_back_within_its_step(tmp_path, width):
    rng = np.random.default_rng(1)
    weights = {"W1": rng.standard_normal((64, width)).astype(np.float32),
               "b1": np.zeros(width, np.float32)}
    weights["W1"][3] = 0
    Classifier([Network(weights, ["a"] * width)], {"labels": ["a"] * width}).save(
        tmp_path / "m.npz")
    stored = np.load(tmp_path / "m.npz")
    assert stored["W1"].dtype == np.uint8 and stored["W1"].shape == (64, (width + 1) // 2)
    read = Classifier.load(tmp_path / "m.npz").networks[0].weights["W1"]
    step = np.abs(weights["W1"]).max(axis=1, keepdims=True) / 7
    assert read.shape == (64, width) and not read[3].any()
    assert (np.abs(read - weights["W1"]) <= step / 2 + 1e-3).all()


def test_a_model_file_with_8_bit_w1_is_still_read(tmp_path, classifier):
    """Model files of stop 27 and before store W1 as int8 with a float32 scale per row."""
    network = classifier.networks[0]
    scale = np.abs(network.weights["W1"]).max(axis=1) / 127
    scale[scale == 0] = 1
    arrays = {name: array for name, array in network.weights.items() if name != "W1"}
    np.savez(tmp_path / "old.npz", meta=np.array(json.dumps(classifier.meta)),
             **{"W1": np.round(network.weights["W1"] / scale[:, None]).astype(np.int8),
                "W1.scale": scale.astype(np.float32)}, **arrays)
    read = Classifier.load(tmp_path / "old.npz").networks[0].weights["W1"]
    assert (np.abs(read - network.weights["W1"]) <= scale[:, None] / 2 + 1e-6).all()


@pytest.mark.parametrize("damage", [
    {"W1.scale": None},                                  # 4-bit values without their scale
    {"W1": np.zeros((64, 3), np.uint8)},                 # too few nibbles for b1's 8 columns
    {"W1.scale": np.ones(63, np.float16)},               # a scale per row, one missing
    {"W1.scale": np.float16(1)},
    {"b1": np.float32(0)},
    {"W1": np.zeros(64, np.uint8)},
])
def test_a_model_file_whose_arrays_do_not_fit_together_is_refused(tmp_path, damage):
    weights = {"W1": np.ones((64, 8), np.float32), "b1": np.zeros(8, np.float32)}
    Classifier([Network(weights, ["a"] * 8)], {"labels": ["a"] * 8}).save(tmp_path / "m.npz")
    arrays = dict(np.load(tmp_path / "m.npz"))
    arrays.update(damage)
    np.savez(tmp_path / "m.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(ValueError, match="do not fit together"):
        Classifier.load(tmp_path / "m.npz")


def test_weights_too_large_for_a_float16_scale_are_refused_when_saved(tmp_path):
    weights = {"W1": np.array([[5e5, -1.0]], np.float32), "b1": np.zeros(2, np.float32)}
    with pytest.raises(ValueError, match="too large"):
        Classifier([Network(weights, ["a", "b"])], {"labels": ["a", "b"]}).save(tmp_path / "m")


def test_a_feature_slot_no_training_row_touched_weighs_nothing():
    data = train.encode([DSN, PLAIN], ["userunknown", "filtered"])
    network = train.fit(data, train.Settings(epochs=1, hidden=8))
    seen = np.unique(np.concatenate([index for index, _ in data.rows]))
    unseen = np.setdiff1d(np.arange(network.buckets), seen)
    assert not network.weights["W1"][unseen].any() and network.weights["W1"][seen].any()


@pytest.mark.parametrize("focus, found", [
    ("550 5.7.1 <bob@example.net>: Recipient address rejected: No relaying. See "
     "https://mx.example.net/why (in reply to RCPT TO command)",
     ["Recipient address rejected", "No relaying.", "in reply to RCPT TO command"]),
    ("Mailbox full - try later; Mailbox full - try later", ["Mailbox full", "try later;"]),
    ("550 <bob@example.net>", []),
    ("a: b c: de fg", ["de fg"]),
])
def test_a_focus_is_cut_into_clauses_of_two_words_or_more(focus, found):
    assert clauses(focus) == found


@pytest.mark.parametrize("human, diagnostic, focus", [
    ("451 4.0.0 Operating system error\n", "X-Unix; 71", "71\n451 4.0.0 Operating system error"),
    ("250 ok\n", "X-Unix; 71", "71"),
    ("451 4.0.0 Operating system error\n", "smtp; 550 5.1.1 unknown", "550 5.1.1 unknown"),
])
def test_a_diagnostic_without_a_reply_is_read_with_the_texts_failure_reply(
        human, diagnostic, focus):
    raw = (f"From: MAILER-DAEMON@mx.example.org\nContent-Type: multipart/report; "
           f"report-type=delivery-status; boundary=B\n\n--B\n\n{human}\n--B\n"
           f"Content-Type: message/delivery-status\n\nReporting-MTA: dns; x\n\n"
           f"Final-Recipient: rfc822; bob@example.org\nAction: failed\nStatus: 4.5.0\n"
           f"Diagnostic-Code: {diagnostic}\n--B--\n")
    assert focus_of(parse(raw)) == focus


def test_clauses_are_bounded():
    assert len(clauses("no such user. " * 1000)) == 1
    letters = "abcdefghij"
    many = ". ".join(f"word n{letters[n % 10]}{letters[n // 10]}" for n in range(100))
    assert len(clauses(many)) == MAX_CLAUSES


def test_the_most_decided_clause_pulls_the_judgement_toward_its_reason():
    """Template words (equal for both reasons) leave their clause undecided; the enhanced
    code says filtered and "relaying" says norelaying: the whole message reads as filtered,
    and the judgement is mixed with the "No relaying" clause's, not the template's."""
    weights = np.zeros((BUCKETS, 2), np.float32)
    for word in ("recipient", "address", "rejected"):
        weights[zlib.crc32(b"f" + word.encode()) % BUCKETS] = 2
    weights[zlib.crc32(b"frelaying") % BUCKETS, 1] = 3
    weights[zlib.crc32(b"seen=5.7.1") % BUCKETS, 0] = 3
    network = Network({"W1": weights, "b1": np.zeros(2, np.float32)}, ["filtered", "norelaying"])
    bounce = as_bounce("550 5.7.1 <bob@example.net>: Recipient address rejected: No relaying")

    def alone(focus=None):
        return average_probabilities([network], *batch_csr([featurize(bounce, focus=focus)]))[0]

    assert alone()[0] > 0.7 and alone("Recipient address rejected")[0] == 0.5
    mixed = alone() ** (1 - CLAUSE_WEIGHT) * alone("No relaying") ** CLAUSE_WEIGHT
    assert np.allclose(reason_probabilities([network], bounce), mixed / mixed.sum())


def test_reworded_diagnostic_keeps_its_reason(classifier):
    reworded = DSN.replace("User unknown in local recipient table", "no such user hre")
    assert classifier.classify(reworded).reason == "userunknown"
    full = PLAIN.replace("No such user here", "Mail box full, quota exceeded").replace(
        "5.1.1", "5.2.2").replace("550", "552")
    assert classifier.classify(full).reason == "mailboxfull"


def test_classification_is_deterministic(classifier):
    first = classifier.classify(DSN)
    assert all(classifier.classify(DSN) == first for _ in range(3))
    assert Classifier.load().classify(DSN) == first


def test_time_per_message_including_parsing(classifier):
    messages = [DSN, ARF, AUTOREPLY, PLAIN] * 25
    started = time.perf_counter()
    for message in messages:
        classifier.classify(message)
    assert (time.perf_counter() - started) / len(messages) < 0.005


PART = b"--Z\nContent-Type: text/plain\n\nx\n"


@pytest.mark.parametrize("raw", [
    b"Subject: x\n\n" + b"5." * 3_000_000,
    b"Content-Type: multipart/mixed; boundary=Z\n\n" + PART * 20_000,
    bytes(range(256)) * 20000,
    b"",
])
def test_huge_or_malformed_input_is_bounded(classifier, raw):
    started = time.perf_counter()
    bounce = parse(raw)
    result = classifier.classify(raw)
    assert time.perf_counter() - started < 2
    assert len(bounce.text) <= 4000 and result.reason


def test_parts_walked_are_capped():
    raw = b"Content-Type: multipart/mixed; boundary=Z\n\n" + PART * 500
    assert len(parse(raw).text.split("\n")) <= 2 * MAX_PARTS


@pytest.mark.skipif(not DATA.exists(), reason="../shared/data/bounces-train.jsonl is absent")
def test_held_out_family_accuracy_floor():
    """Trains without one fold of vendor groups and scores those unseen families: the floor
    is above the baselines of issue 14 (majority 23%, code table 40%); this fold gives 70%."""
    rows = train.load_jsonl(str(DATA))
    fold_of = train.group_folds([r["group"] for r in rows], 4)
    seen = [r for r, fold in zip(rows, fold_of) if fold != 1]
    unseen = [r for r, fold in zip(rows, fold_of) if fold == 1]
    classifier = train.train_classifier(seen, train.Settings(epochs=6, synthetic=1500, members=1))
    hits = sum(classifier.classify(r["text"]).reason == r["reason"] for r in unseen)
    assert hits / len(unseen) >= 0.5


def test_an_ensemble_saves_and_loads_with_its_members(tmp_path):
    rows = [{"text": DSN, "reason": "userunknown"}, {"text": PLAIN, "reason": "userunknown"},
            {"text": AUTOREPLY, "reason": "vacation"}]
    settings = train.Settings(epochs=1, synthetic=40, members=2)
    trained = train.train_classifier(rows, settings)
    trained.save(tmp_path / "model.npz")
    loaded = Classifier.load(tmp_path / "model.npz")
    assert len(loaded.networks) == 2
    assert loaded.classify(DSN).reason == trained.classify(DSN).reason
    assert abs(loaded.classify(DSN).confidence - trained.classify(DSN).confidence) < 0.01


def plain_bounce(body: str) -> str:
    return "From: postmaster@mx.example.org\nTo: alice@example.org\nSubject: Undeliverable\n\n" \
        + body


QMAIL_BLOCKS = ("I wasn't able to deliver your message to the following addresses.\n\n"
                "<bob@remote.test>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
                "<carol@remote.test>:\n192.0.2.1 said: 552 5.2.2 mailbox full\n")
QUOTED_BLOCKS = ('failed:\n\n"bob@remote.test":\nafter RCPT:\n550 No such user\n'   # GMX
                 '"carol@remote.test":\nafter RCPT:\n552 Mailbox full\n')


@pytest.mark.parametrize("body, address, diagnostic", [
    ("Unknown user: bob@remote.test\n\nOriginal message follows.\n",       # reason before
     "bob@remote.test", "Unknown user: Original message follows."),
    ("Failure reasons:\n\nNot listed in the directory\nbob@remote.test\n\n",  # line above
     "bob@remote.test", "Not listed in the directory"),
    ("To: alice@remote.test\n\nFailed recipients:\n<bob@remote.test>:\nQuota exceeded\n"
     "<carol@remote.test>:\nNo such user\n",                             # blocks, not a To:
     "bob@remote.test", "Failed recipients: <>: Quota exceeded"),
    (QUOTED_BLOCKS, "bob@remote.test", 'failed: "": after RCPT: 550 No such user'),
])
def test_the_diagnostic_of_a_non_dsn_bounce_is_the_text_around_its_address(
        body, address, diagnostic):
    bounce = parse(plain_bounce(body))
    assert (bounce.first.address, bounce.first.diagnostic) == (address, diagnostic)
    assert [r.address for r in bounce.recipients][:1] == [address]


@pytest.mark.parametrize("body, diagnostics", [
    (QUOTED_BLOCKS, ['failed: "": after RCPT: 550 No such user',
                     '"": after RCPT: 552 Mailbox full']),
    (QMAIL_BLOCKS, ["I wasn't able to deliver your message to the following addresses. <>: "
                    "Sorry, no mailbox here by that name. (#5.1.1)",
                    "<>: 192.0.2.1 said: 552 5.2.2 mailbox full"]),
    ("Not listed in the directory\nbob@remote.test\n\nMailbox full\ncarol@remote.test\n",
     ["Not listed in the directory Mailbox full", "Mailbox full"]),  # reasons above addresses
    ("MAILER-DAEMON@mx.example.org here.\n\nNot listed in the directory\nbob@remote.test\n",
     ["Not listed in the directory"]),
])
def test_a_recipient_takes_the_line_above_unless_another_recipients_block_has_it(
        body, diagnostics):
    found = parse(plain_bounce(body)).recipients
    assert [r.diagnostic for r in found][-len(diagnostics):] == diagnostics


def test_another_recipients_failure_reply_is_not_read_as_the_firsts():
    bounce = parse(plain_bounce(QMAIL_BLOCKS))
    assert focus_of(bounce) == bounce.first.diagnostic  # not followed by carol's 552 line


SYSTEM_SENDER = b"From: MAILER-DAEMON@x.org\n"
DSN_STATUS = (b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\n\n"
              b"--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x\n\n"
              b"Final-Recipient: rfc822; bob@example.org\nAction: failed\nStatus: %s\n--B--\n")
NESTED = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i)
                  for i in range(1000))


@pytest.mark.parametrize("raw, recipient", [
    (SYSTEM_SENDER + b"X-Failed-Recipients: bob@example.org \xff\n\n550 5.1.1 unknown\n",
     "bob@example.org"),                                          # compat32 Header object
    (SYSTEM_SENDER + DSN_STATUS % b"5.1.1 \xff", "bob@example.org"),
    (SYSTEM_SENDER + b"Content-Type: text/plain; charset=idna\n\nbob@example.org\n",
     "bob@example.org"),                                          # UnicodeError
    (SYSTEM_SENDER + b"Content-Type: text/plain; charset=undefined\n\nbob@example.org\n",
     "bob@example.org"),
    (SYSTEM_SENDER + NESTED + b"\nx\n", ""),
    (SYSTEM_SENDER + b"Content-Type: message/rfc822\n\n" * 1000, ""),  # RecursionError
])
def test_parse_never_raises_and_keeps_what_it_can_read(classifier, raw, recipient):
    bounce = parse(raw)
    assert bounce.first.address == recipient
    assert "from=mailer-daemon" in bounce.marks
    assert classifier.classify_bounce(bounce).reason


# parts nested 900 deep, their lines ended by a bare CR (the MIME parser's line end too)
NESTED_CR = (b"Content-Type: multipart/mixed; boundary=0\r\n\r\n--0\r\n"
             + b"".join(b"Content-Type: multipart/mixed; boundary=%d\r\n\r--%d\r" % (i, i)
                        for i in range(1, 900))
             + (b"\r" * 400 + b"x\r\n") * 500)
PUNYCODE = b"a" * 1000 + b"-" + b"9" * 200_000  # Python decodes punycode in quadratic time
DSN_HEAD = (b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\n\n"
            b"--B\nContent-Type: text/plain\n\n" + b"x" * 4000 + b"\n"
            b"--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x\n\n")
# A 3,000-character context of distinct words around a 1,200-character diagnostic of more
# clauses than are judged: each clause a row of the networks' batch.
WORDS = [bytes([97 + n // 26, 97 + n % 26]) * 2 for n in range(676)]  # aaaa, abab, ...
CLAUSED = (DSN_HEAD.replace(b"x" * 4000, b" ".join(WORDS[:600])) +
           b"Final-Recipient: rfc822; u@example.org\nAction: failed\nStatus: 5.0.0\n"
           b"Diagnostic-Code: smtp; 550 " + b". ".join(b"clause %s here" % word
                                                      for word in WORDS[:80]) + b"\n\n--B--\n")
EMPTY_DIAGNOSTICS = b"".join(b"Final-Recipient: rfc822; u%d@example.org\nDiagnostic-Code: smtp;"
                             b"\n\n" % i for i in range(200))


@pytest.mark.parametrize("body", [
    b"\n" + b"Final-Recipient: a\n\n" * 200,                      # 4 KB, 200 inline blocks
    DSN_HEAD + EMPTY_DIAGNOSTICS + b"--B--\n",                     # diagnostics from the text
    b"Content-Type: multipart/report; boundary=NONE\n\n" + b"a\n\n" * 80_000,
    DSN_HEAD + b"A: b\n\n" * 40_000 + b"--B--\n",                   # 40,000 field blocks
    b"Content-Type: multipart/mixed; boundary=Z\n\n" + PART * 20_000,
    NESTED,
    NESTED_CR,                                                    # before: 16 s
    b"Content-Type: text/plain; charset=punycode\n\n" + PUNYCODE,  # before: 9 s
    b"Subject: =?punycode?b?" + base64.b64encode(PUNYCODE[:150_000]) + b"?=\n\nx\n",
    b"Subject: " + b" =?utf-8?b?w6nDqcOpw6nDqQ==?=" * 8000 + b"\n\nx\n",  # before: 0.3 s
    CLAUSED,
    b"Content-Type: text/html\n\n" + b"<style>x</Style><b>&amp;" * 9_000 + b"<script></scrip<" * 3_000,
    b"Content-Type: text/html\n\n" + b"&#1" * 80_000,                  # each reference a call
    b"Content-Type: text/html\n\nbob@remote.test: 550 User unknown &#" + b"1" * 9_000 + b";",
])
def test_hostile_messages_parse_in_bounded_time(classifier, body):
    """Each costs a few ordinary bounces' time (before the bounds: 200 to 1,000 times as
    much, or a RecursionError); timed against an ordinary bounce in the same run, best of
    three with the collector off, so a slow or busy machine moves both sides."""
    def seconds(raw):
        parse(raw)
        classifier.classify(raw)
        return min(timeit.repeat(lambda: (parse(raw), classifier.classify(raw)),
                                 number=1, repeat=3))

    assert seconds(SYSTEM_SENDER + body) < 40 * seconds(DSN.encode())


RETURNED = """\
Delivery to bob@remote.test failed:
550 5.1.1 User unknown

------ This is a copy of the message ------

{original}
Hello, please forward to dave@fourth.test
"""


@pytest.mark.parametrize("failed, original", [
    ("", "Return-path: <alice@example.org>\nReceived: from alice by mx.example.org"),
    ("", "From: Alice <alice@example.org>\nTo: bob@remote.test\nCc: carol@third.test\n"),
    ("X-Failed-Recipients: bob@remote.test\n", "To: carol@third.test\n"),
])
def test_the_addresses_of_the_returned_original_are_not_recipients(failed, original):
    bounce = parse(f"From: postmaster@mx.example.org\n{failed}Subject: Undeliverable\n\n"
                   + RETURNED.format(original=original))
    assert [r.address for r in bounce.recipients] == ["bob@remote.test"]
    assert bounce.first.reply_code == "550"


@pytest.mark.parametrize("body, recipients", [
    # Exchange 2003: the original's summary names the sender before the failed address
    ("      To:\talice@example.org\n      Subject:\tHi\n\n"
     "The following recipient(s) could not be reached:\n\n"
     "      bob@remote.test on 4/29/01\n            Recipient Not Found\n",
     ["bob@remote.test"]),
    # a recipient's block opening with the sender's address is a failed recipient
    ("<alice@example.org>:\n552 Error: disk quota exceeded\n", ["alice@example.org"]),
    # only the bounce's own addresses named: they are all there is to read
    ("Your message to postmaster@mx.example.org could not be delivered.\n",
     ["postmaster@mx.example.org"]),
])
def test_the_bounces_own_sender_and_recipient_are_not_failed_recipients(body, recipients):
    bounce = parse("From: postmaster@mx.example.org\nTo: alice@example.org\n"
                   "Subject: Undeliverable\n\n" + body)
    assert [r.address for r in bounce.recipients] == recipients


def test_a_notices_own_from_is_a_recipient_unless_a_mail_system_wrote_it():
    """An auto-reply's or an address-change notice's From is the recipient it is about."""
    notice = ("From: bob@old.test\nTo: alice@example.org\nAuto-Submitted: auto-replied\n"
              "Subject: Address changed\n\nbob@old.test is no longer in use. Please write "
              "to bob@new.test, or ask alice@example.org's admin.\n")
    assert [r.address for r in parse(notice).recipients] == ["bob@old.test", "bob@new.test"]


def test_an_html_bounce_is_read_without_its_style_sheet_and_scripts():
    bounce = parse("From: mailer-daemon@googlemail.com\nTo: alice@example.org\n"
                   "Content-Type: text/html\n\n<html><head><style>* { font-family: Roboto; }"
                   "</style><script>var tracking = 1;</script></head><body><p>Address not found"
                   "</p><p>bob@remote.test: 550 5.1.1 User&nbsp;unknown &amp; gone</p><style>"
                   "p { color: red }")
    assert " ".join(bounce.text.split()) == \
        "Address not found bob@remote.test: 550 5.1.1 User unknown & gone"
    assert bounce.first.address == "bob@remote.test" and bounce.first.reply_code == "550"


@pytest.mark.parametrize("comment", ["<!-->", "<!--->", "<!-- x --!>", "<!-- <style> -->"])
def test_an_html_comment_ends_where_html_ends_it(comment):
    bounce = parse("From: mailer-daemon@example.org\nContent-Type: text/html\n\n<p>a</p>"
                   f"{comment}<p>bob@remote.test: 550 5.1.1 User unknown</p>")
    assert " ".join(bounce.text.split()) == "a bob@remote.test: 550 5.1.1 User unknown"


def test_a_style_element_in_an_html_comment_hides_nothing_after_the_comment():
    bounce = parse("From: mailer-daemon@example.org\nContent-Type: text/html\n\n"
                   "<!-- <style> for old readers --><p>bob@remote.test: 550 5.1.1 User unknown"
                   "</p><!-- unclosed comment: the rest is hidden <p>not shown</p>")
    assert " ".join(bounce.text.split()) == "bob@remote.test: 550 5.1.1 User unknown"
    assert bounce.first.reply_code == "550"


@pytest.mark.parametrize("reference, decoded", [
    ("&#65;&#x41;&#0000000000065;&#x00000000041", "AAAA"),
    ("&#" + "1" * 9_000 + ";", "\ufffd"),       # html.unescape alone: ValueError (4,300 digits)
    ("&#x" + "0" * 9_000 + "41;", "A"),
    ("&#1234567890;&#x110000;", "\ufffd\ufffd"),  # past U+10FFFF
])
def test_an_html_parts_character_references_are_decoded_whatever_their_length(reference,
                                                                              decoded):
    bounce = parse("From: mailer-daemon@example.org\nContent-Type: text/html\n\n<p>"
                   f"bob@remote.test: 550 5.1.1 User unknown {reference}</p>")
    assert bounce.text.split()[-1] == decoded and bounce.first.address == "bob@remote.test"


def test_a_reasons_usual_status_is_a_registered_code():
    """The labels' own X.0.9xx codes are not RFC 3463 codes: a reason's usual status (what
    `.status` is when the text shows none) never is one."""
    rows = [{"text": "", "reason": "filtered", "status": s, "hard": True}
            for s in ("5.0.910", "5.0.910", "5.0.910", "5.7.1", "5.7.1")]
    assert train.tables(rows)["status"] == {"filtered": "5.7.1"}
    assert not train.registered("4.0.947") and train.registered("5.0.0")
