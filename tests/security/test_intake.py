"""The SMTP intake against hostile clients: header bombs in DATA, AUTH timing that tells
which users exist, password guessing across connections, NOOP keep-alives. Each test
runs the attack over a real SMTP connection to a server started here."""
from __future__ import annotations

import asyncio
import base64
import gc
import resource
import statistics
import threading
import time
from dataclasses import replace

import pytest

from vsl.server.auth_throttle import AuthThrottle, client_key
from vsl.server.config import AuthConfig, SmtpLimits
from vsl.server.stages import StageRunner
from tests.support.servers import config_for, running
from tests.support.smtp_tools import Raw, spool_files, users_file


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
    config = config_for(tmp_path, auth=auth_config(tmp_path, failure_limit=1000),
                        limits=replace(SmtpLimits(), errors=1000))
    with running(config) as server, Raw(server) as raw:
        raw.cmd("EHLO c.test")
        known, unknown = [], []
        for _ in range(25):  # interleaved, so a load change hits both alike
            known.append(timed_auth(raw, "alice"))
            unknown.append(timed_auth(raw, "nobody"))
    ratio = statistics.median(known) / statistics.median(unknown)
    assert 0.7 <= ratio <= 1.4, (ratio, statistics.median(known), statistics.median(unknown))


# ---- password guessing across connections ------------------------------------------------

