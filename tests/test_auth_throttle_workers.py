"""The AUTH throttle holds across the workers of one `vsl serve` (two real worker
processes on one port, server/throttle_service.py): failures counted by either worker
lock the address out in both."""
from __future__ import annotations

import base64

from tests.support.smtp_tools import users_file
from tests.support.workers import connect, serve_two

LOCKED = 454


def guess(raw) -> int:
    return raw.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong").decode())[0]


def test_failures_on_two_workers_lock_the_address_out(tmp_path):
    vsl, port = serve_two(tmp_path, "connections_per_ip = 50\n", f"""\
[auth]
users_file = "{users_file(tmp_path, alice='secret')}"
allow_plaintext = true
failure_limit = 3
""")
    try:
        first, second = connect(vsl, port, 0), connect(vsl, port, 1)
        for raw in (first, second):
            assert raw.cmd("EHLO c.test")[0] == 250
        # counted per worker, the second would still get its password checked
        assert [guess(first), guess(second), guess(first)] == [535] * 3
        assert [guess(second), guess(first)] == [LOCKED] * 2
        assert "unknown[127.0.0.1]: too many failed logins" in vsl.log.read_text()
        first.close()
        second.close()
    finally:
        vsl.stop()
