"""`vsl queue`: list, show, retry, hold, release, remove, move, on a real spool."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from server.queue import Spool

VSL = Path(sys.executable).parent / "vsl"


def vsl_queue(spool_dir, *args):
    return subprocess.run([VSL, "queue", "--queue-dir", str(spool_dir), *args],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def spool(tmp_path):
    spool = Spool(tmp_path / "q")

    async def fill():
        ids = []
        for rcpts in (["a@one.test"], ["b@two.test", "c@one.test"]):
            ids.append(await spool.put({"sender": "s@x.test", "client_ip": "192.0.2.1",
                                        "recipients": [{"address": r, "status": "pending"}
                                                       for r in rcpts]}, b"Subject: q\r\n\r\n"))
        deferred = await spool.put({"sender": "s@x.test", "next_attempt": 4e9, "recipients": [
            {"address": "d@three.test", "status": "deferred", "attempts": 2,
             "error": "451 4.4.1 try later"}]}, b"x", "deferred")
        return ids + [deferred]

    spool.ids = asyncio.run(fill())
    return spool


def test_list_table_and_json(spool):
    out = vsl_queue(spool.root, "list").stdout
    assert out.splitlines()[0].split()[:4] == ["QUEUE", "DOMAIN", "TOTAL", "<5"]
    rows = {tuple(line.split()[:3]) for line in out.splitlines()[1:]}
    assert rows == {("working", "one.test", "2"), ("working", "two.test", "1"),
                    ("deferred", "three.test", "1")}
    data = json.loads(vsl_queue(spool.root, "list", "--json").stdout)
    assert {d["id"] for d in data} == set(spool.ids)
    assert vsl_queue(spool.root, "list", "deferred").stdout.count("three.test") == 1


def test_show_and_eml(spool):
    out = vsl_queue(spool.root, "show", spool.ids[2]).stdout
    assert "queue:     deferred" in out and "<d@three.test> deferred attempts=2" in out
    assert "last error: 451 4.4.1 try later" in out and "next try:" in out
    assert vsl_queue(spool.root, "show", spool.ids[0], "--eml").stdout == "Subject: q\n\n"


def test_hold_release_retry_move_remove(spool):
    first, _, deferred = spool.ids
    assert vsl_queue(spool.root, "hold", first).returncode == 0
    assert spool.locate(first) == "hold"
    assert vsl_queue(spool.root, "release", first).returncode == 0
    assert spool.locate(first) == "deliver"
    result = vsl_queue(spool.root, "retry", "--all")
    assert result.returncode == 0 and f"{deferred}: deferred -> deliver" in result.stdout
    assert "next_attempt" not in spool.get(deferred).envelope
    assert vsl_queue(spool.root, "move", first, "quarantine/review").returncode == 0
    assert spool.locate(first) == "quarantine/review"
    assert vsl_queue(spool.root, "remove", first).returncode == 0
    assert first not in {e.id for e in spool.list()}


def test_errors_are_reported(spool):
    result = vsl_queue(spool.root, "release", spool.ids[0])
    assert result.returncode == 1 and "not held (it is in working)" in result.stdout
    result = vsl_queue(spool.root, "move", spool.ids[0], "../x")
    assert result.returncode == 1 and "unknown queue" in result.stdout
    result = vsl_queue(spool.root, "show", "0123456789ab-0123456789ab")
    assert result.returncode == 1 and "no message" in result.stderr
    assert vsl_queue(spool.root.parent / "nope", "list").returncode == 1


def test_empty_queue(tmp_path):
    Spool(tmp_path / "q")
    assert vsl_queue(tmp_path / "q", "list").stdout.strip() == "the queue is empty"
    assert vsl_queue(tmp_path / "q", "retry", "--all").stdout.strip() == "no deferred message"
