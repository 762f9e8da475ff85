"""One id per SMTP session in a real `vsl serve`'s log: with ``[log] format = "json"``
every line is a JSON object, and the session's id finds its connect, rejects, queued
message, the message's delivery and the disconnect, with one process and with two
workers; text lines end with a logfmt tail that reads the ids back; over a broker, the
receiver's session id is on the delivery role's lines."""
from __future__ import annotations

import json
import logging

import pytest

from vsl.server import logfmt
from vsl.server.logformat import JsonFormatter
from vsl.server.logids import IdsFilter
from tests.test_amqp_roles import amqp
from tests.test_roles import DELIVERY, RECEIVER, WORKER, maildir, roles_config, send, servers
from tests.support.logserve import delivered, serving, session
from tests.support.smtp_tools import wait_for


def json_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("workers", [1, 2])
def test_one_session_id_finds_the_whole_story_in_json(tmp_path, workers):
    with serving(tmp_path, '[log]\nformat = "json"\n', workers) as (port, stderr):
        queue_id = session(port)
        assert wait_for(lambda: delivered(tmp_path), 10), stderr.read_text()
        assert wait_for(lambda: any(line.get("event") == "delivered"
                                    for line in json_lines(stderr)), 5)
    lines = json_lines(stderr)  # every line is JSON
    assert all(list(line)[:5] == ["ts", "level", "logger", "pid", "msg"] for line in lines)
    [queued] = [line for line in lines if line.get("event") == "queued"]
    assert queued["queue_id"] == queue_id and queued["nrcpt"] == 1
    ours = [line for line in lines if line.get("session") == queued["session"]]
    events = [line["event"] for line in ours if line.get("event") != "script_log"]
    session_events = [e for e in events if e != "delivered"]  # delivery runs alongside
    assert session_events == ["connect", "reject", "reject", "queued", "disconnect"]
    assert events.count("delivered") == 1 and events.index("delivered") > events.index("queued")
    rejects = [line for line in ours if line.get("event") == "reject"]
    assert [(r["code"], r["enhanced"], r["recipient"]) for r in rejects] == [
        (550, "5.1.1", "nobody@mx.test"), (554, "5.7.1", "victim@elsewhere.test")]
    assert rejects[0]["decided_by"].endswith("main.vsl:4:49")  # the status::deny
    assert rejects[1]["decided_by"] == "server"
    assert all(r["queue_id"] == queue_id and r["stage"] == "rcpt" for r in rejects)
    [done] = [line for line in ours if line.get("event") == "delivered"]
    assert done["queue_id"] == queue_id and done["route"] == "maildir"
    script = [line for line in ours if line.get("event") == "script_log"]  # 2 per RCPT
    assert [line["sd"] for line in script[::2]] == 3 * [[{
        "id": "netsec@vsmtp", "params": {"mechanism": "iprev", "ip": "192.0.2.1"}}]]
    assert {line["msg"] for line in script[::2]} == {"iprev checked"}
    assert {line["msg"] for line in script[1::2]} == {"[not valid sd] kept in the text"}
    assert all("sd" not in line and line["queue_id"] == queue_id for line in script[1::2])
    [bye] = [line for line in ours if line.get("event") == "disconnect"]
    assert bye["commands"] == "ehlo=1 mail=1 rcpt=1/3 data=1 quit=1 commands=5/7"
    assert "queue_id" not in bye


def test_text_lines_end_with_the_ids(tmp_path):
    with serving(tmp_path, "") as (port, stderr):
        queue_id = session(port)
        assert wait_for(lambda: delivered(tmp_path), 10), stderr.read_text()
        assert wait_for(lambda: "event=delivered" in stderr.read_text(), 5)
    lines = stderr.read_text().splitlines()
    [queued] = [line for line in lines if "event=queued" in line]
    fields = logfmt.parse(queued)
    assert fields["queue_id"] == queue_id and len(fields["session"]) == 12
    ours = [logfmt.parse(line) for line in lines if f"session={fields['session']}" in line]
    assert {"connect", "reject", "queued", "delivered", "disconnect"} <= \
        {line.get("event") for line in ours}
    assert all(line.startswith("20") and "]: " in line.split(" ", 3)[3] for line in lines
               if " vsl." in line)  # TIME LEVEL LOGGER[PID]: ...


class Stamped(logging.Handler):
    """The lines of in-process servers, as JSON with their ids."""

    def __init__(self):
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.addFilter(IdsFilter())
        self.lines = []

    def emit(self, record):
        self.lines.append(json.loads(self.format(record)))


def test_the_session_id_crosses_the_broker_to_the_worker_and_delivery(tmp_path, rabbitmq,
                                                                       sink, caplog):
    caplog.set_level("INFO")
    config = amqp(roles_config(tmp_path, sink), rabbitmq)
    handler, root = Stamped(), logging.getLogger()
    root.addHandler(handler)
    try:
        with servers(config, RECEIVER, WORKER, DELIVERY) as port:
            send(port, "bob@example.test")
            assert wait_for(lambda: maildir(config, "bob") and any(
                line.get("event") == "delivered" for line in handler.lines), timeout=20)
    finally:
        root.removeHandler(handler)
    [queued] = [line for line in handler.lines if line.get("event") == "queued"]
    ours = [line for line in handler.lines if line.get("session") == queued["session"]]
    assert {"connect", "queued", "delivered", "disconnect"} <= {line.get("event")
                                                               for line in ours}
    assert all(line["queue_id"] == queued["queue_id"] for line in ours
               if line.get("event") == "delivered")
