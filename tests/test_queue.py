"""The on-disk spool: durability, group commit, moves, recovery, failures."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from vsl.server.envelope import VERSION, Envelope, RecipientState
from vsl.server.queue import Spool, spool_lock
from vsl.server.queue_backend import QueueError, check_queue


def run(coro):
    return asyncio.run(coro)


def test_put_get_and_message(tmp_path):
    spool = Spool(tmp_path)
    msg_id = run(spool.put(Envelope("a@example.test", [RecipientState("b@example.test")]),
                           b"Subject: hi\r\n\r\nbody\r\n"))
    entry = run(spool.get(msg_id))
    assert entry.queue == "working" and entry.envelope.sender == "a@example.test"
    assert entry.envelope.id == msg_id and entry.age >= 0
    assert run(spool.message(msg_id)) == b"Subject: hi\r\n\r\nbody\r\n"
    assert sorted(os.listdir(tmp_path / "working")) == [f"{msg_id}.eml", f"{msg_id}.json"]
    assert os.listdir(tmp_path / "tmp") == []


def test_concurrent_puts_share_commits(tmp_path):
    spool = Spool(tmp_path)

    async def many():
        return await asyncio.gather(*(spool.put(Envelope(f"s{i}@x.test"), b"x" * 100)
                                      for i in range(200)))

    ids = run(many())
    assert len(set(ids)) == 200 and len(run(spool.list("working"))) == 200
    assert spool._committer.batches < 200  # batched: fewer syncs than messages


def test_move_list_remove(tmp_path):
    spool = Spool(tmp_path)
    msg_id = run(spool.put(Envelope(""), b"data"))
    run(spool.move(msg_id, "quarantine/virus"))
    assert run(spool.locate(msg_id)) == "quarantine/virus"
    assert [e.id for e in run(spool.list("quarantine/virus"))] == [msg_id]
    assert "quarantine/virus" in spool.queues()
    assert run(spool.message(msg_id)) == b"data"
    run(spool.move(msg_id, "hold"))
    entry = run(spool.get(msg_id))
    entry.envelope.attempts = 7
    run(spool.update(entry))
    assert run(spool.get(msg_id, "hold")).envelope.attempts == 7
    run(spool.remove(msg_id))
    with pytest.raises(QueueError, match="no message"):
        run(spool.locate(msg_id))


def test_bad_names_are_refused(tmp_path):
    spool = Spool(tmp_path)
    for bad in ("../etc", "quarantine/../x", "nope", "quarantine/"):
        with pytest.raises(QueueError, match="unknown queue"):
            check_queue(bad)
    with pytest.raises(QueueError, match="not a message id"):
        run(spool.get("../../etc/passwd", "working"))


def test_recover_finishes_an_interrupted_move(tmp_path):
    spool = Spool(tmp_path)
    msg_id = run(spool.put(Envelope(""), b"data", "deliver"))
    # a crash after the message file moved but before its envelope did
    os.replace(tmp_path / "deliver" / f"{msg_id}.eml", tmp_path / "hold" / f"{msg_id}.eml")
    assert run(Spool(tmp_path).recover()) == 0
    assert run(spool.locate(msg_id)) == "deliver" and run(spool.message(msg_id)) == b"data"


def test_recover_drops_what_was_never_acknowledged(tmp_path):
    spool = Spool(tmp_path)
    kept = run(spool.put(Envelope(""), b"kept", "deliver"))
    (tmp_path / "tmp" / "half-written").write_bytes(b"x")
    (tmp_path / "deliver" / "0123456789ab-0123456789ab.eml").write_bytes(b"orphan")
    assert run(spool.recover()) == 2
    assert [e.id for e in run(spool.list())] == [kept]


def test_unwritable_queue_is_an_error_not_a_success(tmp_path):
    if os.geteuid() == 0:
        # root ignores permissions: make the spool's tmp/ a file instead
        spool = Spool(tmp_path)
        (tmp_path / "tmp").rmdir()
        (tmp_path / "tmp").write_bytes(b"")
    else:
        spool = Spool(tmp_path)
        os.chmod(tmp_path / "tmp", 0o500)
    with pytest.raises(QueueError, match="cannot write the queue"):
        run(spool.put(Envelope(""), b"data"))
    assert run(spool.list()) == []


def test_envelopes_are_json(tmp_path):
    spool = Spool(tmp_path)
    msg_id = run(spool.put(Envelope("a@x.test", [RecipientState("b@x.test")]), b"d"))
    data = json.loads((tmp_path / "working" / f"{msg_id}.json").read_text())
    assert data["recipients"][0]["status"] == "pending" and data["version"] == VERSION


def test_an_envelope_keeps_its_context_and_reads_without_one(tmp_path):
    spool = Spool(tmp_path)
    context = {"server_ip": "192.0.2.1", "store": {"seen": [1, "two", None]}}
    msg_id = run(spool.put(Envelope("a@x.test", context=context), b"d"))
    assert run(spool.get(msg_id)).envelope.context == context
    bare = run(spool.put(Envelope("a@x.test"), b"d"))
    assert "context" not in json.loads((tmp_path / "working" / f"{bare}.json").read_text())
    assert run(spool.get(bare)).envelope.context is None
    with pytest.raises(ValueError, match="Envelope.context"):
        Envelope.from_json(json.dumps({"sender": "a@x.test", "context": ["not", "an object"]}))


# An envelope as vSL wrote it before envelopes were typed (no "version"): a deferred
# message after one attempt, with the fields session.py and delivery.py wrote then.
UNVERSIONED = (
    '{"attempts": 1, "authenticated_as": null, "client_ip": "192.0.2.7", "client_port": 40000,'
    ' "helo": "client.test", "id": "0123456789ab-0123456789ab", "next_attempt": 1700000300.0,'
    ' "received_at": 1700000000.0, "recipients": [{"address": "bob@remote.test",'
    ' "attempts": 1, "remote_mta": "mx.remote.test", "reply": "451 4.2.0 try again later",'
    ' "route": "mx", "status": "deferred", "updated_at": 1700000001.5}], "sender":'
    ' "alice@example.test", "server_name": "mx.test", "tls": false, "transaction":'
    ' "<abc@mx.test>"}')


def test_unversioned_envelopes_still_read(tmp_path):
    spool = Spool(tmp_path)
    (tmp_path / "deferred" / "0123456789ab-0123456789ab.json").write_text(UNVERSIONED)
    (tmp_path / "deferred" / "0123456789ab-0123456789ab.eml").write_bytes(b"x")
    entry = run(spool.get("0123456789ab-0123456789ab"))
    assert entry.envelope == Envelope(
        "alice@example.test", [RecipientState(
            "bob@remote.test", "mx", "deferred", 1, "451 4.2.0 try again later",
            "mx.remote.test", 1700000001.5)],
        id="0123456789ab-0123456789ab", received_at=1700000000.0, helo="client.test",
        client_ip="192.0.2.7", client_port=40000, server_name="mx.test",
        transaction="<abc@mx.test>", attempts=1, next_attempt=1700000300.0)
    run(spool.update(entry))
    assert json.loads((tmp_path / "deferred" / f"{entry.id}.json").read_text()) == \
        {**json.loads(UNVERSIONED), "version": VERSION, "dsn_for": None,
         "delay_warned_at": None, "recipients": [
             {**json.loads(UNVERSIONED)["recipients"][0], "expired": False,
              "reason": None, "reason_confidence": None}]}


def test_version_1_envelopes_read_without_reasons(tmp_path):
    spool = Spool(tmp_path)
    stored = {**json.loads(UNVERSIONED), "version": 1, "dsn_for": None, "delay_warned_at": None}
    stored["recipients"][0]["expired"] = False
    (tmp_path / "deferred" / "0123456789ab-0123456789ab.json").write_text(json.dumps(stored))
    (tmp_path / "deferred" / "0123456789ab-0123456789ab.eml").write_bytes(b"x")
    (rcpt,) = run(spool.get("0123456789ab-0123456789ab")).envelope.recipients
    assert rcpt.status == "deferred" and rcpt.reason is None and rcpt.reason_confidence is None


def test_recipient_reasons_round_trip():
    envelope = Envelope("a@x.test", [RecipientState("b@x.test")])
    envelope.recipients[0].record_attempt("deferred", "452 4.2.2 Mailbox full", None, 1.0,
                                          "mailboxfull", 0.93)
    assert json.loads(envelope.to_json())["version"] == VERSION == 2
    (rcpt,) = Envelope.from_json(envelope.to_json()).recipients
    assert (rcpt.reason, rcpt.reason_confidence) == ("mailboxfull", 0.93)
    rcpt.record_attempt("delivered", "250 ok", None, 2.0)  # a later success forgets it
    assert rcpt.reason is None and rcpt.reason_confidence is None


def test_an_envelopes_context_keeps_its_key_order():
    """A script's maps and stored values keep their order through the hand-off."""
    context = {"store": {"spf": 1, "iprev": 2, "dkim": 3}, "forced": False}
    envelope = Envelope("a@x.test", [RecipientState("b@x.test")], context=context)
    stored = Envelope.from_json(envelope.to_json())
    assert list(stored.context) == ["store", "forced"]
    assert list(stored.context["store"]) == ["spf", "iprev", "dkim"]
    assert list(json.loads(envelope.to_json())) == sorted(json.loads(envelope.to_json()))


