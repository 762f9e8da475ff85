"""`vsl log summary` (server/logrecords.py, server/logsummary.py, cli/log.py): the records
read from a log, the summary's counts, its text and JSON.

tests/logs/vsl.log and vsl.jsonl hold the same hand-made traffic in the text and JSON line
formats (with a few lines of other text and a non-UTF-8 line); vsl.summary.txt is the golden
text of its summary (a change of the output is reviewed there, in the diff).
"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from vsl.server import logrecords, logsummary
from vsl.server.logfmt import encode
from vsl.server.logrecords import LEVELS, LineTally, read_records
from vsl.server.logsummary import Totals, render, summarize, summarize_lines

LOGS = Path(__file__).parent / "logs"
FORMATS = ("vsl.log", "vsl.jsonl")
VSL = Path(sys.executable).parent / "vsl"


def summary_of(name: str, **options) -> logsummary.Summary:
    return summarize_lines((LOGS / name).open("rb"), **options)


def vsl_log_summary(*args, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([str(VSL), "log", "summary", *map(str, args)], input=stdin,
                          capture_output=True, timeout=60)


# -- counts ------------------------------------------------------------------------

def test_the_grand_totals_of_the_hand_made_log():
    assert summary_of("vsl.log").totals == Totals(
        connections=5, received=3, bytes_received=3560, delivered=2, delivered_messages=1,
        deferred=1, deferrals=2, deferred_messages=1, bounced=1, bounced_messages=1,
        rejected=5, rejected_percent=62.5, held=1, quarantined=0, dead=0, limited=1, improper_pipelining=0,
        auth_failures=1, dsns=1, senders=2, recipients=3, clients=3)


def test_improper_pipelining_is_no_session_cut():
    def limit(reason, ip):
        return {"level": "WARNING", "logger": "vsl.session", "event": "limit",
                "client_ip": ip, "reason": reason}
    summary = summarize([limit("pipelining", "192.0.2.1"), limit("pipelining", "192.0.2.1"),
                         limit("errors", "192.0.2.2")])
    assert (summary.totals.limited, summary.totals.improper_pipelining) == (1, 2)
    assert summary.limits == [["errors", 1]]
    assert summary.improper_pipelining == [["192.0.2.1", 2]]
    assert "Improper pipelining by client" in render(summary)


def test_both_formats_give_the_same_summary():
    text, json_lines = (summary_of(name) for name in FORMATS)
    assert text == json_lines
    assert (text.records, text.skipped) == (31, 6)


def test_the_tables_of_the_hand_made_log():
    summary = summary_of("vsl.jsonl")
    assert summary.dsn == {"failure": 1}
    assert summary.received_by_queue == {"hold": 1, "working": 2}
    assert [(stage["stage"], stage["count"]) for stage in summary.rejects] == [
        ("rcpt", 2), ("data", 1), ("helo", 1), ("mail", 1)]
    assert summary.rejects[0]["replies"] == [["554 5.7.1 Relay access denied", "server", 2]]
    assert summary.rejects[2]["replies"] == [["550 5.7.1 Go away", "main.vsl:12:5", 1]]
    assert summary.deferrals == [["smtp", "connection_refused", 1], ["smtp", "rate_limited", 1]]
    assert summary.bounces == [["smtp", "mailbox_unknown", 1]]
    assert summary.top["senders"] == [["alice@example.org", 2], ["<>", 1]]
    assert summary.top["clients"][:2] == [["192.0.2.10", 2], ["203.0.113.5", 2]]
    assert summary.auth_failures == [["192.0.2.10", 1]]
    assert summary.problems == [["WARNING", "vsl.session", 2], ["ERROR", "vsl.script", 1],
                                ["WARNING", "vsl.delivery", 1]]
    assert [row["period"] for row in summary.traffic] == ["2026-12-06 09:00", "2026-12-06 10:00"]


# -- records -----------------------------------------------------------------------

def test_text_and_json_lines_give_the_same_records():
    text, json_lines = (list(read_records((LOGS / name).open("rb"))) for name in FORMATS)
    assert text[0]["pid"] is None and json_lines[0]["pid"] == 4242  # a text line without [pid]
    assert [dict(r, pid=0) for r in text] == [dict(r, pid=0) for r in json_lines]


def test_a_text_line_is_split_into_its_message_and_its_tail():
    line = ("2026-12-06 09:10:00,500 INFO vsl.session[7]: NOQUEUE: reject: EHLO from "
            "unknown[203.0.113.5]: 550 Go away; helo=<x session=1 event=bounced code=2> "
            + encode({"session": "3f2a9c1b7d03", "event": "reject", "stage": "helo",
                      "code": 550, "helo": "x session=1 event=bounced code=2"}))
    [record] = read_records([line])
    assert record["msg"].endswith("helo=<x session=1 event=bounced code=2>")
    assert {key: record[key] for key in ("session", "event", "stage", "code", "helo")} == {
        "session": "3f2a9c1b7d03", "event": "reject", "stage": "helo", "code": 550,
        "helo": "x session=1 event=bounced code=2"}


FIELD_NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda key: key not in {"session", "queue_id", "event", "ts", "level", "logger", "pid",
                            "msg", *logrecords.INTEGERS, *logrecords.FLOATS})


@given(message=st.text(alphabet=st.characters(blacklist_characters="\r\n"), max_size=60),
       fields=st.dictionaries(FIELD_NAMES, st.text(max_size=20), max_size=4))
def test_any_message_leaves_the_tail_alone(message, fields):
    """Client text in the message (a HELO with ``event=x``) never changes the event read."""
    tail = {"session": "3f2a9c1b7d03", "queue_id": "q1", "event": "reject", **fields}
    [record] = read_records([f"2026-12-06 09:10:00,500 INFO vsl.session[7]: {message} "
                             + encode(tail)])
    assert (record["msg"], {key: record[key] for key in tail}) == (message, tail)


def test_lines_of_other_programs_are_skipped():
    tally = LineTally()
    lines = [b"\xff\xfe\xc3(", "Traceback (most recent call last):", "", "[1, 2]",
             '{"level": "INFO"}', "2026-12-06 09:00:00,001 NOTICE x: y",
             "2026-12-06 09:00:00,001 INFO vsl.server: started"]
    assert [r["msg"] for r in read_records(lines, tally)] == ["started"]
    assert (tally.read, tally.skipped) == (7, 6)


VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                      lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=5)
EVENT_LINES = st.fixed_dictionaries(
    {"level": st.sampled_from(LEVELS), "logger": st.text(max_size=10),
     "msg": st.text(max_size=20), "event": st.sampled_from(
         ["connect", "queued", "reject", "delivered", "deferred", "bounced", "dsn", "auth",
          "limit", "held", "quarantined", "dead", "other"])},
    optional={key: VALUES for key in ("ts", "pid", "session", "queue_id", "client_ip", "size",
                                      "sender", "recipient", "stage", "reply", "decided_by",
                                      "route", "class", "kind", "result", "reason", "to_queue")}
).map(json.dumps)
TEXT_LINES = st.text(max_size=120).map(
    lambda tail: "2026-12-06 09:00:00,001 INFO vsl.session[1]: m " + tail)


@given(st.lists(st.one_of(st.binary(max_size=200), st.text(max_size=200), TEXT_LINES,
                          EVENT_LINES), max_size=8))
def test_no_line_raises(lines):
    summary = summarize_lines(lines)
    assert summary.records + summary.skipped == len(lines)
    render(summary)
    logsummary.as_json(summary)


# -- the summary's text ------------------------------------------------------------

def test_the_golden_text():
    golden = (LOGS / "vsl.summary.txt").read_text(encoding="utf-8")
    assert render(summary_of("vsl.log")) == golden
    assert render(summary_of("vsl.jsonl")) == golden


def test_traffic_is_per_day_past_one_day():
    lines = [f"2026-12-0{day} 0{hour}:00:00,000 INFO vsl.session[1]: queued "
             + encode({"event": "queued", "sender": "a@b", "size": 10})
             for day, hour in ((5, 1), (5, 2), (6, 1))]
    summary = summarize_lines(lines)
    assert [(row["period"], row["received"]) for row in summary.traffic] == [
        ("2026-12-05", 2), ("2026-12-06", 1)]
    assert "Traffic per day" in render(summary)


def test_tables_keep_at_most_key_cap_keys_and_say_so():
    records = [{"level": "INFO", "logger": "vsl.session", "event": "queued",
                "sender": f"s{n % 10}@d{n % 10}.example", "size": 1} for n in range(100)]
    summary = summarize(records, top=2, key_cap=3)
    assert summary.top["senders"] == [["s0@d0.example", 10], ["s1@d1.example", 10],
                                      ["(other)", 70]]
    assert summary.totals.senders == 3 and summary.totals.received == 100
    assert summary.capped == ["sender_domains", "senders"]
    assert "reached 3 distinct keys" in render(summary)


# -- the command -------------------------------------------------------------------

def test_the_command_prints_the_golden_text_and_reads_gzip_and_stdin(tmp_path):
    golden = (LOGS / "vsl.summary.txt").read_bytes()
    packed = tmp_path / "vsl.log.gz"
    packed.write_bytes(gzip.compress((LOGS / "vsl.log").read_bytes()))
    assert vsl_log_summary(LOGS / "vsl.log").stdout == golden
    assert vsl_log_summary(packed).stdout == golden
    assert vsl_log_summary(stdin=(LOGS / "vsl.jsonl").read_bytes()).stdout == golden
    assert vsl_log_summary("-", stdin=packed.read_bytes()).stdout == golden


def test_json_output_and_several_files():
    proc = vsl_log_summary("--json", "--top", "1", LOGS / "vsl.log", LOGS / "vsl.jsonl")
    data = json.loads(proc.stdout)
    both = summarize_lines([*(LOGS / "vsl.log").open("rb"), *(LOGS / "vsl.jsonl").open("rb")],
                           top=1)
    assert data == json.loads(logsummary.as_json(both))
    assert (data["totals"]["received"], data["totals"]["senders"]) == (6, 2)  # distinct stay
    assert data["top"]["senders"] == [["alice@example.org", 4]]


def test_a_missing_file_is_one_line_naming_it(tmp_path):
    proc = vsl_log_summary(LOGS / "vsl.log", tmp_path / "nothere.log")
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.decode().splitlines() == [
        f"Error: {tmp_path / 'nothere.log'}: No such file or directory"]


# -- hostile input (review findings) -------------------------------------------------

def test_hostile_json_and_times_are_skipped_not_raised():
    lines = ['{"level":"INFO","logger":"x","msg":"m","a":' + "[" * 100_000 + "}",
             '{"level":"INFO","logger":"x","msg":"m","ts":"0001-01-01T00:00:00+01:00"}',
             '{"level":"INFO","logger":"x","msg":"m","ts":"9999-12-31T23:59:59-01:00"}']
    records = list(read_records(lines))
    assert [r["ts"] for r in records] == [None, None]


def test_many_tail_words_cost_linear_time():
    import time
    line = "2026-12-06 09:00:00,001 INFO vsl.smtp[1]: m" + " event=x" * 8000 + " session=s"
    start = time.process_time()
    list(read_records([line]))
    assert time.process_time() - start < 0.5  # it took 3.8 s at 32 KB when quadratic


def test_a_corrupt_gzip_and_an_endless_line_are_handled(tmp_path):
    corrupt = tmp_path / "bad.gz"
    corrupt.write_bytes(gzip.compress(b"x\n" * 1000)[:10] + b"\x00" * 100)
    proc = vsl_log_summary(corrupt)
    assert proc.returncode == 1 and proc.stderr.decode().startswith(f"Error: {corrupt}:")
    long = tmp_path / "long.log"
    long.write_bytes(b"y" * 5_000_000 + b"\n" + (LOGS / "vsl.log").read_bytes())
    proc = vsl_log_summary("--json", long)
    assert json.loads(proc.stdout)["totals"]["received"] == 3  # as without the long line


# -- a log recorded from a real vsl serve --------------------------------------------

@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_summary_of_a_real_servers_log_counts_its_traffic(tmp_path, log_format):
    """Three sessions of tests/support/logserve.py (each: a RCPT refused by the script, one
    relay-denied, a message queued and delivered to a Maildir): the summary of the
    server's own log counts exactly that traffic, in either format."""
    from tests.support.logserve import delivered, serving, session
    from tests.support.smtp_tools import wait_for

    with serving(tmp_path, f'[log]\nformat = "{log_format}"\n') as (port, stderr):
        for _ in range(3):
            session(port)
        assert wait_for(lambda: len(list((tmp_path / "mail").glob("mx.test/bob/new/*"))) == 3,
                        15) and delivered(tmp_path)
        assert wait_for(lambda: stderr.read_text().count("event=delivered") +
                        stderr.read_text().count('"event": "delivered"') == 3, 15)
    summary = summarize_lines(stderr.open("rb"))
    totals = summary.totals
    # + 1 connection: serving()'s probe that the port listens
    assert (totals.connections, totals.received, totals.delivered, totals.rejected) == \
        (4, 3, 3, 6)
    assert (totals.senders, totals.recipients, totals.bounced, totals.deferred) == (1, 1, 0, 0)
    assert summary.skipped == 0
    stages = {row["stage"]: row["count"] for row in summary.rejects}
    assert stages == {"rcpt": 6}
