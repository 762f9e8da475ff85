"""vSL's own protocol replies against Postfix's: a private Postfix and `vsl serve` on the
translation of the same main.cf get the same conversations of protocol errors (unknown
and malformed commands, commands out of sequence, bad addresses, limits), and every reply
must have the same code, enhanced code and text. Where vSL differs on purpose, the
conversation is not here: docs/migrate.md ("Differences") lists those.

Conversations, commands and differences are counted and printed (`pytest -s`).
"""
from __future__ import annotations

import re
from dataclasses import replace

import pytest

from vsl.server.config import DeliveryConfig, Listener, load
from vsl.server.migrate.translate import translate
from vsl.server.replies import postfix_words

from tests.support.postfix import PrivatePostfix
from tests.support.servers import running
from tests.support.smtp_tools import Raw

MAIN_CF = {
    "mynetworks": "127.0.0.1/32",
    "smtpd_helo_required": "yes",
    "message_size_limit": "20000",
    "smtpd_recipient_limit": "2",
    "smtpd_recipient_restrictions": "reject_non_fqdn_recipient, reject_unauth_destination",
    "smtpd_hard_error_limit": "10",  # vSL's limits.errors
    "smtpd_timeout": "3s",  # vSL's limits.command_timeout, set below
}
TIMEOUT = 3
WAIT = ""  # in a conversation: send nothing, wait for the server's reply
MESSAGE = "Subject: replies\r\n\r\nhello\r\n."
BIG_MESSAGE = "Subject: big\r\n\r\n" + ("x" * 70 + "\r\n") * 400 + "."

# Each conversation: the commands sent after the greeting, one reply each (until the
# server closes). In turn: unknown and malformed commands; no HELO; commands out of order;
# MAIL's syntax and parameters; RCPT's; the recipient limit and DATA's syntax; a message too
# big; recipients past the limit (not errors); VRFY, HELP, EXPN, TURN, QUIT; STARTTLS without
# TLS; null addresses; the error limit, unknown commands to it; the timeout.
CONVERSATIONS = [
    ["FOO bar", "HELO", "EHLO", "HELO client.example.test", "NOOP", "NOOP ignored",
     "RSET", "RSET now", "QUIT"],
    ["MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.test>", "DATA", "QUIT"],
    ["EHLO client.example.test", "RCPT TO:<bob@example.test>", "DATA",
     "MAIL FROM:<alice@example.org>", "MAIL FROM:<alice@example.org>", "DATA", "QUIT"],
    ["EHLO client.example.test", "MAIL", "MAIL TO:<alice@example.org>",
     "MAIL FROM:<alice@example.org", "MAIL FROM:<alice@example.org> FOO=bar",
     "MAIL FROM:<alice@example.org> SIZE=999999", "MAIL FROM:<alice@example.org> SIZE=x",
     "QUIT"],
    ["EHLO client.example.test", "MAIL FROM:<alice@example.org> SIZE=100", "RCPT",
     "RCPT FROM:<bob@example.test>",
     "RCPT TO:<bob@example.test", "RCPT TO:<bob@example.test> FOO=bar",
     "RCPT TO:<carol@elsewhere.test>", "DATA", "QUIT"],
    ["EHLO client.example.test", "MAIL FROM:<alice@example.org>",
     "RCPT TO:<bob@example.test>", "RCPT TO:<carol@example.test>",
     "RCPT TO:<dave@example.test>", "DATA x", "DATA", MESSAGE, "QUIT"],
    ["EHLO client.example.test", "MAIL FROM:<alice@example.org>",
     "RCPT TO:<bob@example.test>", "DATA", BIG_MESSAGE, "NOOP", "QUIT"],
    ["EHLO client.example.test", "MAIL FROM:<alice@example.org>"]     # recipients past the
    + [f"RCPT TO:<r{n}@example.test>" for n in range(14)] + ["DATA", MESSAGE, "QUIT"],  # limit
    ["EHLO client.example.test", "VRFY", "VRFY bob@example.test", "HELP", "HELP MAIL",
     "EXPN", "EXPN staff", "TURN", "QUIT now"],
    ["EHLO client.example.test", "STARTTLS", "QUIT"],
    ["EHLO client.example.test", "MAIL FROM:<>", "RCPT TO:<>", "RSET", "QUIT"],
    ["EHLO client.example.test"] + ["RCPT TO:<bob@example.test>"] * 10 + ["NOOP"],
    ["EHLO client.example.test"] + ["EXPN staff", "FOO"] * 5 + ["NOOP"],
    ["EHLO client.example.test", WAIT],
]
QUEUE_ID = re.compile(r"(queued as) \S+")


