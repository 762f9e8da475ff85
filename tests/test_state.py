"""The StateStore contract, run alike against MemoryStore, SqliteStore and RedisStore (a
private redis-server): increments with expiry, get/set (only_if_absent), delete, and
exact totals from many tasks and from two processes incrementing one key."""
from __future__ import annotations

import asyncio
import multiprocessing
import socket
import sqlite3
import time
import uuid

import pytest

from vsl.natives import IO_DEADLINE
from vsl.stdlib.support.state import MemoryStore, StateUnavailable
from vsl.stdlib.support.state.redis_store import RedisStore
from vsl.stdlib.support.state.sqlite_store import SqliteStore
from vsl.stdlib.support.urls import redacted, redis_url_problem
from tests.support.loop_gaps import LoopGaps
from tests.support.redis import PrivateRedis

TTL = 0.3  # seconds: a key that must expire (no test needs a call done within it)


@pytest.fixture(scope="module")
def redis_server():
    with PrivateRedis() as server:
        yield server


def open_store(kind: str, tmp_path, redis_server_factory):
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SqliteStore(tmp_path / "state.sqlite")
    return RedisStore(redis_server_factory().url)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_factory(request, tmp_path):
    """A function making the store of this run's kind (each call a new store object over
    the same file or server)."""
    return lambda: open_store(request.param, tmp_path,
                              lambda: request.getfixturevalue("redis_server"))


def run(store_factory, scenario):
    async def main():
        store = store_factory()
        try:
            return await scenario(store)
        finally:
            await store.close()
    return asyncio.run(main())


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


def test_incr_counts_and_expires(store_factory):
    k, short = key(), key()

    async def scenario(store):
        assert await store.incr(k, 1, 60) == 1
        assert await store.incr(k, 2, 60) == 3
        assert await store.get(k) == "3"
        assert await store.incr(short, 1, TTL) == 1
        assert await store.incr(short, 1, 60) >= 1  # an existing key keeps its expiry
        await asyncio.sleep(TTL + 0.1)
        assert await store.get(short) is None
        assert await store.incr(short, 5, 60) == 5  # counted again from 0
    run(store_factory, scenario)


