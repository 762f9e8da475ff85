"""Misbehaving clients: the server answers or drops them, queues nothing partial, says
why in its log, and goes on serving everyone else."""
from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import time
from dataclasses import replace

import pytest

from vsl.server.config import AuthConfig, Listener, SmtpLimits
from tests.support.servers import config_for, running
from tests.support.smtp_tools import (Raw, all_messages, normal_session, queued_id, spool_files,
                                      tls_setup, users_file, wait_for)
from tests.support.tools import require


def limited(tmp_path, scripts=None, **limits):
    return config_for(tmp_path, scripts, limits=replace(SmtpLimits(), **limits))


def send_quietly(raw: Raw, data: bytes) -> None:
    """Send, ignoring a server that already hung up on us."""
    try:
        raw.sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def transaction(raw: Raw, body: bytes = b"Subject: ok\r\n\r\nbody\r\n") -> str:
    """A complete transaction on an open, greeted connection; returns the message id."""
    assert raw.cmd("MAIL FROM:<alice@example.org>")[0] == 250
    assert raw.cmd("RCPT TO:<bob@example.test>")[0] == 250
    assert raw.cmd("DATA")[0] == 354
    code, text = raw.cmd(body + b".")
    assert code == 250, (code, text)
    return queued_id(text)


# ---- garbage --------------------------------------------------------------------------------

def test_binary_garbage(tmp_path, caplog):
    garbage = random.Random(1).randbytes(64 * 1024)
    with running(config_for(tmp_path)) as server:
        with Raw(server) as bad:
            send_quietly(bad, garbage)
            normal_session(server)  # served while the garbage client is connected
            assert bad.closed(5), "the garbage client is never disconnected"
        assert wait_for(lambda: not server.services.admission.per_ip, 2)
        assert [e.envelope.sender for e in all_messages(server)] == ["alice@example.org"]
        normal_session(server)
    assert "errors, disconnecting" in caplog.text


def test_garbage_instead_of_a_tls_handshake(tmp_path):
    tls_config, context, _ = tls_setup(tmp_path)
    config = config_for(tmp_path, tls=tls_config, listen=(
        Listener("127.0.0.1", 0, "smtp"), Listener("127.0.0.1", 0, "smtps")))
    with running(config) as server:
        with Raw(server, "smtps", greet=False) as bad:  # plaintext SMTP on the TLS port
            send_quietly(bad, b"EHLO plain.test\r\n" + random.Random(2).randbytes(4096))
            assert bad.closed(5)
        with Raw(server) as bad:  # STARTTLS, then garbage instead of a ClientHello
            bad.cmd("EHLO c.test")
            assert bad.cmd("STARTTLS")[0] == 220
            send_quietly(bad, b"\x16\x03\x01\x00\x05hello" + b"\0" * 1000)
            assert bad.closed(5)
        with Raw(server) as bad:  # STARTTLS, then nothing at all and a hang-up
            bad.cmd("EHLO c.test")
            assert bad.cmd("STARTTLS")[0] == 220
        assert wait_for(lambda: not server.services.admission.per_ip, 3), \
            server.services.admission.per_ip
        normal_session(server)
        assert len(all_messages(server)) == 1


