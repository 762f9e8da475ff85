"""RFC 5424 syslog: the test's own strict parser (tests/support/rfc5424.py) reads RFC
5424 §6.5's examples; a real `vsl serve` sends to UDP and unix datagram listeners owned
by the test, and every datagram parses: PRI = facility * 8 + severity, the session's
ids and the event's fields in the server's SD element (a HELO with ``"]\\`` round-trips),
a script's own SD elements passed through, invalid ones left in MSG. Without a listener
the server serves on, and counts what it dropped."""
from __future__ import annotations

import logging
import smtplib
import socket
import subprocess
import threading

import pytest
from hypothesis import given, strategies as st

from vsl.server import logids, syslog5424
from vsl.server.logevents import event
from vsl.server.logsetup import ScriptLines
from vsl.server.observability_config import LogConfig
from tests.support import rfc5424
from tests.support.crash import VSL
from tests.support.logserve import delivered, serving, session, write_config
from tests.support.mailsink import free_port
from tests.support.smtp_tools import wait_for

BOM = "\ufeff".encode()
EXAMPLES = [  # RFC 5424 §6.5 (BOM where the RFC writes "BOM")
    b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - " + BOM +
    b"'su root' failed for lonvick on /dev/pts/8",
    b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to "
    b"make the do-nuts.",
    b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473'
    b' iut="3" eventSource="Application" eventID="1011"] ' + BOM +
    b"An application event log entry...",
    b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473'
    b' iut="3" eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]',
]


def test_the_parser_reads_the_examples_of_rfc_5424():
    first, second, third, fourth = (rfc5424.parse(e) for e in EXAMPLES)
    assert (first.facility, first.severity, first.hostname, first.app_name, first.procid,
            first.msgid, first.sd) == (4, 2, "mymachine.example.com", "su", None, "ID47", [])
    assert first.msg == "'su root' failed for lonvick on /dev/pts/8"
    assert second.timestamp == "2003-08-24T05:14:15.000003-07:00" and second.msgid is None
    assert second.msg == b"%% It's time to make the do-nuts."  # MSG-ANY: no BOM
    assert third.sd == [("exampleSDID@32473", [("iut", "3"), ("eventSource", "Application"),
                                               ("eventID", "1011")])]
    assert third.msg == "An application event log entry..."
    assert [sd_id for sd_id, _ in fourth.sd] == ["exampleSDID@32473", "examplePriority@32473"]
    assert fourth.msg is None


@pytest.mark.parametrize("bad", [
    b"<192>1 - - - - - -", b"<34>0 - - - - - -", b"<34>1 2003-13-11T22:14:15Z h a - - -",
    b"<34>1 - h a - - [x@1 a=\"]\"]", b"<34>1 - h a - - [x@1 a=\"b\"][x@1 c=\"d\"]",
    b"<34>1 - h a - - [x=1]", b"<34>1 - h a - - ", b"<34>1 - h a - -",
    b"<34>1 - h a - - - " + BOM + b"\xff"])
def test_the_parser_is_strict(bad):
    with pytest.raises(ValueError):
        rfc5424.parse(bad)


UTF8_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))  # no lone surrogate


def sd_element(sd_id: str, params) -> str:
    return f"[{sd_id}" + "".join(f' {name}="{syslog5424.escape_param(value)}"'
                                 for name, value in params) + "]"


@given(UTF8_TEXT)
def test_escaping_then_parsing_a_param_value_is_identity(value):
    element = sd_element("x@32473", [("v", value)]).encode()
    parsed = rfc5424.parse(b"<14>1 - - - - - " + element)
    assert parsed.sd == [("x@32473", [("v", value)])]


def test_a_printable_escape_is_not_escaped_again():
    assert syslog5424.escape_param("\\x01 a\\") == "\\x01 a\\\\"  # only the last one reads
    assert syslog5424.escape_param('"]') == '\\"\\]'


