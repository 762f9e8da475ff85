"""A worker ignores SIGINT: Ctrl-C in a terminal reaches every process of the group, and
the parent alone acts on it (it stops the workers with SIGTERM), so no worker dies
before its parent asks it to."""
from __future__ import annotations

import os
import signal
import time

from tests.support.workers import connect, serve_two, worker_pids


def test_a_worker_outlives_a_sigint(tmp_path):
    vsl, port = serve_two(tmp_path, "connections_per_ip = 3\n")
    try:
        pid = worker_pids(vsl)[1]
        os.kill(pid, signal.SIGINT)
        time.sleep(0.5)
        assert worker_pids(vsl)[1] == pid
        with connect(vsl, port, 1) as raw:
            assert raw.greeting[0] == 220
        assert "was killed" not in vsl.log.read_text()
    finally:
        vsl.stop()
