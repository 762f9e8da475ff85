"""The differential test of a translated ``check_policy_service``: a private Postfix and
`vsl serve` (running `vsl migrate postfix`'s translation) ask the same small policy
services, started here: one in the sender restrictions deciding by the sender, one in the
recipient restrictions deciding by the recipient. The conversations of
test_migrate_postfix.py and some of this test's go to both, and every reply must have the
same code, enhanced code and text. Counts are printed (`pytest -s`)."""
from __future__ import annotations

import socketserver
import threading
from dataclasses import replace

import pytest

from vsl.server.config import DeliveryConfig, Listener, load
from vsl.server.migrate.translate import translate

from tests.support.postfix import PrivatePostfix
from tests.support.servers import running
from tests.test_migrate_postfix import CONVERSATIONS, Tally, compare, converse

# the service's action for a sender's or recipient's local part (else DUNNO)
ACTIONS = {
    "spam": "REJECT 5.7.0 spam source",
    "reject-me": "REJECT go away", "plain": "REJECT", "defer-me": "DEFER try later",
    "bounce-me": "550 5.1.1 no such mailbox here", "grey": "450 4.7.1 Greylisted, come back",
    "ok-me": "OK", "dunno": "DUNNO", "lower": "reject lower case",
}
POLICY_CONVERSATIONS = [
    ("127.0.0.2", "client.example.test", "alice@example.org",
     [f"{name}@example.test" for name in ACTIONS] + ["bob@example.test"]),
    ("127.0.0.1", "client.example.test", "maker@example.org",
     ["reject-me@elsewhere.test", "ok-me@elsewhere.test", "carol@elsewhere.test"]),
    *(("127.0.0.2", "client.example.test", f"{name}@example.org", ["bob@example.test"])
      for name in ACTIONS),
    ("127.0.0.2", "client.example.test", "ok-me@example.org", ["dave@elsewhere.test"]),
]


def action(request: dict[str, str], subject: str) -> str:
    """The action for the request's ``subject`` attribute (sender or recipient)."""
    return ACTIONS.get(request.get(subject, "").partition("@")[0], "DUNNO")


class PolicyHandler(socketserver.StreamRequestHandler):
    """Answers every request of one connection (Postfix keeps its connection open)."""

    def handle(self):
        request = {}
        for raw in self.rfile:
            line = raw.decode().rstrip("\r\n")
            if line:
                name, _, value = line.partition("=")
                request[name] = value
                continue
            self.server.requests.append(request)
            self.wfile.write(f"action={action(request, self.server.subject)}\n\n".encode())
            request = {}


def start_service(subject: str) -> socketserver.ThreadingTCPServer:
    """A running policy service deciding by ``subject``; it keeps the requests answered."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), PolicyHandler)
    server.daemon_threads, server.requests, server.subject = True, [], subject
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def services():
    """The sender's and the recipient's policy services, stopped after the test."""
    both = start_service("sender"), start_service("recipient")
    yield both
    for server in both:
        server.shutdown()
        server.server_close()


def check(server: socketserver.ThreadingTCPServer) -> str:
    return f"check_policy_service inet:127.0.0.1:{server.server_address[1]}"


def test_translated_policy_service_answers_as_postfix(services, tmp_path):
    senders, recipients = services
    settings = {
        "mynetworks": "127.0.0.1/32", "smtpd_helo_required": "yes",
        "smtpd_sender_restrictions": check(senders),
        "smtpd_recipient_restrictions": f"permit_mynetworks, {check(recipients)}, "
                                        "reject_unauth_destination",
    }
    tally = Tally()
    with PrivatePostfix(settings) as postfix:
        translation = translate(postfix.etc)
        assert not [item for item in translation.left if "policy" in item.item]
        translation.write(tmp_path / "policy")
        config = replace(load(tmp_path / "policy" / "vsl.toml"),
                         listen=(Listener("127.0.0.1", 0),), queue_dir=tmp_path / "queue",
                         delivery=DeliveryConfig(enabled=False))
        with running(config) as server:
            for number, conversation in enumerate(CONVERSATIONS + POLICY_CONVERSATIONS):
                expected = converse(postfix.port, *conversation, number)
                got = converse(server.port(), *conversation, number)
                compare("check_policy_service", expected, got, tally)
    print(f"\ncheck_policy_service: {tally.conversations} conversations, {tally.commands} "
          f"commands ({tally.refusals} refused), {len(tally.differences)} differ; "
          f"{len(senders.requests) + len(recipients.requests)} policy requests")
    refusing = [a for a in ACTIONS.values() if a.split()[0].upper() not in ("OK", "DUNNO")]
    assert tally.refusals >= 2 * len(refusing)  # each refusal by sender and by recipient
    assert not tally.differences, "\n".join(tally.differences)
