"""The text and JSON formats of log lines (server/logformat.py): key order, the logfmt
tail, and client text that tries to break a line (newlines, quotes, ``]``, terminal
escapes, bytes that were not UTF-8) staying inside its field, in unit records and in a
real `vsl serve`."""
from __future__ import annotations

import json
import logging
import re
import socket
import time

from vsl.server import logfmt, logids
from vsl.server.logevents import event
from vsl.server.logformat import JsonFormatter, TextFormatter, rfc3339
from vsl.server.logrecords import read_records
from tests.support.logserve import serving
from tests.support.smtp_tools import wait_for

HOSTILE = 'a"b]\\c\nNOQUEUE: forged\x1b[31m\udcff\udc9b'  # as a session keeps it


class Capture(logging.Handler):
    def __init__(self, formatter):
        super().__init__()
        self.setFormatter(formatter)
        self.addFilter(logids.IdsFilter())
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))


def logged(formatter, emit) -> list[str]:
    logger = logging.getLogger("vsl.test.format")
    logger.setLevel(logging.INFO)
    capture = Capture(formatter)
    logger.addHandler(capture)
    try:
        emit(logger)
    finally:
        logger.removeHandler(capture)
    return capture.lines


def a_reject(logger):
    with logids.bound("0123456789ab", "QID1"):
        event(logger, logging.INFO, "reject", "NOQUEUE: reject: HELO from unknown[%s]: %s",
              "192.0.2.1", HOSTILE, stage="helo", code=550, enhanced=None, helo=HOSTILE,
              decided_by="server")


def test_json_keys_come_in_the_contract_order():
    [line] = logged(JsonFormatter(), a_reject)
    parsed = json.loads(line)
    assert list(parsed) == ["ts", "level", "logger", "pid", "msg", "session", "queue_id",
                            "event", "stage", "code", "helo", "decided_by"]
    assert parsed["code"] == 550 and parsed["session"] == "0123456789ab"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", parsed["ts"])


def test_json_escapes_hostile_client_text_in_one_line():
    [line] = logged(JsonFormatter(), a_reject)
    assert "\n" not in line and "\x1b" not in line
    parsed = json.loads(line)
    assert parsed["helo"] == 'a"b]\\c\\nNOQUEUE: forged\\x1b[31m\\udcff\\udc9b'
    line.encode("utf-8")  # no lone surrogate: valid UTF-8


def test_text_lines_end_with_the_logfmt_tail_in_order():
    [line] = logged(TextFormatter(), a_reject)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO vsl\.test\.format\[\d+\]: "
                    r"NOQUEUE: reject: HELO from unknown\[192\.0\.2\.1\]: ", line)
    assert "\x1b" not in line and "\n  NOQUEUE: forged" in line  # continuation indented
    tail = line.split("\n", 1)[0]  # the tail ends the first line
    assert list(logfmt.parse(tail)) == ["session", "queue_id", "event", "stage", "code",
                                        "helo", "decided_by"]
    assert logfmt.parse(tail)["helo"] == 'a"b]\\c\\nNOQUEUE: forged\\x1b[31m\\udcff\\udc9b'


def test_a_multi_line_event_keeps_its_ids_and_event_on_its_first_line():
    def script_error(logger):
        with logids.bound("0123456789ab"):
            event(logger, logging.ERROR, "script_error", "main.vsl:3:5: boom\n  x = 1\n  ^",
                  stage="rcpt")
    [line] = logged(TextFormatter(), script_error)
    [record] = read_records(line.splitlines()[:1])
    assert (record["session"], record["event"], record["stage"]) == (
        "0123456789ab", "script_error", "rcpt")
    assert line.endswith("\n    x = 1\n    ^")  # the continuation lines stay indented


def test_text_times_are_utc_and_read_back_as_such(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        record = logging.LogRecord("vsl.x", logging.INFO, __file__, 1, "m", (), None)
        record.created, record.msecs = 86400.25, 250.0
        text = TextFormatter().format(record)
        json_line = JsonFormatter().format(record)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert text.startswith("1970-01-02 00:00:00,250 INFO")
    [from_text, from_json] = read_records([text, json_line])
    assert from_text["ts"] == from_json["ts"].replace(microsecond=250000)


def test_json_makes_a_scripts_sd_values_printable():
    record = logging.LogRecord("vsl.script.x", logging.INFO, __file__, 1, "m", (), None)
    record.vsl_sd, record.vsl_sd_rest = [("a@1", [("p", "x\x1b[31m\udcff")])], "m"
    line = JsonFormatter().format(record)
    assert json.loads(line)["sd"] == [{"id": "a@1", "params": {"p": "x\\x1b[31m\\udcff"}}]
    line.encode("utf-8")


def test_a_plain_line_has_no_tail():
    [text] = logged(TextFormatter(), lambda logger: logger.warning("plain %s", "line"))
    [line] = logged(JsonFormatter(), lambda logger: logger.warning("plain %s", "line"))
    assert text.endswith("]: plain line")
    assert list(json.loads(line)) == ["ts", "level", "logger", "pid", "msg"]


def test_rfc3339_is_utc_with_microseconds():
    assert rfc3339(0.25) == "1970-01-01T00:00:00.250000Z"


def raw_helo(port: int, helo: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"HELO " + helo + b"\r\nMAIL FROM:<a@example.org>\r\n")
        reader.readline(), reader.readline()
        sock.sendall(b"RCPT TO:<victim@elsewhere.test>\r\nQUIT\r\n")
        reader.readline(), reader.readline()


def test_a_hostile_helo_stays_in_its_field_in_a_real_server(tmp_path):
    helo = b'a"b]\\c\x1b[31m\xff\x9b'
    with serving(tmp_path, '[log]\nformat = "json"\n') as (port, stderr):
        raw_helo(port, helo)
        assert wait_for(lambda: '"event": "disconnect"' in stderr.read_text()
                        and '"reject"' in stderr.read_text(), 5)
    lines = [json.loads(line) for line in stderr.read_text().splitlines()]
    [reject] = [line for line in lines if line.get("event") == "reject"]
    assert reject["helo"] == 'a"b]\\c\\x1b[31m\\udcff\\udc9b'
    assert reject["recipient"] == "victim@elsewhere.test"
