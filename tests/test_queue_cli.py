"""`vsl queue`: list, show, retry, hold, release, remove, move, on a real spool."""
from __future__ import annotations

import asyncio
import json
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from vsl.server.config import DeliveryConfig
from vsl.server.envelope import Envelope, RecipientState
from vsl.server.queue import Spool
from tests.support.mailsink import MESSAGE
from tests.support.servers import config_for, running
from tests.support.smtp_tools import wait_for
from tests.support.terminal import on_terminal

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
            ids.append(await spool.put(
                Envelope("s@x.test", [RecipientState(r) for r in rcpts], client_ip="192.0.2.1"),
                b"Subject: q\r\n\r\n"))
        deferred = await spool.put(Envelope("s@x.test", [
            RecipientState("d@three.test", status="deferred", attempts=2,
                           reply="451 4.4.1 try later", reason="networkerror",
                           reason_confidence=0.9)], next_attempt=4e9), b"x", "deferred")
        return ids + [deferred]

    spool.ids = asyncio.run(fill())
    return spool


def test_list_table_and_json(spool):
    out = vsl_queue(spool.root, "list", "--by-domain").stdout
    assert out.splitlines()[0].split()[:4] == ["QUEUE", "DOMAIN", "TOTAL", "<5"]
    rows = {tuple(line.split()[:3]) for line in out.splitlines()[1:]}
    assert rows == {("working", "one.test", "2"), ("working", "two.test", "1"),
                    ("deferred", "three.test", "1")}
    data = json.loads(vsl_queue(spool.root, "list", "--json").stdout)
    assert {d["id"] for d in data} == set(spool.ids)
    (deferred,) = [d for d in data if d["queue"] == "deferred"]
    assert deferred["recipients"][0]["reason"] == "networkerror"
    assert deferred["recipients"][0]["reason_confidence"] == 0.9
    assert vsl_queue(spool.root, "list", "--by-domain", "deferred").stdout.count(
        "three.test") == 1


def test_list_shows_ids_and_counts_only_pending_recipients(spool):
    first, second, deferred = spool.ids
    entry = asyncio.run(spool.get(second))
    entry.envelope.recipients[0].status = "delivered"
    asyncio.run(spool.update(entry))
    out = vsl_queue(spool.root, "list").stdout.splitlines()
    assert out[0].split() == ["ID", "QUEUE", "AGE", "PENDING", "SENDER"]
    rows = {line.split()[0]: line.split()[1:] for line in out[1:-1]}
    assert rows == {first: ["working", "0", "1", "<s@x.test>"],
                    second: ["working", "0", "1", "<s@x.test>"],
                    deferred: ["deferred", "0", "1", "<s@x.test>"]}
    assert out[-1] == "-- 3 message(s), 3 recipient(s) pending"
    table = vsl_queue(spool.root, "list", "--by-domain").stdout
    assert "two.test" not in table  # its only recipient was delivered


def test_counts_per_queue_also_without_a_command(spool):
    counts = vsl_queue(spool.root, "counts")
    assert counts.returncode == 0 and counts.stderr == ""
    lines = counts.stdout.splitlines()
    assert lines[0].split() == ["QUEUE", "MESSAGES"] and lines[-1] == "-- 3 message(s)"
    rows = dict(line.split() for line in lines[1:-1])
    assert rows == {"working": "2", "deliver": "0", "deferred": "1", "dead": "0", "hold": "0"}
    assert vsl_queue(spool.root).stdout == counts.stdout


def test_the_queue_of_vsl_toml_in_the_working_directory(spool, tmp_path):
    (tmp_path / "vsl.toml").write_text(f'[server]\nqueue_dir = "{spool.root.name}"\n')
    result = subprocess.run([VSL, "queue", "list"], capture_output=True, text=True,
                            timeout=30, cwd=tmp_path)
    assert result.returncode == 0 and spool.ids[0] in result.stdout


def test_hold_twice_and_show_held(spool):
    deferred = spool.ids[2]
    assert vsl_queue(spool.root, "hold", deferred).returncode == 0
    result = vsl_queue(spool.root, "hold", deferred)
    assert result.returncode == 1 and f"{deferred}: already held" in result.stdout
    out = vsl_queue(spool.root, "show", deferred).stdout
    assert "queue:     hold" in out and "next try" not in out


def test_show_and_eml(spool):
    out = vsl_queue(spool.root, "show", spool.ids[2]).stdout
    assert "queue:     deferred" in out and "<d@three.test> deferred route=mx attempts=2" in out
    assert "last error: 451 4.4.1 try later" in out and "next try:" in out
    assert "reason:     networkerror (confidence 0.90)" in out
    assert vsl_queue(spool.root, "show", spool.ids[0], "--eml").stdout == "Subject: q\n\n"


RAW = b"Subject: caf\xc3\xa9 \xff\x1b[2J\r\n\r\nline\r\x00\r\n"  # bad UTF-8, controls


def stored_raw(spool) -> str:
    return asyncio.run(spool.put(Envelope("s@x.test"), RAW))