def test_many_concurrent_bad_clients(tmp_path):
    """Twenty clients misbehaving at once (asyncio streams) while a normal one is served."""
    async def bad_client(port: int, seed: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        rng = random.Random(seed)
        try:
            await reader.readline()
            if seed % 3 == 0:  # garbage
                writer.write(rng.randbytes(8192))
            elif seed % 3 == 1:  # a transaction abandoned mid-DATA
                writer.write(b"EHLO x.test\r\nMAIL FROM:<a@example.org>\r\n"
                             b"RCPT TO:<b@example.test>\r\nDATA\r\n")
                await writer.drain()
                for _ in range(4):
                    await reader.readline()
                writer.write(b"Subject: partial\r\n\r\n" + b"x" * rng.randrange(10, 5000))
            else:  # a reset: SO_LINGER 0
                writer.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await writer.drain()
            await asyncio.sleep(rng.random() * 0.2)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def storm(port: int) -> None:
        await asyncio.gather(*(bad_client(port, i) for i in range(20)))

    with running(config_for(tmp_path)) as server:
        asyncio.run(storm(server.port()))
        normal_session(server)
        assert wait_for(lambda: not server.services.admission.per_ip, 3), \
            server.services.admission.per_ip
        assert [e.envelope.recipients[0].address for e in all_messages(server)] == \
            ["bob@example.test"]
        assert not list((server.spool.root / "tmp").iterdir())


# ---- long lines -----------------------------------------------------------------------------

def test_100kb_command_line(tmp_path):
    with running(config_for(tmp_path)) as server:
        with Raw(server) as raw:
            assert raw.cmd("EHLO long.test")[0] == 250
            code, _ = raw.cmd(b"MAIL FROM:<" + b"a" * 100_000 + b"@example.org>")
            assert code == 500
            code, _ = raw.cmd(b"X" * 100_000)
            assert code == 500
            assert raw.cmd("NOOP")[0] == 250
            transaction(raw)  # the session goes on
        assert len(all_messages(server)) == 1


def test_100kb_line_in_data(tmp_path):
    with running(config_for(tmp_path)) as server:
        with Raw(server) as raw:
            assert raw.cmd("EHLO long.test")[0] == 250
            assert raw.cmd("MAIL FROM:<alice@example.org>")[0] == 250
            assert raw.cmd("RCPT TO:<bob@example.test>")[0] == 250
            assert raw.cmd("DATA")[0] == 354
            code, _ = raw.cmd(b"Subject: long\r\n\r\n" + b"y" * 100_000 + b"\r\n.")
            assert code in (500, 552), code
            assert spool_files(server) == []
            transaction(raw)
        assert len(all_messages(server)) == 1


# ---- line endings and NUL -------------------------------------------------------------------

def test_bare_lf_commands(tmp_path):
    with running(config_for(tmp_path)) as server:
        with Raw(server) as raw:
            raw.send(b"EHLO lf.test\nNOOP\n")
            assert raw.reply()[0] in (250, 500)
            assert raw.reply()[0] in (250, 500)
            raw.send(b"RSET\r\n")  # still in step: the next reply answers RSET
            assert raw.reply()[0] == 250
        normal_session(server)


@pytest.mark.parametrize("ending", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"])
def test_bare_line_ends_never_end_data(tmp_path, ending):
    """No SMTP smuggling: only CRLF.CRLF ends DATA, so a second transaction hidden in the
    message behind a bare-LF "dot" is never run."""
    smuggled = (b"MAIL FROM:<evil@attacker.test>" + ending[-2:] +
                b"RCPT TO:<victim@example.test>" + ending[-2:] + b"DATA" + ending[-2:] +
                b"Subject: smuggled\r\n\r\nevil\r\n")
    with running(config_for(tmp_path)) as server:
        with Raw(server) as raw:
            assert raw.cmd("EHLO c.test")[0] == 250
            assert raw.cmd("MAIL FROM:<alice@example.org>")[0] == 250
            assert raw.cmd("RCPT TO:<bob@example.test>")[0] == 250
            assert raw.cmd("DATA")[0] == 354
            raw.send(b"Subject: outer\r\n\r\nbefore" + ending + smuggled + b".\r\n")
            code, text = raw.reply()
            assert raw.cmd("NOOP")[0] == 250  # exactly one reply came for the whole DATA
        senders = [e.envelope.sender for e in all_messages(server)]
        assert senders in ([], ["alice@example.org"]), senders
        if senders:
            assert code == 250
            data = asyncio.run(server.spool.message(queued_id(text)))
            assert b"MAIL FROM:<evil@attacker.test>" in data
        else:
            assert code >= 500


def test_nul_bytes(tmp_path):
    body = b"Subject: nul\x00here\r\n\r\nbo\x00dy\r\n"
    with running(config_for(tmp_path)) as server:
        with Raw(server) as raw:
            assert raw.cmd(b"EHLO nul\x00.test")[0] in (250, 501, 500)
            assert raw.cmd(b"EHLO c.test")[0] == 250
            assert raw.cmd(b"MAIL FROM:<al\x00ice@example.org>")[0] >= 500
            assert raw.cmd("MAIL FROM:<alice@example.org>")[0] == 250
            assert raw.cmd(b"RCPT TO:<b\x00ob@example.test>")[0] >= 500
            assert raw.cmd("RCPT TO:<bob@example.test>")[0] == 250
            assert raw.cmd(b"\x00\x00\x00")[0] == 500
            assert raw.cmd("DATA")[0] == 354
            code, text = raw.cmd(body + b".")
            assert raw.cmd("NOOP")[0] == 250
        messages = all_messages(server)
        if code == 250:  # accepted: stored byte for byte
            data = asyncio.run(server.spool.message(queued_id(text)))
            assert data.endswith(body)
            assert b"\x00" not in data[:-len(body)]  # the trace header carries no NUL
        else:
            assert code >= 500 and messages == []
        normal_session(server)


# ---- protocol order -------------------------------------------------------------------------

@pytest.mark.parametrize("command, reply", [
    ("VRFY \x1c", "501 5.5.4 Syntax: VRFY address [SMTPUTF8]"),    # str.split() white space
    ("VRFY \u3000", "501 5.5.4 Syntax: VRFY address [SMTPUTF8]"),  # an ideographic space
    ("AUTH \x1c", "501 5.5.4 Syntax: AUTH mechanism"),
    ("MAIL FROM:<a@example.org> SIZE=\u00b2", "501 5.5.4 Bad message size syntax"),  # int() fails
    ("MAIL FROM:<a@example.org> SIZE=\u0663\u0663", "501 5.5.4 Bad message size syntax"),
])
def test_unicode_white_space_and_digits_are_syntax_errors(tmp_path, caplog, command, reply):
    """Python's str.split() and str.isdigit() take characters that are no SMTP white space
    or digit (RFC 5321, RFC 1870: ASCII only): each such command was an internal error,
    421 and a traceback, or a SIZE of Arabic-Indic digits was accepted."""
    auth = AuthConfig(users_file=users_file(tmp_path, alice="secret"), allow_plaintext=True)
    with running(config_for(tmp_path, auth=auth)) as server:
        with Raw(server) as raw:
            assert raw.cmd("EHLO c.test")[0] == 250
            code, text = raw.cmd(command.encode())
            assert f"{code} {text.decode()}" == reply
            assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250  # the session goes on
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text


def test_a_reply_a_script_builds_from_client_text_reaches_it_printable(tmp_path):
    """Control characters a client wrote (a HELO with CR, ESC, BEL) and a script put in its
    reply are '?' on the wire, as Postfix's printable() makes them."""
    policy = 'fn on_helo(ctx) { status::deny(`550 5.7.1 nope ${ctx.helo}`) }\n'
    with running(config_for(tmp_path, policy)) as server:
        with Raw(server) as raw:
            raw.send(b"HELO h\rX\x1b[31m\x07.example\r\n")
            assert raw.reply() == (550, b"5.7.1 nope h?X?[31m?.example")


def test_commands_out_of_order(tmp_path):
    with running(config_for(tmp_path)) as server:
        with Raw(server) as raw:
            assert raw.cmd("MAIL FROM:<alice@example.org>")[0] == 503  # before EHLO
            assert raw.cmd("EHLO c.test")[0] == 250
            assert raw.cmd("DATA")[0] == 503  # before MAIL
            assert raw.cmd("RCPT TO:<bob@example.test>")[0] == 503  # before MAIL
            assert raw.cmd("MAIL FROM:<alice@example.org>")[0] == 250
            assert raw.cmd("MAIL FROM:<alice@example.org>")[0] == 503  # MAIL twice
            assert raw.cmd("DATA") == (554, b"5.5.1 Error: no valid recipients")  # before RCPT
            assert raw.cmd("RCPT TO:<bob@example.test>")[0] == 250
            assert raw.cmd("DATA now")[0] == 501  # the transaction stays, as in Postfix
            code, text = raw.cmd("DATA")
            assert code == 354
            code, text = raw.cmd(b"Subject: ok\r\n\r\nbody\r\n.")
            assert code == 250
            assert raw.cmd("RCPT TO:<bob@example.test>")[0] == 503  # the transaction ended
            transaction(raw)
        assert len(all_messages(server)) == 2


# ---- disconnects ----------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["close", "reset"])
def test_disconnect_mid_data(tmp_path, caplog, how):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="mail.log")  # aiosmtpd's (vsl serve raises it)
    with running(config_for(tmp_path)) as server:
        raw = Raw(server)
        assert raw.cmd("EHLO c.test")[0] == 250
        assert raw.cmd("MAIL FROM:<alice@example.org>")[0] == 250
        assert raw.cmd("RCPT TO:<bob@example.test>")[0] == 250
        assert raw.cmd("DATA")[0] == 354
        raw.send(b"Subject: cut\r\n\r\n" + b"partial line\r\n" * 500 + b"no end")
        if how == "reset":
            raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
        assert wait_for(lambda: not server.services.admission.per_ip, 3), \
            server.services.admission.per_ip
        assert spool_files(server) == []
        normal_session(server)
        assert len(all_messages(server)) == 1
    assert "lost" in caplog.text.lower()


def test_pipelined_commands(tmp_path):
    with running(config_for(tmp_path)) as server:
        with Raw(server) as raw:
            assert raw.cmd("EHLO pipe.test")[0] == 250
            raw.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<a@example.test>\r\n"
                     b"RCPT TO:<x@elsewhere.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
            assert [raw.reply()[0] for _ in range(5)] == [250, 250, 554, 250, 354]
            raw.send(b"Subject: one\r\n\r\nfirst\r\n.\r\nMAIL FROM:<carol@example.org>\r\n"
                     b"RCPT TO:<c@example.test>\r\nDATA\r\n")
            first = raw.reply()
            assert first[0] == 250
            assert [raw.reply()[0] for _ in range(3)] == [250, 250, 354]
            raw.send(b"Subject: two\r\n\r\nsecond\r\n.\r\nQUIT\r\n")
            second = raw.reply()
            assert second[0] == 250
            assert raw.reply()[0] == 221
            assert raw.closed(2)
        one = asyncio.run(server.spool.get(queued_id(first[1])))
        two = asyncio.run(server.spool.get(queued_id(second[1])))
        assert [r.address for r in one.envelope.recipients] == \
            ["a@example.test", "b@mx.test"]
        assert two.envelope.sender == "carol@example.org"
        assert asyncio.run(server.spool.message(two.id)).endswith(b"Subject: two\r\n\r\nsecond\r\n")


def test_half_closed_client(tmp_path):
    """A client that sends its command and shuts its side down gets its reply, and the
    server then closes the connection."""
    with running(config_for(tmp_path)) as server:
        raw = Raw(server)
        raw.send(b"EHLO half.test\r\nMAIL FROM:<alice@example.org>\r\n")
        raw.sock.shutdown(socket.SHUT_WR)
        assert raw.reply()[0] == 250
        assert raw.closed(3)
        raw.close()
        assert wait_for(lambda: not server.services.admission.per_ip, 3), \
            server.services.admission.per_ip
        normal_session(server)


def test_silent_half_open_client_does_not_block_others(tmp_path):
    """A peer that connected and went silent (no FIN ever comes) holds no one up, and is
    dropped by the command timeout."""
    with running(limited(tmp_path, command_timeout=0.5, connections_per_ip=2)) as server:
        silent = socket.create_connection(("127.0.0.1", server.port()))
        normal_session(server)
        assert wait_for(lambda: not server.services.admission.per_ip, 3), \
            server.services.admission.per_ip
        silent.close()
        normal_session(server)


def test_client_that_never_reads_is_dropped(tmp_path):
    """A client flooding commands without reading a single reply must not keep its
    connection (and its slot) once the command timeout has passed."""
    with running(limited(tmp_path, command_timeout=0.5, connections_per_ip=1)) as server:
        flood = socket.socket()
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flood.connect(("127.0.0.1", server.port()))
        flood.setblocking(False)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                flood.send(b"NOOP\r\n" * 1000)
            except BlockingIOError:
                time.sleep(0.02)
            except OSError:
                break
        try:
            assert wait_for(lambda: not server.services.admission.per_ip, 3), \
                ("the non-reading client still holds its slot: "
                 f"{dict(server.services.admission.per_ip)}")
            normal_session(server)
        finally:
            flood.close()


# ---- load -----------------------------------------------------------------------------------

def test_concurrent_load_with_smtp_source(tmp_path):
    """Postfix's smtp-source: 100 messages over 10 parallel sessions, while a garbage
    client and an idle one are connected; every message lands in deliver, whole."""
    import subprocess
    binary = require("smtp-source", "postfix")
    with running(config_for(tmp_path)) as server:
        with Raw(server) as idle, Raw(server) as bad:
            send_quietly(bad, random.Random(3).randbytes(16 * 1024))
            result = subprocess.run(
                [binary, "-s", "10", "-m", "100", "-l", "2000", "-f", "load@example.org",
                 "-t", "bob@example.test", "-M", "mx.test", "-S", "load test",
                 "-c", f"127.0.0.1:{server.port()}"],
                capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            assert idle.cmd("NOOP")[0] == 250
        entries = all_messages(server)
        assert len(entries) == 100 and {e.queue for e in entries} == {"deliver"}
        sizes = {len(asyncio.run(server.spool.message(e.id)).split(b"\r\n\r\n", 1)[1])
                 for e in entries}
        assert len(sizes) == 1 and sizes.pop() >= 2000


class GoneTransport:
    """What a TCP connection looks like when its client reset before it was made: a
    socket, but no peer address any more."""

    def __init__(self):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.aborted = False

    def get_extra_info(self, name, default=None):
        return self.socket if name == "socket" else default

    def abort(self):
        self.aborted = True


def test_a_client_gone_before_its_connection_was_made_is_dropped(tmp_path, caplog):
    """Not served as 127.0.0.1 (what a socket pair of `vsl test` is): aborted, not
    admitted, logged as Postfix logs it (unknown[unknown])."""
    caplog.set_level(logging.INFO)
    with running(config_for(tmp_path)) as server:
        async def connect_and_lose(gone: GoneTransport) -> None:
            protocol = server.protocol(server.config.listen[0])
            protocol.connection_made(gone)
            protocol.connection_lost(None)

        gone = GoneTransport()
        with gone.socket:
            asyncio.run_coroutine_threadsafe(connect_and_lose(gone), server.loop).result(5)
        assert gone.aborted and server.services.admission.total == 0
        assert "connect from unknown[unknown]" in caplog.text
        assert "disconnect from unknown[unknown] commands=0" in caplog.text
        assert "from unknown[127.0.0.1]" not in caplog.text


class SecuredGoneTransport(GoneTransport):
    """An smtps connection's TLS transport whose client reset right after the handshake:
    uvloop reads the peer address when asked, and by then there is none."""

    def __init__(self):
        super().__init__()
        self.written = b""

    def is_closing(self):
        return False

    def write(self, data):
        self.written += data

    def close(self):
        pass

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def get_write_buffer_size(self):
        return 0


def test_an_smtps_session_keeps_the_addresses_read_at_its_accept(tmp_path, caplog):
    """Admitted at accept (server/implicit_tls.py), the session uses the addresses read
    then: it is served, and its end frees the slot."""
    caplog.set_level(logging.INFO)
    with running(config_for(tmp_path)) as server:
        admission = server.services.admission

        async def accepted_then_gone(transport: SecuredGoneTransport) -> None:
            assert admission.admit("192.0.2.7")
            protocol = server.protocol(Listener("127.0.0.1", 465, "smtps"),
                                       (("192.0.2.7", 40000), ("127.0.0.1", 465)))
            protocol.connection_made(transport)
            await asyncio.sleep(0.1)
            protocol.connection_lost(None)
            await asyncio.sleep(0.05)

        transport = SecuredGoneTransport()
        with transport.socket:
            asyncio.run_coroutine_threadsafe(accepted_then_gone(transport),
                                             server.loop).result(5)
        assert not transport.aborted and transport.written.startswith(b"220 ")
        assert admission.total == 0
        assert "connect from unknown[192.0.2.7]" in caplog.text

