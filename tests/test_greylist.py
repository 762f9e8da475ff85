"""greylist:: against a MemoryStore with a fake clock: every rule of postgrey's greylisting
(tests/test_greylist_server.py runs it through a real `vsl serve`)."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tests.support.contexts import session
from vsl.errors import ScriptError
from vsl.limits import Limits
from vsl.stdlib import greylist, new_engine
from vsl.stdlib.ctx import Stage
from vsl.stdlib.support.mail import Mailbox
from vsl.stdlib.support.state import MAX_KEY_BYTES, MemoryStore, StateStore, StateUnavailable
from vsl.stdlib.support.state.redis_store import RedisStore
from vsl.stdlib.support.state.sqlite_store import SqliteStore, connect

SCRIPT = """
fn check(ctx, options) {
    let g = greylist::check(ctx, options);
    [g.value, g.retry_in, `${g}`, g == g.value]
}
"""
DAY = 86400


class Unavailable(StateStore):
    """A store that never answers (a Redis server that is down)."""

    async def incr(self, key, *args, **kwargs):
        raise StateUnavailable("down")

    get = set = delete = incr


class Yielding(MemoryStore):
    """A MemoryStore whose operations yield to the event loop, as the stores on a thread
    or the network do, and whose clock moves ``tick`` seconds at each."""

    def __init__(self, tick: float = 0.0):
        super().__init__(clock=lambda: self.now)
        self.now, self.tick = 1_000_000.0, tick

    async def _yield(self):
        await asyncio.sleep(0)
        self.now += self.tick

    async def incr(self, key, amount, ttl):
        await self._yield()
        return await super().incr(key, amount, ttl)

    async def get(self, key):
        await self._yield()
        return await super().get(key)

    async def set(self, key, value, ttl, *, only_if_absent=False):
        await self._yield()
        return await super().set(key, value, ttl, only_if_absent=only_if_absent)


class Writes(MemoryStore):
    """A MemoryStore that counts the writes (set and incr) it is asked for."""

    writes = 0

    async def incr(self, key, amount, ttl):
        self.writes += 1
        return await super().incr(key, amount, ttl)

    async def set(self, key, value, ttl, *, only_if_absent=False):
        self.writes += 1
        return await super().set(key, value, ttl, only_if_absent=only_if_absent)


class Greylist:
    """One engine and its store, whose clock ``later()`` moves; ``check(...)`` runs
    greylist::check for one recipient."""

    def __init__(self, store: StateStore | None = None, limits: Limits | None = None,
                 store_class: type[MemoryStore] = MemoryStore):
        self.now = 1_000_000.0
        self.store = store or store_class(clock=lambda: self.now)
        self.script = new_engine(limits, state=self.store).load_source(SCRIPT, "greylist.vsl")

    def check(self, ip="192.0.2.1", sender="alice@a.example", rcpt="bob@b.example",
              stage=Stage.RCPT_TO, **options) -> list:
        ctx = session(stage)
        ctx.client_ip = ip
        if stage >= Stage.MAIL_FROM:
            ctx.begin_transaction(Mailbox.parse(sender))
        if stage >= Stage.RCPT_TO:
            ctx.add_recipient(Mailbox.parse(rcpt))
        return self.script.call("check", ctx, options)

    def value(self, **kwargs) -> str:
        return self.check(**kwargs)[0]

    def later(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def grey() -> Greylist:
    return Greylist()


def test_first_attempt_is_greylisted_until_the_delay(grey):
    assert grey.check(delay=300) == ["greylisted", 300, "greylisted", True]
    grey.later(100)
    assert grey.check(delay=300) == ["greylisted", 200, "greylisted", True]
    grey.later(199.5)
    assert grey.check(delay=300)[:2] == ["greylisted", 1]
    grey.later(0.5)
    assert grey.check(delay=300) == ["pass", 0, "pass", True]
    grey.later(10)
    assert grey.value(delay=300) == "pass"


def test_defaults_are_postgreys(grey):
    assert grey.check()[:2] == ["greylisted", 300]
    grey.later(2 * DAY - 1)
    assert grey.value() == "pass"
    grey.later(35 * DAY - 1)
    assert grey.value() == "pass"  # renewed by the pass before
    grey.later(35 * DAY)
    assert grey.value() == "greylisted"


def test_a_retry_after_the_retry_window_starts_over(grey):
    assert grey.value(delay=60, retry_window=3600) == "greylisted"
    grey.later(3600)
    assert grey.check(delay=60, retry_window=3600)[:2] == ["greylisted", 60]
    grey.later(60)
    assert grey.value(delay=60, retry_window=3600) == "pass"


def test_a_passed_triplet_expires_unless_it_passes_again(grey):
    options = {"delay": 60, "expire": 1000}
    grey.check(**options)
    grey.later(60)
    assert grey.value(**options) == "pass"
    grey.later(999)
    assert grey.value(**options) == "pass"  # renews it for 1000 s
    grey.later(999)
    assert grey.value(**options) == "pass"
    grey.later(1000)
    assert grey.value(**options) == "greylisted"


@pytest.mark.parametrize("first, second, same", [
    (dict(ip="192.0.2.1"), dict(ip="192.0.2.250"), True),        # one /24
    (dict(ip="192.0.2.1"), dict(ip="192.0.3.1"), False),
    (dict(ip="192.0.2.1"), dict(ip="::ffff:192.0.2.9"), True),    # IPv4-mapped is IPv4
    (dict(ip="2001:db8:1:2::1"), dict(ip="2001:db8:1:2:ffff::9"), True),  # one /64
    (dict(ip="2001:db8:1:2::1"), dict(ip="2001:db8:1:3::1"), False),
    (dict(sender="Alice@A.Example"), dict(sender="alice@a.example"), True),
    (dict(sender="alice@a.example"), dict(sender="carol@a.example"), False),
    (dict(sender=""), dict(sender="<>"), True),                   # the null sender
    (dict(sender=""), dict(sender="alice@a.example"), False),
    (dict(rcpt="bob@b.example"), dict(rcpt="BOB@B.EXAMPLE"), True),
    (dict(rcpt="bob@b.example"), dict(rcpt="dave@b.example"), False),
])
def test_the_triplet(grey, first, second, same):
    grey.check(delay=60, **first)
    grey.later(60)
    assert grey.value(delay=60, **second) == ("pass" if same else "greylisted")


def test_prefix_options(grey):
    grey.check(delay=60, ipv4_prefix=32)
    grey.later(60)
    assert grey.value(delay=60, ipv4_prefix=32, ip="192.0.2.2") == "greylisted"
    grey.check(delay=60, ipv6_prefix=48, ip="2001:db8:1:2::1")
    grey.later(60)
    assert grey.value(delay=60, ipv6_prefix=48, ip="2001:db8:1:99::1") == "pass"


def test_client_sender_key_ignores_the_recipient(grey):
    grey.check(delay=60, key="client_sender")
    grey.later(60)
    assert grey.value(delay=60, key="client_sender", rcpt="dave@d.example") == "pass"
    assert grey.value(delay=60, key="triplet", rcpt="dave@d.example") == "greylisted"


def test_auto_whitelist_after_n_successful_retries_an_interval_apart(grey):
    options = {"delay": 60, "auto_whitelist": 3, "auto_whitelist_interval": 600,
               "expire": 5000}
    for n in range(3):
        grey.check(rcpt=f"r{n}@b.example", **options)
        grey.later(60)
        assert grey.value(rcpt=f"r{n}@b.example", **options) == "pass"
        assert grey.value(rcpt=f"new{n}@b.example", ip="192.0.2.77", **options) == \
            ("whitelisted" if n == 2 else "greylisted")
        grey.later(600)
    assert grey.value(ip="192.0.3.1", rcpt="new@b.example", **options) == "greylisted"
    grey.later(4999 - 600)
    assert grey.value(rcpt="other@b.example", **options) == "whitelisted"  # renews it
    grey.later(4999)
    assert grey.value(rcpt="other@b.example", **options) == "whitelisted"
    grey.later(5000)
    assert grey.value(rcpt="other@b.example", **options) == "greylisted"


@pytest.mark.parametrize("rcpts", [
    [f"u{n}@victim.example" for n in range(5)],
    [f"bob+{n}@victim.example" for n in range(5)],
])
def test_one_message_to_many_recipients_retried_counts_one_retry(grey, rcpts):
    options = {"delay": 300, "auto_whitelist": 5}
    for _ in range(2):  # the first attempt, then its retry after the delay
        assert {grey.value(ip="203.0.113.9", rcpt=rcpt, **options) for rcpt in rcpts} <= \
            {"greylisted", "pass"}
        grey.later(300)
    assert grey.value(ip="203.0.113.200", rcpt="anyone@victim.example", **options) == \
        "greylisted"
    assert grey.store._entries["greylist:retries:203.0.113.0/24"][0] == "1"


def test_the_retries_of_an_interval_count_once_whatever_the_recipients(grey):
    options = {"delay": 60, "auto_whitelist": 2, "auto_whitelist_interval": 3600}
    for rcpt in ("one@b.example", "two@b.example"):
        grey.check(rcpt=rcpt, **options)
    grey.later(60)
    assert grey.value(rcpt="one@b.example", **options) == "pass"
    grey.later(3599 - 60)
    assert grey.value(rcpt="two@b.example", **options) == "pass"  # the same interval
    assert grey.value(rcpt="three@b.example", **options) == "greylisted"
    grey.later(61)
    assert grey.value(rcpt="three@b.example", **options) == "pass"  # the next one: counts
    assert grey.value(rcpt="four@b.example", **options) == "whitelisted"


@pytest.mark.parametrize("tick, interval", [(0.0, 3600), (1.0, 0.5)])
def test_concurrent_retries_of_one_triplet_count_once(tick, interval):
    """Retries seen at once by several tasks of a store whose calls yield: one first pass.
    With the clock ticking past the interval at each call, only the triplet's own
    set-if-absent keeps the count at one."""
    store = Yielding(tick)
    found = greylist.settings({"delay": 60, "auto_whitelist": 5,
                               "auto_whitelist_interval": interval})

    async def retries():
        ctx = session(Stage.RCPT_TO)
        assert (await greylist.greylist(store, ctx, found)).value == "greylisted"
        store.now += 60
        results = await asyncio.gather(*(greylist.greylist(store, ctx, found)
                                         for _ in range(5)))
        return [result.value for result in results], await store.get(
            "greylist:retries:192.0.2.0/24")
    assert asyncio.run(retries()) == (["pass"] * 5, "1")


def test_concurrent_retries_of_one_triplet_count_once_in_sqlite(tmp_path):
    now = [1_000_000.0]
    found = greylist.settings({"delay": 60, "auto_whitelist": 5})

    async def retries():
        store = SqliteStore(tmp_path / "state.sqlite", clock=lambda: now[0])
        try:
            ctx = session(Stage.RCPT_TO)
            await greylist.greylist(store, ctx, found)
            now[0] += 60
            results = await asyncio.gather(*(greylist.greylist(store, ctx, found)
                                             for _ in range(2)))
            return [r.value for r in results], await store.get("greylist:retries:192.0.2.0/24")
        finally:
            await store.close()
    assert asyncio.run(retries()) == (["pass", "pass"], "1")


def test_an_auto_whitelisted_network_is_written_at_most_once_an_hour():
    grey = Greylist(store_class=Writes)
    options = {"delay": 60, "auto_whitelist": 1}
    grey.check(**options)
    grey.later(60)
    assert grey.value(**options) == "pass"
    writes = grey.store.writes
    for n in range(10):
        assert grey.value(rcpt=f"r{n}@b.example", **options) == "whitelisted"
        grey.later(300)  # 3000 s in all
    assert grey.store.writes == writes
    grey.later(600)
    assert grey.value(**options) == "whitelisted"
    assert grey.store.writes == writes + 1  # renewed: an hour since it was whitelisted


def test_a_passed_triplet_is_written_at_most_once_an_hour():
    grey = Greylist(store_class=Writes)
    options = {"delay": 60}
    grey.check(**options)
    grey.later(60)
    assert grey.value(**options) == "pass"
    writes = grey.store.writes
    for _ in range(10):
        assert grey.value(**options) == "pass"  # a read each, no write
        grey.later(300)
    assert grey.store.writes == writes
    grey.later(600)
    assert grey.value(**options) == "pass"
    assert grey.store.writes == writes + 1  # renewed: an hour since it passed


def test_passes_of_a_passed_triplet_are_not_retries(grey):
    options = {"delay": 60, "auto_whitelist": 2}
    grey.check(**options)
    grey.later(60)
    for _ in range(3):
        assert grey.value(**options) == "pass"
    assert grey.value(rcpt="new@b.example", **options) == "greylisted"


def test_auto_whitelist_zero_is_off(grey):
    options = {"delay": 60, "auto_whitelist": 0}
    for n in range(10):
        grey.check(rcpt=f"r{n}@b.example", **options)
        grey.later(60)
        grey.check(rcpt=f"r{n}@b.example", **options)
    assert grey.value(rcpt="new@b.example", **options) == "greylisted"
    assert {key.split(":")[1] for key in grey.store._entries} == {"passed", "seen"}


@pytest.mark.parametrize("whitelist, listed, unlisted", [
    (["192.0.2.0/24"], dict(ip="192.0.2.200"), dict(ip="192.0.3.1")),
    (["192.0.2.7"], dict(ip="192.0.2.7"), dict(ip="192.0.2.8")),
    (["2001:db8::/32"], dict(ip="2001:db8:5::1"), dict(ip="2001:db9::1")),
    (["b.example"], dict(rcpt="x@B.Example"), dict(rcpt="x@notb.example")),
    (["b.example"], dict(rcpt="x@sub.b.example"), dict(rcpt="x@c.example")),
    (["Postmaster@"], dict(rcpt="postmaster@any.example"), dict(rcpt="abuse@any.example")),
    (["bob@b.example"], dict(rcpt="Bob@b.example"), dict(rcpt="bobby@b.example")),
    (["a.example"], dict(rcpt="x@a.example"), dict(sender="x@a.example")),  # not the sender
    (["::ffff:192.0.2.0/120"], dict(ip="192.0.2.9"), dict(ip="192.0.3.9")),  # IPv4-mapped
    (["::ffff:192.0.2.0/120"], dict(ip="::ffff:192.0.2.9"), dict(ip="::ffff:192.0.3.9")),
    (["::ffff:192.0.2.7"], dict(ip="192.0.2.7"), dict(ip="192.0.2.8")),
    (["bücher.example"], dict(rcpt="x@xn--bcher-kva.example"), dict(rcpt="x@bucher.example")),
    (["xn--bcher-kva.example"], dict(rcpt="x@sub.Bücher.example"), dict(rcpt="x@b.example")),
    (["bob@bücher.example"], dict(rcpt="Bob@XN--BCHER-KVA.example"),
     dict(rcpt="bob@b.example")),
])
def test_whitelist(whitelist, listed, unlisted):
    grey = Greylist(Unavailable())  # a whitelisted client or recipient never asks the store
    assert grey.check(whitelist=whitelist, **listed) == \
        ["whitelisted", 0, "whitelisted", True]
    assert grey.value(whitelist=whitelist, **unlisted) == "temperror"


def test_a_store_that_does_not_answer_gives_temperror():
    assert Greylist(Unavailable()).check() == ["temperror", 0, "temperror", True]
    assert Greylist(Unavailable()).value(auto_whitelist=0) == "temperror"


def test_a_locked_sqlite_file_is_temperror_before_the_scripts_deadline(tmp_path):
    """Another process holds the write lock past the script's time: the store's wait
    ends by the script call's network deadline, and the script handles temperror."""
    path = tmp_path / "state.sqlite"
    holder = connect(path)
    holder.execute("BEGIN IMMEDIATE")
    store = SqliteStore(path)
    try:
        grey = Greylist(store, Limits(max_time=1.0))
        started = time.monotonic()
        assert grey.value() == "temperror"
        assert time.monotonic() - started < 1.0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        asyncio.run(store.close())