def test_count_in_window_counts_only_what_fits_and_reads_the_previous(store_factory):
    prefix = key() + ":"

    async def scenario(store):
        first = await store.count_in_window(prefix, 60, 1, 2)
        index = int(first.now // 60)
        await store.incr(f"{prefix}{index - 1}", 1, 60)
        second = await store.count_in_window(prefix, 60, 1, 3)
        refused = await store.count_in_window(prefix, 60, 1, 2)
        return first, second, refused, await store.get(f"{prefix}{index}")
    first, second, refused, stored = run(store_factory, scenario)
    assert (first.current, first.previous, first.counted) == (1, 0, True)
    assert (second.current, second.previous) == (2, 1)  # (the test may cross a minute)
    assert not refused.counted and refused.current == 2 and stored == "2"


def test_count_in_window_with_amount_0_only_reads(store_factory):
    prefix = key() + ":"

    async def scenario(store):
        seen = await store.count_in_window(prefix, 60, 0, 5)
        return seen, await store.get(f"{prefix}{int(seen.now // 60)}")
    seen, stored = run(store_factory, scenario)
    assert (seen.current, seen.previous, seen.counted, stored) == (0, 0, False, None)


def test_the_keys_of_count_in_window_expire(store_factory):
    prefix = key() + ":"

    async def scenario(store):
        seen = await store.count_in_window(prefix, 1, 1, 5)
        await asyncio.sleep(2.2)  # kept 2 windows
        return await store.get(f"{prefix}{int(seen.now)}")
    assert run(store_factory, scenario) is None


def test_set_get_only_if_absent_and_delete(store_factory):
    k, short = key(), key()

    async def scenario(store):
        assert await store.get(k) is None
        assert await store.set(k, "first", 60, only_if_absent=True)
        assert not await store.set(k, "second", 60, only_if_absent=True)
        assert await store.get(k) == "first"
        assert await store.set(k, "fourth", 60)
        assert await store.get(k) == "fourth"
        await store.delete(k)
        await store.delete(k)  # absent: nothing happens
        assert await store.get(k) is None
        assert await store.set(short, "first", TTL, only_if_absent=True)
        await asyncio.sleep(TTL + 0.1)
        assert await store.set(short, "third", 60, only_if_absent=True)  # the old one expired
    run(store_factory, scenario)


def test_many_tasks_give_the_exact_total(store_factory):
    k = key()

    async def scenario(store):
        await asyncio.gather(*(store.incr(k, 1, 60) for _ in range(200)))
        return await store.get(k)
    assert run(store_factory, scenario) == "200"


def _shared(kind: str, where) -> SqliteStore | RedisStore:
    return SqliteStore(where) if kind == "sqlite" else RedisStore(where)


def _increment(kind: str, where, k: str, times: int) -> None:
    async def increments(store):
        for _ in range(times):
            await store.incr(k, 1, 60)
    run(lambda: _shared(kind, where), increments)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_two_processes_give_the_exact_total(kind, tmp_path, request):
    where = tmp_path / "state.sqlite" if kind == "sqlite" else \
        request.getfixturevalue("redis_server").url
    k = key()
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_increment, args=(kind, where, k, 150)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert run(lambda: _shared(kind, where), lambda store: store.get(k)) == "300"


def _hit(kind: str, where, prefix: str, times: int, out) -> None:
    async def hits(store):
        return sum([(await store.count_in_window(prefix, 10**9, 1, 100)).counted
                    for _ in range(times)])
    out.put(run(lambda: _shared(kind, where), hits))


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_two_processes_count_no_hit_past_the_limit(kind, tmp_path, request):
    where = tmp_path / "state.sqlite" if kind == "sqlite" else \
        request.getfixturevalue("redis_server").url
    prefix, spawn = key(), multiprocessing.get_context("spawn")
    out = spawn.Queue()
    procs = [spawn.Process(target=_hit, args=(kind, where, prefix, 150, out)) for _ in range(2)]
    for proc in procs:
        proc.start()
    counted = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(60)
    final = run(lambda: _shared(kind, where),
                lambda store: store.count_in_window(prefix, 10**9, 0, 100))
    assert sum(counted) == final.current == 100  # checked and counted in one step


def test_sqlite_state_survives_a_new_store(tmp_path):
    k, path = key(), tmp_path / "state.sqlite"
    run(lambda: SqliteStore(path), lambda store: store.incr(k, 4, 60))
    assert run(lambda: SqliteStore(path), lambda store: store.get(k)) == "4"


@pytest.mark.parametrize("write, times, left", [
    (lambda store, i: store.incr(f"new:{i}", 1, 10), 2, 40 - 2 * 16 + 2),  # 16 each
    (lambda store, i: store.count_in_window("hits:", 3600, 1, 10**6), 16,  # 16 one hit
     40 - 2 * 16 + 1),                                          # in eight, into one row
], ids=["writes", "window hits"])
def test_sqlite_purges_expired_rows_as_it_writes(tmp_path, write, times, left):
    now = [1000.0]
    store = SqliteStore(tmp_path / "state.sqlite", clock=lambda: now[0])

    async def scenario():
        for i in range(40):
            await store.incr(f"old:{i}", 1, 10)
        now[0] += 20
        for i in range(times):
            await write(store, i)
        rows = await store._run(lambda db: db.execute("SELECT count(*) FROM state").fetchone())
        await store.close()
        return rows[0]
    assert asyncio.run(scenario()) == left


def test_sqlite_unopenable_path_is_an_error_and_a_file_is_made_on_first_use(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OSError, match="a-file is not a directory"):
        SqliteStore(tmp_path / "a-file" / "below" / "state.sqlite")
    deep = tmp_path / "missing" / "directories" / "state.sqlite"  # made, as the spool's are
    run(lambda: SqliteStore(deep), lambda store: store.get("k"))
    assert deep.exists()
    (tmp_path / "not-a-database").write_text("x" * 4096)
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        SqliteStore(tmp_path / "not-a-database")
    path = tmp_path / "state.sqlite"
    run(lambda: SqliteStore(path), lambda store: asyncio.sleep(0))
    assert not path.exists()  # nothing counted, no file
    run(lambda: SqliteStore(path), lambda store: store.get("k"))
    assert path.exists()


def test_redis_unreachable_is_state_unavailable_within_the_timeout():
    from tests.support.mailsink import free_port

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)

    async def scenario():
        started = time.monotonic()
        with pytest.raises(StateUnavailable) as err:
            await store.incr("k", 1, 60)
        await store.close()
        return time.monotonic() - started, str(err.value)
    took, message = asyncio.run(scenario())
    assert took < 1.5 and message.startswith("redis redis://127.0.0.1:")


