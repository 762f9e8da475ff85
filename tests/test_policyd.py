"""vsl policyd at the protocol level: requests as Postfix sends them (SMTPD_POLICY_README),
over a real socket to the service, and the actions the scripts' stages give; hostile
input closes the connection without a reply and never stops the service."""
import asyncio
import contextlib
import logging

import pytest

from vsl.server.config import Config
from vsl.server.policy import PolicyError
from vsl.server.policyd import actions, delegation
from vsl.server.policyd.service import PolicyService
from vsl.server.policyd.wire import WireLimits

POLICY = """
fn on_connect(ctx) {
    let n = ctx.get("connects");
    ctx.store("connects", if n == () { 1 } else { n + 1 });
    if ctx.client_ip == "192.0.2.66" { return status::deny("554 5.7.1 Go away"); }
    status::next()
}
fn on_helo(ctx) {
    ctx.store("helo", ctx.helo);
    if ctx.helo == "localhost" { return status::deny("550 5.7.1 Bad HELO"); }
    status::next()
}
fn on_mail_from(ctx) {
    ctx.store("sender", ctx.sender.to_string());
    if ctx.sender.domain == "spam.example" { return status::quarantine("suspect"); }
    if ctx.sender.domain == "vip.example" { return status::faccept(); }
    status::next()
}
fn on_rcpt_to(ctx) {
    let who = ctx.rcpt.local_part;
    if who == "crash" { return 1 / 0; }
    if who == "plain" { return status::deny(); }
    if who == "later" { return status::deny("450 4.7.1 Try later"); }
    if who == "lines" { return status::deny("550-5.7.1 First line\\n550 5.7.1 second line"); }
    if who == "ok" { return status::accept("250 2.1.5 Welcome"); }
    if who == "count" && ctx.get("connects") != 1 { return status::deny("550 5.7.1 again"); }
    if who == "seen" {
        return status::deny(`550 5.7.1 ${ctx.get("helo")} ${ctx.get("sender")} ${ctx.recipients.len()}`);
    }
    if who == "tls" && !ctx.is_secured() { return status::deny("530 5.7.0 TLS first"); }
    if who == "auth" && !ctx.is_authenticated() { return status::deny("530 5.7.0 AUTH first"); }
    if who == "name" { return status::deny(`550 5.7.1 ${ctx.get("postfix")["client_name"]}`); }
    status::next()
}
fn on_pre_queue(ctx) {
    ctx.prepend_header("X-Policy", `checked ${ctx.recipients.len()}`);
    if ctx.sender.local_part == "two" { ctx.append_header("X-Second", "dropped"); }
    status::next()
}
"""


def request(state: str = "RCPT", **attributes) -> dict:
    """A request as Postfix 3.x sends it, with ``attributes`` changed."""
    base = {"request": "smtpd_access_policy", "protocol_state": state,
            "protocol_name": "ESMTP", "client_address": "192.0.2.1", "client_port": "40000",
            "client_name": "client.example", "reverse_client_name": "client.example",
            "helo_name": "client.example", "sender": "alice@client.example",
            "recipient": "bob@example.org", "recipient_count": "0", "queue_id": "",
            "instance": "1a2b.5f3c.9d.0", "size": "0", "sasl_method": "",
            "sasl_username": "", "encryption_protocol": "", "encryption_cipher": "",
            "server_address": "192.0.2.25", "server_port": "25"}
    return {**base, **attributes}


def encode(attributes: dict) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in attributes.items()).encode() + b"\n"


