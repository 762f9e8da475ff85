"""vsl milter at the protocol level: a small milter client (the MTA's side) against the
server in a thread. Negotiation, each stage's verdict, on_pre_queue's changes as
modification actions, per-connection and per-message state, hostile packets."""
from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from vsl.cli import main
from vsl.server.config import DEFAULT_FALLBACK, SmtpLimits
from vsl.server.milter.connection import MilterLimits
from vsl.server.milter.edits import header_edits
from vsl.server.milter.server import MilterServer
from tests.support.mailsink import free_port
from tests.support.servers import config_for, in_thread

POLICY = """
fn on_connect(ctx) {
    if ctx.client_ip == "192.0.2.66" { return status::deny("554 5.7.1 Go away"); }
    ctx.store("connection", ctx.client_ip);
    status::next()
}
fn on_helo(ctx) {
    if ctx.helo == "crash.example" { return 1 / 0; }
    status::next()
}
fn on_mail_from(ctx) {
    if ctx.get("message") != () { return status::deny("550 5.7.1 the last message leaked"); }
    if ctx.get("connection") != ctx.client_ip { return status::deny("550 5.7.1 lost the connection"); }
    ctx.store("message", ctx.sender.domain);
    if ctx.sender.domain == "accept.example" { return status::faccept(); }
    status::next()
}
fn on_rcpt_to(ctx) {
    switch ctx.rcpt.local_part {
        "refused" => status::deny("550 5.7.1 No such user here"),
        "later" => status::deny("451 4.7.1 Try again later"),
        "lines" => status::deny("550-5.7.1 First line\\n550 5.7.1 Second line"),
        "alias" => { ctx.rewrite_rcpt(ctx.rcpt, "real@example.test"); status::next() }
        "whoami" => status::deny(`550 5.7.1 ${ctx.sender} ${ctx.rcpt}`),
        _ => status::accept("250 2.1.5 Welcome"),
    }
}
fn on_pre_queue(ctx) {
    switch ctx.get_header("Subject") {
        "edit" => {
            ctx.prepend_header("X-Top", "first");
            ctx.append_header("X-Bottom", "last");
            ctx.set_header("Subject", "edited");
            ctx.remove_header("X-Old");
            ctx.add_rcpt("carol@example.test");
            ctx.remove_rcpt("bob@example.test");
            ctx.rewrite_mail_from("bounces@example.test");
        }
        "hold" => { return status::quarantine("suspect"); }
        "reject" => { return status::deny("554 5.7.1 Not this message"); }
    }
    status::next()
}
"""

ALL_ACTIONS = 0x1FF
ALL_PROTOCOL = 0x1FFFFF


