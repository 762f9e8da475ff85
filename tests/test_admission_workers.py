"""The connection limits hold across the workers of one `vsl serve` (two real worker
processes on one port, server/shared_counters.py): whichever worker accepts a connection,
the limits count every worker's; a worker killed with open connections gives them back
when it is started again."""
from __future__ import annotations

import os
import re
import signal

from tests.support.crash import VslProcess, write_config
from tests.support.mailsink import free_port
from tests.support.smtp_tools import Raw, wait_for

_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")
_CONNECT = re.compile(r"vsl\.smtp\[(\d+)\]: connect from unknown\[127\.0\.0\.1\]")


def serve(tmp_path, connections: int, per_ip: int) -> tuple[VslProcess, int]:
    """Two workers with these limits, started."""
    port = free_port()
    config = write_config(tmp_path, port, "mx.admission.test", "", workers=2)
    config.write_text(config.read_text().replace(
        "connections_per_ip = 50", f"connections = {connections}\n"
                                   f"connections_per_ip = {per_ip}"))
    vsl = VslProcess(config, port, tmp_path)
    vsl.start()
    assert wait_for(lambda: len(_STARTED.findall(vsl.log.read_text())) == 2, timeout=10)
    return vsl, port


def refused(port: int, source: str | None = None) -> bool:
    with Raw(port, source=source) as raw:
        return raw.greeting[0] == 421


def test_the_limits_count_the_connections_of_every_worker(tmp_path):
    vsl, port = serve(tmp_path, connections=4, per_ip=3)
    try:
        held = [Raw(port) for _ in range(3)]
        assert all(raw.greeting[0] == 220 for raw in held)
        assert all(refused(port) for _ in range(6))  # whichever worker accepts them
        other = Raw(port, source="127.0.0.2")  # another address: the 4th of all
        assert other.greeting[0] == 220
        assert refused(port, source="127.0.0.3")  # connections = 4
        held.pop().close()
        assert wait_for(lambda: not refused(port), timeout=5)
        for raw in (*held, other):
            raw.close()
    finally:
        vsl.stop()


def test_a_killed_worker_gives_its_connections_back(tmp_path):
    vsl, port = serve(tmp_path, connections=10, per_ip=3)
    try:
        held = [Raw(port)]
        assert wait_for(lambda: _CONNECT.search(vsl.log.read_text()), timeout=5)
        victim = int(_CONNECT.search(vsl.log.read_text())[1])  # serves held[0]
        held += [Raw(port), Raw(port)]
        assert all(raw.greeting[0] == 220 for raw in held) and refused(port)
        os.kill(victim, signal.SIGKILL)
        closed = [raw for raw in held if raw.closed(2)]
        assert held[0] in closed
        assert wait_for(lambda: len(_STARTED.findall(vsl.log.read_text())) == 3, timeout=5)
        again = [Raw(port) for _ in closed]  # exactly the connections that died
        assert all(raw.greeting[0] == 220 for raw in again) and refused(port)
        for raw in (*held, *again):
            raw.close()
    finally:
        vsl.stop()
