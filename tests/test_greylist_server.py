"""greylist:: end to end: a real `vsl serve` on loopback (its state in the default
`[state]`, an SQLite file beside the spool) and smtplib as the client, with delays of a
second so that no test waits long (tests/test_greylist.py checks every rule with a fake
clock)."""
from __future__ import annotations

import asyncio

import time

import pytest

from tests.support.servers import config_for, running
from tests.support.smtp_tools import client

POLICY = """
fn on_rcpt_to(ctx) {
    let g = greylist::check(ctx, #{ delay: 1, retry_window: 30, expire: 1.5,
                                    auto_whitelist: %d, auto_whitelist_interval: 0.2,
                                    whitelist: ["postmaster@"] });
    if g.value == "greylisted" {
        return status::deny(`451 4.7.1 Greylisted, try again in ${g.retry_in} s`)
    }
    if g.value == "temperror" { return status::deny("451 4.3.0 Try again later") }
    status::next()
}
"""
DELAY = 1.0
EXPIRE = 1.5
INTERVAL = 0.2  # auto_whitelist_interval


@pytest.fixture
def serve(tmp_path):
    def start(auto_whitelist: int = 0):
        return running(config_for(tmp_path, POLICY % auto_whitelist))
    return start


def attempt(server, rcpt: str = "bob@example.test", sender: str = "alice@example.org"):
    """One transaction from its MAIL FROM to its message: the RCPT TO reply, and the
    DATA reply when the recipient was accepted."""
    with client(server) as smtp:
        smtp.ehlo()
        assert smtp.mail(sender)[0] == 250
        code, text = smtp.rcpt(rcpt)
        if code != 250:
            return code, text.decode()
        assert smtp.data(b"Subject: greylisting\r\n\r\nhello\r\n")[0] == 250
        return code, text.decode()


def test_greylisted_then_passed_after_the_delay_then_expired(serve):
    with serve() as server:
        first = time.monotonic()
        code, text = attempt(server)
        assert (code, text) == (451, "4.7.1 Greylisted, try again in 1 s")
        assert attempt(server)[0] == 451  # before the delay
        time.sleep(max(0.0, first + DELAY + 0.1 - time.monotonic()))
        assert attempt(server)[0] == 250
        assert attempt(server)[0] == 250
        passed = time.monotonic()  # the last pass renewed the triplet for EXPIRE
        assert len(asyncio.run(server.spool.list())) == 2
        time.sleep(max(0.0, passed + EXPIRE + 0.1 - time.monotonic()))
        assert attempt(server)[0] == 451  # the triplet expired: greylisted again


def test_the_state_survives_a_restart(serve):
    with serve() as server:
        first = time.monotonic()
        assert attempt(server)[0] == 451
    time.sleep(max(0.0, first + DELAY + 0.1 - time.monotonic()))
    with serve() as server:
        assert attempt(server)[0] == 250


def test_each_recipient_is_its_own_triplet(serve):
    with serve() as server:
        start = time.monotonic()
        assert attempt(server)[0] == 451
        time.sleep(max(0.0, start + DELAY + 0.1 - time.monotonic()))
        assert attempt(server)[0] == 250
        assert attempt(server, rcpt="carol@example.test")[0] == 451
        assert attempt(server, sender="dave@example.org")[0] == 451


def test_the_client_is_whitelisted_after_n_successful_retries(serve):
    with serve(auto_whitelist=2) as server:
        start = time.monotonic()
        assert attempt(server, rcpt="one@example.test")[0] == 451
        assert attempt(server, rcpt="two@example.test")[0] == 451
        time.sleep(max(0.0, start + DELAY + 0.1 - time.monotonic()))
        assert attempt(server, rcpt="one@example.test")[0] == 250
        counted = time.monotonic()
        assert attempt(server, rcpt="brand-new@example.test")[0] == 451  # one retry only
        time.sleep(max(0.0, counted + INTERVAL + 0.1 - time.monotonic()))
        assert attempt(server, rcpt="two@example.test")[0] == 250  # the next interval
        assert attempt(server, rcpt="never-seen@example.test")[0] == 250  # whitelisted


def test_whitelisted_recipients_are_never_greylisted(serve):
    with serve() as server:
        assert attempt(server, rcpt="postmaster@example.test")[0] == 250