class MtaClient:
    """The MTA's side of the milter protocol, one command at a time."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def close(self) -> None:
        self.sock.close()

    def send(self, command: bytes, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack("!I", len(command + data)) + command + data)

    def read(self) -> bytes:
        """One response (b"" when the milter closed the connection)."""
        head = self._exactly(4)
        return self._exactly(struct.unpack("!I", head)[0]) if head else b""

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                return b""
            data += chunk
        return data

    def ask(self, command: bytes, data: bytes = b"") -> bytes:
        self.send(command, data)
        return self.read()

    def negotiate(self, actions: int = ALL_ACTIONS, protocol: int = ALL_PROTOCOL) -> bytes:
        return self.ask(b"O", struct.pack("!III", 6, actions, protocol))

    def connect(self, ip: str = "192.0.2.1") -> bytes:
        self.send(b"D", b"C" + b"j\x00mx.example.test\x00{daemon_addr}\x00192.0.2.25\x00")
        return self.ask(b"C", b"client.example\x004" + struct.pack("!H", 4242) +
                        ip.encode() + b"\x00")

    def session(self, ip: str = "192.0.2.1", helo: str = "client.example") -> "MtaClient":
        self.negotiate()
        assert self.connect(ip) == b"c"
        assert self.ask(b"H", helo.encode() + b"\x00") == b"c"
        return self

    def envelope(self, sender: str, *rcpts: str) -> list[bytes]:
        replies = [self.ask(b"M", f"<{sender}>\x00".encode())]
        return replies + [self.ask(b"R", f"<{r}>\x00".encode()) for r in rcpts]

    def message(self, headers: list[tuple[str, str]], body: bytes = b"Hi.\r\n") -> list[bytes]:
        """Header fields, body, end of message: the actions, then the verdict."""
        for name, value in headers:
            assert self.ask(b"L", f"{name}\x00 {value}\x00".encode()) == b"c"
        assert self.ask(b"B", body) == b"c"
        self.send(b"E")
        responses = [self.read()]
        while responses[-1][:1] not in (b"c", b"a", b"y", b""):
            responses.append(self.read())
        return responses


@pytest.fixture
def milter(tmp_path):
    config = config_for(tmp_path, POLICY, limits=replace(SmtpLimits(), message_size=4096))
    with in_thread(MilterServer(config, f"inet:127.0.0.1:{free_port()}")) as server:
        yield server


@pytest.fixture
def mta(milter):
    client = MtaClient(int(milter.address.rpartition(":")[2]))
    yield client
    client.close()


def test_negotiation_asks_for_the_actions_and_steps_it_uses(mta):
    reply = mta.negotiate()
    assert reply[:1] == b"O"
    version, actions, protocol = struct.unpack("!III", reply[1:13])
    assert version == 6
    assert actions == 0x1 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x100  # no body, no ESMTP args
    assert protocol & 0x200 and protocol & 0x40 and protocol & 0x100  # no DATA, EOH, unknown
    assert not protocol & (0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20)  # every stage it runs
    assert not protocol & 0xFF000  # and it answers each
    assert b"{auth_authen}" in reply[13:]


def test_an_mta_offering_less_gets_no_more_than_it_offered(mta):
    reply = mta.negotiate(actions=0x1 | 0x10, protocol=0x7F)
    _, actions, protocol = struct.unpack("!III", reply[1:13])
    assert actions == 0x1 | 0x10 and protocol & ~0x7F == 0
    assert reply[13:] == b""  # macros could not be asked for
    assert mta.connect() == b"c" and mta.ask(b"H", b"client.example\x00") == b"c"
    assert mta.envelope("alice@client.example", "bob@example.test") == [b"c", b"c"]
    actions = mta.message([("Subject", "edit")])
    assert [a[:1] for a in actions] == [b"m", b"i", b"i", b"i", b"c"]  # headers only


def test_each_stage_answers_the_scripts_verdict(mta):
    mta.session()
    assert mta.envelope("alice@client.example", "bob@example.test", "refused@example.test",
                        "later@example.test", "lines@example.test") == [
        b"c", b"c", b"y550 5.7.1 No such user here\x00", b"y451 4.7.1 Try again later\x00",
        b"y550-5.7.1 First line\r\n550 5.7.1 Second line\x00"]


def test_an_unqualified_address_is_qualified_as_postfix_does(mta):
    """Postfix accepts MAIL FROM:<root> (permit_mynetworks) and qualifies it with
    $myorigin; the milter qualifies it with the j macro and runs the stages."""
    mta.session()
    assert mta.envelope("root", "whoami") == [
        b"c", b"y550 5.7.1 root@mx.example.test whoami@mx.example.test\x00"]


def test_an_address_that_is_none_is_refused(mta):
    mta.session()
    assert mta.envelope("a b@client.example")[0].startswith(b"y553 5.1.7 ")


def test_a_refusal_at_connect(mta):
    mta.negotiate()
    assert mta.connect("192.0.2.66") == b"y554 5.7.1 Go away\x00"


def test_a_failing_stage_answers_the_fallback_reply(mta):
    mta.negotiate()
    mta.connect()
    assert mta.ask(b"H", b"crash.example\x00") == f"y{DEFAULT_FALLBACK}\x00".encode()


def test_on_pre_queue_changes_become_modification_actions(mta):
    mta.session()
    mta.envelope("alice@client.example", "bob@example.test")
    actions = mta.message([("From", "alice@client.example"), ("X-Old", "1"),
                           ("Subject", "edit")])
    assert actions == [
        b"m\x00\x00\x00\x01Subject\x00\x00",         # set: the old field removed ...
        b"m\x00\x00\x00\x01X-Old\x00\x00",
        b"i\x00\x00\x00\x02Subject\x00 edited\x00",  # ... the new one in its place
        b"i\x00\x00\x00\x03X-Bottom\x00 last\x00",  # (the MTA's Received: counts)
        b"i\x00\x00\x00\x00X-Top\x00 first\x00",
        b"-<bob@example.test>\x00", b"+<carol@example.test>\x00",
        b"e<bounces@example.test>\x00", b"c"]


def test_an_envelope_change_before_on_pre_queue_is_applied_at_end_of_message(mta):
    mta.session()
    assert mta.envelope("alice@client.example", "alias@example.test") == [b"c", b"c"]
    assert mta.message([("Subject", "plain")]) == [
        b"-<alias@example.test>\x00", b"+<real@example.test>\x00", b"c"]


def test_quarantine_and_refusal_at_end_of_message(mta):
    mta.session()
    mta.envelope("alice@client.example", "bob@example.test")
    assert mta.message([("Subject", "hold")]) == [b"qsuspect\x00", b"c"]
    mta.envelope("alice@client.example", "bob@example.test")
    assert mta.message([("Subject", "reject")]) == [b"y554 5.7.1 Not this message\x00"]


def test_state_per_connection_and_per_message(mta):
    """ctx.store values of the connection stay, the message's go after each message and
    at abort; one message's actions are not sent again with the next."""
    mta.session()
    assert mta.envelope("alice@client.example", "bob@example.test") == [b"c", b"c"]
    mta.send(b"A")  # abort (RSET)
    assert mta.envelope("alice@client.example", "bob@example.test") == [b"c", b"c"]
    assert len(mta.message([("Subject", "edit")])) == 8
    assert mta.envelope("alice@client.example", "bob@example.test") == [b"c", b"c"]
    assert mta.message([("Subject", "plain")]) == [b"c"]