class Client:
    """One policy connection, as Postfix's smtpd holds it."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    async def ask(self, state: str = "RCPT", **attributes) -> str:
        self.writer.write(encode(request(state, **attributes)))
        return await self.reply()

    async def reply(self) -> str:
        """The action of the next reply; "" when the service closed the connection."""
        line = await asyncio.wait_for(self.reader.readline(), 10)
        if not line:
            return ""
        assert line.startswith(b"action=") and await self.reader.readline() == b"\n"
        return line[len(b"action="):].rstrip(b"\n").decode()

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""


@contextlib.asynccontextmanager
async def running(tmp_path, policy: str = POLICY, limits: WireLimits = WireLimits()):
    (tmp_path / "main.vsl").write_text(policy)
    config = Config(hostname="mx.example.org", scripts=tmp_path)
    service = PolicyService(config, ("127.0.0.1", 0), limits)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@contextlib.asynccontextmanager
async def client(service):
    reader, writer = await asyncio.open_connection(*service.address)
    try:
        yield Client(reader, writer)
    finally:
        writer.close()


def serve(tmp_path, body, policy: str = POLICY, limits: WireLimits = WireLimits()):
    """Run ``body(client, service)`` against a fresh service."""
    async def main():
        async with running(tmp_path, policy, limits) as service:
            async with client(service) as c:
                return await body(c, service)
    return asyncio.run(main())


# ---- statuses -> actions ---------------------------------------------------------------

@pytest.mark.parametrize("recipient, action", [
    ("bob@example.org", "DUNNO"),                                 # next
    ("ok@example.org", "OK"),                                     # accept (its 2xx text: none)
    ("plain@example.org", "554 5.7.1 Transaction rejected by policy"),  # deny()
    ("later@example.org", "450 4.7.1 Try later"),                 # a 4xx deny
    ("lines@example.org", "550 5.7.1 First line second line"),   # one line
    ("crash@example.org", "451 4.3.0 Temporary local problem, try again later"),  # fallback
])
def test_each_status_has_its_action(tmp_path, recipient, action):
    async def body(c, service):
        return await c.ask(recipient=recipient)
    assert serve(tmp_path, body) == action


def test_quarantine_holds_once_and_faccept_accepts_the_rest(tmp_path):
    async def body(c, service):
        held = [await c.ask(sender="x@spam.example", recipient=f"r{n}@example.org")
                for n in range(2)]
        vip = [await c.ask(sender="v@vip.example", instance="2.2.2.2",
                           recipient=f"{who}@example.org") for who in ("bob", "plain")]
        return held, vip
    held, vip = serve(tmp_path, body)
    assert held == ["HOLD quarantined by the policy (suspect)", "DUNNO"]
    assert vip == ["OK", "OK"]  # faccept at MAIL FROM: on_rcpt_to no longer runs


def test_many_requests_on_one_connection(tmp_path):
    async def body(c, service):
        return [await c.ask(recipient=f"{who}@example.org")
                for who in ("bob", "plain", "ok", "bob")]
    assert serve(tmp_path, body) == ["DUNNO", "554 5.7.1 Transaction rejected by policy",
                                      "OK", "DUNNO"]


# ---- stages of a session ----------------------------------------------------------------

def test_one_rcpt_request_runs_every_earlier_stage_in_order(tmp_path):
    """smtpd_delay_reject=yes: the first request comes at RCPT."""
    async def body(c, service):
        return await c.ask(recipient="seen@example.org")
    assert serve(tmp_path, body) == "550 5.7.1 client.example alice@client.example 1"


def test_a_refusal_before_rcpt_is_answered_at_rcpt_every_time(tmp_path):
    async def body(c, service):
        return [await c.ask(client_address="192.0.2.66", recipient=f"r{n}@example.org")
                for n in range(2)] + [await c.ask("RCPT", helo_name="localhost",
                                                  client_port="40001", instance="7.7.7.7")]
    assert serve(tmp_path, body) == ["554 5.7.1 Go away"] * 2 + ["550 5.7.1 Bad HELO"]


def test_stages_run_once_per_session_and_store_is_kept(tmp_path):
    """smtpd_delay_reject=no: a request at each command; instance only from RCPT on."""
    async def body(c, service):
        replies = [await c.ask("CONNECT", helo_name="", sender="", recipient="", instance=""),
                   await c.ask("EHLO", sender="", recipient="", instance=""),
                   await c.ask("MAIL", recipient="", instance=""),
                   await c.ask(recipient="count@example.org"),
                   await c.ask(recipient="seen@example.org")]
        # a second message of the same session: MAIL_FROM runs again, connect does not
        replies += [await c.ask("MAIL", sender="carol@client.example", recipient="",
                                instance=""),
                    await c.ask(recipient="count@example.org", sender="carol@client.example",
                                instance="1a2b.5f3c.9e.1"),
                    await c.ask(recipient="seen@example.org", sender="carol@client.example",
                                instance="1a2b.5f3c.9e.1")]
        return replies
    assert serve(tmp_path, body) == [
        "DUNNO", "DUNNO", "DUNNO", "DUNNO", "550 5.7.1 client.example alice@client.example 2",
        "DUNNO", "DUNNO", "550 5.7.1 client.example carol@client.example 2"]


def test_a_repeated_recipient_replays_its_decision(tmp_path):
    """check_policy_service in both smtpd_relay_ and smtpd_recipient_restrictions."""
    async def body(c, service):
        return [await c.ask(recipient="ok@example.org") for _ in range(2)]
    assert serve(tmp_path, body) == ["OK", "OK"]


def test_an_instance_is_found_from_another_connection(tmp_path):
    """Postfix may close an idle policy connection and open another mid-message."""
    async def body(c, service):
        await c.ask(recipient="bob@example.org")
        async with client(service) as other:
            return await other.ask(recipient="seen@example.org")
    assert serve(tmp_path, body) == "550 5.7.1 client.example alice@client.example 2"


def test_data_prepends_the_first_header_and_end_of_message_none(tmp_path, caplog):
    async def body(c, service):
        await c.ask(recipient="bob@example.org")
        data = await c.ask("DATA", recipient="", recipient_count="1")
        again = await c.ask("END-OF-MESSAGE", recipient="", recipient_count="1")
        two = [await c.ask(state, sender="two@client.example", instance="3.3.3.3",
                           recipient="", recipient_count="1")
               for state in ("END-OF-MESSAGE",)]
        return data, again, two
    with caplog.at_level(logging.WARNING, "vsl.policyd"):
        data, again, two = serve(tmp_path, body)
    assert data == "PREPEND X-Policy: checked 1"
    assert again == "DUNNO"  # on_pre_queue ran at DATA
    assert two == ["DUNNO"]  # no PREPEND after the message (access(5))
    assert "header X-Policy not added" in caplog.text
    assert "header X-Second not added" in caplog.text


def test_the_request_fills_ctx_as_the_smtp_server_does(tmp_path):
    async def body(c, service):
        return [await c.ask(recipient="tls@example.org"),
                await c.ask(recipient="tls@example.org", instance="4.4.4.4",
                            encryption_protocol="TLSv1.3",
                            encryption_cipher="TLS_AES_256_GCM_SHA384"),
                await c.ask(recipient="auth@example.org"),
                await c.ask(recipient="auth@example.org", instance="5.5.5.5",
                            sasl_method="PLAIN", sasl_username="alice"),
                await c.ask(recipient="name@example.org")]
    assert serve(tmp_path, body) == ["530 5.7.0 TLS first", "DUNNO", "530 5.7.0 AUTH first",
                                     "DUNNO", "550 5.7.1 client.example"]


@pytest.mark.parametrize("attributes", [
    {"protocol_state": "VRFY"}, {"protocol_state": "ETRN", "etrn_domain": "example.org"},
    {"protocol_state": "NOSUCH"}, {"request": "something_else"},
])
def test_requests_without_a_stage_are_dunno(tmp_path, attributes):
    async def body(c, service):
        return await c.ask(**attributes)
    assert serve(tmp_path, body) == "DUNNO"


def test_an_internal_error_defers_without_details(tmp_path, monkeypatch, caplog):
    async def broken(*args):
        raise RuntimeError("/var/secret/path")
    monkeypatch.setattr(delegation.Delegation, "_decide", broken)

    async def body(c, service):
        return await c.ask()
    with caplog.at_level(logging.ERROR, "vsl.policyd"):
        assert serve(tmp_path, body) == "DEFER_IF_PERMIT Service temporarily unavailable"
    assert "/var/secret/path" in caplog.text  # logged, not answered


def test_an_unqualified_address_is_qualified_with_the_server_name(tmp_path):
    """Postfix accepts MAIL FROM:<spammer> and qualifies it ($myorigin): the stages run."""
    async def body(c, service):
        sender = await c.ask(sender="spammer", recipient="seen@example.org")
        rcpt = await c.ask(sender="alice@client.example", recipient="plain",
                           instance="1a2b.5f3c.9d.1")
        return sender, rcpt
    assert serve(tmp_path, body) == ("550 5.7.1 client.example spammer@mx.example.org 1",
                                     "554 5.7.1 Transaction rejected by policy")


@pytest.mark.parametrize("attributes", [{"sender": "a b@client.example"},
                                        {"recipient": "bob@exa mple.org"}])
def test_an_address_that_is_none_defers_never_skips_the_policy(tmp_path, attributes):
    async def body(c, service):
        return await c.ask(**attributes), await c.ask(**attributes)
    assert serve(tmp_path, body) == (actions.BAD_ADDRESS,) * 2


# ---- hostile input -----------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"request=smtpd_access_policy\n" + b"x=" + b"a" * 5000 + b"\n\n",   # line too long
    b"request=smtpd_access_policy\nno equals sign\n\n",
    b"=value\n\n",
    b"request=smtpd_access_policy\nname=a\0b\n\n",
    b"request=smtpd_access_policy\nname=\xff\xfe\n\n",
    b"".join(b"a%d=1\n" % n for n in range(101)) + b"\n",            # too many attributes
    b"".join(b"a%d=%s\n" % (n, b"v" * 4000) for n in range(5)) + b"\n",  # too big
    b"request=smtpd_access_policy\nprotocol_state=RCPT",              # closed within a line
])
def test_hostile_input_closes_without_a_reply_and_the_service_goes_on(tmp_path, data):
    async def body(c, service):
        c.writer.write(data)
        if not data.endswith(b"\n"):
            c.writer.write_eof()
        closed = await c.closed()
        async with client(service) as other:
            return closed, await other.ask(recipient="ok@example.org")
    assert serve(tmp_path, body) == (True, "OK")


def test_a_slow_request_and_an_idle_connection_are_closed(tmp_path):
    limits = WireLimits(request_seconds=0.3, idle_seconds=0.5)

    async def body(c, service):
        c.writer.write(b"request=smtpd_access_policy\n")  # and nothing more
        slow = await c.closed()
        async with client(service) as idle:
            return slow, await idle.closed()
    assert serve(tmp_path, body, limits=limits) == (True, True)


def test_a_repeated_attribute_keeps_its_first_value(tmp_path):
    async def body(c, service):
        c.writer.write(encode(request(recipient="ok@example.org"))[:-1]
                       + b"recipient=plain@example.org\n\n")
        return await c.reply()
    assert serve(tmp_path, body) == "OK"


# ---- the policy: lint at start, reload ------------------------------------------------------

def test_scripts_that_do_not_lint_stop_the_start(tmp_path):
    (tmp_path / "main.vsl").write_text("fn on_rcpt_to(ctx) { status::nope() }")
    with pytest.raises(PolicyError):
        PolicyService(Config(hostname="mx.example.org", scripts=tmp_path), ("127.0.0.1", 0))


def test_a_reload_changes_the_decisions(tmp_path):
    async def body(c, service):
        before = await c.ask(recipient="bob@example.org")
        (tmp_path / "main.vsl").write_text(
            'fn on_rcpt_to(ctx) { status::deny("550 5.7.1 Reloaded") }')
        assert await service.policy.reload_in_thread()
        return before, await c.ask(recipient="bob@example.org", instance="6.6.6.6")
    assert serve(tmp_path, body) == ("DUNNO", "550 5.7.1 Reloaded")


# ---- the table of conversations ------------------------------------------------------------

class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_conversations_are_bounded_in_number_and_age():
    from vsl.server.policyd.conversation import Conversations

    clock = Clock()
    table = Conversations(lambda: None, "mx.example.org", limit=2, max_age=60, clock=clock)
    for n in range(3):
        table.bind(table.find("", (f"192.0.2.{n}", "1"), None), f"i{n}")
    assert len(table) == 2  # the least recently used went first
    assert table.find("i0", ("192.0.2.0", "1"), None).instance == ""  # a new one
    assert table.find("i2", ("192.0.2.2", "1"), None).instance == "i2"
    clock.now = 61
    assert table.find("i2", ("192.0.2.2", "1"), None).instance == ""  # too old: gone
    assert len(table) == 0


def test_the_command_refuses_scripts_that_do_not_lint(tmp_path):
    from click.testing import CliRunner

    from vsl.cli import main

    (tmp_path / "main.vsl").write_text("fn on_rcpt_to(ctx) { status::nope() }")
    result = CliRunner().invoke(main, ["policyd", "--scripts", str(tmp_path)])
    assert result.exit_code == 1 and "do not lint" in result.output
    result = CliRunner().invoke(main, ["policyd", "--scripts", str(tmp_path / "none")])
    assert result.exit_code == 1 and "no main.vsl" in result.output
    result = CliRunner().invoke(main, ["policyd", "--scripts", str(tmp_path),
                                       "--listen", "nowhere"])
    assert result.exit_code == 1 and "--listen" in result.output
    result = CliRunner().invoke(main, ["policyd"])
    assert result.exit_code == 2 and "no scripts" in result.output


def test_the_command_sends_every_look_up_to_dns_override(tmp_path, monkeypatch):
    """--dns-override, as vsl serve and vsl milter spell it (no --dns)."""
    from click.testing import CliRunner

    from vsl.cli import main, policyd

    (tmp_path / "main.vsl").write_text("fn on_rcpt_to(ctx) { status::next() }")
    served = []
    monkeypatch.setattr(policyd, "_run", lambda config, listen: served.append(config))
    result = CliRunner().invoke(main, ["policyd", "--scripts", str(tmp_path),
                                       "--dns-override", "127.0.0.1:5353",
                                       "--dns-override", "127.0.0.2"])
    assert result.exit_code == 0, result.output
    assert served[0].dns.override == ("127.0.0.1:5353", "127.0.0.2")
    result = CliRunner().invoke(main, ["policyd", "--scripts", str(tmp_path),
                                       "--dns", "127.0.0.1:5353"])
    assert result.exit_code == 2 and "No such option '--dns'" in result.output


def test_random_requests_always_get_an_action(tmp_path):
    """Values Postfix would never send (bounded: 300 requests): every one is answered."""
    import random

    rng = random.Random(15)
    junk = ["", "<>", "@", "a@", "@b", "x" * 300, "é@é.example", "1.2.3", "-1", "99999",
            "a b@c", "postmaster", "POSTMASTER", "\t", "=", "::1", "[::1]"]
    names = ["protocol_state", "client_address", "client_port", "helo_name", "sender",
             "recipient", "instance", "queue_id", "sasl_username", "sasl_method",
             "server_port", "encryption_protocol"]
    states = [*delegation.STAGES, "VRFY", "ETRN", "", "rcpt"]

    async def body(c, service):
        answers = []
        for _ in range(300):
            attributes = {name: rng.choice(junk) for name in rng.sample(names, 4)}
            attributes["protocol_state"] = rng.choice(states)
            answers.append(await c.ask(**attributes))
        return answers
    answers = serve(tmp_path, body)
    assert len(answers) == 300 and all(answers)
    assert "DEFER_IF_PERMIT Service temporarily unavailable" not in answers


def test_another_helo_runs_on_helo_again_and_ends_the_message(tmp_path):
    async def body(c, service):
        first = await c.ask(recipient="seen@example.org")
        await c.ask("EHLO", helo_name="other.example", sender="", recipient="", instance="")
        return first, await c.ask(recipient="seen@example.org", helo_name="other.example",
                                  instance="8.8.8.8")
    assert serve(tmp_path, body) == ("550 5.7.1 client.example alice@client.example 1",
                                     "550 5.7.1 other.example alice@client.example 1")


def test_an_ended_message_is_not_found_by_its_instance(tmp_path):
    async def body(c, service):
        await c.ask(recipient="bob@example.org", instance="9.9.9.1")
        await c.ask(recipient="bob@example.org", instance="9.9.9.2")
        return len(service.delegation.conversations)
    assert serve(tmp_path, body) == 1


def test_a_refusal_is_logged_with_who_decided(tmp_path, caplog):
    async def body(c, service):
        return [await c.ask(recipient="plain@example.org"),
                await c.ask(recipient="crash@example.org")]
    with caplog.at_level(logging.INFO, "vsl.policyd"):
        serve(tmp_path, body)
    line = next(n for n, text in enumerate(POLICY.splitlines(), 1) if '"plain"' in text)
    assert "RCPT refused: 554 5.7.1 Transaction rejected by policy; " \
           "decided_by=on_rcpt_to@" in caplog.text and f"main.vsl:{line}:" in caplog.text
    assert "decided_by=fallback_reply@on_rcpt_to" in caplog.text
