"""ctx.improper_pipelining: Postfix's reject_unauth_pipelining for scripts. Real sockets send
commands in one write (so the server finds the next ones already waiting while it answers
the first); the flag is set where RFC 2920 forbids that: before the greeting, before EHLO
(or after HELO), behind a command that ends a group (EHLO, HELO, DATA, NOOP, VRFY). It stays
set for the session. The same byte streams (those that wait for the greeting) against a
private Postfix with ``reject_unauth_pipelining`` get the same accept/refuse decision per
command.
"""
from __future__ import annotations

import socket

import pytest

from vsl.server.config import Listener

from tests.support.postfix import PrivatePostfix
from tests.support.servers import config_for, running
from tests.support.smtp_tools import Raw, tls_setup

DENY_WHEN_PIPELINED = """
fn on_rcpt_to(ctx) {
    if ctx.improper_pipelining {
        return status::deny(`503 5.5.0 <${ctx.rcpt}>: Recipient address rejected: Improper use of SMTP command pipelining`);
    }
    status::next()
}
fn on_pre_queue(ctx) {
    if ctx.improper_pipelining {
        return status::deny("503 5.5.0 <DATA>: Data command rejected: Improper use of SMTP command pipelining");
    }
    status::next()
}
"""
POSTFIX_MAIN_CF = {
    "mynetworks": "127.0.0.0/8",
    "smtpd_forbid_unauth_pipelining": "no",  # flag only: the restriction decides
    "smtpd_recipient_restrictions":
        "reject_unauth_pipelining, permit_mynetworks, reject_unauth_destination",
}
EHLO, HELO = "EHLO client.example.test", "HELO client.example.test"
MAIL, RCPT = "MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.test>"
GREETING = None  # in a stream: wait for the greeting here (absent: the client talks first)

# Each stream: the writes a client makes, each a list of commands sent at once; the
# server's replies to one write are read before the next. Then whether RCPT is refused.
STREAMS = {
    "pipelined after EHLO": ([GREETING, [EHLO], [MAIL, RCPT]], False),
    "pipelined with RSET after EHLO": ([GREETING, [EHLO], ["RSET", MAIL, RCPT]], False),
    "one at a time after HELO": ([GREETING, [HELO], [MAIL], [RCPT]], False),
    "pipelined after HELO": ([GREETING, [HELO], [MAIL, RCPT]], True),
    "pipelined behind EHLO": ([GREETING, [EHLO, MAIL, RCPT]], True),
    "pipelined behind NOOP": ([GREETING, [EHLO], ["NOOP", MAIL, RCPT]], True),
    "before the greeting": ([[EHLO], GREETING, [MAIL], [RCPT]], True),
    "still flagged after RSET": ([GREETING, [HELO], [MAIL, "RSET"], [MAIL], [RCPT]], True),
}


def converse(port: int, writes: list) -> list[tuple[str, int]]:
    """Play one stream: (command, reply code) for the greeting and each command."""
    replies, early = [], None  # early: the commands sent before the greeting
    with Raw(port, greet=False) as smtp:
        for write in writes:
            if write is GREETING:
                replies.append(("(greeting)", smtp.reply()[0]))
                write, early = early or [], []
            else:
                smtp.send("".join(f"{command}\r\n" for command in write))
            if early is None:
                early = write
            else:
                replies += [(command, smtp.reply()[0]) for command in write]
        smtp.cmd("QUIT")
    return replies


def tries(writes: list) -> int:
    """How often to play a stream before concluding: input before the greeting races with
    the server's check just before it writes the greeting, so such a stream may take
    another try."""
    return 1 if writes[0] is GREETING else 3


def refused(replies: list[tuple[str, int]]) -> list[tuple[str, bool]]:
    """The decision per command: refused (4xx/5xx) or not."""
    return [(command, code >= 400) for command, code in replies]


@pytest.fixture(scope="module")
def vsl_server(tmp_path_factory):
    with running(config_for(tmp_path_factory.mktemp("pipe"), DENY_WHEN_PIPELINED)) as server:
        yield server


@pytest.mark.parametrize("name", list(STREAMS))
def test_script_refuses_improper_pipelining(vsl_server, name):
    writes, rcpt_refused = STREAMS[name]
    for _ in range(tries(writes)):
        replies = dict(converse(vsl_server.port(), writes))
        if (replies[RCPT] == 503) is rcpt_refused:
            break
    assert (replies[RCPT] == 503) is rcpt_refused, replies
    assert replies[MAIL] == 250


def test_message_sent_ahead_of_354_is_refused_at_pre_queue(vsl_server):
    with Raw(vsl_server.port()) as smtp:
        assert smtp.cmd(EHLO)[0] == 250
        smtp.send(f"{MAIL}\r\n{RCPT}\r\n")
        assert [smtp.reply()[0] for _ in range(2)] == [250, 250]
        smtp.send("DATA\r\nSubject: early\r\n\r\nhello\r\n.\r\n")
        assert smtp.reply()[0] == 354
        code, text = smtp.reply()
        assert (code, text) == (503, b"5.5.0 <DATA>: Data command rejected: Improper use of "
                                     b"SMTP command pipelining")


def test_unflagged_message_is_accepted(vsl_server):
    with Raw(vsl_server.port()) as smtp:
        assert smtp.cmd(EHLO)[0] == 250
        smtp.send(f"{MAIL}\r\n{RCPT}\r\nDATA\r\n")
        assert [smtp.reply()[0] for _ in range(3)] == [250, 250, 354]
        assert smtp.cmd("Subject: on time\r\n\r\nhello\r\n.")[0] == 250


def test_implicit_tls_client_may_speak_before_the_greeting(tmp_path):
    """On smtps the client may talk once the handshake is done (Postfix spares
    smtpd_tls_wrappermode): EHLO sent with no wait for the greeting is not flagged."""
    tls_config, context, _ = tls_setup(tmp_path)
    config = config_for(tmp_path, DENY_WHEN_PIPELINED, tls=tls_config,
                        listen=(Listener("127.0.0.1", 0, "smtps"),))
    with running(config) as server:
        plain = socket.create_connection(("127.0.0.1", server.port("smtps")), timeout=5)
        with context.wrap_socket(plain, server_hostname="mx.test") as tls:
            replies = tls.makefile("rb")
            tls.sendall(f"{EHLO}\r\n".encode())
            assert [reply_code(replies) for _ in range(2)] == [220, 250]
            for command in (MAIL, RCPT):
                tls.sendall(f"{command}\r\n".encode())
                assert reply_code(replies) == 250


def reply_code(replies) -> int:
    """The code of the next whole reply read from the file ``replies``."""
    while (line := replies.readline())[3:4] == b"-":
        pass
    return int(line[:3])


def test_same_decisions_as_postfix(vsl_server):
    """Streams that start after the greeting: input before it races with Postfix's check,
    which an idle smtpd process, greeting at once, often loses (``improper command
    pipelining after CONNECT`` in its log when it wins)."""
    with PrivatePostfix(POSTFIX_MAIN_CF) as postfix:
        found = []
        for name, (writes, _) in STREAMS.items():
            if writes[0] is not GREETING:
                continue
            expected = refused(converse(postfix.port, writes))
            got = refused(converse(vsl_server.port(), writes))
            if got != expected:
                found.append(f"{name}: Postfix {expected}, vSL {got}")
    assert not found, "\n".join(found)