def test_redis_reconnects_when_it_is_back(redis_server):
    store = RedisStore(redis_server.url, timeout=0.5)
    k = key()

    async def scenario():
        assert await store.incr(k, 1, 60) == 1
        await asyncio.to_thread(redis_server.stop)
        with pytest.raises(StateUnavailable):
            await store.incr(k, 1, 60)
        await asyncio.to_thread(redis_server.start)
        value = await store.incr(k, 1, 60)  # nothing persisted: counted from 0 again
        await store.close()
        return value
    assert asyncio.run(scenario()) == 1


def test_redis_urls_are_checked_and_their_passwords_never_shown():
    assert redis_url_problem("redis://localhost:6379/0") is None
    assert redis_url_problem("rediss://user:secret@cache.example:6380/2") is None
    assert redis_url_problem("http://localhost") == "must start with redis:// or rediss://"
    assert redis_url_problem("redis://:secret@localhost:99999/0") == \
        "is not a URL (redis://host:port/db)"
    assert redis_url_problem("redis:///0") == "has no host"
    assert redis_url_problem("redis://localhost/zero") is not None
    assert redacted("redis://user:secret@host:1/0") == "redis://user:***@host:1/0"
    assert redacted("redis://host:1/0") == "redis://host:1/0"
    assert redacted("redis://host:1/0?password=secret&db=1") == "redis://host:1/0?***"
    assert redis_url_problem("redis://host/0?db=zz") == \
        "has a database that is not a number (?db=0)"
    assert redis_url_problem("redis://host/0?password=p&db=2") is None
    assert redis_url_problem("redis://host/0?socket_timeout=9") == \
        "has a query key it does not take (only db, username, password)"