@pytest.mark.parametrize("stored, problem", [
    ('{"version": 99, "sender": ""}', "version 99"),
    ('{"recipients": []}', "sender"),
    ('{"sender": 5}', "sender"),
    ('{"sender": "", "recipients": ["b@x.test"]}', "RecipientState is a JSON object"),
    ('{"sender": "", "recipients": [{"address": "b@x.test", "attempts": "2"}]}', "attempts"),
    ('[1]', "JSON object"), ("{", "Expecting"),
])
def test_what_is_not_an_envelope_is_reported_not_misread(tmp_path, stored, problem):
    spool = Spool(tmp_path)
    (tmp_path / "hold" / "0123456789ab-0123456789ab.json").write_text(stored)
    with pytest.raises(QueueError, match=f"unreadable envelope: .*{problem}"):
        run(spool.get("0123456789ab-0123456789ab"))
    assert run(spool.list()) == []  # skipped by listings and by delivery


def test_a_claim_reads_only_the_envelopes_it_claims(tmp_path, monkeypatch, caplog):
    """The oldest unclaimed first, an unreadable one skipped and warned of once: a
    backlog's every envelope was read at each claim (delivery fell behind a busy
    receiver)."""
    spool = Spool(tmp_path)
    ids = sorted(run(spool.put(Envelope("a@x.test", [RecipientState(f"b{n}@x.test")]), b"x",
                               "deliver")) for n in range(30))  # in time order, to the ms
    (tmp_path / "deliver" / f"{ids[1]}.json").write_text("{")  # unreadable
    read = []
    get = spool._get
    monkeypatch.setattr(spool, "_get", lambda msg_id, queue=None: read.append(msg_id) or
                        get(msg_id, queue))
    first = run(spool.claim(2, time.time()))
    second = run(spool.claim(2, time.time()))
    assert [e.id for e in first + second] == [ids[0], ids[2], ids[3], ids[4]]
    assert read == ids[:3] + [ids[1], ids[3], ids[4]]
    assert caplog.text.count("unreadable envelope") == 1


