"""regex::captures: bounded in time and pattern size, the event loop's thread kept free."""
import threading
import time

import pytest

from vsl.errors import ScriptError
from vsl.stdlib import new_engine

SCRIPT = new_engine().load_source("""
fn re(pattern, text, flags) { regex::captures(pattern, text, flags) }
fn guarded(pattern, text) { try { return regex::captures(pattern, text); } catch (err) { return err; } }
""", "re.vsl")

CATASTROPHIC = ("^(a|a)+$", "a" * 25 + "!")  # the reviewer's: 2^25 backtracking steps


def test_captures_unchanged():
    assert SCRIPT.call("re", "^(a+)(b)?@", "AAA@x", "i") == ["AAA@", "AAA", ""]
    assert SCRIPT.call("re", "^b", "abc", "") is None
    assert SCRIPT.call("re", r"^(?!owner-)(.*)-outgoing@(.*)$", "list-outgoing@x.test", "") \
        == ["list-outgoing@x.test", "list", "x.test"]  # pcre_table(5)'s lookahead


def test_catastrophic_backtracking_is_a_catchable_error_within_a_bound():
    started = time.monotonic()
    message = SCRIPT.call("guarded", *CATASTROPHIC)
    assert time.monotonic() - started < 1
    assert "took longer than" in message and "ms" in message


def test_other_threads_run_during_a_search():
    ticks = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    time.sleep(0.01)
    try:
        started = time.monotonic()
        with pytest.raises(ScriptError):
            SCRIPT.call("re", *CATASTROPHIC, "")
        ended = time.monotonic()
    finally:
        stop.set()
        ticker.join()
    during = [t for t in ticks if started < t < ended]
    assert len(during) >= 5, "the search held the GIL"


@pytest.mark.parametrize("pattern", ["a" * 5000, "(a{1000}){1000}", "((a{100}){100}){100}"])
def test_patterns_too_large_are_refused_quickly(pattern):
    started = time.monotonic()
    with pytest.raises(ScriptError, match="too large"):
        SCRIPT.call("re", pattern, "a", "")
    assert time.monotonic() - started < 0.1


def test_counted_repeats_of_ordinary_patterns_compile():
    address = r"^[a-z0-9]{1,64}@([a-z0-9-]{1,63}\.){1,8}[a-z]{2,63}$"
    assert SCRIPT.call("re", address, "a@b.example.test", "") is not None
    assert SCRIPT.call("re", r"^(\d{1,3}\.){3}\d{1,3}$", "192.0.2.1", "") is not None


@pytest.mark.parametrize("pattern, text, expected", [
    ("a{}", "a{}", ["a{}"]), ("a{,2}b", "aab", ["aab"]), ("x{2,}", "xxx", ["xxx"]),
    (r"\p{Lu}{2}", "aBC", ["BC"]), ("[]{9}]+", "]{", ["]{"]),
    ("[^](]{3}", "a(b]cde", ["cde"]),
])
def test_braces_that_are_not_large_repeats(pattern, text, expected):
    assert SCRIPT.call("re", pattern, text, "") == expected


@pytest.mark.parametrize("pattern", ["[", "(", ")", "\\"])
def test_bad_patterns_are_script_errors(pattern):
    with pytest.raises(ScriptError, match="regex: bad pattern"):
        SCRIPT.call("re", pattern, "a", "")
