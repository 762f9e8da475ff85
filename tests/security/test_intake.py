"""The SMTP intake against hostile clients: header bombs in DATA, AUTH timing that tells
which users exist, password guessing across connections, NOOP keep-alives. Each test
runs the attack over a real SMTP connection to a server started here."""
from __future__ import annotations

import base64
import statistics
import time
from dataclasses import replace

from server.config import AuthConfig, SmtpLimits
from tests.support.servers import config_for, running
from tests.support.smtp_tools import Raw, users_file


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def auth_config(tmp_path, **auth) -> AuthConfig:
    return AuthConfig(users_file=users_file(tmp_path, alice="secret"), allow_plaintext=True,
                      **auth)


# ---- AUTH timing: unknown users cost what known users cost ----------------------------

def timed_auth(raw: Raw, user: str) -> float:
    start = time.perf_counter()
    code, _ = raw.cmd(f"AUTH PLAIN {plain(user, 'wrong')}")
    assert code == 535
    return time.perf_counter() - start


def test_a_failed_auth_takes_as_long_for_an_unknown_user(tmp_path):
    config = config_for(tmp_path, auth=auth_config(tmp_path),
                        limits=replace(SmtpLimits(), errors=1000))
    with running(config) as server, Raw(server) as raw:
        raw.cmd("EHLO c.test")
        known, unknown = [], []
        for _ in range(25):  # interleaved, so a load change hits both alike
            known.append(timed_auth(raw, "alice"))
            unknown.append(timed_auth(raw, "nobody"))
    ratio = statistics.median(known) / statistics.median(unknown)
    assert 0.7 <= ratio <= 1.4, (ratio, statistics.median(known), statistics.median(unknown))