@given(UTF8_TEXT)
def test_a_capped_value_ends_between_escapes(value):
    written, cut = syslog5424.capped_param(value * 20)
    assert len(written) <= syslog5424.SD_VALUE_MAX
    assert cut == (len(syslog5424.escape_param(value * 20)) > syslog5424.SD_VALUE_MAX)
    [(_, [(_, read)])] = rfc5424.parse(f'<14>1 - - - - - [x@1 v="{written}"]'.encode()).sd
    assert (value * 20).startswith(read)


@given(st.lists(st.tuples(st.from_regex(r"[a-z]{1,8}@[0-9]{1,5}", fullmatch=True),
                          UTF8_TEXT),
                min_size=1, max_size=3, unique_by=lambda t: t[0]), st.text(max_size=20))
def test_split_sd_reads_back_what_was_written(elements, rest):
    text = "".join(sd_element(sd_id, [("p", value)]) for sd_id, value in elements)
    sd, after = syslog5424.split_sd(f"{text} {rest}")
    assert sd == [(sd_id, [("p", value)]) for sd_id, value in elements] and after == rest


@pytest.mark.parametrize("text", ['[no-at a="1"] x', '[a@1 b="1] x', '[a@1 b=1] x',
                                  '[a@1 b="1"][a@1 c="2"] x', 'plain [a@1 b="1"]'])
def test_invalid_sd_stays_in_the_text(text):
    sd, after = syslog5424.split_sd(text)
    assert after.endswith(" x") or after == text
    assert sd in ([], [("a@1", [("b", "1")])])


def udp_listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock, f"udp://127.0.0.1:{sock.getsockname()[1]}"


def unix_listener(tmp_path):
    path = tmp_path / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    return sock, f"unix:{path}"


def received(sock) -> list[bytes]:
    """The datagrams waiting on ``sock``, until none comes for 0.2 s."""
    sock.settimeout(0.2)
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except (TimeoutError, socket.timeout):
            return out