def test_the_journal_goes_where_it_is_configured(tmp_path):
    """Addresses a remote accepted are journalled at the configured path, not in the
    queue directory."""
    spool = Spool(tmp_path / "queue", journal=tmp_path / "state" / "delivered.journal")
    (tmp_path / "state").mkdir()
    msg_id = run(spool.put(Envelope("a@x.test", [RecipientState("b@x.test")]), b"x", "deliver"))
    run(spool.update(run(spool.get(msg_id)), delivered=["b@x.test"]))
    run(spool.close())
    assert (tmp_path / "state" / "delivered.journal").read_text() == f"{msg_id} b@x.test\n"
    assert not (tmp_path / "queue" / "delivered.journal").exists()


def test_a_write_submitted_while_the_spool_closes_is_done_and_later_writes_too(tmp_path):
    """close() waits for writes submitted meanwhile; a writer thread started during the
    close ends, and the next write starts another (none hangs)."""
    spool = Spool(tmp_path)
    committer = spool._committer
    commit, started = committer._commit, threading.Event()

    def slow_commit(batch):  # the first holds its writer while close() and a put come in
        if not started.is_set():
            started.set()
            time.sleep(0.6)
        return commit(batch)

    committer._commit = slow_commit

    def put(text: bytes):
        return spool.put(Envelope("a@example.test", [RecipientState("b@example.test")]), text)

    async def scenario():
        first = asyncio.ensure_future(put(b"one\r\n"))
        await asyncio.to_thread(started.wait)
        closing = asyncio.ensure_future(spool.close())
        await asyncio.sleep(0.1)  # close() is waiting for the busy writer
        during = await put(b"two\r\n")
        await closing
        after = await asyncio.wait_for(put(b"three\r\n"), timeout=5)
        await spool.close()
        return await first, during, after

    ids = run(scenario())
    assert [run(spool.message(msg_id)) for msg_id in ids] == [b"one\r\n", b"two\r\n", b"three\r\n"]


