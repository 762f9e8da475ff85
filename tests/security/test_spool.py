"""The spool and `vsl queue`: quarantine names cannot leave the spool, queued mail is
private, and client-controlled text cannot drive the operator's terminal."""
from __future__ import annotations

import asyncio

import pytest

from server.queue import QueueError, Spool, check_queue
from stdlib.status import is_quarantine_name


@pytest.mark.parametrize("name", ["quarantine/..", "quarantine/.", "quarantine/.hidden",
                                  "quarantine/" + "x" * 65, "quarantine/a/b"])
def test_quarantine_names_stay_inside_the_spool(tmp_path, name):
    spool = Spool(tmp_path)
    msg_id = asyncio.run(spool.put({"sender": ""}, b"x"))
    with pytest.raises(QueueError, match="unknown queue"):
        asyncio.run(spool.move(msg_id, name))
    assert spool.locate(msg_id) == "working"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == []


def test_queue_and_script_share_one_quarantine_rule():
    for name in ("spam", "virus-2", "a.b_c", "x" * 64):
        assert is_quarantine_name(name) and check_queue(f"quarantine/{name}")
    for name in ("", ".", "..", ".x", "x" * 65, "a/b", "a b", 1):
        assert not is_quarantine_name(name)
