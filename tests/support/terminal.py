"""Running a command whose standard output is a terminal (a pseudo-terminal), as an
operator's shell would."""
from __future__ import annotations

import os
import pty
import subprocess


def on_terminal(command: list) -> str:
    """What ``command`` writes to its standard output when that is a terminal (a pty)."""
    leader, follower = pty.openpty()
    try:
        with subprocess.Popen(command, stdout=follower, stderr=subprocess.PIPE) as proc:
            os.close(follower)
            chunks = []
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the terminal's other end is closed
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        os.close(leader)
    return b"".join(chunks).decode().replace("\r\n", "\n")
