"""The on-disk spool: durability, group commit, moves, recovery, failures."""
from __future__ import annotations

import asyncio
import json
import os

import pytest

from server.queue import QueueError, Spool, check_queue


def run(coro):
    return asyncio.run(coro)


def test_put_get_and_message(tmp_path):
    spool = Spool(tmp_path)
    msg_id = run(spool.put({"sender": "a@example.test", "recipients": ["b@example.test"]},
                           b"Subject: hi\r\n\r\nbody\r\n"))
    entry = spool.get(msg_id)
    assert entry.queue == "working" and entry.envelope["sender"] == "a@example.test"
    assert entry.envelope["id"] == msg_id and entry.age >= 0
    assert spool.message(msg_id) == b"Subject: hi\r\n\r\nbody\r\n"
    assert sorted(os.listdir(tmp_path / "working")) == [f"{msg_id}.eml", f"{msg_id}.json"]
    assert os.listdir(tmp_path / "tmp") == []


def test_concurrent_puts_share_commits(tmp_path):
    spool = Spool(tmp_path)

    async def many():
        return await asyncio.gather(*(spool.put({"n": i}, b"x" * 100) for i in range(200)))

    ids = run(many())
    assert len(set(ids)) == 200 and len(spool.list("working")) == 200
    assert spool._committer.batches < 200  # batched: fewer syncs than messages


def test_move_list_remove(tmp_path):
    spool = Spool(tmp_path)
    msg_id = run(spool.put({}, b"data"))
    run(spool.move(msg_id, "quarantine/virus"))
    assert spool.locate(msg_id) == "quarantine/virus"
    assert [e.id for e in spool.list("quarantine/virus")] == [msg_id]
    assert "quarantine/virus" in spool.queues()
    assert spool.message(msg_id) == b"data"
    run(spool.move(msg_id, "hold"))
    entry = spool.get(msg_id)
    entry.envelope["note"] = "held"
    run(spool.update(entry))
    assert spool.get(msg_id, "hold").envelope["note"] == "held"
    spool.remove(msg_id)
    with pytest.raises(QueueError, match="no message"):
        spool.locate(msg_id)


def test_bad_names_are_refused(tmp_path):
    spool = Spool(tmp_path)
    for bad in ("../etc", "quarantine/../x", "nope", "quarantine/"):
        with pytest.raises(QueueError, match="unknown queue"):
            check_queue(bad)
    with pytest.raises(QueueError, match="not a message id"):
        spool.get("../../etc/passwd", "working")


def test_recover_finishes_an_interrupted_move(tmp_path):
    spool = Spool(tmp_path)
    msg_id = run(spool.put({}, b"data"))
    # a crash after the message file moved but before its envelope did
    os.replace(tmp_path / "working" / f"{msg_id}.eml", tmp_path / "hold" / f"{msg_id}.eml")
    assert Spool(tmp_path).recover() == 0
    assert spool.locate(msg_id) == "working" and spool.message(msg_id) == b"data"


def test_recover_drops_what_was_never_acknowledged(tmp_path):
    spool = Spool(tmp_path)
    kept = run(spool.put({}, b"kept"))
    (tmp_path / "tmp" / "half-written").write_bytes(b"x")
    (tmp_path / "deliver" / "0123456789ab-0123456789ab.eml").write_bytes(b"orphan")
    assert spool.recover() == 2
    assert [e.id for e in spool.list()] == [kept]


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
        run(spool.put({}, b"data"))
    assert spool.list() == []


def test_envelopes_are_json(tmp_path):
    spool = Spool(tmp_path)
    msg_id = run(spool.put({"recipients": [{"address": "b@x.test", "status": "pending"}]},
                           b"d"))
    data = json.loads((tmp_path / "working" / f"{msg_id}.json").read_text())
    assert data["recipients"][0]["status"] == "pending"
