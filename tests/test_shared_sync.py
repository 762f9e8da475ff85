"""The spool's group commit shared between processes (server/shared_sync.py), and the
writeback errors every process writing the spool must see (server/files.py)."""
from __future__ import annotations

import asyncio
import errno
import os
import signal
import threading
import time

import pytest

from vsl.server import files, shared_sync
from vsl.server.config import Config
from vsl.server.envelope import Envelope
from vsl.server.queue import Spool
from vsl.server.queue_backend import QueueError
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
    for _ in range(2):  # all open their roots, then note the doubts: none is counted later
        for spool in (leader, second, third):
            spool.before_writes()
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


class Errseq:
    """A stand-in for syncfs reporting writeback errors as Linux does since 5.8: to each
    descriptor once; a path (a descriptor opened afresh) hears of one only while no one
    has seen it. Descriptors are taken as opened before the first error."""

    def __init__(self):
        self.errors, self.seen, self.cursors, self.calls = 0, False, {}, 0

    def fail_writeback(self) -> None:
        self.errors, self.seen = self.errors + 1, False

    def __call__(self, target) -> None:
        self.calls += 1
        if isinstance(target, int):
            reported = self.cursors.get(target, 0) < self.errors
            self.cursors[target] = self.errors
        else:
            reported = self.errors and not self.seen
        if reported:
            self.seen = True
            raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_a_failed_sync_fails_the_writers_it_covered_even_after_a_later_one(tmp_path,
                                                                           monkeypatch):
    errseq = Errseq()
    monkeypatch.setattr(shared_sync, "sync_file_system", errseq)
    leader, waiter = SharedSync(tmp_path), SharedSync(tmp_path)
    for writer in (leader, waiter):
        writer.before_writes()
    needed = waiter.after_writes()  # the waiter wrote: the leader's sync covers it
    errseq.fail_writeback()  # and the writeback of its pages fails
    with pytest.raises(OSError, match="Input/output error"):
        leader.sync()
    leader.before_writes()
    leader.sync()  # the leader saw the error: its next sync succeeds, past the waiter's
    with pytest.raises(OSError, match="Input/output error"):
        waiter.wait(needed)
    waiter.before_writes()
    waiter.sync()  # each process sees the error once
    assert errseq.calls == 4


def test_a_sync_on_a_descriptor_opened_later_covers_no_earlier_writer(tmp_path,
                                                                      monkeypatch):
    errseq = Errseq()
    monkeypatch.setattr(shared_sync, "sync_file_system", errseq)
    writer = SharedSync(tmp_path)
    writer.before_writes()
    needed = writer.after_writes()
    errseq.fail_writeback()
    with pytest.raises(OSError):
        errseq(str(tmp_path))  # an outsider's syncfs sees the error first
    late = SharedSync(tmp_path)  # a worker started after it: its descriptor misses it
    errseq.cursors[late._files()[2]] = errseq.errors
    late.sync()
    with pytest.raises(OSError, match="Input/output error"):
        writer.wait(needed)


def put_in_thread(spool: Spool, outcomes: list) -> threading.Thread:
    """A put by ``spool`` on a loop of its own, as another process would make it."""
    def put():
        try:
            outcomes.append(asyncio.run(spool.put(Envelope(""), b"x")))
        except QueueError as err:
            outcomes.append(err)
    thread = threading.Thread(target=put)
    thread.start()
    return thread


def test_spools_on_one_root_share_their_syncs(tmp_path, monkeypatch):
    spools = [Spool(tmp_path, shared_sync=True) for _ in range(3)]
    for spool in spools:  # workers that wrote before: each one's descriptors are open
        asyncio.run(spool.put(Envelope(""), b"x"))
    gate = Gate()
    monkeypatch.setattr(shared_sync, "sync_file_system", gate)
    asked = threading.Semaphore(0)
    after_writes = SharedSync.after_writes

    def noted_after_writes(self) -> int:
        needed = after_writes(self)
        asked.release()
        return needed
    monkeypatch.setattr(SharedSync, "after_writes", noted_after_writes)
    outcomes: list = []
    threads = [put_in_thread(spools[0], outcomes)]
    assert gate.entered.wait(10)  # the first one's sync runs: the others write meanwhile
    threads += [put_in_thread(spool, outcomes) for spool in spools[1:]]
    for _ in range(3):  # the first's, then the others' generations, read while it runs
        assert asked.acquire(timeout=10)
    gate.open.set()
    for thread in threads:
        thread.join(10)
    assert len(set(outcomes)) == 3 and not any(isinstance(o, QueueError) for o in outcomes)
    assert gate.calls < 6  # one sync covered the two that wrote during the first
    for spool in spools:
        asyncio.run(spool.close())


def test_a_put_covered_by_a_failed_sync_fails(tmp_path, monkeypatch):
    errseq = Errseq()
    monkeypatch.setattr(shared_sync, "sync_file_system", errseq)
    first, second = Spool(tmp_path, shared_sync=True), Spool(tmp_path, shared_sync=True)
    for spool in (first, second):
        asyncio.run(spool.put(Envelope(""), b"x"))  # each keeps its descriptor from here
    errseq.fail_writeback()
    for spool in (first, second):  # each process sees the error once: both fail
        with pytest.raises(QueueError, match="Input/output error"):
            asyncio.run(spool.put(Envelope(""), b"x"))
    asyncio.run(first.put(Envelope(""), b"x"))
    for spool in (first, second):
        asyncio.run(spool.close())


def test_one_process_sees_an_error_someone_else_saw_first(tmp_path, monkeypatch):
    errseq = Errseq()
    monkeypatch.setattr(files, "sync_file_system", errseq)
    spool = Spool(tmp_path)
    asyncio.run(spool.put(Envelope(""), b"x"))  # it keeps its descriptor from here
    errseq.fail_writeback()
    with pytest.raises(OSError):
        errseq(str(tmp_path))  # `sync -f` run by an operator
    with pytest.raises(QueueError, match="Input/output error"):
        asyncio.run(spool.put(Envelope(""), b"x"))
    asyncio.run(spool.close())


def test_a_spool_shares_its_syncs_only_with_several_workers(tmp_path):
    for workers, shared in ((1, False), (2, True)):
        spool = Spool.of(Config(queue_dir=tmp_path / str(workers), workers=workers))
        assert isinstance(spool._committer.file_system, SharedSync) is shared
