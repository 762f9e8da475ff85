"""server/open_files.py: a server raises its soft open-files limit to the hard one, and
warns when even that is too low for limits.connections. Each case runs in a child
process, whose limits it may change without touching the test run's."""
from __future__ import annotations

import subprocess
import sys

CHILD = """
import logging, resource, sys
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from vsl.server.open_files import raise_open_files_limit
resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))
print(raise_open_files_limit({connections}), resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def run(soft: int, hard: int, connections: int) -> subprocess.CompletedProcess:
    code = CHILD.format(soft=soft, hard=hard, connections=connections)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)


def test_the_soft_limit_is_raised_to_the_hard_one_without_a_warning():
    done = run(soft=256, hard=2048, connections=1000)
    assert done.stdout.split("\n")[0] == "2048 (2048, 2048)"
    assert "WARNING" not in done.stderr


def test_a_hard_limit_under_the_connections_needs_is_named_in_a_warning():
    done = run(soft=256, hard=512, connections=1000)
    assert done.stdout.startswith("512 (512, 512)")
    assert "RLIMIT_NOFILE is 512, under the 1100 that limits.connections (1000)" \
        in done.stderr
    assert "LimitNOFILE=" in done.stderr
