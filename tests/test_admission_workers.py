"""The connection limits hold across the workers of one `vsl serve` (two real worker
processes on one port, server/shared_counters.py): whichever worker accepts a connection,
the limits count every worker's; a worker killed with open connections gives them back
when it is started again."""
from __future__ import annotations

import os
import signal

from tests.support.smtp_tools import wait_for
from tests.support.workers import connect, serve_two, worker_pids

TOO_MANY = 421


def admitted(vsl, port: int, index: int, source: str | None = None) -> bool:
    """Whether worker ``index`` takes a new connection (closed again)."""
    with connect(vsl, port, index, source) as raw:
        return raw.greeting[0] == 220


def test_the_limits_count_the_connections_of_every_worker(tmp_path):
    vsl, port = serve_two(tmp_path, "connections = 4\nconnections_per_ip = 3\n")
    try:
        held = [connect(vsl, port, index) for index in (0, 1, 0)]
        assert all(raw.greeting[0] == 220 for raw in held)
        # the 4th from one address, whichever worker accepts it
        assert not admitted(vsl, port, 0) and not admitted(vsl, port, 1)
        other = connect(vsl, port, 1, source="127.0.0.2")  # the 4th of all
        assert other.greeting[0] == 220
        assert not admitted(vsl, port, 0, "127.0.0.3")
        assert not admitted(vsl, port, 1, "127.0.0.3")
        held.pop().close()
        assert wait_for(lambda: admitted(vsl, port, 1), timeout=5)
        for raw in (*held, other):
            raw.close()
    finally:
        vsl.stop()


def test_a_killed_worker_gives_its_connections_back(tmp_path):
    vsl, port = serve_two(tmp_path, "connections_per_ip = 3\n")
    try:
        held = [connect(vsl, port, index) for index in (0, 1, 1)]
        assert all(raw.greeting[0] == 220 for raw in held)
        assert not admitted(vsl, port, 0)
        victim = worker_pids(vsl)[1]
        os.kill(victim, signal.SIGKILL)
        assert held[1].closed(2) and held[2].closed(2)
        assert wait_for(lambda: worker_pids(vsl)[1] != victim and
                        f"vsl.server[{worker_pids(vsl)[1]}]: started: " in vsl.log.read_text(),
                        timeout=10)
        again = [connect(vsl, port, index) for index in (1, 0)]  # the two that died
        assert all(raw.greeting[0] == 220 for raw in again)
        assert not admitted(vsl, port, 0) and not admitted(vsl, port, 1)
        for raw in (held[0], *again):
            raw.close()
    finally:
        vsl.stop()