class Collector(threading.Thread):
    """Reads ``sock`` as the server writes (a unix datagram socket queues only a few:
    /proc/sys/net/unix/max_dgram_qlen)."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock, self.datagrams, self.running = sock, [], True
        self.start()

    def run(self):
        while self.running:
            self.datagrams += received(self.sock)

    def stop(self) -> list[bytes]:
        self.running = False
        self.join(5)
        return self.datagrams


@pytest.mark.parametrize("transport", ["udp", "unix"])
def test_a_real_server_sends_rfc_5424_datagrams(tmp_path, transport):
    sock, target = udp_listener() if transport == "udp" else unix_listener(tmp_path)
    helo = 'evil"]\\.test'
    section = f'[log]\nsyslog = "{target}"\nsyslog_facility = "local3"\n'
    with sock, serving(tmp_path, section) as (port, stderr):
        collector = Collector(sock)
        queue_id = session(port, helo=helo)
        assert wait_for(lambda: delivered(tmp_path), 10)
        assert wait_for(lambda: any(b" delivered " in d for d in collector.datagrams), 5)
        datagrams = collector.stop()
    lines = [rfc5424.parse(d) for d in datagrams]  # every datagram parses
    assert {line.facility for line in lines} == {19}  # local3
    assert all(line.app_name == "vsl" and line.procid.isdigit() for line in lines)
    by_event = {}
    for line in lines:
        by_event.setdefault(line.msgid, []).append(line)
    [queued] = by_event["queued"]
    params = dict(queued.sd[0][1])
    assert queued.sd[0][0] == "vsl@32473" and params["queue_id"] == queue_id
    assert queued.severity == 6 and queued.msg.startswith(b"127.0.0.1: queued ")
    rejects = by_event["reject"]
    assert [dict(r.sd[0][1])["helo"] for r in rejects] == [helo, helo]  # round trip
    assert all(dict(r.sd[0][1])["session"] == params["session"] for r in rejects)
    scripts = by_event["script_log"]
    passed = [line for line in scripts if len(line.sd) == 2]
    assert passed and all(line.sd[1] == ("netsec@vsmtp", [("mechanism", "iprev"),
                                                           ("ip", "192.0.2.1")])
                          and line.msg == b"iprev checked" for line in passed)
    kept = [line for line in scripts if len(line.sd) == 1]
    assert kept and all(line.msg == b"[not valid sd] kept in the text" for line in kept)
    assert "event=queued" in stderr.read_text()  # log.stderr: true keeps stderr


def test_without_a_listener_the_server_serves_on(tmp_path):
    section = f'[log]\nsyslog = "udp://127.0.0.1:{free_port()}"\n'
    with serving(tmp_path, section) as (port, _):
        for _ in range(3):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                assert smtp.ehlo()[0] == 250
    section = f'[log]\nsyslog = "unix:{tmp_path / "nobody.sock"}"\n'
    (tmp_path / "other").mkdir()
    with serving(tmp_path / "other", section) as (port, _):
        session(port)


def test_a_failed_send_is_dropped_and_counted_and_a_late_listener_gets_the_next(tmp_path):
    handler = syslog5424.Syslog5424Handler(LogConfig(syslog=f"unix:{tmp_path / 'log.sock'}"))
    handler.reconnect_every = 0.0
    before = syslog5424.dropped
    handler.emit(logging.LogRecord("vsl.smtp", logging.INFO, __file__, 1, "lost", (), None))
    assert syslog5424.dropped == before + 1
    sock, _ = unix_listener(tmp_path)
    with sock:
        handler.emit(logging.LogRecord("vsl.smtp", logging.INFO, __file__, 1, "got", (), None))
        [datagram] = received(sock)
    assert rfc5424.parse(datagram).msg == b"got" and syslog5424.dropped == before + 1


def test_a_long_line_is_cut_at_a_utf8_boundary(tmp_path):
    sock, target = udp_listener()
    with sock:
        handler = syslog5424.Syslog5424Handler(LogConfig(syslog=target, syslog_max_bytes=480))
        handler.emit(logging.LogRecord("vsl.smtp", logging.WARNING, __file__, 1, "é" * 600,
                                       (), None))
        [datagram] = received(sock)
    assert len(datagram) <= 480 and rfc5424.parse(datagram).msg.startswith("éé")


def line_record(msg, *args, level=logging.INFO, name="vsl.session"):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def a_reject_datagram(helo: str, max_bytes: int = 2048, reply: str = "554 5.7.1 denied"):
    """The datagram of a relay-denied RCPT after ``helo`` (finding 1's reproduction)."""
    sock, target = udp_listener()
    with sock:
        handler = syslog5424.Syslog5424Handler(LogConfig(syslog=target,
                                                         syslog_max_bytes=max_bytes))
        handler.addFilter(logids.IdsFilter())
        logger = logging.getLogger("vsl.test.syslog")
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO)
        try:
            with logids.bound("0123456789ab", "QID1"):
                event(logger, logging.INFO, "reject", "NOQUEUE: reject: RCPT helo=<%s>: %s",
                      helo, reply, stage="rcpt", code=554, reply=reply, helo=helo,
                      decided_by="server")
            [datagram] = received(sock)
        finally:
            logger.removeHandler(handler)
            handler.close()
    return datagram


def test_a_long_control_byte_helo_gives_a_datagram_that_parses():
    datagram = a_reject_datagram("\x01" * 480)
    parsed = rfc5424.parse(datagram)  # it failed: cut inside STRUCTURED-DATA
    params = dict(parsed.sd[0][1])
    assert params["session"] == "0123456789ab" and params["truncated"] == "1"
    assert params["helo"] == "\\x01" * 64  # 256 characters, each byte escaped once
    assert b"\\\\x01" not in datagram and len(datagram) <= 2048


HOSTILE = st.text(alphabet=st.sampled_from(['"', "]", "\\", "\x01", "\n", "é", "\udcff", "a",
                                            " ", "=", "\u202e", "[", "\U0001f600"]),
                  min_size=200, max_size=3000)


