"""A second queue backend runs the server, delivery and `vsl queue` unchanged.

:class:`~tests.support.memory_queue.MemoryQueue` is registered in
``vsl.server.queues.BACKENDS`` in the spool's place (for the test only), so everything
that opens the queue through ``open_queue`` runs on it: nothing else knows.
"""
from __future__ import annotations

import asyncio
import smtplib

import pytest
from click.testing import CliRunner

from vsl.cli.queue import queue as vsl_queue
from vsl.server import queues
from vsl.server.config import DeliveryConfig, Listener
from vsl.server.envelope import Envelope, RecipientState
from tests.support.mailsink import MESSAGE, free_port
from tests.support.memory_queue import MemoryQueue
from tests.support.servers import config_for, running
from tests.support.smtp_tools import wait_for
from tests.test_layers import all_imports

QUICK = DeliveryConfig(retry_first=0.5, retry_max=0.5, poll_interval=0.02, connect_timeout=2,
                       command_timeout=2, idle_timeout=1)


@pytest.fixture(autouse=True)
def memory_backend(monkeypatch):
    """Every queue opened by ``open_queue`` is a MemoryQueue."""
    monkeypatch.setitem(queues.BACKENDS, "spool",
                        f"{MemoryQueue.__module__}:{MemoryQueue.__qualname__}")


def post_queue_routing(route: str) -> str:
    """A main.vsl whose on_post_queue sends every recipient by ``route``."""
    return f'fn on_post_queue(ctx) {{ transport::{route}; status::next() }}'


def send(server, *recipients: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.port(), timeout=10) as smtp:
        smtp.sendmail("alice@example.org", list(recipients), MESSAGE)


# ---- (a) the server receives, routes and delivers ----------------------------------------

def test_the_server_delivers_to_a_maildir_on_a_memory_queue(tmp_path):
    box = tmp_path / "box"
    script = post_queue_routing(f'maildir(ctx, "{box}")')
    with running(config_for(tmp_path, script, delivery=QUICK)) as server:
        assert isinstance(server.spool, MemoryQueue)
        send(server, "bob@example.test")
        assert wait_for(lambda: list((box / "new").glob("*"))
                        and not asyncio.run(server.spool.list()))
    (stored,) = (box / "new").iterdir()
    assert stored.read_bytes().endswith(MESSAGE.replace(b"\r\n", b"\n"))
    assert not (tmp_path / "queue").exists()  # nothing of a file spool was made


def test_a_deferred_message_is_retried_when_due(tmp_path):
    port = free_port()  # refused until the receiver listens there
    script = post_queue_routing(f'forward(ctx, "smtp://127.0.0.1:{port}?tls=none")')
    with running(config_for(tmp_path, script, delivery=QUICK)) as server:
        send(server, "bob@example.test")
        assert wait_for(lambda: asyncio.run(server.spool.list("deferred")))
        (deferred,) = asyncio.run(server.spool.list("deferred"))
        (rcpt,) = deferred.envelope.recipients
        assert (rcpt.status, deferred.envelope.attempts) == ("deferred", 1)
        assert deferred.envelope.next_attempt > deferred.envelope.received_at
        receiving = config_for(tmp_path / "rx", listen=(Listener("127.0.0.1", port),))
        with running(receiving) as receiver:
            assert wait_for(lambda: not asyncio.run(server.spool.list()))
            (forwarded,) = asyncio.run(receiver.spool.list("deliver"))
    assert asyncio.run(receiver.spool.message(forwarded.id)).endswith(MESSAGE)
    assert [r.address for r in forwarded.envelope.recipients] == ["bob@example.test"]


# ---- (b) `vsl queue` ---------------------------------------------------------------------

def vsl_queue_in(queue_dir, *args) -> tuple[int, str]:
    """`vsl queue --queue-dir queue_dir ARGS`, in this process: its exit code and output."""
    result = CliRunner().invoke(vsl_queue, ["--queue-dir", str(queue_dir), *args])
    return result.exit_code, result.output


def test_vsl_queue_lists_shows_and_acts_on_a_memory_queue(tmp_path):
    backend = MemoryQueue.on(tmp_path)  # what a server on tmp_path would have queued

    async def fill():
        envelope = Envelope("s@x.test", [RecipientState("a@one.test")])
        waiting = await backend.put(envelope, MESSAGE, "deliver")
        deferred = await backend.put(envelope, MESSAGE, "deliver")
        (entry,) = [e for e in await backend.claim(5, 0) if e.id == deferred]
        await backend.defer(entry, 2e9)
        await backend.release(waiting)
        await backend.release(deferred)
        return waiting, deferred

    waiting, deferred = asyncio.run(fill())
    code, listing = vsl_queue_in(tmp_path, "list")
    assert code == 0 and waiting in listing and deferred in listing
    assert "2 message(s), 2 recipient(s) pending" in listing
    code, shown = vsl_queue_in(tmp_path, "show", deferred)
    assert code == 0 and "queue:     deferred" in shown and "<a@one.test> pending" in shown
    assert vsl_queue_in(tmp_path, "hold", waiting) == (0, f"{waiting}: deliver -> hold\n")
    assert asyncio.run(backend.locate(waiting)) == "hold"
    assert vsl_queue_in(tmp_path, "release", waiting) == (0, f"{waiting}: hold -> deliver\n")
    assert vsl_queue_in(tmp_path, "retry", deferred) == (0, f"{deferred}: deferred -> deliver\n")
    assert asyncio.run(backend.get(deferred, "deliver")).envelope.next_attempt is None
    assert vsl_queue_in(tmp_path, "remove", waiting) == (0, f"{waiting}: removed from deliver\n")
    assert [e.id for e in asyncio.run(backend.list())] == [deferred]
    code, _ = vsl_queue_in(tmp_path, "release", waiting)
    assert code == 1


# ---- (c) nothing but the queue factory knows the file spool ------------------------------

@pytest.mark.parametrize("module", ["vsl.server.delivery", "vsl.server.queue_admin",
                                    "vsl.server.intake"])
def test_delivery_and_admin_never_import_the_file_spool(module):
    """Not even through another module: they speak only server/queue_backend.py."""
    imported: dict[str, set[str]] = {}
    for imp in all_imports():
        imported.setdefault(imp.importer, set()).add(imp.target)
    reached, todo = set(), [module]
    while todo:
        for target in imported.get(todo.pop(), ()):
            if target not in reached:
                reached.add(target)
                todo.append(target)
    assert "vsl.server.queue_backend" in reached
    assert "vsl.server.queue" not in reached