def test_faccept_accepts_without_asking_again(mta):
    mta.session()
    assert mta.envelope("alice@accept.example") == [b"a"]


def test_a_message_over_the_size_limit_is_refused(mta):
    mta.session()
    mta.envelope("alice@client.example", "bob@example.test")
    assert mta.message([("Subject", "big")], b"x" * 5000) == [
        b"y552 5.3.4 Error: message file too big\x00"]
    mta.envelope("alice@client.example", "bob@example.test")
    assert mta.message([("Subject", "small")]) == [b"c"]


@pytest.mark.parametrize("packet", [
    struct.pack("!I", 0),                                     # an empty packet
    struct.pack("!I", 0xFFFFFFFF) + b"O",                     # 4 GiB announced
    struct.pack("!I", 65537) + b"B" * 100,                    # over the 64 KiB maximum
    struct.pack("!I", 3) + b"Z\x00\x00",                      # no such command
    struct.pack("!I", 5) + b"O\x00\x00\x00\x02",              # negotiation cut short
    struct.pack("!I", 13) + b"O" + struct.pack("!III", 99, 0, 0),  # unknown version
    struct.pack("!I", 6) + b"C\x00\x00\x00\x00\x00",          # connect without an address
    struct.pack("!I", 4) + b"L\xff\xfe\xfd",                  # header without its NULs
])
def test_malformed_packets_close_the_connection_and_nothing_else(milter, mta, packet):
    mta.sock.sendall(packet)
    assert mta.read() == b""
    again = MtaClient(mta.sock.getpeername()[1])
    try:
        again.session()
    finally:
        again.close()


def test_commands_before_connect_are_refused_for_now(mta):
    mta.negotiate()
    assert mta.ask(b"M", b"<a@b.example>\x00") == b"y451 4.3.0 Error: internal error\x00"


def test_rcpt_or_end_of_message_before_mail_from_is_refused_without_a_traceback(mta, caplog):
    """An MTA never sends it; a broken client that does gets the temporary failure, and
    the log one line (it was an AttributeError with a traceback)."""
    mta.negotiate()
    mta.connect()
    assert mta.ask(b"R", b"<bob@example.test>\x00") == b"y451 4.3.0 Error: internal error\x00"
    assert mta.ask(b"E") == b"y451 4.3.0 Error: internal error\x00"
    assert "RcptTo before MAIL FROM: refused" in caplog.text
    assert "EndOfMessage before MAIL FROM: refused" in caplog.text
    assert "Traceback" not in caplog.text


def test_text_not_in_utf_8_from_the_mta_does_not_drop_the_connection(mta):
    """Postfix sends the bytes it has: a Latin-1 {auth_authen} macro value, a connecting
    host name. Each dropped the connection (so the MTA's milter_default_action applied)."""
    mta.negotiate()
    mta.send(b"D", b"C" + b"j\x00mx.example.test\x00")
    assert mta.ask(b"C", b"h\xf4te.example\x004" + struct.pack("!H", 4242) +
                   b"192.0.2.1\x00") == b"c"
    assert mta.ask(b"H", b"client.example\x00") == b"c"
    mta.send(b"D", b"M{auth_authen}\x00J\xe9r\xf4me\x00")
    assert mta.ask(b"M", b"<a@example.org>\x00") == b"c"


