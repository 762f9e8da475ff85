"""The spool and `vsl queue`: quarantine names cannot leave the spool, queued mail is
private, and client-controlled text cannot drive the operator's terminal."""
from __future__ import annotations

import asyncio
import os
import smtplib
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vsl.server.app import recover_queue
from vsl.server.envelope import Envelope
from vsl.server.transports.local import append_mbox, write_maildir
from vsl.server.queue import Spool
from vsl.server.queue_backend import QueueError, check_queue
from vsl.server.printable import printable
from vsl.stdlib.status import is_quarantine_name
from tests.support.servers import config_for, running
from tests.support.terminal import on_terminal

VSL = Path(sys.executable).parent / "vsl"


@pytest.mark.parametrize("name", ["quarantine/..", "quarantine/.", "quarantine/.hidden",
                                  "quarantine/" + "x" * 65, "quarantine/a/b"])
def test_quarantine_names_stay_inside_the_spool(tmp_path, name):
    spool = Spool(tmp_path)
    msg_id = asyncio.run(spool.put(Envelope(""), b"x"))
    with pytest.raises(QueueError, match="unknown queue"):
        asyncio.run(spool.move(msg_id, name))
    assert asyncio.run(spool.locate(msg_id)) == "working"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == []


def test_queue_and_script_share_one_quarantine_rule():
    for name in ("spam", "virus-2", "a.b_c", "x" * 64):
        assert is_quarantine_name(name) and check_queue(f"quarantine/{name}")
    for name in ("", ".", "..", ".x", "x" * 65, "a/b", "a b", 1):
        assert not is_quarantine_name(name)


@pytest.fixture(params=[0o022, 0o000])
def usual_umask(request):
    old = os.umask(request.param)
    yield
    os.umask(old)


def modes(paths) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) for p in paths}


def test_queued_mail_is_private(tmp_path, usual_umask):
    spool = Spool(tmp_path / "var" / "queue")  # its missing parent is private too

    async def fill():
        msg_id = await spool.put(Envelope("", authenticated_as="alice"), b"secret")
        await spool.move(msg_id, "quarantine/review")
        await spool.put(Envelope(""), b"x", "quarantine/virus")
    asyncio.run(fill())
    files = [p for p in spool.root.rglob("*") if p.is_file()]
    directories = [spool.root, *(p for p in spool.root.rglob("*") if p.is_dir())]
    assert len(files) == 5 and modes(files) == {0o600}  # 2 messages, and the lock
    assert spool.root / "spool.lock" in files
    assert len(directories) == 10 and modes(directories) == {0o700}
    assert modes([spool.root.parent]) == {0o700}


def test_mailboxes_and_their_missing_parents_are_private(tmp_path, usual_umask):
    write_maildir(str(tmp_path / "mail" / "example.test" / "bob"), b"secret")
    append_mbox(str(tmp_path / "mbox" / "example.test" / "alice"), b"secret", "a@b.test")
    made = [p for p in tmp_path.rglob("*") if p.is_dir()]
    assert len(made) == 8 and modes(made) == {0o700}


def test_an_open_spool_is_reported_at_start(tmp_path, caplog):
    spool = Spool(tmp_path / "queue")
    asyncio.run(recover_queue(spool))
    assert "readable" not in caplog.text
    os.chmod(spool.root, 0o755)
    asyncio.run(recover_queue(spool))
    assert f"spool {spool.root} is readable by others (mode 0755)" in caplog.text


TITLE = "\x1b]0;owned\x07"  # sets the terminal's title, then rings its bell