def login(server, user: str, password: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
    """AUTH PLAIN on a new connection (from ``source``): the reply."""
    with Raw(server, source=source) as raw:
        raw.cmd("EHLO c.test")
        return raw.cmd(f"AUTH PLAIN {plain(user, password)}")


LOCKED = (454, b"4.7.0 Error: too many failed logins, try again later")


def test_guesses_across_connections_are_throttled_per_ip_and_per_user(tmp_path, caplog):
    auth = auth_config(tmp_path, failure_limit=3, failure_window=60.0, lockout=1.0,
                       lockout_max=4.0)
    with running(config_for(tmp_path, auth=auth)) as server:
        for guess in ("a", "b", "c"):  # one connection each, as a guesser reconnects
            assert login(server, "alice", guess)[0] == 535
        assert login(server, "alice", "secret") == LOCKED  # the right one, but too late
        assert login(server, "alice", "secret", source="127.0.0.2") == LOCKED  # the user too
        time.sleep(1.2)
        assert login(server, "alice", "secret")[0] == 235  # the lock expired
        for user in ("bob", "carol", "dave"):  # guessing users from one address
            assert login(server, user, "x", source="127.0.0.3")[0] == 535
        assert login(server, "alice", "secret", source="127.0.0.3") == LOCKED
        assert login(server, "alice", "secret", source="127.0.0.4")[0] == 235
        time.sleep(1.2)
        for user in ("erin", "frank", "grace"):  # locked again: for twice as long
            assert login(server, user, "x", source="127.0.0.3")[0] == 535
        time.sleep(1.2)
        assert login(server, "alice", "secret", source="127.0.0.3") == LOCKED
        time.sleep(1.0)
        assert login(server, "alice", "secret", source="127.0.0.3")[0] == 235
    assert "unknown[127.0.0.1]: SASL PLAIN authentication failed: authentication failure, " \
        "sasl_username=alice" in caplog.text
    assert "sasl_username=alice: too many failed logins, AUTH refused for 1 s" in caplog.text
    assert "unknown[127.0.0.3]: too many failed logins, AUTH refused for 2 s" in caplog.text


def test_a_flood_of_new_names_does_not_push_a_lockout_out(tmp_path):
    """Each failure from a new address as a new user adds two keys to the throttle: a flood
    of them used to evict the victim's lockout, and the next guess was let in."""
    auth = auth_config(tmp_path, throttle_entries=20)
    with running(config_for(tmp_path, auth=auth)) as server:
        for i in range(1, 6):
            assert login(server, "alice", "wrong", source=f"127.0.5.{i}")[0] == 535
        assert login(server, "alice", "wrong", source="127.0.5.6") == LOCKED
        for i in range(12):
            assert login(server, f"junk{i}", "x", source=f"127.0.6.{i + 1}")[0] == 535
        assert login(server, "alice", "secret", source="127.0.5.51") == LOCKED


def test_guessing_one_user_from_many_addresses_does_not_lock_its_owner_out(tmp_path, caplog):
    auth = auth_config(tmp_path, failure_limit=3)
    with running(config_for(tmp_path, auth=auth)) as server:
        assert login(server, "alice", "secret", source="127.0.7.1")[0] == 235  # her address
        for i in range(1, 4):  # a guesser spread over addresses, one guess each
            assert login(server, "alice", "wrong", source=f"127.0.8.{i}")[0] == 535
        assert login(server, "alice", "secret", source="127.0.8.4") == LOCKED  # still throttled
        assert login(server, "alice", "secret", source="127.0.7.1")[0] == 235  # the owner
        for _ in range(3):  # guesses from her address lock that address, as before
            assert login(server, "alice", "wrong", source="127.0.7.1")[0] == 535
        assert login(server, "alice", "secret", source="127.0.7.1") == LOCKED
    assert "sasl_username=alice: too many failed logins, AUTH refused for 600 s" \
        in caplog.text


def test_the_owners_logins_do_not_reset_the_guesses_at_her_name():
    throttle = AuthThrottle(AuthConfig(failure_limit=3))
    throttle.failed("192.0.2.1", "alice")
    throttle.failed("192.0.2.2", "alice")
    throttle.succeeded("198.51.100.1", "alice")  # else a guesser gets 2 tries per login of hers
    assert throttle.failed("192.0.2.3", "alice") == [("sasl_username=alice", 600.0)]


def test_parallel_guesses_get_no_more_password_checks_than_the_limit(tmp_path):
    """15 AUTH at once from one address (failure_limit 3) all passed the lockout check
    before the first failed: 15 password checks. Each pending check now counts."""
    auth = auth_config(tmp_path, failure_limit=3)
    with running(config_for(tmp_path, auth=auth)) as server:
        checks = slow_password_checks(server, 0.3)  # the others arrive meanwhile
        replies = parallel_logins(server, 15, "alice", "wrong")
        assert login(server, "alice", "secret") == LOCKED
    assert len(checks) == 3
    assert sorted(replies) == [454] * 12 + [535] * 3


def slow_password_checks(server, seconds: float) -> list[str]:
    """Make each password check of ``server`` take ``seconds``; returns the list of the
    users checked, filled as the checks run."""
    checks, check = [], server.services.authenticator.check_password

    async def slow(user: str, password: str) -> bool:
        checks.append(user)
        await asyncio.sleep(seconds)
        return await check(user, password)

    server.services.authenticator.check_password = slow
    return checks


def parallel_logins(server, count: int, user: str, password: str) -> list[int]:
    """The reply codes to ``count`` AUTH PLAIN sent at once on as many connections."""
    clients = [Raw(server) for _ in range(count)]
    try:
        for raw in clients:
            assert raw.cmd("EHLO c.test")[0] == 250
        for raw in clients:
            raw.send(f"AUTH PLAIN {plain(user, password)}\r\n")
        return [raw.reply(timeout=30)[0] for raw in clients]
    finally:
        for raw in clients:
            raw.close()


def test_a_full_throttle_still_stops_guesses_from_a_known_address(tmp_path):
    """With the table of lockouts full, no new lockout starts, and a user's known address
    was exempt from the full table's refusal: guesses from there were unlimited."""
    auth = auth_config(tmp_path, failure_limit=2, throttle_entries=2)
    with running(config_for(tmp_path, auth=auth)) as server:
        assert login(server, "alice", "secret", source="127.0.9.1")[0] == 235  # known
        for _ in range(2):  # two lockouts (127.0.9.2 and bob) fill the table
            assert login(server, "bob", "x", source="127.0.9.2")[0] == 535
        guesses = [login(server, "alice", guess, source="127.0.9.1") for guess in "abcde"]
    assert [code for code, _ in guesses[:2]] == [535, 535]
    assert guesses[2:] == [LOCKED] * 3


def test_ipv6_clients_are_throttled_by_their_64():
    """An IPv6 client picks any of the 2**64 addresses of its network: one guess from each
    was never locked. An IPv4 address mapped into IPv6 is its IPv4 address."""
    throttle = AuthThrottle(AuthConfig(failure_limit=3))
    assert throttle.failed("2001:db8:1:2::1", "u1") == []
    assert throttle.failed("2001:db8:1:2:aaaa::7", "u2") == []
    assert throttle.failed("2001:db8:1:2:ffff:ffff:ffff:fffe", "u3") == \
        [("unknown[2001:db8:1:2::/64]", 600.0)]
    assert throttle.locked("2001:db8:1:2::99", "u4")
    assert not throttle.locked("2001:db8:1:3::1", "u4")
    assert client_key("::ffff:192.0.2.1") == client_key("192.0.2.1") == "unknown[192.0.2.1]"
    assert client_key("?") == "unknown[?]"


class Clock:
    """A monotonic clock the test moves (the throttle and the session's idle check read it)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_throttle_full_of_lockouts_refuses_new_clients_until_one_expires(caplog):
    clock = Clock()
    throttle = AuthThrottle(AuthConfig(failure_limit=1, lockout=10, lockout_max=10,
                                       throttle_entries=3, known_addresses=2), clock=clock)
    throttle.succeeded("192.0.2.50", "carol")
    for i in range(100):  # 200 lockouts for a table of 3
        throttle.failed(f"192.0.2.{i}", f"user{i}")
    assert throttle.locked("192.0.2.0", "user0")  # the first are kept, and the table is full:
    assert throttle.locked("192.0.2.200", "nobody")  # a new client waits
    assert throttle.locked("192.0.2.200", "carol")  # a known user from a new address too
    assert not throttle.locked("192.0.2.50", "carol")  # but not from her own address
    assert caplog.text.count("the AUTH throttle is full") == 1
    clock.now += 10
    assert not throttle.locked("192.0.2.0", "user0") and not throttle.locked("192.0.2.200", "x")


def test_the_throttle_remembers_a_bounded_number_of_keys_and_good_addresses():
    clock = Clock()
    throttle = AuthThrottle(AuthConfig(failure_limit=2, throttle_entries=3,
                                       known_addresses=2), clock=clock)
    throttle.failed("192.0.2.1", "alice")
    for i in range(10):  # pushes alice's first failure out
        throttle.failed(f"192.0.2.{i + 10}", f"user{i}")
    assert throttle.failed("192.0.2.2", "alice") == []
    for i in range(3):  # she logged in from three addresses: the first is forgotten
        throttle.succeeded(f"198.51.100.{i}", "alice")
    assert throttle.failed("192.0.2.3", "alice") == [("sasl_username=alice", 600.0)]
    assert throttle.locked("198.51.100.0", "alice")
    assert not throttle.locked("198.51.100.2", "alice")


# ---- DATA: a header of 5 million fields -------------------------------------------------

HEADER_BOMB = b"Subject: bomb\r\n" + b"a:b\r\n" * 5_000_000 + b"\r\nbody\r\n"  # 25 MB


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def send_message(server, data: bytes, replies: list) -> None:
    """One transaction over a raw connection; its reply to the data goes to ``replies``."""
    with Raw(server, timeout=120) as raw:
        for command in ("EHLO c.test", "MAIL FROM:<a@example.org>", "RCPT TO:<b@mx.test>",
                        "DATA"):
            raw.cmd(command)
        raw.send(data + b".\r\n")
        replies.append(raw.reply(timeout=120))


def probe(server) -> float:
    """How long a new client waits for its greeting and a NOOP."""
    start = time.perf_counter()
    with Raw(server, timeout=60, greet=False) as raw:
        assert raw.reply(timeout=60)[0] == 220
        assert raw.cmd("NOOP", timeout=60)[0] == 250
    return time.perf_counter() - start


def test_a_header_bomb_is_refused_quickly_while_others_are_served(tmp_path):
    peak_before = peak_rss_mb()
    with running(config_for(tmp_path)) as server:
        replies: list = []
        sender = threading.Thread(target=send_message, args=(server, HEADER_BOMB, replies))
        start = time.monotonic()
        sender.start()
        waits = []
        while sender.is_alive():
            waits.append(probe(server))
        sender.join()
        took = time.monotonic() - start
        assert replies == [(552, b"5.3.4 Error: too many header fields")]
        assert spool_files(server) == []
    assert took < 10, took  # it took 25 s, and the other clients waited 15 s of it
    assert max(waits) < 2, waits
    assert peak_rss_mb() - peak_before < 400  # it was 1.1 GB more


def header_of(count: int, name: str = "X-Field") -> bytes:
    return b"".join(b"%s: %d\r\n" % (name.encode(), i) for i in range(count))


def test_header_limits_count_our_received_field_and_hold_exactly(tmp_path):
    """1000 fields and 50 Received: fields by default, the one vSL adds included."""
    with running(config_for(tmp_path)) as server:
        for data, reply in [
                (header_of(999) + b"\r\nbody\r\n", 250),
                (header_of(1000) + b"\r\nbody\r\n",
                 (552, b"5.3.4 Error: too many header fields")),
                (header_of(49, "Received") + b"\r\nbody\r\n", 250),
                (header_of(50, "Received") + b"\r\nbody\r\n",
                 (554, b"5.4.0 Error: too many hops"))]:
            replies: list = []
            send_message(server, data, replies)
            assert replies[0][0] == reply if reply == 250 else replies == [reply]


# ---- keep-alives: NOOP and its kin --------------------------------------------------------

TOO_MANY_ERRORS = (421, b"4.7.0 mx.test Error: too many errors")


def test_a_client_that_only_sends_noop_is_dropped(tmp_path, caplog):
    """Postfix's smtpd_junk_command_limit: past 100 NOOP, RSET, VRFY, HELO or EHLO
    commands, each counts as an error, so the error limit (10) ends the connection."""
    with running(config_for(tmp_path)) as server, Raw(server) as raw:
        assert raw.cmd("EHLO c.test")[0] == 250
        for _ in range(108):
            assert raw.cmd("NOOP") == (250, b"2.0.0 Ok")
        assert raw.cmd("NOOP") == (250, b"2.0.0 Ok")  # the 110th command
        assert raw.reply() == TOO_MANY_ERRORS
        assert raw.closed()
    assert "10 errors, disconnecting" in caplog.text


def test_an_accepted_message_starts_the_count_again(tmp_path):
    config = config_for(tmp_path, limits=replace(SmtpLimits(), junk_commands=3, errors=2))
    with running(config) as server, Raw(server) as raw:
        for command in ("EHLO c.test", "RSET", "NOOP", "MAIL FROM:<a@example.org>",
                        "RCPT TO:<b@mx.test>", "DATA"):
            assert raw.cmd(command)[0] in (250, 354)
        assert raw.cmd("Subject: x\r\n\r\nbody\r\n.")[0] == 250
        for command in ("RSET", "VRFY <b@mx.test>", "HELO c.test"):  # free again
            assert raw.cmd(command)[0] in (250, 252)
        assert raw.cmd("NOOP")[0] == 250  # one error
        assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250  # still served
        assert raw.cmd("RSET")[0] == 250  # the second error
        assert raw.reply() == TOO_MANY_ERRORS


def test_help_is_an_unknown_command_and_an_error(tmp_path):
    """HELP moves no mail: as in Postfix, which has no HELP, each one is an error."""
    config = config_for(tmp_path, limits=replace(SmtpLimits(), errors=2))
    with running(config) as server, Raw(server) as raw:
        for _ in range(2):
            assert raw.cmd("HELP") == (500, b"5.5.2 Error: command not recognized")
        assert raw.reply() == TOO_MANY_ERRORS
        assert raw.closed()


IDLE_TIMEOUT = (421, b"4.4.2 mx.test Error: timeout exceeded")


@pytest.fixture
def session_clock(monkeypatch) -> Clock:
    """The clock the sessions' idle checks read, moved by the test."""
    clock = Clock()
    monkeypatch.setattr("vsl.server.protocol.monotonic", clock)
    return clock


def test_a_keep_alive_session_ends_after_idle_session(tmp_path, session_clock, caplog):
    """A NOOP every 299 s kept a slot for 110 command timeouts (about 9 h): a session
    that moved no mail for limits.idle_session is closed at its next junk command."""
    caplog.set_level("INFO")
    config = config_for(tmp_path, limits=replace(SmtpLimits(), idle_session=60))
    with running(config) as server, Raw(server) as raw:
        assert raw.cmd("EHLO c.test")[0] == 250
        session_clock.now += 59
        assert raw.cmd("NOOP")[0] == 250
        session_clock.now += 1  # 60 s since the connection began
        assert raw.cmd("NOOP") == IDLE_TIMEOUT
        assert raw.closed()
    assert "no mail moved for 60 s (limits.idle_session), disconnected" in caplog.text


def test_only_an_accepted_message_or_auth_restarts_the_idle_clock(tmp_path, session_clock):
    """An accepted message or AUTH restarts it; MAIL, RCPT and refused commands do not."""
    config = config_for(tmp_path, auth=auth_config(tmp_path),
                        limits=replace(SmtpLimits(), idle_session=60))
    with running(config) as server, Raw(server) as raw:
        assert raw.cmd("EHLO c.test")[0] == 250
        for steps in ([("MAIL FROM:<a@example.org>", 250), ("RCPT TO:<b@mx.test>", 250),
                       ("DATA", 354), ("Subject: x\r\n\r\nbody\r\n.", 250)],
                      [(f"AUTH PLAIN {plain('alice', 'secret')}", 235)]):
            session_clock.now += 59
            assert raw.cmd("NOOP")[0] == 250
            for command, code in steps:
                assert raw.cmd(command)[0] == code
        session_clock.now += 30
        assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250  # no progress yet
        assert raw.cmd("RCPT TO:<b@mx.test>")[0] == 250
        session_clock.now += 29
        assert raw.cmd("MAIL FROM:<bad address>")[0] == 503  # refused: no progress
        session_clock.now += 1
        assert raw.cmd("RSET") == IDLE_TIMEOUT


def test_a_mail_rset_loop_does_not_hold_a_slot_past_idle_session(tmp_path, session_clock):
    """MAIL FROM then RSET every 0.8 s (idle_session 1 s, command_timeout 2 s) was served
    for ever: each accepted MAIL restarted the idle clock, and MAIL was never checked.
    Now the first command after idle_session, whichever it is, ends the session."""
    config = config_for(tmp_path, limits=replace(SmtpLimits(), idle_session=60))
    with running(config) as server, Raw(server) as raw:
        assert raw.cmd("EHLO c.test")[0] == 250
        for _ in range(2):
            session_clock.now += 25
            assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250
            assert raw.cmd("RSET")[0] == 250
        session_clock.now += 10  # 60 s without a message
        assert raw.cmd("MAIL FROM:<a@example.org>") == IDLE_TIMEOUT
        assert raw.closed()


def test_a_session_lasts_at_most_idle_session_plus_a_command_timeout(tmp_path):
    """The reproducer in real time: the README's bound holds."""
    config = config_for(tmp_path, limits=replace(SmtpLimits(), idle_session=1,
                                                 command_timeout=2))
    with running(config) as server, Raw(server) as raw:
        start = time.monotonic()
        raw.cmd("EHLO c.test")
        reply = None
        while time.monotonic() - start < 6.4 and reply != IDLE_TIMEOUT:
            time.sleep(0.4)
            reply = raw.cmd("MAIL FROM:<a@example.org>")
            if reply[0] == 250:
                time.sleep(0.4)
                reply = raw.cmd("RSET")
        took = time.monotonic() - start
        assert reply == IDLE_TIMEOUT and raw.closed()
    assert took < 1 + 2 + 0.5, took


def test_a_refused_data_after_idle_session_ends_the_session(tmp_path, session_clock):
    """DATA is the one long command: past idle_session, the session ends right after it
    unless its message was accepted (so DATA adds at most one data_timeout)."""
    config = config_for(tmp_path, limits=replace(SmtpLimits(), idle_session=60,
                                                 header_fields=2))
    with running(config) as server, Raw(server) as raw:
        for command in ("EHLO c.test", "MAIL FROM:<a@example.org>", "RCPT TO:<b@mx.test>",
                        "DATA"):
            assert raw.cmd(command)[0] in (250, 354)
        session_clock.now += 60  # while the client sends its message
        assert raw.cmd(header_of(5) + b"\r\nbody\r\n.") == \
            (552, b"5.3.4 Error: too many header fields")
        assert raw.reply() == IDLE_TIMEOUT
        assert raw.closed()


def test_a_command_refused_as_idle_leaves_no_coroutine_behind(tmp_path, session_clock, recwarn):
    """An EHLO refused for idleness made its coroutine and never ran it (RuntimeWarning:
    coroutine 'SMTP.smtp_EHLO' was never awaited)."""
    config = config_for(tmp_path, limits=replace(SmtpLimits(), idle_session=60))
    with running(config) as server, Raw(server) as raw:
        session_clock.now += 60
        assert raw.cmd("EHLO c.test") == IDLE_TIMEOUT
        assert raw.closed()
    gc.collect()
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


# ---- a refused session: after a 554 greeting ---------------------------------------------

DENY_CONNECT = 'fn on_connect(ctx) { status::deny("554 5.7.1 go away") }'
BAD_SEQUENCE = (503, b"5.5.1 Error: bad sequence of commands")


def test_a_refused_session_answers_20_commands(tmp_path):
    """After a 554 greeting, every command but QUIT got 503 until the error limit: with
    limits.errors at 1000, 1000 commands. Now 20 (postscreen_command_count_limit)."""
    limits = replace(SmtpLimits(), errors=1000)
    with running(config_for(tmp_path, DENY_CONNECT, limits=limits)) as server, \
            Raw(server) as raw:
        assert raw.greeting == (554, b"5.7.1 go away")
        for _ in range(20):
            assert raw.cmd("NOOP") == BAD_SEQUENCE
        assert raw.reply() == (421, b"4.7.0 Too many commands, closing the connection")
        assert raw.closed()


def test_a_refused_session_ends_after_a_short_time(tmp_path, monkeypatch):
    """A refused client sending a line every 0.4 s kept its slot as long as the error limit
    allowed (each line restarted the command timeout: up to 10 x 300 s with the defaults).
    Now a refused session lasts REFUSED_SESSION_TIME (30 s; 1 s here) in all."""
    monkeypatch.setattr("vsl.server.protocol.REFUSED_SESSION_TIME", 1.0, raising=False)
    limits = replace(SmtpLimits(), command_timeout=2, errors=1000)
    with running(config_for(tmp_path, DENY_CONNECT, limits=limits)) as server, \
            Raw(server) as raw:
        start, reply = time.monotonic(), None
        while reply is None and time.monotonic() - start < 5:
            try:
                reply = raw.reply(timeout=0.4)  # nothing comes unasked but the end
            except TimeoutError:
                assert raw.cmd("NOOP") == BAD_SEQUENCE
        took = time.monotonic() - start
        assert reply == (421, b"4.4.2 mx.test Error: timeout exceeded")
        assert raw.closed()
    assert took < 3, took


# ---- the log: client text is escaped in every field -------------------------------------

def test_a_bidi_sender_is_escaped_in_the_reject_line(tmp_path, caplog):
    """The sender of a refused recipient is client text too: a right-to-left override in
    it (allowed under SMTPUTF8) must not reorder the operator's log line."""
    caplog.set_level("INFO")
    with running(config_for(tmp_path)) as server, Raw(server) as raw:
        assert raw.cmd("EHLO c.test")[0] == 250
        assert raw.cmd("MAIL FROM:<evil\u202emoc.elgoog@example.org> SMTPUTF8")[0] == 250
        assert raw.cmd("RCPT TO:<victim@elsewhere.test>")[0] == 554
    [line] = [r.getMessage() for r in caplog.records if "reject: RCPT" in r.getMessage()]
    assert "from=<evil\\u202emoc.elgoog@example.org>" in line
    assert "\u202e" not in line


def test_parallel_correct_logins_from_one_address_wait_and_succeed(tmp_path):
    """Pending logins counted against the limit refused the 6th of 12 correct logins at
    once from one address (a connection pool, a NAT) with 454: they now wait their turn."""
    with running(config_for(tmp_path, auth=auth_config(tmp_path))) as server:
        slow_password_checks(server, 0.2)  # an on_auth with a DNS look-up, say
        replies = parallel_logins(server, 12, "alice", "secret")
    assert replies == [235] * 12


def test_the_servers_own_time_is_not_the_clients_idling(tmp_path, monkeypatch, session_clock):
    """Slow checks in on_rcpt_to (a DNS time-out each) made a 5-recipient transaction pass
    idle_session and cut it off at RCPT 4: the time a command takes is not idling."""
    config = config_for(tmp_path, limits=replace(SmtpLimits(), idle_session=60))
    with running(config) as server, Raw(server) as raw:
        run = StageRunner.run

        async def slow(self, ctx, stage):
            session_clock.now += 25  # the server's own checks
            return await run(self, ctx, stage)

        monkeypatch.setattr(StageRunner, "run", slow)
        assert raw.cmd("EHLO c.test")[0] == 250
        assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250
        for i in range(5):
            assert raw.cmd(f"RCPT TO:<b{i}@mx.test>")[0] == 250
        assert raw.cmd("DATA")[0] == 354
        assert raw.cmd(b"Subject: x\r\n\r\nbody\r\n.")[0] == 250


def test_commands_pipelined_behind_an_idle_timeout_log_nothing(tmp_path, session_clock, caplog):
    """Each command buffered behind the one refused for idleness logged its own 'no mail
    moved' line (10,000 lines for 60 KB of NOOP): one line, one reply, the close."""
    caplog.set_level("INFO")
    config = config_for(tmp_path, limits=replace(SmtpLimits(), idle_session=60))
    with running(config) as server, Raw(server) as raw:
        assert raw.cmd("EHLO c.test")[0] == 250
        session_clock.now += 61
        raw.send("NOOP\r\n" * 2000)
        assert raw.reply() == IDLE_TIMEOUT
        assert raw.closed()
    assert caplog.text.count("no mail moved") == 1