def limited_milter(tmp_path, **limits):
    """A milter server with ``limits``, to run in a thread."""
    server = MilterServer(config_for(tmp_path, POLICY), f"inet:127.0.0.1:{free_port()}",
                          MilterLimits(**limits))
    return in_thread(server)


def test_an_idle_connection_is_closed(tmp_path):
    with limited_milter(tmp_path, idle_seconds=0.3) as server:
        client = MtaClient(int(server.address.rpartition(":")[2]))
        assert client.negotiate()[:1] == b"O"
        assert client.read() == b""  # nothing sent for 0.3 s: closed
        client.close()


def test_a_connection_beyond_the_limit_is_closed(tmp_path):
    with limited_milter(tmp_path, connections=1) as server:
        port = int(server.address.rpartition(":")[2])
        first, second = MtaClient(port), MtaClient(port)
        assert first.negotiate()[:1] == b"O" and second.read() == b""
        first.close()
        second.close()
        for _ in range(100):  # the first's place is free once the server saw it close
            third = MtaClient(port)
            served = third.negotiate()[:1] == b"O"
            third.close()
            if served:
                break
            time.sleep(0.05)
        assert served


def test_a_unix_socket(tmp_path):
    path = tmp_path / "milter.sock"
    with in_thread(MilterServer(config_for(tmp_path, POLICY), f"unix:{path}")):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            sock.sendall(struct.pack("!I", 13) + b"O" + struct.pack("!III", 6, 1, 0x7F))
            assert sock.recv(5)[4:] == b"O"


def test_header_edits_name_each_field_as_the_mta_still_has_it():
    before = [("Received", "a"), ("X", "1"), ("X", "2"), ("Subject", "s")]
    after = [("New", "n"), ("Received", "a"), ("X", "1"), ("Mid", "m"), ("Subject", "s"),
             ("End", "e")]
    actions = [(type(a).__name__, a.headername, a.headertext,
                getattr(a, "index", getattr(a, "nth_occurrence", None)))
               for a in header_edits(before, after, " ")]
    assert actions == [("AppendHeader", "End", " e", None),
                       ("ChangeHeader", "X", "", 2),
                       ("InsertHeader", "Mid", " m", 3),  # after the MTA's hidden Received:
                       ("InsertHeader", "New", " n", 0)]  # on top


def test_the_command_line_refuses_a_bad_listen_address(tmp_path):
    result = CliRunner().invoke(main, ["milter", "--listen", "tcp:1.2.3.4"])
    assert result.exit_code == 2
    assert "inet:HOST:PORT or unix:PATH" in result.output


def test_an_internal_error_is_a_temporary_failure_naming_nothing(mta, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("/var/secret/path")
    monkeypatch.setattr("vsl.server.milter.session.Snapshot", broken)
    mta.session()
    mta.envelope("alice@client.example", "bob@example.test")
    assert mta.message([("Subject", "plain")]) == [b"y451 4.3.0 Error: internal error\x00"]
    assert "/var/secret/path" in caplog.text  # the log has it, the reply does not
    mta.envelope("alice@client.example", "bob@example.test")  # the session goes on
    assert mta.ask(b"B", b"x\r\n") == b"c"


def test_a_changed_script_is_used_by_the_next_connection(milter, tmp_path):
    port = int(milter.address.rpartition(":")[2])
    (tmp_path / "scripts" / "main.vsl").write_text(
        'fn on_connect(ctx) { status::deny("554 5.7.1 Reloaded") }\n')
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        client = MtaClient(port)
        client.negotiate()
        reply = client.connect()
        client.close()
        if reply != b"c":
            break
        time.sleep(0.2)
    assert reply == b"y554 5.7.1 Reloaded\x00"


def test_the_command_runs_a_milter(tmp_path):
    (tmp_path / "main.vsl").write_text(
        'fn on_helo(ctx) { status::deny("550 5.7.1 Not you") }\n')
    port = free_port()
    vsl = Path(sys.executable).parent / "vsl"
    process = subprocess.Popen([vsl, "milter", "--scripts", tmp_path, "--listen",
                                f"inet:127.0.0.1:{port}"], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == f"vsl: milter listening on inet:127.0.0.1:{port}\n"
        client = MtaClient(port)
        client.negotiate()
        assert client.connect() == b"c"
        assert client.ask(b"H", b"client.example\x00") == b"y550 5.7.1 Not you\x00"
        client.close()
    finally:
        process.terminate()
        process.wait(10)
