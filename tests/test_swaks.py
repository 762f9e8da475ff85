"""swaks, a real-world SMTP client, against the server: delivery, a refused recipient,
STARTTLS, implicit TLS, AUTH PLAIN, pipelining.

Without swaks the tests are skipped, except under CI=true, where they fail."""
from __future__ import annotations

import asyncio

import re
import subprocess
from pathlib import Path

import pytest

from vsl.server.config import AuthConfig, Listener
from tests.support.servers import config_for, running
from tests.support.smtp_tools import all_messages, tls_setup, users_file
from tests.support.tools import require, require_perl_module

# swaks exit codes (man swaks, EXIT CODES)
OK, NO_RCPT_ACCEPTED, AUTH_ERROR = 0, 24, 28


def swaks_binary(tls: bool = False) -> str:
    """swaks; with tls, also the Perl module its --tls options need (only a Recommends)."""
    binary = require("swaks", "swaks")
    if tls:
        require_perl_module("Net::SSLeay", "libnet-ssleay-perl")
    return binary


def swaks(binary, port, *args, to="bob@example.test"):
    result = subprocess.run(
        [binary, "--server", "127.0.0.1", "--port", str(port), "--helo", "swaks.client.test",
         "--from", "alice@example.org", "--to", to, "--timeout", "10",
         "--header", "Subject: from swaks", "--body", "hello from swaks", *args],
        capture_output=True, text=True, timeout=30)
    return result.returncode, result.stdout + result.stderr


def queued_ids(output: str) -> list[str]:
    return re.findall(r"queued as ([0-9a-f]{12}-[0-9a-f]{12})", output)


def test_plain_delivery(tmp_path):
    swaks_bin = swaks_binary()
    with running(config_for(tmp_path)) as server:
        code, output = swaks(swaks_bin, server.port())
        assert code == OK, output
        assert "<-  220 mx.test ESMTP vSL" in output
        assert "-> RCPT TO:<bob@example.test>" in output
        [msg_id] = queued_ids(output)
        entry = asyncio.run(server.spool.get(msg_id))
        assert entry.queue == "deliver"
        assert entry.envelope.sender == "alice@example.org"
        assert entry.envelope.helo == "swaks.client.test"
        data = asyncio.run(server.spool.message(msg_id))
        assert b"Subject: from swaks" in data and b"hello from swaks" in data
        assert b"with ESMTP\r\n" in data


def test_refused_recipient(tmp_path):
    swaks_bin = swaks_binary()
    policy = """
fn on_rcpt_to(ctx) {
    if ctx.rcpt.local_part == "nobody" { return status::deny("550 5.1.1 no such user here"); }
    status::next()
}
"""
    with running(config_for(tmp_path, policy)) as server:
        code, output = swaks(swaks_bin, server.port(), to="victim@elsewhere.test")
        assert code == NO_RCPT_ACCEPTED, output
        assert "<** 554 5.7.1 Relay access denied" in output
        code, output = swaks(swaks_bin, server.port(), to="nobody@example.test")
        assert code == NO_RCPT_ACCEPTED, output
        assert "<** 550 5.1.1 no such user here" in output
        assert all_messages(server) == []


def test_starttls(tmp_path):
    swaks_bin = swaks_binary(tls=True)
    tls_config, _, _ = tls_setup(tmp_path)
    config = config_for(tmp_path, tls=tls_config,
                        listen=(Listener("127.0.0.1", 0, "submission"),))
    with running(config) as server:
        code, output = swaks(swaks_bin, server.port("submission"), "--tls")
        assert code == OK, output
        assert "-> STARTTLS" in output and "<-  220 " in output
        assert "TLS started" in output
        [msg_id] = queued_ids(output)
        assert asyncio.run(server.spool.get(msg_id)).envelope.tls is True
        assert b"with ESMTPS\r\n" in asyncio.run(server.spool.message(msg_id))


def test_implicit_tls(tmp_path):
    swaks_bin = swaks_binary(tls=True)
    tls_config, _, _ = tls_setup(tmp_path)
    config = config_for(tmp_path, tls=tls_config, listen=(Listener("127.0.0.1", 0, "smtps"),))
    with running(config) as server:
        code, output = swaks(swaks_bin, server.port("smtps"), "--tls-on-connect")
        assert code == OK, output
        [msg_id] = queued_ids(output)
        assert b"with ESMTPS\r\n" in asyncio.run(server.spool.message(msg_id))


def test_auth_plain(tmp_path):
    swaks_bin = swaks_binary(tls=True)
    tls_config, _, _ = tls_setup(tmp_path)
    config = config_for(tmp_path, tls=tls_config,
                        auth=AuthConfig(users_file=users_file(tmp_path, alice="s3cret")),
                        listen=(Listener("127.0.0.1", 0, "submission"),))
    with running(config) as server:
        port = server.port("submission")
        auth = ["--tls", "--auth", "PLAIN", "--auth-user", "alice"]
        code, output = swaks(swaks_bin, port, *auth, "--auth-password", "wrong",
                             to="far@elsewhere.test")
        assert code == AUTH_ERROR, output
        assert re.search(r"^<~?\*+ *535 5\.7\.8 ", output, re.M), output
        code, output = swaks(swaks_bin, port, *auth, "--auth-password", "s3cret",
                             to="far@elsewhere.test")
        assert code == OK, output
        assert "<~  235 2.7.0 Authentication successful" in output
        [msg_id] = queued_ids(output)
        entry = asyncio.run(server.spool.get(msg_id))
        assert entry.envelope.authenticated_as == "alice"
        assert b"with ESMTPSA\r\n" in asyncio.run(server.spool.message(msg_id))
        assert len(all_messages(server)) == 1


def test_pipelining(tmp_path):
    swaks_bin = swaks_binary()
    with running(config_for(tmp_path)) as server:
        code, output = swaks(swaks_bin, server.port(), "--pipeline",
                             to="bob@example.test,carol@mx.test")
        assert code == OK, output
        [msg_id] = queued_ids(output)
        assert [r.address for r in asyncio.run(server.spool.get(msg_id)).envelope.recipients] == \
            ["bob@example.test", "carol@mx.test"]


def test_a_missing_perl_module_skips_or_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"No::Such\S* is not installed .*libno-perl"):
        require_perl_module("No::Such", "libno-perl")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires it"):
        require_perl_module("No::Such", "libno-perl")


def test_ci_installs_what_swaks_tls_needs():
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "perl -MNet::SSLeay -e1" in ci and "libnet-ssleay-perl" in ci
