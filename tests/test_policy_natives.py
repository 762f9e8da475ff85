"""The issue's documented policy runs as written through every stage, with the natives
(dns, iprev, spf, ctx, auth, log) answering from the real test DNS server."""
from __future__ import annotations

import asyncio
from pathlib import Path

import authres
import pytest

from vsl.stdlib.ctx import Context, Stage
from vsl.stdlib.support.mail import Mailbox, Message
from vsl.stdlib import new_engine

POLICY = Path(__file__).parent / "natives" / "issue3_policy.vsl"


@pytest.fixture
def script(dns_server):
    dns_server.reset()
    source = POLICY.read_text().replace("127.0.0.1:5353", f"127.0.0.1:{dns_server.port}")
    return new_engine().load_source(source, str(POLICY))


def run_session(script, client_ip: str, helo: str, sender: str):
    """Drive one session through the stages as the server does; returns the statuses."""
    ctx = Context(client_ip, 40000, "192.0.2.25", 25, "mx.mydomain.tld")

    async def stages():
        out = {}
        for stage in (Stage.CONNECT, Stage.HELO, Stage.MAIL_FROM, Stage.PRE_QUEUE):
            if stage is Stage.HELO:
                ctx.helo = helo
            elif stage is Stage.MAIL_FROM:
                ctx.begin_transaction(Mailbox.parse(sender))
                ctx.add_recipient(Mailbox.parse("user@mydomain.tld"))
            elif stage is Stage.PRE_QUEUE:
                ctx.message = Message(b"From: a@example.test\r\nSubject: t\r\n\r\nhello\r\n")
            ctx.stage = stage
            status = await script.call_async(stage.function, ctx)
            out[stage.function] = status
            if status.kind == "deny":
                break
        return out

    return ctx, asyncio.run(stages())


def test_a_good_client_passes_every_stage(script, caplog):
    ctx, statuses = run_session(script, "192.0.2.7", "mail.example.test", "alice@example.test")
    assert [s.kind for s in statuses.values()] == ["next"] * 4
    data = ctx.message.to_bytes().decode()
    assert data.startswith("Authentication-Results: mydomain.tld;")
    value = ctx.message.get("Authentication-Results")
    header = authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {value}")
    found = {(r.method, r.result) for r in header.results}
    assert found == {("iprev", "pass"), ("spf", "pass")} and len(header.results) == 3
    assert data.count("Received-SPF: pass") == 2
    assert "identity=helo" in data and "identity=mailfrom" in data
    assert data.endswith("Subject: t\r\n\r\nhello\r\n")


def test_reverse_dns_failure_denies_at_connect(script, caplog):
    caplog.set_level("INFO", logger="vsl.script")
    _, statuses = run_session(script, "192.0.2.8", "forged.example.test", "a@example.test")
    assert list(statuses) == ["on_connect"]
    assert statuses["on_connect"].reply == "550 5.7.25 Reverse DNS validation failed."
    assert 'mechanism="iprev" ip="192.0.2.8"' in caplog.text


def test_helo_without_spf_pass_is_denied(script):
    _, statuses = run_session(script, "192.0.2.7", "example.test", "a@example.test")
    # example.test's record allows 192.0.2.0/24: that passes; a foreign HELO does not
    assert statuses["on_helo"].kind == "next"
    _, statuses = run_session(script, "192.0.2.7", "spf.test", "a@example.test")
    assert statuses["on_helo"].reply.startswith("550 5.7.23 spf.test is not allowed")


def test_sender_not_permitted_is_denied(script):
    _, statuses = run_session(script, "192.0.2.7", "mail.example.test", "bob@spf.test")
    assert statuses["on_mail_from"].reply == \
        "550 5.7.23 bob@spf.test is not allowed to send mail from 192.0.2.7"


def test_dns_trouble_is_a_denial_not_a_crash(script, dns_server):
    dns_server.servfail("mail.example.test.")
    _, statuses = run_session(script, "192.0.2.7", "mail.example.test", "a@example.test")
    assert statuses["on_connect"].kind == "deny"  # iprev temperror