@pytest.mark.parametrize("timeout, deadline", [(0.3, None), (5.0, 0.2)])
def test_silent_redis_is_state_unavailable_within_timeout_and_deadline(timeout, deadline):
    """A server that accepts and never answers: the wait ends by the store's timeout, or
    by the script call's network deadline when that comes first."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        store = RedisStore(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", timeout)

        async def scenario():
            if deadline is not None:
                IO_DEADLINE.set(time.monotonic() + deadline)
            started = time.monotonic()
            with pytest.raises(StateUnavailable):
                await store.get("k")
            await store.close()
            return time.monotonic() - started
        assert asyncio.run(scenario()) < (deadline or timeout) + 0.5


def test_redis_windows_follow_the_redis_clock_not_the_servers(redis_server):
    """Two servers whose clocks are 15 s apart, across a minute boundary for one of them:
    they still count in the same window, so together they pass N, not 2 N."""
    from vsl.stdlib.limit import Rate, count

    async def scenario():
        ahead, behind = RedisStore(redis_server.url), RedisStore(redis_server.url)
        base = (time.time() // 60) * 60 + 50
        behind.clock, ahead.clock = (lambda: base), (lambda: base + 15)
        key_ = key()
        passed = [(await count(store, key_, Rate(10, 60), 1)).allowed
                  for store in (ahead, behind) for _ in range(12)]
        await ahead.close()
        await behind.close()
        return sum(passed)
    assert asyncio.run(scenario()) == 10


def test_redis_counts_that_are_not_integers_are_state_unavailable(redis_server):
    import redis

    prefix = key() + ":"

    async def scenario():
        store = RedisStore(redis_server.url)
        try:
            index = int(time.time() // 86400)
            for k in (f"{prefix}{index - 1}", f"{prefix}{index}"):
                await store.set(k, "garbage", 60)
                with pytest.raises(StateUnavailable, match="not an integer"):
                    await store.count_in_window(prefix, 86400, 1, 5)
                await store.delete(k)
        finally:
            await store.close()
    asyncio.run(scenario())
    assert redis.Redis(port=redis_server.port).get(f"{prefix}x") is None


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_calls_after_close_are_state_unavailable(kind, tmp_path, request):
    where = tmp_path / "state.sqlite" if kind == "sqlite" else \
        request.getfixturevalue("redis_server").url

    async def scenario():
        store = _shared(kind, where)
        await store.incr("k", 1, 60)
        await store.close()
        await store.close()  # a second close does nothing
        for call in (store.incr("k", 1, 60), store.get("k"),
                     store.count_in_window("w:", 60, 1, 5)):
            with pytest.raises(StateUnavailable, match="closed"):
                await call
    asyncio.run(scenario())


def test_redis_close_closes_its_connections(redis_server):
    import redis

    watcher = redis.Redis(port=redis_server.port)

    async def scenario():
        store = RedisStore(redis_server.url)
        await asyncio.gather(*(store.incr(f"k{i}", 1, 60) for i in range(10)))
        opened = len(watcher.client_list())
        await store.close()
        await asyncio.sleep(0.2)
        return opened, len(watcher.client_list())
    opened, after = asyncio.run(scenario())
    assert opened > 1 and after == 1  # the watcher's own


def test_why_a_store_failed_is_logged_once_a_minute_without_its_password(caplog):
    from tests.support.mailsink import free_port

    store = RedisStore(f"redis://u:secret@127.0.0.1:{free_port()}/0?password=secret",
                       timeout=0.5)

    async def scenario():
        for _ in range(3):
            with pytest.raises(StateUnavailable):
                await store.get("k")
        await store.close()
    with caplog.at_level("WARNING", logger="vsl.state"):
        asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.name == "vsl.state"]
    assert len(warnings) == 1 and "unavailable" in warnings[0]
    assert "secret" not in warnings[0] and "127.0.0.1" in warnings[0]


def test_a_locked_sqlite_file_waits_no_longer_than_the_call_and_never_writes_late(tmp_path):
    """Another process holds the write lock: a call gives up by the script call's network
    deadline, and the increment it gave up on is not written once the lock is gone."""
    path = tmp_path / "state.sqlite"
    store = SqliteStore(path)

    async def scenario():
        await store.get("k")  # the file made
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        IO_DEADLINE.set(time.monotonic() + 0.3)
        started = time.monotonic()
        results = await asyncio.gather(*(store.incr("k", 1, 60) for _ in range(3)),
                                       return_exceptions=True)
        took = time.monotonic() - started
        locker.execute("COMMIT")
        locker.close()
        IO_DEADLINE.set(None)
        await asyncio.sleep(0.5)
        value = await store.get("k")
        await store.close()
        return results, took, value
    results, took, value = asyncio.run(scenario())
    assert all(isinstance(r, StateUnavailable) for r in results)
    assert took < 1.5 and value is None


def test_a_full_memory_store_costs_no_more_a_write_than_a_small_one():
    """Past max_keys, a write drops the key that expires first without a scan of all."""
    def seconds_per_write(max_keys: int) -> float:
        store = MemoryStore(max_keys=max_keys, clock=lambda: 1000.0)

        async def fill_then_time():
            for i in range(max_keys):
                await store.set(f"fill:{i}", "x", 60 + i % 100)
            started = time.perf_counter()
            for i in range(2000):
                await store.set(f"more:{i}", "x", 30)
            return (time.perf_counter() - started) / 2000
        took = asyncio.run(fill_then_time())
        assert len(store._entries) == max_keys
        return took
    small, large = min(seconds_per_write(100) for _ in range(3)), seconds_per_write(50_000)
    assert large < 20 * small + 20e-6


def test_first_present_finds_the_first_key_there(store_factory):
    absent, short, other = key(), key(), key()

    async def scenario(store):
        assert await store.first_present([absent]) is None
        await store.set(short, "passed", TTL)
        await store.set(other, "7", 60)
        found = await store.first_present([absent, short, other])
        await asyncio.sleep(TTL + 0.1)
        gone = await store.first_present([short, other])  # short expired: not renewed
        return found, gone
    assert run(store_factory, scenario) == ((1, "passed"), (1, "7"))


def _hold_the_write_lock(path, locked, seconds: float) -> None:
    """In another process: hold the state file's write lock for ``seconds``."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    locked.set()
    time.sleep(seconds)
    db.execute("ROLLBACK")
    db.close()


