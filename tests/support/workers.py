"""Two real worker processes of one `vsl serve`, and a way to choose which of them
accepts a connection (the other is stopped meanwhile)."""
from __future__ import annotations

import os
import re
import signal
from contextlib import contextmanager
from pathlib import Path

from tests.support.crash import VslProcess, write_config
from tests.support.mailsink import free_port
from tests.support.smtp_tools import Raw, wait_for

_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def worker_pids_in(log: str) -> dict[int, int]:
    """Worker index -> its latest pid, from the parent's log lines in ``log``."""
    return {int(index): int(pid) for index, pid in _STARTED.findall(log)}


def worker_pids(vsl: VslProcess) -> dict[int, int]:
    """Worker index -> its latest pid, from the log of ``vsl``."""
    return worker_pids_in(vsl.log.read_text())


def serve_two(tmp_path: Path, limits: str, sections: str = "") -> tuple[VslProcess, int]:
    """Two workers with ``limits`` (the [limits] lines) and ``sections``, both serving:
    the process and its port."""
    port = free_port()
    config = write_config(tmp_path, port, "mx.workers.test", sections, workers=2,
                          limits=limits)
    vsl = VslProcess(config, port, tmp_path)
    vsl.start()
    assert wait_for(lambda: len(worker_pids(vsl)) == 2, timeout=10)
    assert wait_for(lambda: all(f"vsl.server[{pid}]: started:" in vsl.log.read_text()
                                for pid in worker_pids(vsl).values()), timeout=10)  # serving
    return vsl, port


@contextmanager
def only(vsl: VslProcess, index: int):
    """While in the block, worker ``index`` alone accepts (the other one is stopped)."""
    other = worker_pids(vsl)[1 - index]
    os.kill(other, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(other, signal.SIGCONT)


def connect(vsl: VslProcess, port: int, index: int, source: str | None = None) -> Raw:
    """A connection worker ``index`` accepted (its greeting read)."""
    with only(vsl, index):
        return Raw(port, source=source)