def held_meanwhile(tmp_path) -> tuple[Spool, str]:
    """A message in ``deliver`` that `vsl queue hold` (a second Spool on the same
    directory) moves while the server (the first) delivers it; the server's Spool."""
    server, operator = Spool(tmp_path), Spool(tmp_path)
    msg_id = run(server.put(Envelope("a@example.test", [RecipientState("b@example.test")]),
                            b"data", "deliver"))
    run(operator.move(msg_id, "hold", "deliver"))
    run(operator.close())
    return server, msg_id


def assert_only_held(spool: Spool, msg_id: str) -> None:
    assert [(e.id, e.queue) for e in run(spool.list())] == [(msg_id, "hold")]
    assert sorted(os.listdir(spool.root / "deliver")) == []
    assert sorted(os.listdir(spool.root / "hold")) == [f"{msg_id}.eml", f"{msg_id}.json"]
    assert os.listdir(spool.root / "tmp") == [] and run(spool.message(msg_id)) == b"data"


@pytest.mark.parametrize("write", ["update", "update_data", "defer", "complete", "move",
                                   "remove"])
def test_a_write_to_a_message_moved_meanwhile_fails_and_changes_nothing(tmp_path, write):
    server, msg_id = held_meanwhile(tmp_path)
    entry = run(server.get(msg_id, "hold"))
    entry.queue = "deliver"  # what the server claimed
    entry.envelope.attempts = 3
    writes = {"update": lambda: server.update(entry),
              "update_data": lambda: server.update(entry, b"changed"),
              "defer": lambda: server.defer(entry, time.time() + 60),
              "complete": lambda: server.complete(entry),
              "move": lambda: server.move(msg_id, "dead", "deliver"),
                  "remove": lambda: server.remove(msg_id, "deliver")}
    with pytest.raises(QueueError, match="moved meanwhile"):
        run(writes[write]())
    assert_only_held(server, msg_id)
    assert run(server.get(msg_id)).envelope.attempts == 0
    run(server.close())


def test_the_writer_checks_and_renames_under_the_lock_movers_take(tmp_path):
    """Another process holds the spool's lock while it moves the message to hold: the
    server's update waits for the lock, then sees the move and fails."""
    spool = Spool(tmp_path)
    msg_id = run(spool.put(Envelope("", [RecipientState("b@example.test")]), b"data",
                           "deliver"))
    entry = run(spool.get(msg_id))

    async def main():
        with spool_lock(tmp_path):
            update = asyncio.ensure_future(spool.update(entry))
            await asyncio.sleep(0.3)
            assert not update.done()  # the writer waits for the lock
            for suffix in (".eml", ".json"):  # as `vsl queue hold` renames
                os.replace(tmp_path / "deliver" / f"{msg_id}{suffix}",
                           tmp_path / "hold" / f"{msg_id}{suffix}")
        with pytest.raises(QueueError, match="moved meanwhile"):
            await update

    run(main())
    assert_only_held(spool, msg_id)
    run(spool.close())


def test_no_orphan_while_another_process_moves_messages_back_and_forth(tmp_path):
    """The server updates messages while a `vsl queue` process moves them between
    deliver and hold: each update lands or fails, and every message stays whole."""
    spool = Spool(tmp_path)
    ids = [run(spool.put(Envelope(""), b"x", "deliver")) for _ in range(20)]
    mover = subprocess.Popen([sys.executable, "-c", MOVER, str(tmp_path), *ids])

    async def update_all():
        outcomes = {"updated": 0, "moved meanwhile": 0}
        while mover.poll() is None:
            for entry in await spool.list("deliver"):
                try:
                    await spool.update(entry)
                    outcomes["updated"] += 1
                except QueueError as err:
                    assert "moved meanwhile" in str(err)
                    outcomes["moved meanwhile"] += 1
        return outcomes

    outcomes = run(update_all())
    assert all(outcomes.values()), outcomes  # both happened
    assert mover.returncode == 0
    assert sorted(e.id for e in run(spool.list())) == sorted(ids)
    for queue in ("deliver", "hold"):
        files = os.listdir(tmp_path / queue)
        assert sorted(f for f in files if f.endswith(".eml")) == \
            sorted(f.replace(".json", ".eml") for f in files if f.endswith(".json"))
    run(spool.close())


MOVER = """
import asyncio, sys, time
from vsl.server.queue import Spool
from vsl.server.queue_backend import QueueError
spool, ids = Spool(sys.argv[1]), sys.argv[2:]
async def main():
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        for msg_id in ids:
            try:
                queue = await spool.locate(msg_id)
                await spool.move(msg_id, "hold" if queue == "deliver" else "deliver", queue)
            except QueueError:
                pass
    await spool.close()
asyncio.run(main())
"""