def test_a_file_locked_by_another_process_never_stalls_the_event_loop(tmp_path):
    """While another process holds the write lock, writes give up by the call's deadline
    (on the store's thread), reads still answer, and the loop keeps turning: its
    longest stall, seen by a ticker task, stays far below the waits."""
    path = tmp_path / "state.sqlite"
    spawn = multiprocessing.get_context("spawn")
    locked = spawn.Event()
    holder = spawn.Process(target=_hold_the_write_lock, args=(path, locked, 3.0))

    async def scenario():
        store = SqliteStore(path)
        await store.incr("k", 1, 60)  # the file and both connections made
        holder.start()
        assert await asyncio.to_thread(locked.wait, 30)
        outcomes, took = [], []
        async with LoopGaps(0.002) as gaps:
            for _ in range(4):
                IO_DEADLINE.set(time.monotonic() + 0.3)
                started = time.monotonic()
                try:
                    await store.incr("k", 1, 60)
                except StateUnavailable:
                    outcomes.append("temperror")
                took.append(time.monotonic() - started)
                IO_DEADLINE.set(None)
                outcomes.append(await store.get("k"))
        await store.close()
        return outcomes, took, gaps.longest
    try:
        outcomes, took, stall = asyncio.run(scenario())
    finally:
        holder.join(30)
    assert outcomes == ["temperror", "1"] * 4
    assert max(took) < 0.8 and stall < 0.1


def test_a_write_that_met_the_lock_is_written_once_it_is_released(tmp_path):
    """The loop's connection does not wait: its write goes to the store's thread, which
    waits for the lock (here released 0.2 s later) and writes it once."""
    path = tmp_path / "state.sqlite"

    async def scenario():
        store = SqliteStore(path)
        await store.get("k")
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.2, locker.execute, "ROLLBACK")
        value = await store.incr("k", 1, 60)
        locker.close()
        value = await store.incr("k", 1, 60)
        await store.close()
        return value
    assert asyncio.run(scenario()) == 2


def test_the_sqlite_wal_stays_bounded_over_many_writes(tmp_path):
    """Writes on the loop never checkpoint: the store's thread does, so the WAL does not
    grow with the writes (here some 40 MB of pages without checkpoints)."""
    from vsl.stdlib.support.state.sqlite_store import WAL_FRAMES

    path = tmp_path / "state.sqlite"
    wal = tmp_path / "state.sqlite-wal"

    async def scenario():
        store = SqliteStore(path)
        largest = 0
        for i in range(10_000):
            await store.incr(f"k{i}", 1, 60)
            if i % 500 == 0:
                await asyncio.sleep(0)
                largest = max(largest, wal.stat().st_size)
        largest = max(largest, wal.stat().st_size)
        rows = await store._run(lambda db: db.execute("SELECT count(*) FROM state").fetchone())
        await store.close()
        return largest, rows[0]
    largest, rows = asyncio.run(scenario())
    assert rows == 10_000
    assert largest < 3 * WAL_FRAMES * 4200  # pages of 4 KB and their frame headers


def test_get_or_add_stores_once_and_then_reads(store_factory):
    k, short = key(), key()

    async def scenario(store):
        answers = await asyncio.gather(*(store.get_or_add(k, str(n), 60) for n in range(20)))
        stored = [n for n, answer in enumerate(answers) if answer is None]
        assert len(stored) == 1 and await store.get(k) == str(stored[0])
        assert set(answers) == {None, str(stored[0])}
        assert await store.get_or_add(short, "first", TTL) is None
        await asyncio.sleep(TTL + 0.1)
        return await store.get_or_add(short, "again", 60), await store.get(short)
    assert run(store_factory, scenario) == (None, "again")  # the first one expired
