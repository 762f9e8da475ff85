"""RFC 3464 delivery status notifications, read back with the email package."""
from __future__ import annotations

import email
import email.policy
import email.utils
from dataclasses import replace

import pytest

from vsl.server.dsn import build_dsn, status_code
from vsl.stdlib.support.bounce.message import parse as parse_bounce
from vsl.server.envelope import Envelope, RecipientState

ENVELOPE = Envelope("alice@example.org", id="0123456789ab-0123456789ab",
                    received_at=1_700_000_000.0)
ORIGINAL = (b"From: Alice <alice@example.org>\r\nTo: bob@remote.test\r\n"
            b"Subject: caf\xc3\xa9\r\n\r\nthe body stays out\r\n")
FAILED = [RecipientState("bob@remote.test", reply="550 5.1.1 no such user",
                         remote_mta="mx.remote.test", reason="userunknown",
                         reason_confidence=0.996),
          RecipientState("carol@slow.test", reply="451 4.4.1 cannot deliver to x: refused",
                         expired=True),
          RecipientState("dan@local.test", reply="554 mailbox disabled")]


def parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


@pytest.fixture(scope="module")
def dsn():
    return build_dsn("mx.example.com", ENVELOPE, FAILED, ORIGINAL, now=1_700_000_100.0)


def test_structure(dsn):
    message = parse(dsn)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in message.iter_parts()] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.com>"
    assert message["To"] == "alice@example.org"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Date"] and message["Message-ID"].endswith("@mx.example.com>")


def test_delivery_status_fields(dsn):
    blocks = [dict(b) for b in email.message_from_bytes(dsn).get_payload()[1].get_payload()]
    assert blocks[0]["Reporting-MTA"] == "dns; mx.example.com"
    assert blocks[0]["X-Queue-ID"] == ENVELOPE.id and "2023" in blocks[0]["Arrival-Date"]
    assert blocks[1:] == [
        {"Final-Recipient": "rfc822; bob@remote.test", "Action": "failed", "Status": "5.1.1",
         "Remote-MTA": "dns; mx.remote.test",
         "Diagnostic-Code": "smtp; 550 5.1.1 no such user",
         "X-Vsl-Bounce-Reason": "userunknown; confidence=1.00"},
        {"Final-Recipient": "rfc822; carol@slow.test", "Action": "failed", "Status": "4.4.7",
         "Diagnostic-Code": "X-vSL; 451 4.4.1 cannot deliver to x: refused"},
        {"Final-Recipient": "rfc822; dan@local.test", "Action": "failed", "Status": "5.0.0",
         "Diagnostic-Code": "X-vSL; 554 mailbox disabled"}]


def test_human_part_and_original_header(dsn):
    human, _, headers = parse(dsn).iter_parts()
    text = human.get_content()
    assert "<bob@remote.test>: 550 5.1.1 no such user" in text
    assert "<carol@slow.test>: delivery time expired; last error: 451" in text
    original = headers.get_payload(decode=True)
    assert original == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    assert b"the body stays out" not in dsn


def test_wire_format(dsn):
    assert b"\n" not in dsn.replace(b"\r\n", b"")
    assert max(len(line) for line in dsn.split(b"\r\n")) <= 998
    assert dsn.isascii()


def test_long_and_utf8_values():
    failed = [RecipientState("jos\u00e9@remote.test", reply="550 5.7.1 " + "x" * 2000)]
    data = build_dsn("mx.example.com", replace(ENVELOPE, sender="\u00e9lise@example.org"),
                     failed, ORIGINAL)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    # RFC 6533: in message/delivery-status, a UTF-8 address in utf-8-addr-xtext
    assert b"Final-Recipient: utf-8; jos\\x{E9}@remote.test\r\n" in data
    assert "To: \u00e9lise@example.org\r\n".encode() in data
    (block,) = email.message_from_bytes(data).get_payload()[1].get_payload()[1:]
    assert "=?" not in block["Diagnostic-Code"]


def test_a_reply_or_address_not_in_ascii_to_an_ascii_sender():
    """The delivery-status fields stay ASCII (a UTF-8 address in RFC 6533's \\x{HEX}, other
    text '?'); the text part says it in UTF-8. Building it raised UnicodeEncodeError, and
    the message went to hold."""
    failed = [RecipientState("j\u00f6rg@remote.test", reply="550 5.1.1 bo\u00eete pleine \\o/",
                             remote_mta="mx.remote.test")]
    data = build_dsn("mx.example.com", ENVELOPE, failed, ORIGINAL)
    assert parse_bounce(data).first.address == "j\u00f6rg@remote.test"  # bounce::parse reads it
    dsn = email.message_from_bytes(data)
    text, status = dsn.get_payload()[0], dsn.get_payload()[1].get_payload()[1]
    assert status["Final-Recipient"] == "utf-8; j\\x{F6}rg@remote.test"
    assert status["Diagnostic-Code"] == "smtp; 550 5.1.1 bo?te pleine \\o/"
    assert "<j\u00f6rg@remote.test>: 550 5.1.1 bo\u00eete pleine \\o/" in \
        text.get_payload(decode=True).decode()


@pytest.mark.parametrize("record, code", [
    ({"reply": "550 5.1.1 no"}, "5.1.1"), ({"reply": "550-5.2.2 full"}, "5.2.2"),
    ({"reply": "550 no code"}, "5.0.0"), ({"reply": "450 no code"}, "4.0.0"),
    ({"reply": "451 4.4.1 x", "expired": True}, "4.4.7"), ({}, "5.0.0")])
def test_status_code(record, code):
    assert status_code(RecipientState("x@y.test", **record)) == code


def test_delay_warning():
    deferred = [RecipientState("carol@slow.test", reply="451 4.4.1 cannot deliver to x",
                               reason="networkerror"),
                RecipientState("erin@slow.test")]
    message = parse(build_dsn("mx.example.com", ENVELOPE, deferred, ORIGINAL,
                              now=1_700_000_100.0, retry_until=1_700_432_000.0))
    assert message["Subject"] == "Delayed Mail (still being retried)"
    human, status, _ = message.iter_parts()
    assert "could not be delivered yet" in human.get_content()
    blocks = [dict(b) for b in status.get_payload()[1:]]
    assert [b["Action"] for b in blocks] == ["delayed", "delayed"]
    assert [b["Status"] for b in blocks] == ["4.4.1", "4.0.0"]  # always a transient code
    assert [b.get("X-Vsl-Bounce-Reason") for b in blocks] == ["networkerror", None]
    until = email.utils.parsedate_to_datetime(blocks[0]["Will-Retry-Until"]).timestamp()
    assert until == 1_700_432_000.0
