"""The spool's group commit shared between processes (server/shared_sync.py)."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from vsl.server import files, shared_sync
from vsl.server.shared_sync import SharedSync

pytestmark = pytest.mark.skipif(not files.HAS_SYNCFS, reason="syncfs(2) is missing")


class Gate:
    """A stand-in for syncfs that counts its calls and holds the first until opened."""

    def __init__(self):
        self.calls, self.entered, self.open = 0, threading.Event(), threading.Event()

    def __call__(self, _path) -> None:
        self.calls += 1
        self.entered.set()
        assert self.open.wait(10)


def test_one_sync_covers_every_process_that_wrote_before_it_began(tmp_path, monkeypatch):
    gate = Gate()
    monkeypatch.setattr(shared_sync, "sync_file_system", gate)
    leader, second, third = (SharedSync(tmp_path) for _ in range(3))  # own locks each
    first = threading.Thread(target=leader.wait, args=(leader.after_writes(),))
    first.start()
    assert gate.entered.wait(10)
    # these two wrote while the leader's sync ran: it may not cover them
    needed = [second.after_writes(), third.after_writes()]
    waiters = [threading.Thread(target=s.wait, args=(n,))
               for s, n in zip((second, third), needed)]
    for waiter in waiters:
        waiter.start()
    gate.open.set()
    for thread in (first, *waiters):
        thread.join(10)
        assert not thread.is_alive()
    assert gate.calls == 2  # the leader's, then one for both waiters
    assert second.syncs + third.syncs == 1


def test_a_write_already_covered_needs_no_sync_of_its_own(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(shared_sync, "sync_file_system", calls.append)
    one, other = SharedSync(tmp_path), SharedSync(tmp_path)
    needed = [one.after_writes(), other.after_writes()]  # both wrote before any sync
    one.wait(needed[0])
    other.wait(needed[1])
    assert len(calls) == 1 and (one.syncs, other.syncs) == (1, 0)


def test_each_wait_after_new_writes_syncs_again(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(shared_sync, "sync_file_system", calls.append)
    spool = SharedSync(tmp_path)
    for _ in range(3):
        spool.wait(spool.after_writes())
    assert len(calls) == 3


def test_a_leader_killed_during_its_sync_stalls_nobody(tmp_path):
    pid = os.fork()
    if pid == 0:  # the leader: its "sync" never ends
        shared_sync.sync_file_system = lambda _path: time.sleep(60)
        leader = SharedSync(tmp_path)
        leader.wait(leader.after_writes())
        os._exit(0)
    try:
        waiter = SharedSync(tmp_path)
        deadline = time.monotonic() + 10
        while waiter.after_writes() < 2:  # the leader has begun generation 1
            assert time.monotonic() < deadline
            time.sleep(0.01)
        needed = waiter.after_writes()
        done = threading.Thread(target=waiter.wait, args=(needed,))
        done.start()
        time.sleep(0.2)
        assert done.is_alive()  # waits for the leader's lock
        os.kill(pid, signal.SIGKILL)
        done.join(10)
        assert not done.is_alive() and waiter.syncs == 1  # the generation after it
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)


def test_counters_start_again_from_a_lost_state_file_with_extra_syncs_only(tmp_path,
                                                                          monkeypatch):
    calls = []
    monkeypatch.setattr(shared_sync, "sync_file_system", calls.append)
    spool = SharedSync(tmp_path)
    for _ in range(3):
        spool.wait(spool.after_writes())
    needed = spool.after_writes()
    spool.close()
    (tmp_path / "sync.state").unlink()
    spool.wait(needed)  # completed reads as 0 now: it syncs rather than trust it
    assert len(calls) == 4
