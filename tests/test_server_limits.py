"""Every SMTP limit of ``server/config.py`` ``SmtpLimits``, against the real server."""
from __future__ import annotations

import asyncio

import logging
import time
from dataclasses import replace

from vsl.server.config import SmtpLimits
from tests.support.servers import config_for, running
from tests.support.smtp_tools import (Raw, all_messages, client, normal_session, queued_id,
                                      spool_files, wait_for)


def limited(tmp_path, scripts=None, **limits):
    return config_for(tmp_path, scripts, limits=replace(SmtpLimits(), **limits))


# ---- message_size -------------------------------------------------------------------------

def test_message_size_is_advertised_and_checked_against_the_size_parameter(tmp_path):
    with running(limited(tmp_path, message_size=1000)) as server:
        with client(server) as smtp:
            smtp.ehlo()
            assert smtp.esmtp_features["size"] == "1000"
            code, text = smtp.mail("a@example.org", ["SIZE=1001"])
            assert code == 552 and text.startswith(b"5.3.4 "), (code, text)
            assert smtp.mail("a@example.org", ["SIZE=1000"])[0] == 250
            assert smtp.rcpt("bob@example.test")[0] == 250
            assert smtp.data(b"Subject: small\r\n\r\nhi\r\n")[0] == 250


def test_message_size_is_checked_against_the_data(tmp_path):
    body = b"Subject: sized\r\n\r\n"
    filler = b"x" * 98 + b"\r\n"  # 100 bytes a line
    with running(limited(tmp_path, message_size=1000)) as server:
        with client(server) as smtp:
            smtp.ehlo()
            assert smtp.mail("a@example.org")[0] == 250  # no SIZE: only the data tells
            assert smtp.rcpt("bob@example.test")[0] == 250
            code, text = smtp.data(body + filler * 10)
            assert code == 552 and text.startswith(b"5.3.4 "), (code, text)
            assert spool_files(server) == []
            # exactly at the limit is fine, and the session goes on
            exact = body + filler * 9 + b"y" * (1000 - len(body) - 900 - 2) + b"\r\n"
            assert len(exact) == 1000
            assert smtp.mail("a@example.org")[0] == 250
            assert smtp.rcpt("bob@example.test")[0] == 250
            code, text = smtp.data(exact)
            assert code == 250, (code, text)
        assert asyncio.run(server.spool.message(queued_id(text))).endswith(exact)
        assert len(all_messages(server)) == 1


# ---- recipients -----------------------------------------------------------------------------

def test_recipients_limit(tmp_path):
    with running(limited(tmp_path, recipients=3)) as server:
        with client(server) as smtp:
            smtp.ehlo()
            assert smtp.mail("a@example.org")[0] == 250
            assert smtp.rcpt("nobody@elsewhere.test")[0] == 554  # refused ones do not count
            for i in range(3):
                assert smtp.rcpt(f"r{i}@example.test")[0] == 250
            code, text = smtp.rcpt("r3@example.test")
            assert code == 452 and text.startswith(b"4.5.3 "), (code, text)
            assert smtp.rcpt("r4@example.test")[0] == 452
            code, text = smtp.data(b"Subject: many\r\n\r\nhi\r\n")
            assert code == 250
            # a new transaction counts from zero again
            assert smtp.mail("a@example.org")[0] == 250
            for i in range(3):
                assert smtp.rcpt(f"s{i}@example.test")[0] == 250
            assert smtp.rcpt("s3@example.test")[0] == 452
        entry = asyncio.run(server.spool.get(queued_id(text)))
        assert [r.address for r in entry.envelope.recipients] == \
            ["r0@example.test", "r1@example.test", "r2@example.test"]


# ---- connections ----------------------------------------------------------------------------

def test_connections_limit(tmp_path, caplog):
    with running(limited(tmp_path, connections=2, connections_per_ip=10)) as server:
        first, second = Raw(server), Raw(server)
        assert first.greeting[0] == second.greeting[0] == 220
        with Raw(server) as third:
            assert third.greeting == (421, b"4.7.0 Too many connections, try again later")
            assert third.closed(2)
        # the refused connection did not take a slot, a closed one gives its slot back
        assert first.cmd("NOOP")[0] == 250
        first.close()
        assert wait_for(lambda: sum(server.services.admission.per_ip.values()) == 1, 2)
        with Raw(server) as fourth:
            assert fourth.greeting[0] == 220
        second.close()
        assert wait_for(lambda: not server.services.admission.per_ip, 2)
    assert "limit reached" in caplog.text


def test_connections_per_ip_limit(tmp_path):
    with running(limited(tmp_path, connections=10, connections_per_ip=2)) as server:
        held = [Raw(server), Raw(server)]
        assert all(r.greeting[0] == 220 for r in held)
        with Raw(server) as third:
            assert third.greeting[0] == 421
            assert third.closed(2)
        # another address is not affected (all of 127/8 is loopback on Linux)
        with Raw(server, source="127.0.0.2") as other:
            assert other.greeting[0] == 220
            assert other.cmd("EHLO other.test")[0] == 250
        for raw in held:
            raw.close()
        assert wait_for(lambda: not server.services.admission.per_ip, 2)
        normal_session(server)