def test_client_text_cannot_drive_the_operators_terminal(tmp_path):
    with running(config_for(tmp_path)) as server:
        with smtplib.SMTP("127.0.0.1", server.port(), timeout=10) as smtp:
            smtp.ehlo(f"evil{TITLE}.test")
            smtp.sendmail("alice@example.org", ["bob@example.test"],
                          f"Subject: hi{TITLE}\r\n\r\nbody\x1b[2J\r\n".encode())
        (entry,) = asyncio.run(server.spool.list())
    assert TITLE in entry.envelope.helo  # stored as sent: only printing escapes it
    for command in (["show", entry.id], ["list"], ["list", "--by-domain"], ["list", "--json"],
                    ["hold", entry.id]):
        result = subprocess.run([VSL, "queue", "--queue-dir", str(server.spool.root), *command],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert not set(result.stdout) & {"\x1b", "\x07"}, (command, result.stdout)
    message = on_terminal([VSL, "queue", "--queue-dir", str(server.spool.root), "show",
                           "--eml", entry.id])  # into a file, the bytes are kept as stored
    assert not set(message) & {"\x1b", "\x07"} and r"body\x1b[2J" in message
    shown = subprocess.run([VSL, "queue", "--queue-dir", str(server.spool.root), "show",
                            entry.id], capture_output=True, text=True, timeout=30).stdout
    assert r"(evil\x1b]0;owned\x07.test)" in shown


def test_one_escaping_helper():
    assert printable("a\x1b[2Jb\r\u202ec\x9b") == r"a\x1b[2Jb\r\u202ec\x9b"
    assert printable("line\tone\nline two\r", lines=True) == "line\tone\nline two\\r"


# ---- envelopes that cannot be read, quarantines an older version named ---------------------

def vsl_queue(spool: Spool, *args) -> subprocess.CompletedProcess:
    return subprocess.run([VSL, "queue", "--queue-dir", str(spool.root), *args],
                          capture_output=True, text=True, timeout=30)


def spool_with_unreadable(tmp_path) -> tuple[Spool, str, dict[str, str]]:
    """A spool with one good message and two whose envelopes cannot be read: a newer
    version's, and one that is a directory (an I/O error). Returns the spool, the good id
    and {bad id: why}."""
    spool = Spool(tmp_path / "queue")

    async def fill():
        good = await spool.put(Envelope("a@example.test"), b"x", "deliver")
        newer = await spool.put(Envelope("b@example.test"), b"x", "deliver")
        odd = await spool.put(Envelope("c@example.test"), b"x", "deliver")
        return good, newer, odd
    good, newer, odd = asyncio.run(fill())
    (spool.root / "deliver" / f"{newer}.json").write_text('{"version": 99, "sender": ""}')
    (spool.root / "deliver" / f"{odd}.json").unlink()
    (spool.root / "deliver" / f"{odd}.json").mkdir()
    return spool, good, {newer: "envelope version 99 is not one this vSL reads",
                         odd: "Is a directory"}


def test_an_unreadable_envelope_is_logged_once_not_skipped_silently(tmp_path, caplog):
    spool, good, bad = spool_with_unreadable(tmp_path)
    for _ in range(3):  # delivery lists the queue at every poll
        assert [e.id for e in asyncio.run(spool.list("deliver"))] == [good]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings
    for msg_id, why in bad.items():
        path = spool.root / "deliver" / f"{msg_id}.json"
        assert any(msg_id in w and str(path) in w and why in w for w in warnings), warnings


def test_vsl_queue_list_reports_unreadable_envelopes(tmp_path):
    spool, good, bad = spool_with_unreadable(tmp_path)
    result = vsl_queue(spool, "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for msg_id, why in bad.items():
        (line,) = [line for line in lines if line.startswith(msg_id)]
        assert "deliver" in line and f"(unreadable envelope: {why}" in line
    assert any(line.startswith(good) for line in lines)
    assert lines[-1].startswith("-- 1 message(s), 0 recipient(s) pending, 2 unreadable")
    for option in ("--json", "--by-domain"):
        result = vsl_queue(spool, "list", option)
        assert result.returncode == 0 and "2 unreadable envelope(s)" in result.stderr


def test_an_unreadable_envelope_can_be_held_and_moved_aside(tmp_path):
    """hold and move read no envelope (they refused one that could not be read): the files
    move as they are, for the operator to fix or remove later."""
    spool, good, bad = spool_with_unreadable(tmp_path)
    newer, odd = bad
    stored = (spool.root / "deliver" / f"{newer}.json").read_bytes()
    result = vsl_queue(spool, "hold", newer)
    assert result.returncode == 0 and result.stdout.strip() == f"{newer}: deliver -> hold"
    result = vsl_queue(spool, "move", odd, "quarantine/broken")
    assert result.returncode == 0, result.stdout
    assert asyncio.run(spool.locate(newer)) == "hold"
    assert asyncio.run(spool.locate(odd)) == "quarantine/broken"
    assert (spool.root / "hold" / f"{newer}.json").read_bytes() == stored
    assert asyncio.run(spool.message(newer)) == b"x" and asyncio.run(spool.message(odd)) == b"x"
    assert [e.id for e in asyncio.run(spool.list("deliver"))] == [good]
    assert vsl_queue(spool, "release", newer).returncode == 0
    assert asyncio.run(spool.locate(newer)) == "deliver"
    result = vsl_queue(spool, "move", "0123456789ab-0123456789ab", "hold")
    assert result.returncode == 1 and "no message" in result.stdout


LONG = "older-" + "x" * 70  # a quarantine name an older vSL allowed (over 64 characters)


def spool_with_older_quarantine(tmp_path) -> tuple[Spool, str]:
    """A message in quarantine/LONG, as an older vSL left it."""
    spool = Spool(tmp_path / "queue")
    msg_id = asyncio.run(spool.put(Envelope("a@example.test"), b"kept", "hold"))
    older = spool.root / "quarantine" / LONG
    older.mkdir(mode=0o700)
    for suffix in (".eml", ".json"):
        os.replace(spool.root / "hold" / f"{msg_id}{suffix}", older / f"{msg_id}{suffix}")
    (spool.root / "quarantine" / ".hidden").mkdir(mode=0o700)  # never a queue, whatever made it
    return spool, msg_id


def test_an_older_quarantine_is_listed_and_can_be_emptied(tmp_path):
    spool, msg_id = spool_with_older_quarantine(tmp_path)
    assert f"quarantine/{LONG}" in spool.queues() and "quarantine/.hidden" not in spool.queues()
    assert asyncio.run(spool.locate(msg_id)) == f"quarantine/{LONG}"
    assert [e.id for e in asyncio.run(spool.list(f"quarantine/{LONG}"))] == [msg_id]
    result = vsl_queue(spool, "list")
    assert f"{msg_id}  quarantine/{LONG}" in result.stdout
    assert f"quarantine/{LONG}: name longer than 64 characters" in result.stderr
    result = vsl_queue(spool, "move", msg_id, "hold")
    assert result.returncode == 0, result.stdout
    assert asyncio.run(spool.locate(msg_id)) == "hold"
    assert asyncio.run(spool.message(msg_id)) == b"kept"


def test_nothing_new_goes_into_an_older_quarantine(tmp_path):
    spool, msg_id = spool_with_older_quarantine(tmp_path)
    result = vsl_queue(spool, "move", msg_id, f"quarantine/{LONG}x")
    assert result.returncode == 1 and "unknown queue" in result.stdout
    asyncio.run(spool.move(msg_id, "hold"))
    for target in (f"quarantine/{LONG}", "quarantine/.hidden", "quarantine/..", "quarantine/a/b"):
        with pytest.raises(QueueError, match="unknown queue"):
            asyncio.run(spool.move(msg_id, target))
        with pytest.raises(QueueError, match="unknown queue"):
            asyncio.run(spool.put(Envelope(""), b"x", target))
    assert asyncio.run(spool.locate(msg_id)) == "hold"
    for name in ("quarantine/.hidden", "quarantine/..", "quarantine/../hold"):
        with pytest.raises(QueueError, match="unknown queue"):
            asyncio.run(spool.list(name))


def test_an_older_quarantine_is_reported_at_start(tmp_path, caplog):
    spool, msg_id = spool_with_older_quarantine(tmp_path)
    asyncio.run(recover_queue(spool))
    assert f"quarantine/{LONG}: name longer than 64 characters" in caplog.text
    assert "quarantine/.hidden: not a quarantine name" in caplog.text
    # recovery keeps it where it is
    assert asyncio.run(spool.locate(msg_id)) == f"quarantine/{LONG}"