def test_a_silent_redis_is_temperror_before_the_scripts_deadline():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        store = RedisStore(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", timeout=30)
        grey = Greylist(store, Limits(max_time=1.0))
        started = time.monotonic()
        assert grey.value() == "temperror"
        assert time.monotonic() - started < 1.0


def test_every_key_is_short_and_expires(grey):
    long_local = "x" * 64
    long_domain = ".".join(["d" * 63] * 3) + ".example"
    grey.check(sender=f"{long_local}@{long_domain}", rcpt=f"{long_local}@{long_domain}",
               delay=60, auto_whitelist=1)
    grey.later(60)
    grey.check(sender=f"{long_local}@{long_domain}", rcpt=f"{long_local}@{long_domain}",
               delay=60, auto_whitelist=1)
    entries = grey.store._entries
    assert {key.split(":")[1] for key in entries} == \
        {"passed", "counted", "retries", "whitelisted"}
    assert all(len(key.encode()) <= MAX_KEY_BYTES for key in entries)
    assert all(expires < float("inf") for _, expires in entries.values())
    assert not any(long_local in key for key in entries)  # addresses are digested


def test_engines_keep_their_own_state():
    first, second = Greylist(), Greylist()
    first.check(delay=60)
    first.later(60)
    assert first.value(delay=60) == "pass"
    second.later(60)
    assert second.value(delay=60) == "greylisted"


def test_without_a_store_an_engine_keeps_its_state_in_memory():
    script = new_engine().load_source(SCRIPT, "greylist.vsl")
    ctx = session(Stage.RCPT_TO)
    assert script.call("check", ctx, {"delay": 0})[0] == "greylisted"
    assert script.call("check", ctx, {"delay": 0})[0] == "pass"


@pytest.mark.parametrize("stage", [Stage.MAIL_FROM, Stage.PRE_QUEUE])
def test_other_stages_are_refused(grey, stage):
    with pytest.raises(ScriptError, match=f"greylist::check works in on_rcpt_to only, not in "
                                          f"{stage.function}"):
        grey.check(stage=stage)


@pytest.mark.parametrize("options, message", [
    ({"delay": -1}, "delay must be 0 or more seconds, not -1"),
    ({"delay": 300, "retry_window": 300}, "retry_window must be longer than delay"),
    ({"expire": 0}, "expire must be more than 0 seconds"),
    ({"key": "client"}, "key must be 'triplet' or 'client_sender', not 'client'"),
    ({"auto_whitelist": -2}, "auto_whitelist must be 0 \\(off\\) or more"),
    ({"ipv6_prefix": 129}, "ipv6_prefix must be 0 to 128"),
    ({"whitelist": ["10.0.0.0/8", "10.0.0.0/40"]}, "'10.0.0.0/40' is not an IP network"),
    ({"whitelist": ["bad_domain!"]}, "'bad_domain!' is not a network, a domain or an address"),
    ({"whitelist": [3]}, "whitelist entries are strings, not i64"),
    ({"whitelist": [["192.0.2.0/24"]]}, "whitelist entries are strings, not array"),
    ({"whitelist": [{"x": 1}]}, "whitelist entries are strings, not map"),
    ({"whitelist": [""]}, "whitelist entry '' is not a network, a domain or an address"),
    ({"auto_whitelist_interval": 0}, "auto_whitelist_interval must be more than 0 seconds"),
    ({"delay": "5"}, "option 'delay' must be"),
    ({"dely": 5}, "unknown option 'dely'"),
])
def test_bad_options_are_errors_at_the_call(grey, options, message):
    with pytest.raises(ScriptError, match=f"greylist.vsl:3:13: greylist::check: .*{message}"):
        grey.check(**options)


def test_settings_are_cached_by_their_values_and_types():
    entries = ["192.0.2.0/24"]
    assert greylist.settings({"delay": 1}) is greylist.settings({"delay": 1})
    assert greylist.settings({"delay": 1.5}).delay == 1.5
    with pytest.raises(ScriptError, match="option 'delay' must be"):
        greylist.settings({"delay": True})  # equal to 1 in Python, not to the check
    assert greylist.settings({"whitelist": entries}).whitelist.networks
    entries[0] = "example.com"
    assert not greylist.settings({"whitelist": entries}).whitelist.networks
    for _ in range(2):  # a bad value is an error at every call, and never cached
        with pytest.raises(ScriptError, match="whitelist entries are strings, not map"):
            greylist.settings({"whitelist": [{"x": 1}]})


def test_a_client_without_an_ip_address_is_an_error(grey):
    with pytest.raises(ScriptError, match="the client address 'unix' is not an IP address"):
        grey.check(ip="unix")


def test_the_first_argument_must_be_ctx(grey):
    with pytest.raises(ScriptError, match="greylist::check takes ctx as its first argument"):
        grey.script.call("check", "192.0.2.1", {})
