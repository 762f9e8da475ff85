"""Roles (server/app.py, server/post_queue_worker.py): a receiver, a post-queue worker and
delivery, each a Server of its own over one shared queue (MemoryQueues on one
MemoryStore, as processes on one broker), do what one inline server does; over a backend
one machine uses, a single role is refused."""
from __future__ import annotations

import asyncio
import smtplib
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from vsl.cli.serve import serve
from vsl.server import app, queues, workers
from vsl.server.app import ALL_ROLES, Server
from vsl.server.config import DeliveryConfig
from vsl.server.envelope import Envelope, RecipientState
from vsl.server.intake import hand_off
from vsl.server.post_queue_worker import PostQueueWorker
from vsl.stdlib.ctx import Stage
from tests.support import contexts
from tests.support.mailsink import Sink
from tests.support.memory_queue import MemoryQueue, MemoryStore
from tests.support.servers import config_for, in_thread
from tests.support.smtp_tools import wait_for

MESSAGE = b"From: alice@pass.spf.test\r\nSubject: roles\r\n\r\nhello\r\n"
SCRIPT = """
fn on_rcpt_to(ctx) {
    if ctx.rcpt.local_part == "fwd" { transport::forward(ctx, "smtp://127.0.0.1:SINK?tls=none"); }
    status::next()
}
fn on_pre_queue(ctx) {
    let who = ctx.recipients[0].local_part;
    if who == "fast" { return status::faccept(); }
    if who == "resolver" { ctx.store("r", dns::resolver(#{ nameservers: ["127.0.0.1:9"] })); }
    if who == "checked" {
        let r = dns::resolver(#{ nameservers: [`127.0.0.1:DNS`], timeout: 0.5, cache: false });
        ctx.store(spf::check_host(#{ ip: ctx.client_ip, helo: ctx.helo, mail_from: ctx.sender,
                                     dns_resolver: r }));
        ctx.store(iprev::check(#{ ip: ctx.client_ip, dns_resolver: r }));
        ctx.store(dkim::verify(ctx, #{ dns_resolver: r }));
        ctx.store(dmarc::check(ctx, #{ dns_resolver: r }));
    }
    status::next()
}
fn on_post_queue(ctx) {
    let who = ctx.recipients[0].local_part;
    if who == "spam" { return status::quarantine("spam"); }
    if who == "deny" { return status::deny(); }
    if who == "checked" {
        log("warn", `post-queue: ${auth::create_header(ctx, #{ auth_serv_id: "mx.test" })}`);
    }
    dkim::sign(ctx, #{ sdid: "dkim.test", selector: "rsa", private_key: "KEY" });
    status::next()
}
"""
KEY = Path(__file__).parent / "authdata" / "rsa2048.pem"
SIGNED = b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=dkim.test;"
RECEIVER, WORKER, DELIVERY = (frozenset({role}) for role in ("receiver", "worker", "delivery"))


def open_on(monkeypatch, opener) -> None:
    """Servers (and the parent of workers) open their queue with ``opener(config)``."""
    monkeypatch.setattr(app, "open_queue", opener)
    monkeypatch.setattr(workers, "open_queue", opener)


@pytest.fixture
def store(monkeypatch) -> MemoryStore:
    """The broker: every server's queue is a shared MemoryQueue on it."""
    shared = MemoryStore()
    open_on(monkeypatch, lambda config: MemoryQueue(shared, shared=True))
    return shared




def roles_config(tmp_path: Path, sink: Sink, dns_port: int = 1):
    script = SCRIPT.replace("SINK", str(sink.port)).replace("DNS", str(dns_port)) \
        .replace("KEY", str(KEY))
    delivery = DeliveryConfig(maildir_root=tmp_path / "mail", poll_interval=0.05,
                              connect_timeout=2, command_timeout=2)
    return config_for(tmp_path, script, delivery=delivery)


@contextmanager
def servers(config, *role_sets: frozenset[str]):
    """A Server per role set, all on ``config``; yields the first one's SMTP port."""
    with _nested(config, list(role_sets), []) as started:
        yield next(address[1] for s in started for _, address in s.bound)


