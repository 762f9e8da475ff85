"""limit::hit and limit::peek: the sliding-window counter (N pass in a fresh window, the
N+1th is refused, how it recovers), fail-open on an unreachable store, and bad input as
errors with the script's position."""
from __future__ import annotations

import asyncio

import pytest

from vsl.errors import VslError
from vsl.stdlib import new_engine
from vsl.stdlib.limit import Rate, Window, parse_rate
from vsl.stdlib.support.state import MAX_KEY_BYTES, MemoryStore, StateUnavailable

SOURCE = """
fn hit(key, rate) { limit::hit(key, #{ rate: rate }) }
fn peek(key, rate) { limit::peek(key, #{ rate: rate }) }
fn summary(key, rate) {
    let r = limit::hit(key, #{ rate: rate });
    `${r} ${r.allowed} ${r.remaining} ${r.retry_in}`
}
"""


class Clock:
    def __init__(self, now: float = 1000 * 86400.0):  # the start of a day (and of a minute...)
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def script(clock):
    return new_engine(state=MemoryStore(clock=clock)).load_source(SOURCE, "limits.vsl")


def call(script, name, *args):
    return asyncio.run(script.call_async(name, *args))


def test_n_pass_in_a_fresh_window_and_the_next_is_refused(script):
    assert [call(script, "summary", "k", "3/1m") for _ in range(4)] == [
        "pass true 2 0", "pass true 1 0", "pass true 0 0", "limited false 0 80"]


def test_refused_hits_are_not_counted_and_the_window_recovers(script, clock):
    for _ in range(3):
        call(script, "hit", "k", "3/1m")
    for _ in range(5):
        assert not call(script, "hit", "k", "3/1m").allowed
    clock.now += 60  # the next window: the previous one (3 hits) weighs 3 * (1 - f)
    assert not call(script, "hit", "k", "3/1m").allowed  # 3 + 1 > 3
    assert call(script, "summary", "k", "3/1m") == "limited false 0 20"
    clock.now += 20  # f = 1/3: 3 * 2/3 + 1 = 3
    assert call(script, "summary", "k", "3/1m") == "pass true 0 0"
    clock.now += 60  # two windows after the burst: only the last hit weighs
    assert call(script, "hit", "k", "3/1m").allowed


def test_the_next_window_alone_takes_a_full_burst_after_two_windows(script, clock):
    for _ in range(3):
        call(script, "hit", "k", "3/2s")
    clock.now += 4
    assert [call(script, "hit", "k", "3/2s").allowed for _ in range(4)] == \
        [True, True, True, False]


def test_peek_does_not_count(script):
    for _ in range(2):
        assert call(script, "peek", "k", "2/1h").value == "pass"
    assert call(script, "peek", "k", "2/1h").remaining == 2
    call(script, "hit", "k", "2/1h")
    call(script, "hit", "k", "2/1h")
    peeked = call(script, "peek", "k", "2/1h")
    assert (peeked.value, peeked.allowed, peeked.remaining, peeked.retry_in) == \
        ("limited", False, 0, 5400)


def test_keys_and_windows_are_counted_apart(script):
    call(script, "hit", "a", "1/1m")
    assert call(script, "hit", "b", "1/1m").allowed
    assert call(script, "hit", "a", "1/1h").allowed  # another window length
    assert not call(script, "hit", "a", "1/1m").allowed


class Unavailable(MemoryStore):
    async def incr(self, key, amount, ttl):
        raise StateUnavailable("down")


def test_an_unavailable_store_fails_open():
    script = new_engine(state=Unavailable()).load_source(SOURCE, "limits.vsl")
    assert call(script, "summary", "k", "5/1m") == "temperror true 5 0"


@pytest.mark.parametrize("key, rate, message", [
    ("k", "10 per minute", "rate '10 per minute' is not \"N/unit\" or \"N/Kunit\""),
    ("k", "10/1w", "is not \"N/unit\""),
    ("k", "0/1m", "the count must be between 1 and"),
    ("k", "1/0s", "the window must be between 1 s and 366 days"),
    ("k", 10, "limit::hit: option 'rate' must be a string, not i64"),
    ("x" * (MAX_KEY_BYTES + 1), "1/1m", f"limit::hit: the key is longer than {MAX_KEY_BYTES}"),
    (42, "1/1m", "limit::hit: the key must be a non-empty string"),
])
def test_bad_input_is_an_error_at_the_script_position(script, key, rate, message):
    with pytest.raises(VslError) as err:
        call(script, "hit", key, rate)
    assert message in str(err.value) and "limits.vsl:2:" in str(err.value)


def test_rates():
    assert parse_rate("100/1h") == Rate(100, 3600)
    assert parse_rate("5000/d") == Rate(5000, 86400)
    assert parse_rate("3/2s") == Rate(3, 2)
    assert parse_rate("10/15m") == Rate(10, 900)


def test_a_bad_rate_is_an_error_at_every_call_though_rates_are_cached(script):
    for _ in range(2):
        assert parse_rate("100/1h") == Rate(100, 3600)
        with pytest.raises(VslError, match="the count must be between 1 and"):
            call(script, "hit", "k", "0/1m")


def test_retry_in_is_when_one_more_hit_fits():
    window = Window.at(Rate(10, 100), 1050.0)  # halfway through a window
    assert window.retry_in(10, 0) == 60   # the rest of this window, and 0.1 of the next
    assert window.retry_in(5, 10) == 10   # the previous must weigh 4: f = 0.6


class FailsToTakeBack(MemoryStore):
    """A store whose negative increments fail: a refused hit must not need one."""

    async def incr(self, key, amount, ttl):
        if amount < 0:
            raise StateUnavailable("down on the second round trip")
        return await super().incr(key, amount, ttl)


def test_a_refused_hit_needs_no_take_back(clock):
    script = new_engine(state=FailsToTakeBack(clock=clock)).load_source(SOURCE, "limits.vsl")
    assert [call(script, "summary", "k", "2/1m") for _ in range(4)] == [
        "pass true 1 0", "pass true 0 0", "limited false 0 90", "limited false 0 90"]


def test_peek_makes_no_key(clock):
    store = MemoryStore(clock=clock)
    script = new_engine(state=store).load_source(SOURCE, "limits.vsl")
    call(script, "peek", "k", "2/1h")
    assert store._entries == {}


@pytest.mark.parametrize("rate", ["1" * 5000 + "/1s", "1/" + "1" * 5000 + "s"])
def test_a_rate_with_thousands_of_digits_is_a_script_error(script, rate):
    with pytest.raises(VslError, match="is not \"N/unit\""):
        call(script, "hit", "k", rate)