# ---- command_timeout / data_timeout ---------------------------------------------------------

def test_command_timeout_disconnects_an_idle_client(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with running(limited(tmp_path, command_timeout=0.5, connections_per_ip=1)) as server:
        with Raw(server) as raw:
            assert raw.cmd("EHLO idle.test")[0] == 250
            started = time.monotonic()
            assert raw.closed(3), "the idle client is still connected"
            assert 0.3 < time.monotonic() - started < 2.5
        # its slot is free again (connections_per_ip=1)
        assert wait_for(lambda: not server.services.admission.per_ip, 2)
        normal_session(server)
    # the server's own log says why (vsl serve silences aiosmtpd's "mail.log" below WARNING)
    assert any(r.name.startswith("vsl") and "timeout" in r.getMessage().lower()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_command_timeout_does_not_cut_an_active_client(tmp_path):
    with running(limited(tmp_path, command_timeout=0.5)) as server:
        with Raw(server) as raw:
            for _ in range(5):
                time.sleep(0.25)
                assert raw.cmd("NOOP")[0] == 250  # 1.25 s in all, each wait < 0.5 s


def test_command_timeout_applies_again_after_data(tmp_path):
    """Once a message is accepted, an idle client has command_timeout again, not the
    (longer) data_timeout."""
    with running(limited(tmp_path, command_timeout=0.5, data_timeout=3)) as server:
        with client(server) as smtp:
            smtp.ehlo()
            assert smtp.mail("a@example.org")[0] == 250
            assert smtp.rcpt("bob@example.test")[0] == 250
            assert smtp.data(b"Subject: t\r\n\r\nhi\r\n")[0] == 250
            raw = Raw.__new__(Raw)
            raw.sock, raw.buffer = smtp.sock, b""
            started = time.monotonic()
            assert raw.closed(2), "idle after DATA for data_timeout, not command_timeout"
            assert time.monotonic() - started < 2


def test_data_timeout_disconnects_a_stalled_transfer(tmp_path):
    with running(limited(tmp_path, command_timeout=10, data_timeout=0.5)) as server:
        with Raw(server) as raw:
            raw.cmd("EHLO slow.test")
            assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250
            assert raw.cmd("RCPT TO:<bob@example.test>")[0] == 250
            assert raw.cmd("DATA")[0] == 354
            raw.send(b"Subject: stalled\r\n\r\nfirst line\r\n")
            started = time.monotonic()
            assert raw.closed(4), "a stalled DATA transfer is not cut off"
            assert time.monotonic() - started < 2.5
        assert wait_for(lambda: not server.services.admission.per_ip, 2)
        assert all_messages(server) == []
        normal_session(server)


def test_data_timeout_not_command_timeout_governs_data(tmp_path):
    """A slow but steady transfer is not cut by the (shorter) command timeout."""
    with running(limited(tmp_path, command_timeout=0.4, data_timeout=5)) as server:
        with Raw(server) as raw:
            raw.cmd("EHLO slow.test")
            assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250
            assert raw.cmd("RCPT TO:<bob@example.test>")[0] == 250
            assert raw.cmd("DATA")[0] == 354
            raw.send(b"Subject: slow\r\n\r\n")
            for i in range(3):
                time.sleep(0.3)
                raw.send(f"line {i}\r\n")
            time.sleep(0.3)
            code, text = raw.cmd(".")
            assert code == 250, (code, text)
        assert len(all_messages(server)) == 1


# ---- errors ---------------------------------------------------------------------------------

def test_error_limit_disconnects(tmp_path, caplog):
    with running(limited(tmp_path, errors=3)) as server:
        with Raw(server) as raw:
            assert raw.cmd("EHLO err.test")[0] == 250
            assert raw.cmd("BOGUS")[0] == 500
            assert raw.cmd("RCPT TO:<x@example.test>")[0] == 503
            assert raw.cmd("NOOP")[0] == 250  # successes do not count
            code, text = raw.cmd("MAIL FROM:<not an address>")
            assert code >= 500
            assert raw.reply() == (421, b"4.7.0 mx.test Error: too many errors")
            assert raw.closed(2)
        assert wait_for(lambda: not server.services.admission.per_ip, 2)
        normal_session(server)
    assert "3 errors, disconnecting" in caplog.text


def test_error_limit_counts_policy_refusals(tmp_path):
    policy = 'fn on_rcpt_to(ctx) { status::deny("550 5.1.1 unknown user") }'
    with running(limited(tmp_path, policy, errors=2)) as server:
        with Raw(server) as raw:
            raw.cmd("EHLO err.test")
            assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250
            assert raw.cmd("RCPT TO:<a@example.test>") == (550, b"5.1.1 unknown user")
            assert raw.cmd("RCPT TO:<b@example.test>") == (550, b"5.1.1 unknown user")
            assert raw.reply()[0] == 421
            assert raw.closed(2)