def test_eml_into_a_file_or_pipe_is_the_message_itself(spool):
    """`vsl queue show --eml ID > msg.eml` writes the stored bytes, unchanged."""
    msg_id = stored_raw(spool)
    result = subprocess.run([VSL, "queue", "--queue-dir", str(spool.root), "show", "--eml",
                             msg_id], capture_output=True, timeout=30)
    assert result.returncode == 0 and result.stdout == RAW


def test_eml_on_a_terminal_is_escaped(spool):
    msg_id = stored_raw(spool)
    shown = on_terminal([VSL, "queue", "--queue-dir", str(spool.root), "show", "--eml", msg_id])
    assert "\x1b" not in shown and "\x00" not in shown
    assert "Subject: caf\u00e9 \ufffd\\x1b[2J" in shown and "line\\r\\x00" in shown



def test_hold_release_retry_move_remove(spool):
    first, _, deferred = spool.ids
    assert vsl_queue(spool.root, "hold", first).returncode == 0
    assert asyncio.run(spool.locate(first)) == "hold"
    assert vsl_queue(spool.root, "release", first).returncode == 0
    assert asyncio.run(spool.locate(first)) == "deliver"
    assert vsl_queue(spool.root, "retry", first).stdout.strip() == f"{first}: in deliver, due now"
    result = vsl_queue(spool.root, "retry", "--all")
    assert result.returncode == 0 and f"{deferred}: deferred -> deliver" in result.stdout
    assert asyncio.run(spool.get(deferred)).envelope.next_attempt is None
    assert vsl_queue(spool.root, "move", first, "quarantine/review").returncode == 0
    assert asyncio.run(spool.locate(first)) == "quarantine/review"
    assert vsl_queue(spool.root, "remove", first).returncode == 0
    assert first not in {e.id for e in asyncio.run(spool.list())}


def test_errors_are_reported(spool):
    result = vsl_queue(spool.root, "release", spool.ids[0])
    assert result.returncode == 1 and "not held (it is in working)" in result.stdout
    result = vsl_queue(spool.root, "move", spool.ids[0], "../x")
    assert result.returncode == 1 and "unknown queue" in result.stdout
    result = vsl_queue(spool.root, "show", "0123456789ab-0123456789ab")
    assert result.returncode == 1 and "no message" in result.stderr
    assert vsl_queue(spool.root.parent / "nope", "list").returncode == 1


def test_the_queue_options_come_after_the_command_too(tmp_path):
    """`vsl queue list --config vsl.toml` as `vsl queue --config vsl.toml list`."""
    Spool(tmp_path / "q")
    (tmp_path / "vsl.toml").write_text('[server]\nqueue_dir = "q"\n')
    for args in (["list", "--config", str(tmp_path / "vsl.toml")],
                 ["list", f"--queue-dir={tmp_path / 'q'}"]):
        result = subprocess.run([VSL, "queue", *args], capture_output=True, text=True,
                                timeout=30, cwd=tmp_path.parent)
        assert (result.returncode, result.stdout.strip()) == (0, "the queue is empty"), result


def test_empty_queue(tmp_path):
    Spool(tmp_path / "q")
    assert vsl_queue(tmp_path / "q", "list").stdout.strip() == "the queue is empty"
    assert vsl_queue(tmp_path / "q", "retry", "--all").stdout.strip() == "no deferred message"


def test_show_gives_the_error_real_delivery_wrote(tmp_path):
    """The envelope's last error, as delivery records it: a remote's 450 and 550."""
    refusing = 'fn on_rcpt_to(ctx) { if ctx.rcpt.local_part == "bad" { ' \
        'return status::deny("550 5.1.1 no such user"); } ' \
        'status::deny("450 4.2.1 mailbox busy") }'
    (tmp_path / "remote").mkdir()
    with running(config_for(tmp_path / "remote", refusing)) as remote:
        forward = 'fn on_rcpt_to(ctx) { transport::forward(ctx, ' \
            f'"smtp://127.0.0.1:{remote.port()}?tls=none"); status::next() }}'
        delivery = DeliveryConfig(poll_interval=0.02, retry_first=3600, delay_warning=0)
        with running(config_for(tmp_path, forward, delivery=delivery)) as server:
            with smtplib.SMTP("127.0.0.1", server.port(), timeout=10) as smtp:
                smtp.sendmail("", ["busy@example.test", "bad@example.test"], MESSAGE)
            assert wait_for(lambda: asyncio.run(server.spool.list("deferred")), timeout=30)
            (entry,) = asyncio.run(server.spool.list("deferred"))
    out = vsl_queue(tmp_path / "queue", "show", entry.id).stdout
    assert "<busy@example.test> deferred" in out and "<bad@example.test> failed" in out
    assert "last error: 450 4.2.1 mailbox busy" in out
    assert "last error: 550 5.1.1 no such user" in out
    assert "reason:     userunknown (confidence " in out  # the 550's, classified
    assert out.count("reason:") == 2
