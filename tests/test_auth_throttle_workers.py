"""The AUTH throttle holds across the workers of one `vsl serve` (two real worker
processes on one port, server/throttle_service.py): failures counted by either worker
lock the address out in both; a stopped service stalls no session; a server that offers
no AUTH runs no service."""
from __future__ import annotations

import base64
import os
import re
import signal
import time

from vsl.server.throttle_service import BEGIN_DEADLINE
from tests.support.smtp_tools import users_file, wait_for
from tests.support.workers import connect, serve_two

LOCKED = 454
GUESS = "AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong").decode()
_SERVICE_STARTED = re.compile(r"AUTH throttle started \(pid (\d+)\)")


def auth_section(tmp_path, failure_limit: int = 5) -> str:
    return f"""\
[auth]
users_file = "{users_file(tmp_path, alice='secret')}"
allow_plaintext = true
failure_limit = {failure_limit}
"""


def guess(raw) -> int:
    return raw.cmd(GUESS)[0]


def service_pids(vsl) -> list[int]:
    return [int(pid) for pid in _SERVICE_STARTED.findall(vsl.log.read_text())]


def test_failures_on_two_workers_lock_the_address_out(tmp_path):
    vsl, port = serve_two(tmp_path, "connections_per_ip = 50\n",
                          auth_section(tmp_path, failure_limit=3))
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


def test_a_stopped_service_stalls_no_session_and_refuses_the_login(tmp_path):
    vsl, port = serve_two(tmp_path, "connections_per_ip = 50\n", auth_section(tmp_path))
    try:
        login, other = connect(vsl, port, 0), connect(vsl, port, 0)
        for raw in (login, other):
            assert raw.cmd("EHLO c.test")[0] == 250
        assert guess(login) == 535  # the first login starts the service
        assert wait_for(lambda: service_pids(vsl), timeout=10)
        [service] = service_pids(vsl)
        os.kill(service, signal.SIGSTOP)
        try:
            asked_at = time.monotonic()
            login.send(GUESS + "\r\n")
            for _ in range(5):  # the same worker answers its other session at once
                assert other.cmd("NOOP")[0] == 250
            assert time.monotonic() - asked_at < BEGIN_DEADLINE / 2
            assert login.reply(timeout=BEGIN_DEADLINE + 5)[0] == LOCKED
            assert time.monotonic() - asked_at < BEGIN_DEADLINE + 2
        finally:
            os.kill(service, signal.SIGCONT)
        login.close()
        other.close()
    finally:
        vsl.stop()


def test_a_server_that_offers_no_auth_runs_no_service(tmp_path):
    vsl, port = serve_two(tmp_path, "connections_per_ip = 50\n")
    try:
        raw = connect(vsl, port, 0)
        code, text = raw.cmd("EHLO c.test")
        assert code == 250 and b"AUTH" not in text
        assert guess(raw) != 535  # not offered: no login begins
        raw.close()
        time.sleep(0.5)
        assert service_pids(vsl) == []
    finally:
        vsl.stop()
