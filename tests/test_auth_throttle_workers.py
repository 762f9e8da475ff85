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
        assert_lockout_logged_under_its_session(vsl.log.read_text())
        first.close()
        second.close()
    finally:
        vsl.stop()


def assert_lockout_logged_under_its_session(log: str) -> None:
    """The service logs the lockout under the id of the session whose failure started it
    (docs/observability.md: every line about a session carries it)."""
    [line] = [line for line in log.splitlines()
              if "unknown[127.0.0.1]: too many failed logins" in line]
    session = re.search(r"session=([0-9a-f]{12})", line)
    assert session, line
    assert log.count(f"session={session[1]}") > 1  # the worker's lines of that session


def test_a_stopped_service_stalls_no_session_and_refuses_the_login(tmp_path):
    vsl, port = serve_two(tmp_path, "connections_per_ip = 50\n", auth_section(tmp_path))
    try:
        with connect(vsl, port, 0) as login, connect(vsl, port, 0) as other:
            for raw in (login, other):
                assert raw.cmd("EHLO c.test")[0] == 250
            assert guess(login) == 535  # the first login starts the service
            assert wait_for(lambda: service_pids(vsl), timeout=10)
            [service] = service_pids(vsl)
            os.kill(service, signal.SIGSTOP)
            try:
                assert_worker_not_stalled(login, other)
            finally:
                os.kill(service, signal.SIGCONT)
    finally:
        vsl.stop()


def assert_worker_not_stalled(login, other) -> None:
    """``login`` asks for AUTH while the service is stopped: ``other``, a session of the
    same worker, is answered at once, and the login is refused at the deadline."""
    asked_at = time.monotonic()
    login.send(GUESS + "\r\n")
    for _ in range(5):
        assert other.cmd("NOOP")[0] == 250
    assert time.monotonic() - asked_at < BEGIN_DEADLINE / 2
    assert login.reply(timeout=BEGIN_DEADLINE + 5)[0] == LOCKED
    assert time.monotonic() - asked_at < BEGIN_DEADLINE + 2


def test_a_server_that_offers_no_auth_runs_no_service(tmp_path):
    vsl, port = serve_two(tmp_path, "connections_per_ip = 50\n")
    try:
        with connect(vsl, port, 0) as raw:
            ehlo = raw.cmd("EHLO c.test")
            assert ehlo[0] == 250 and b"AUTH" not in ehlo[1]
            assert guess(raw) != 535  # not offered: no login begins
        assert not wait_for(lambda: service_pids(vsl), timeout=0.5)
    finally:
        vsl.stop()
