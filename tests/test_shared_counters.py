"""The counts shared by the workers (server/shared_counters.py), in one process: each
client address has its own ``connections_per_ip`` budget (no two share one, however
chosen), the total holds, and a worker's counts go when it is cleared."""
from __future__ import annotations

import ipaddress
import random
import zlib

from vsl.server.shared_counters import SharedCounters, address_key

PER_IP = "connections_per_ip"


def fill(counters: SharedCounters, ip: str, limit: int) -> int:
    """Admit connections from ``ip`` until refused; how many were admitted."""
    admitted = 0
    while counters.admit(ip, 10_000, limit) is None:
        admitted += 1
    return admitted


def crc32_twins(count: int) -> list[str]:
    """Addresses in one /64 whose crc32 agree modulo 4096 (one bucket of the old
    count): what an attacker tries until one shares a victim's."""
    seen: dict[int, list[str]] = {}
    for low in range(1, 1 << 20):
        ip = str(ipaddress.IPv6Address((0x20010db8 << 96) + low))
        twins = seen.setdefault(zlib.crc32(ip.encode()) % 4096, [])
        twins.append(ip)
        if len(twins) == count:
            return twins
    raise AssertionError("no twins")


def test_addresses_of_one_old_bucket_have_their_own_budgets():
    victim, attacker = crc32_twins(2)
    counters = SharedCounters(2, 100)
    assert fill(counters, attacker, 20) == 20
    assert fill(counters, victim, 20) == 20


def test_a_thousand_random_addresses_each_get_their_own_limit():
    rnd = random.Random(19)
    ips = {str(ipaddress.IPv6Address(rnd.getrandbits(128))) for _ in range(1000)}
    counters = SharedCounters(8, 2000)
    for index, ip in enumerate(sorted(ips)):
        counters.use(index % 8)
        assert fill(counters, ip, 2) == 2, ip


def test_both_spellings_of_an_ipv4_address_count_together():
    counters = SharedCounters(1, 10)
    assert counters.admit("192.0.2.1", 10, 2) is None
    assert counters.admit("::ffff:192.0.2.1", 10, 2) is None
    assert counters.admit("192.0.2.1", 10, 2) == PER_IP


def test_the_total_holds_across_workers():
    counters = SharedCounters(2, 3)
    for index, ip in enumerate(("192.0.2.1", "192.0.2.2", "192.0.2.3")):
        counters.use(index % 2)
        assert counters.admit(ip, 3, 5) is None
    assert counters.admit("192.0.2.4", 3, 5) == "connections"
    counters.release("192.0.2.3")
    assert counters.admit("192.0.2.4", 3, 5) is None


def test_a_released_address_leaves_the_others_reachable():
    """Removing an entry in the middle of probe chains (a full small table) keeps every
    other address's count."""
    counters = SharedCounters(1, 8)  # 16 entries
    ips = [f"192.0.2.{n}" for n in range(1, 9)]
    for ip in ips:
        assert counters.admit(ip, 8, 1) is None
    for gone in ips[::2]:
        counters.release(gone)
    for ip in ips[1::2]:
        assert counters.admit(ip, 8, 1) == PER_IP
    for ip in ips[::2]:
        assert counters.admit(ip, 8, 1) is None


def test_a_dead_workers_connections_are_cleared():
    counters = SharedCounters(2, 10)
    counters.use(0)
    assert fill(counters, "192.0.2.1", 3) == 3
    counters.use(1)
    assert counters.admit("192.0.2.2", 10, 3) is None
    assert counters.admit("192.0.2.1", 10, 3) == PER_IP
    counters.clear(0)
    assert fill(counters, "192.0.2.1", 3) == 3
    assert fill(counters, "192.0.2.2", 3) == 2  # worker 1's stays counted
    assert counters.admit("192.0.2.3", 6, 3) == "connections"


def test_addresses_churning_in_a_small_table_keep_exact_counts():
    """Random admits, releases and clears against a plain model."""
    rnd = random.Random(7)
    ips = [f"2001:db8::{n:x}" for n in range(40)]
    counters, held = SharedCounters(3, 50), []
    for step in range(5000):
        if held and (rnd.random() < 0.5 or len(held) == 50):
            index, ip = held.pop(rnd.randrange(len(held)))
            counters.use(index)
            counters.release(ip)
            continue
        index, ip = rnd.randrange(3), rnd.choice(ips)
        counters.use(index)
        expected = "connections" if len(held) == 50 else \
            PER_IP if [held_ip for _, held_ip in held].count(ip) == 4 else None
        assert counters.admit(ip, 50, 4) == expected, step
        if expected is None:
            held.append((index, ip))
        if step % 500 == 499:
            dead = rnd.randrange(3)
            counters.clear(dead)
            held = [(index, ip) for index, ip in held if index != dead]


class Killed(BaseException):
    """A worker killed in the middle of a change."""


def cut_short(counters: SharedCounters, step: str):
    """Make ``counters``' next call of ``step`` kill the worker before it runs."""
    def killed(*_args):
        raise Killed
    setattr(counters, step, killed)


def test_a_worker_killed_inside_a_release_leaves_no_torn_table():
    counters = SharedCounters(2, 4)  # a table of 8 entries
    home = lambda ip: hash(counters._secret + address_key(ip)) & counters._mask  # noqa: E731
    ips = [f"10.0.0.{i}" for i in range(1, 250)]
    first = ips[0]
    second = next(ip for ip in ips[1:] if home(ip) == home(first))  # one probe chain
    counters.use(0)
    assert counters.admit(second, 4, 4) is None  # worker 0 keeps one from second
    counters.use(1)
    assert counters.admit(first, 4, 4) is None and counters.admit(second, 4, 4) is None
    cut_short(counters, "_empty")  # killed after moving second back, before emptying
    try:
        counters.release(first)
    except Killed:
        pass
    del counters._empty
    counters.clear(1)  # the parent, after waitpid: must not raise
    counters.use(0)
    assert counters._ints[0] == 1
    assert fill(counters, second, 4) == 3  # worker 0's one counted once, not twice
    for _ in range(4):
        counters.release(second)
    counters.release(second)  # one more than open: ignored, no underflow
    assert counters._ints[0] == 0 and counters._live() == []
