"""limit:: end to end: real `vsl serve` processes counting in one shared [state] (one
SQLite file, with workers; one private redis-server). The limit is global: the N+1th
message across both servers is refused. Redis stopped while serving: limits fail open
and mail still flows; Redis back: the servers count there again."""
from __future__ import annotations

import smtplib

from tests.support.crash import VslProcess, write_config
from tests.support.mailsink import free_port
from tests.support.redis import PrivateRedis

LIMIT = 6
POLICY = f"""
fn on_mail_from(ctx) {{
    let r = limit::hit("all-senders", #{{ rate: "{LIMIT}/1h" }});
    log("info", `limit: ${{r}} remaining ${{r.remaining}}`);
    if !r.allowed {{ return status::deny(`450 4.7.1 Rate limited, retry in ${{r.retry_in}} s`); }}
    status::next()
}}
fn on_rcpt_to(ctx) {{ status::accept() }}
"""


def start_server(directory, state_section: str, workers: int = 1) -> VslProcess:
    directory.mkdir()
    port = free_port()
    config = write_config(directory, port, f"mx.{directory.name}.test",
                          "[delivery]\nenabled = false\n\n" + state_section, workers=workers)
    (directory / "scripts" / "main.vsl").write_text(POLICY)
    server = VslProcess(config, port, directory)
    server.start()
    return server


def send(server: VslProcess) -> int:
    """One message; the reply code to MAIL FROM (250 when it went through to the end)."""
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test",
                      timeout=10) as smtp:
        smtp.ehlo()
        code = smtp.mail("sender@clients.test")[0]
        if code != 250:
            return code
        assert smtp.rcpt("rcpt@remote.test")[0] == 250
        assert smtp.data(b"Subject: hi\r\n\r\nhello\r\n")[0] == 250
        return code


def alternating(servers: list[VslProcess], count: int) -> list[int]:
    return [send(servers[i % len(servers)]) for i in range(count)]


def test_two_servers_with_workers_share_one_sqlite_file(tmp_path):
    state = f'[state]\npath = "{tmp_path / "shared.sqlite"}"\n'
    servers = []
    try:
        servers.append(start_server(tmp_path / "a", state, workers=2))
        servers.append(start_server(tmp_path / "b", state))
        assert alternating(servers, LIMIT + 2) == [250] * LIMIT + [450, 450]
    finally:
        for server in servers:
            server.stop()


def test_two_servers_share_one_redis_and_fail_open_without_it(tmp_path):
    with PrivateRedis() as redis:
        state = f'[state]\nbackend = "redis"\nurl = "{redis.url}"\ntimeout = 0.5\n'
        servers = []
        try:
            servers.append(start_server(tmp_path / "a", state))
            servers.append(start_server(tmp_path / "b", state))
            assert alternating(servers, LIMIT + 2) == [250] * LIMIT + [450, 450]
            redis.stop()
            assert alternating(servers, 4) == [250] * 4  # temperror: allowed
            log = (tmp_path / "a" / "serve-1.log").read_text()
            assert "limit: temperror" in log
            redis.start()
            # both reconnect by themselves; the new Redis counts from 0 (nothing was saved)
            assert alternating(servers, LIMIT + 1) == [250] * LIMIT + [450]
        finally:
            for server in servers:
                server.stop()