def converse(port: int, commands: list[str]) -> list[tuple[str, str]]:
    """One conversation: (command, whole reply) for the greeting and each command."""
    with Raw(port, source="127.0.0.2", greet=False) as smtp:
        replies = [("(greeting)", smtp.reply())]
        for command in commands:
            try:
                replies.append((command, smtp.reply(TIMEOUT * 3) if command == WAIT else
                                smtp.cmd(command, timeout=2)))
            except TimeoutError:
                replies.append((command, (-1, b"(no reply)")))
                break
            if replies[-1][1][0] in (0, 221, 421):  # the server closed
                break
    return [(command, f"{code} {text.decode()}") for command, (code, text) in replies]


def differences(postfix: list, vsl: list) -> list[str]:
    """The replies that differ (the greeting's and EHLO's text aside: they name the
    software and its extensions; and the queue id)."""
    found = []
    for (command, reply_p), (_, reply_v) in zip(postfix, vsl):
        if command == "(greeting)" or command.startswith("EHLO "):
            reply_p, reply_v = reply_p[:3], reply_v[:3]
        reply_p, reply_v = QUEUE_ID.sub(r"\1 ID", reply_p), QUEUE_ID.sub(r"\1 ID", reply_v)
        if reply_p != reply_v:
            found.append(f"{command[:40]!r}: Postfix {reply_p!r}, vSL {reply_v!r}")
    if len(postfix) != len(vsl):
        found.append(f"{len(postfix)} replies from Postfix, {len(vsl)} from vSL")
    return found


def test_protocol_replies_are_postfix_s(tmp_path):
    with PrivatePostfix(MAIN_CF) as postfix:
        translate(postfix.etc).write(tmp_path / "policy")
        config = replace(load(tmp_path / "policy" / "vsl.toml"),
                         listen=(Listener("127.0.0.1", 0),), queue_dir=tmp_path / "queue",
                         delivery=DeliveryConfig(enabled=False))
        config = replace(config, limits=replace(config.limits, command_timeout=TIMEOUT))
        found, commands = [], 0
        with running(config) as server:
            for conversation in CONVERSATIONS:
                expected = converse(postfix.port, conversation)
                got = converse(server.port(), conversation)
                commands += len(expected)
                found += differences(expected, got)
    print(f"\nprotocol replies: {len(CONVERSATIONS)} conversations, {commands} commands, "
          f"{len(found)} differ")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("reply, command, argument, postfix", [
    ('500 Error: command "FOO" not recognized', None, None,
     "500 5.5.2 Error: command not recognized"),
    ("553 5.1.3 Error: malformed address", "MAIL", "FROM:<a",
     "501 5.1.7 Bad sender address syntax"),
    ("553 5.1.3 Error: malformed address", "RCPT", "TO:<a",
     "501 5.1.3 Bad recipient address syntax"),
    ("555 MAIL FROM parameters not recognized or not implemented", "MAIL",
     "FROM:<a@b.test> SIZE=10 RET=HDRS", "555 5.5.4 Unsupported option: RET=HDRS"),
    ("555 RCPT TO parameters not recognized or not implemented", "RCPT",
     "TO:<a@b.test> NOTIFY=NEVER", "555 5.5.4 Unsupported option: NOTIFY=NEVER"),
    ("501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]", "MAIL", "FROM:<a@b.test> SIZE=x",
     "501 5.5.4 Bad message size syntax"),
    ("501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]", "MAIL", None,
     "501 5.5.4 Syntax: MAIL FROM:<address>"),
    ("250 2.1.0 welcome", "MAIL", "FROM:<a@b.test>", "250 2.1.0 welcome"),  # a policy's
])
def test_aiosmtpd_replies_in_postfix_words(reply, command, argument, postfix):
    """Without a Postfix at hand: the rewording the test above checks against one."""
    assert postfix_words(reply, command, argument) == postfix