@contextmanager
def _nested(config, role_sets: list, started: list):
    if not role_sets:
        yield started
        return
    with in_thread(Server(config, roles=role_sets[0])) as server:
        with _nested(config, role_sets[1:], [*started, server]) as everything:
            yield everything


def send(port: int, *recipients: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("alice@pass.spf.test", list(recipients), MESSAGE)


def maildir(config, local_part: str) -> list[bytes]:
    new = config.delivery.maildir_root / "example.test" / local_part / "new"
    return [path.read_bytes() for path in sorted(new.glob("*"))] if new.is_dir() else []


def queued(store: MemoryStore, queue: str) -> list[Envelope]:
    return [Envelope.from_json(m.envelope) for m in store.messages.values() if m.queue == queue]


# ---- the hand-off holds on_post_queue's decisions ---------------------------------------

@pytest.mark.parametrize("role_sets", [(RECEIVER, WORKER, DELIVERY), (ALL_ROLES,)],
                         ids=["three servers", "one server, all roles"])
def test_mail_to_the_receiver_reaches_the_sink_and_the_maildir(tmp_path, store, sink,
                                                                role_sets):
    config = roles_config(tmp_path, sink)
    with servers(config, *role_sets) as port:
        send(port, "fwd@example.test", "bob@example.test")
        assert wait_for(lambda: sink.messages and maildir(config, "bob") and not store.messages)
    (forwarded,) = sink.messages
    assert forwarded.recipients == ["fwd@example.test"]  # on_rcpt_to's route held
    assert forwarded.data.startswith(SIGNED)  # on_post_queue's dkim::sign
    assert b"\n" + SIGNED in maildir(config, "bob")[0]


@pytest.mark.parametrize("recipient, queue", [("spam@example.test", "quarantine/spam"),
                                              ("deny@example.test", "dead")])
def test_on_post_queue_quarantines_or_denies_in_the_worker(tmp_path, store, sink,
                                                           recipient, queue):
    with servers(roles_config(tmp_path, sink), RECEIVER, WORKER, DELIVERY) as port:
        send(port, recipient)
        assert wait_for(lambda: queued(store, queue))
    (envelope,) = queued(store, queue)
    assert envelope.context is None and len(store.messages) == 1


def test_a_faccept_skips_on_post_queue_as_inline(tmp_path, store, sink):
    config = roles_config(tmp_path, sink)
    with servers(config, RECEIVER, WORKER, DELIVERY) as port:
        send(port, "fast@example.test")
        assert wait_for(lambda: maildir(config, "fast"))
    assert b"DKIM-Signature" not in maildir(config, "fast")[0]


def test_authentication_results_are_those_of_the_inline_run(tmp_path, store, sink, server,
                                                            monkeypatch, caplog):
    """on_post_queue makes the header of results on_pre_queue stored, and logs it."""
    def run(config, *role_sets) -> None:
        with servers(config, *role_sets) as port:
            send(port, "checked@example.test")
            assert wait_for(lambda: maildir(config, "checked"))

    shared = app.open_queue
    open_on(monkeypatch, queues.open_queue)  # the spool of the configuration
    (tmp_path / "inline").mkdir()
    run(roles_config(tmp_path / "inline", sink, server.port), ALL_ROLES)
    open_on(monkeypatch, shared)
    run(roles_config(tmp_path, sink, server.port), RECEIVER, WORKER, DELIVERY)
    inline, handed_off = (r.getMessage() for r in caplog.records
                          if r.getMessage().startswith("post-queue: "))
    assert "spf=fail" in inline and "iprev=" in inline and "dkim=none" in inline
    assert handed_off == inline


# ---- what cannot be handed off --------------------------------------------------------

def test_a_stored_resolver_is_a_451_and_nothing_is_queued(tmp_path, store, sink, caplog):
    with servers(roles_config(tmp_path, sink), RECEIVER) as port:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(port, "resolver@example.test")
    assert refused.value.smtp_code == 451
    assert b"resolver" not in refused.value.smtp_error  # the log says why, not the client
    assert "store key 'r': a dns_resolver cannot be handed to a worker" in caplog.text
    assert not store.messages


def test_a_garbled_hand_off_goes_to_dead_and_the_worker_goes_on(tmp_path, store, sink,
                                                                 caplog):
    config = roles_config(tmp_path, sink)
    shared = MemoryQueue(store, shared=True)
    envelope = Envelope("alice@pass.spf.test", [RecipientState("bob@example.test")])
    garbled = asyncio.run(shared.put(replace(envelope, context={"ctx": {"v": 2},
                                                                "forced": False}), MESSAGE))
    missing = asyncio.run(shared.put(envelope, MESSAGE))
    with servers(config, RECEIVER, WORKER, DELIVERY) as port:
        send(port, "bob@example.test")
        assert wait_for(lambda: maildir(config, "bob") and len(queued(store, "dead")) == 2)
    assert {e.id for e in queued(store, "dead")} == {garbled, missing}
    assert f"{garbled}: cannot run on_post_queue (hand-off format '2' is not 1" in caplog.text
    assert f"{missing}: cannot run on_post_queue (no hand-off from the session" in caplog.text


# ---- starting roles ---------------------------------------------------------------------

def test_a_shared_queue_is_not_recovered_into_hold(tmp_path, store, sink):
    """Over a broker, ``working`` holds acknowledged mail a worker elsewhere may run."""
    waiting = asyncio.run(MemoryQueue(store, shared=True).put(
        Envelope("a@example.test", [RecipientState("bob@example.test")]), MESSAGE))
    with servers(roles_config(tmp_path, sink), RECEIVER):
        pass
    assert store.messages[waiting].queue == "working"


@pytest.mark.parametrize("role", ["worker", "receiver", "delivery"])
def test_a_single_role_on_the_spool_is_refused(tmp_path, role):
    result = CliRunner().invoke(serve, ["--role", role, "--queue-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert f'--role {role} needs [queue] backend = "rabbitmq": the spool serves one ' \
           "machine; use --role all" in result.output


def test_a_stopped_worker_releases_its_claims(tmp_path):
    """Stopped mid on_post_queue, the message stays in working, due again."""
    queue = MemoryQueue(shared=True)
    started = asyncio.Event()

    class Stuck:
        async def post_queue(self, *_):
            started.set()
            await asyncio.sleep(60)

    async def scenario():
        ctx = contexts.session(Stage.PRE_QUEUE)
        envelope = Envelope("a@example.test", [RecipientState("b@example.test")],
                            context=hand_off(ctx, SimpleNamespace(forced=None)))
        msg_id = await queue.put(envelope, contexts.MESSAGE)
        worker = PostQueueWorker(queue, Stuck(), lambda: SimpleNamespace(forced=None),
                                 config_for(tmp_path))
        worker.start()
        await asyncio.wait_for(started.wait(), 5)
        await worker.stop()
        return msg_id

    msg_id = asyncio.run(scenario())
    assert queue.claimed == set() and queue.store.messages[msg_id].queue == "working"


def test_workers_that_receive_nothing_bind_nothing(tmp_path, store, sink):
    parent = workers.Workers(roles_config(tmp_path, sink), WORKER | DELIVERY)
    parent.prepare()
    assert parent.sockets == [] and parent.shared


def test_each_worker_on_a_shared_queue_delivers_with_a_journal_of_its_own(tmp_path):
    """A journal compacted by one process only, the same across the worker's restarts;
    on the spool only worker 0 delivers."""
    config = config_for(tmp_path)
    config = replace(config, delivery=replace(config.delivery, enabled=True))
    journals = [workers.child_config(config, index, shared=True).delivery
                for index in range(3)]
    assert all(delivery.enabled for delivery in journals)
    assert [delivery.journal for delivery in journals] == [
        None, *(config.queue_dir / f"delivered-{n}.journal" for n in (1, 2))]
    named = replace(config, delivery=replace(config.delivery, journal=tmp_path / "d.log"))
    assert workers.child_config(named, 1, shared=True).delivery.journal == tmp_path / "d-1.log"
    assert not workers.child_config(config, 1, shared=False).delivery.enabled