@given(HOSTILE, HOSTILE, st.integers(480, 1200))
def test_every_datagram_parses_within_its_budget(helo, reply, max_bytes):
    datagram = a_reject_datagram(helo, max_bytes, reply)
    parsed = rfc5424.parse(datagram)
    assert len(datagram) <= max_bytes and parsed.msgid == "reject"
    assert dict(parsed.sd[0][1])["session"] == "0123456789ab"


def test_a_script_cannot_forge_the_servers_sd_element():
    record = line_record('[vsl@32473 session="forged0000aa"][a@1 b="c"] hi', name="vsl.script.x")
    ScriptLines("vsl@32473").filter(record)
    formatter = syslog5424.Rfc5424Formatter(LogConfig(), "host")
    with logids.bound("0123456789ab"):
        logids.IdsFilter().filter(record)
        parsed = rfc5424.parse(b"<14>" + formatter.format(record).encode())
    assert parsed.sd == [("vsl@32473", [("session", "0123456789ab")])]
    assert parsed.msg == b'[vsl@32473 session="forged0000aa"][a@1 b="c"] hi'


def test_the_syslog_host_is_resolved_once_at_start():
    handler = syslog5424.Syslog5424Handler(LogConfig(syslog="udp://localhost:514"))
    assert handler.address in (("127.0.0.1", 514), ("::1", 514))
    handler.close()
    with pytest.raises(syslog5424.SyslogTargetError, match="log.syslog: cannot resolve"):
        syslog5424.Syslog5424Handler(LogConfig(syslog="udp://nonexistent.invalid:514"))


def test_a_syslog_host_that_does_not_resolve_is_a_one_line_start_up_error(tmp_path):
    config = write_config(tmp_path, free_port(), '[log]\nsyslog = "udp://nonexistent.invalid:514"\n')
    proc = subprocess.run([VSL, "serve", "--config", str(config)], cwd=tmp_path,
                          capture_output=True, timeout=60)
    assert proc.returncode == 1
    [line] = proc.stderr.decode().splitlines()
    assert line.startswith("Error: log.syslog: cannot resolve 'nonexistent.invalid'")


def test_a_drop_is_exported_and_warned_at_most_once_a_minute(monkeypatch, caplog):
    counted = []
    monkeypatch.setattr("vsl.server.metrics.count", lambda name, *a, **k: counted.append(name))
    monkeypatch.setattr(syslog5424, "_warned_at", None)
    handler = syslog5424.Syslog5424Handler(LogConfig(syslog=f"udp://127.0.0.1:{free_port()}"))
    handler.socket.close()  # every send fails
    with caplog.at_level(logging.WARNING, logger="vsl.log"):
        for _ in range(3):
            handler.emit(line_record("lost"))
        monkeypatch.setattr(syslog5424, "_warned_at", syslog5424._warned_at - 61)
        handler.emit(line_record("lost"))
    assert counted == ["vsl_log_dropped_total"] * 4
    assert len([r for r in caplog.records if r.name == "vsl.log"]) == 2


def test_a_full_unix_buffer_keeps_the_socket_and_reconnects_are_rate_limited(tmp_path):
    sock, target = unix_listener(tmp_path)
    with sock:
        handler = syslog5424.Syslog5424Handler(LogConfig(syslog=target))
        connected = handler.socket
        before = syslog5424.dropped
        for _ in range(2000):  # nobody reads: the buffer fills (EAGAIN)
            handler.emit(line_record("x" * 1000))
        assert syslog5424.dropped > before and handler.socket is connected
        assert connected.fileno() >= 0
    handler.socket.close()
    connects = []
    handler.createSocket = lambda: connects.append(1)
    for _ in range(5):
        handler.emit(line_record("lost"))
    assert connects == []  # connected less than a second ago
    handler.connected_at -= 1.0
    handler.emit(line_record("lost"))
    assert connects == [1]
