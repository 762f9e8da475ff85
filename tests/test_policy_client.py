"""policy::ask against a tiny policy service in the test: the request's attributes per
stage, the action read back, and trouble (refused, timeout, garbage, huge replies)
answering the default action."""
from __future__ import annotations

import asyncio

import pytest

from vsl.stdlib import new_engine
from vsl.stdlib.ctx import Stage
from vsl.stdlib.policy import DEFAULT_ACTION, MAX_REPLY

from tests.support.contexts import session

SCRIPT = """
fn on_connect(ctx) { policy::ask(ctx, global::SERVER) }
fn on_helo(ctx) { policy::ask(ctx, global::SERVER) }
fn on_pre_queue(ctx) { policy::ask(ctx, global::SERVER) }
fn on_rcpt_to(ctx) { policy::ask(ctx, global::SERVER, #{ timeout: 0.5 }) }
fn on_mail_from(ctx) { policy::ask(ctx, global::SERVER, #{ timeout: 0.5,
                                                          default_action: "DUNNO" }) }
"""


class Service:
    """Answers each request with ``reply(attributes)`` (raw bytes), keeping the requests."""

    def __init__(self, reply):
        self.reply, self.requests = reply, []

    async def handle(self, reader, writer):
        attributes = {}
        while (line := (await reader.readline()).decode().rstrip("\n")):
            name, _, value = line.partition("=")
            attributes[name] = value
        self.requests.append(attributes)
        answer = self.reply(attributes)
        if answer is not None:
            writer.write(answer)
            await writer.drain()
        else:
            await asyncio.sleep(2)
        writer.close()


def ask(reply, stage=Stage.RCPT_TO, server=None, unix=None):
    """(the script's result, the requests the service saw); ``unix``: the service's
    socket path, else it listens on a loopback port."""
    service = Service(reply)

    async def run():
        if unix:
            listener = await asyncio.start_unix_server(service.handle, unix)
            address = server or f"unix:{unix}"
        else:
            listener = await asyncio.start_server(service.handle, "127.0.0.1", 0)
            port = listener.sockets[0].getsockname()[1]
            address = server or f"inet:127.0.0.1:{port}"
        script = new_engine().load_source(f'const SERVER = "{address}";\n{SCRIPT}', "t.vsl")
        ctx = session(stage)
        async with listener:
            return await script.call_async(stage.function, ctx)

    return asyncio.run(run()), service.requests


def test_the_request_carries_the_rcpt_stage():
    result, requests = ask(lambda a: b"action=REJECT go away\n\n")
    assert result == "REJECT go away"
    request = requests[0]
    assert request["request"] == "smtpd_access_policy"
    assert request["protocol_state"] == "RCPT"
    assert (request["client_address"], request["helo_name"]) == ("192.0.2.1",
                                                                "client.example")
    assert (request["sender"], request["recipient"]) == ("alice@a.example",
                                                         "bob@b.example")
    assert request["instance"] and request["recipient_count"] == "0"


@pytest.mark.parametrize("stage, state, helo, sender, count", [
    (Stage.CONNECT, "CONNECT", "", "", "0"),
    (Stage.HELO, "EHLO", "client.example", "", "0"),
    (Stage.PRE_QUEUE, "END-OF-MESSAGE", "client.example", "alice@a.example", "1"),
])
def test_each_stage_sends_its_state(stage, state, helo, sender, count):
    result, requests = ask(lambda a: b"action=OK\n\n", stage=stage)
    request = requests[0]
    assert result == "OK"
    assert (request["protocol_state"], request["helo_name"], request["sender"],
            request["recipient"], request["recipient_count"]) == (state, helo, sender, "",
                                                                  count)


def test_mail_from_has_no_recipient():
    result, requests = ask(lambda a: b"action=DUNNO\n\n", stage=Stage.MAIL_FROM)
    assert result == "DUNNO"
    assert requests[0]["protocol_state"] == "MAIL" and requests[0]["recipient"] == ""


def test_a_unix_socket_service(tmp_path):
    result, requests = ask(lambda a: b"action=DUNNO\n\n", unix=str(tmp_path / "policy"))
    assert result == "DUNNO" and requests[0]["protocol_state"] == "RCPT"


def test_other_attributes_in_the_reply_are_ignored():
    result, _ = ask(lambda a: b"foo=bar\naction=450 4.7.1 later\n\n")
    assert result == "450 4.7.1 later"


@pytest.mark.parametrize("reply", [
    b"no equals sign\n\n", b"foo=bar\n\n", b"action=\n\n", b"action=OK",  # no empty line
    b"\xff\xfe=\n\n", b"action=" + b"x" * (MAX_REPLY * 2) + b"\n\n",
])
def test_a_bad_reply_answers_the_default_action(reply):
    result, requests = ask(lambda a: reply)
    assert result == DEFAULT_ACTION
    assert len(requests) == 2  # one retry, as Postfix's attr_clnt


def test_a_timeout_answers_the_default_action():
    assert ask(lambda a: None)[0] == DEFAULT_ACTION


def test_a_refused_connection_answers_the_script_default():
    result, _ = ask(None, stage=Stage.MAIL_FROM, server="inet:127.0.0.1:1")
    assert result == "DUNNO"


def test_a_malformed_server_is_a_script_error():
    with pytest.raises(Exception, match="neither inet:host:port nor unix:/path"):
        ask(None, server="tcp:somewhere")
