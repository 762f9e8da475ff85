"""SIGTERM (what systemd and `kill` send) stops `vsl serve` cleanly, as Ctrl-C does: each
server logs `stopping` and `stopped`, the sessions it cuts their `disconnect`, and the
process exits 0. With workers, the parent kills a worker that has not stopped
STOP_GRACE seconds after the stop began."""
from __future__ import annotations

import os
import signal
import time

import pytest

from tests.support.crash import VslProcess, write_config
from tests.support.mailsink import free_port
from tests.support.smtp_tools import Raw
from tests.support.workers import serve_two, worker_pids
from vsl.server.workers import STOP_GRACE


def test_sigterm_stops_one_process_cleanly(tmp_path):
    port = free_port()
    vsl = VslProcess(write_config(tmp_path, port, "mx.stop.test", ""), port, tmp_path)
    vsl.start()
    try:
        raw = Raw(port)
        assert raw.cmd("EHLO c.test")[0] == 250
        assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250  # a transaction under way
        vsl.proc.send_signal(signal.SIGTERM)
        assert vsl.proc.wait(10) == 0
        log = vsl.log.read_text()
        assert log.index(": stopping\n") < log.index(": stopped\n"), log
        assert "disconnect from unknown[127.0.0.1] ehlo=1 mail=1" in log
        raw.close()
    finally:
        vsl.stop()


@pytest.fixture
def two_workers(tmp_path):
    """A `vsl serve` of two workers, both serving: (process, port, worker index -> pid)."""
    vsl, port = serve_two(tmp_path, "connections_per_ip = 3\n")
    yield vsl, port, worker_pids(vsl)
    vsl.stop()


def test_a_stop_as_systemd_does_it_is_clean_too(two_workers):
    """systemd's stop sends SIGTERM to every process of the unit: each worker gets one from
    it and one from the parent, and the second must not cut the first one's stop."""
    vsl, port, pids = two_workers
    sessions = [Raw(port) for _ in range(2)]
    for pid in (vsl.proc.pid, *pids.values(), *pids.values()):
        os.kill(pid, signal.SIGTERM)
    assert vsl.proc.wait(10) == 0
    log = vsl.log.read_text()
    assert all(f"vsl.server[{pid}]: stopped" in log for pid in pids.values()), log
    assert log.count("SIGTERM: stopping 2 worker(s)") == 1
    for raw in sessions:
        raw.close()


def test_sigterm_stops_the_workers_cleanly_and_kills_one_that_hangs(two_workers):
    vsl, _, pids = two_workers
    os.kill(pids[1], signal.SIGSTOP)  # worker 1 hangs: it cannot act on SIGTERM
    began = time.monotonic()
    vsl.proc.send_signal(signal.SIGTERM)
    assert vsl.proc.wait(STOP_GRACE + 10) == 0
    took = time.monotonic() - began
    assert STOP_GRACE - 1 < took < STOP_GRACE + 5
    log = vsl.log.read_text()
    assert f"vsl.server[{pids[0]}]: stopped" in log
    assert f"vsl.server[{pids[1]}]: stopped" not in log
    assert f"still running {STOP_GRACE:.0f} s after the stop began: killing them" in log
    for pid in pids.values():
        try:
            os.kill(pid, 0)
            raise AssertionError(f"worker {pid} still runs")
        except ProcessLookupError:
            pass
