"""The compiled-script cache (vsl/script_cache.py): hits skip parsing and compiling, and
change nothing a script does or reports; damaged entries are misses; the store is private,
atomic and bounded."""
from __future__ import annotations

import dataclasses
import functools
import os

import pytest

from vsl import script_cache
from vsl.errors import VslError
from vsl.limits import Limits
from vsl.script_cache import ScriptCache, Store
from vsl.stdlib import new_engine

SOURCE = """
fn on_helo(ctx) {
    if ctx.helo == "bad.example" { return status::deny("550 go away"); }
    status::next()
}
fn fail(x) { let m = #{}; m.a.b + x }
let top = 40 + 2;
top
"""


@pytest.fixture
def store(tmp_path) -> Store:
    folder = tmp_path / "scripts"
    folder.mkdir(mode=0o700)
    return Store(folder)


def engine_with(store: Store, limits: Limits | None = None):
    engine = new_engine(limits)
    engine.cache = ScriptCache(store)
    return engine


def entries(store: Store) -> list:
    return sorted(p for p in store.directory.iterdir() if not p.name.startswith("."))


def load_without_compiling(engine, source: str, file: str, monkeypatch):
    """Load ``source``; parsing or compiling it fails the test."""
    def refused(*args, **kwargs):
        raise AssertionError("parsed or compiled on a cache hit")
    with monkeypatch.context() as patch:
        patch.setattr("vsl.build.parse", refused)
        patch.setattr(type(engine), "_compile", refused)
        return engine.load_source(source, file)


def test_a_second_load_is_a_hit_and_runs_the_same(store, monkeypatch):
    first = engine_with(store).load_source(SOURCE, "main.vsl")
    assert len(entries(store)) == 1
    again = load_without_compiling(engine_with(store), SOURCE, "main.vsl", monkeypatch)
    assert again.top_value == first.top_value == 42
    assert again.call("on_helo", {"helo": "bad.example"}) == \
        first.call("on_helo", {"helo": "bad.example"})
    assert again.functions.keys() == first.functions.keys()


def test_errors_from_a_cached_script_are_located_as_from_a_fresh_one(store, monkeypatch):
    fresh = engine_with(store).load_source(SOURCE, "main.vsl")
    cached = load_without_compiling(engine_with(store), SOURCE, "main.vsl", monkeypatch)
    errors = []
    for script in (fresh, cached):
        with pytest.raises(VslError) as caught:
            script.call("fail", 1)
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and "main.vsl:6:31:" in errors[0]


def test_the_ast_of_a_cached_script_is_parsed_when_asked_for(store, monkeypatch):
    fresh = engine_with(store).load_source(SOURCE, "main.vsl")
    cached = load_without_compiling(engine_with(store), SOURCE, "main.vsl", monkeypatch)
    assert [(f.name, f.params, f.pos, f.body) for f in cached.module.functions] == \
        [(f.name, f.params, f.pos, f.body) for f in fresh.module.functions]
    assert cached.module.body == fresh.module.body


@pytest.mark.parametrize("change", ["source", "file", "limits"])
def test_what_changes_the_code_is_in_the_key(store, change):
    engine_with(store).load_source(SOURCE, "main.vsl")
    source = SOURCE + "+ 1" if change == "source" else SOURCE
    file = "other.vsl" if change == "file" else "main.vsl"
    limits = Limits(max_call_depth=9) if change == "limits" else None
    engine_with(store, limits).load_source(source, file)
    assert len(entries(store)) == 2


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty", "garbage"])
def test_a_damaged_entry_is_a_miss(store, damage, monkeypatch):
    engine_with(store).load_source(SOURCE, "main.vsl")
    (entry,) = entries(store)
    data = entry.read_bytes()
    entry.write_bytes({"truncated": data[:len(data) // 2],
                       "flipped": data[:-1] + bytes([data[-1] ^ 1]),
                       "empty": b"", "garbage": os.urandom(200)}[damage])
    compiled = []
    engine = engine_with(store)
    original = type(engine)._compile
    monkeypatch.setattr(type(engine), "_compile",
                        lambda *args: compiled.append(1) or original(*args))
    assert engine.load_source(SOURCE, "main.vsl").top_value == 42
    assert compiled == [1]
    assert Store(store.directory).get(entry.name) is not None  # written again


def test_an_import_that_changed_is_compiled_against_again(store, tmp_path):
    (tmp_path / "lib.vsl").write_text("fn f(x) { x + 1 }\n", encoding="utf-8")
    main = tmp_path / "main.vsl"
    main.write_text('import "lib" as lib;\nlib::f(1)\n', encoding="utf-8")
    assert engine_with(store).load(main).top_value == 2
    (tmp_path / "lib.vsl").write_text("fn g(x) { x }\n", encoding="utf-8")
    with pytest.raises(VslError, match="module 'lib' has no function 'f'"):
        engine_with(store).load(main)


def test_no_cache_when_turned_off(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("VSL_NO_CACHE", "1")
    assert new_engine(use_cache=True).cache is None
    monkeypatch.setenv("VSL_NO_CACHE", "0")
    assert new_engine(use_cache=True).cache is not None
    assert new_engine().cache is None  # (an embedder's engine, unless it asks)
    assert (tmp_path / "vsl" / "scripts").stat().st_mode & 0o777 == 0o700


def test_no_cache_in_a_directory_others_may_write_to(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "vsl" / "scripts").mkdir(parents=True)
    (tmp_path / "vsl" / "scripts").chmod(0o777)
    assert new_engine(use_cache=True).cache is None


def test_entries_are_private_and_written_whole(store):
    store.put("k", {"a": 1})
    (entry,) = entries(store)
    assert entry.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in store.directory.iterdir()] == ["k"]  # no temporary left
    assert store.get("k") == {"a": 1} and store.get("missing") is None
    store.put("unpicklable", lambda: 1)  # is not kept, and is no error
    assert store.get("unpicklable") is None


def test_the_store_evicts_the_least_recently_used(store):
    for i in range(6):
        store.put(f"k{i}", b"x" * 1000)
        os.utime(store.directory / f"k{i}", ns=(i * 10**9, i * 10**9))
    store.get("k0")  # used: now the most recent
    store.evict(max_entries=3)
    assert [p.name for p in entries(store)] == ["k0", "k5"]


def test_a_lint_check_holding_an_unknown_object_turns_the_cache_off(store):
    class Opaque:
        __slots__ = ()
    assert script_cache.describe({"a": (1, frozenset({"x"}))}) == "{'a': [1, {'x'}]}"
    with pytest.raises(script_cache.Unknown):
        script_cache.describe(Opaque())
    engine = engine_with(store)
    assert engine.fingerprint is not None
    shared = next(iter(engine.namespaces.values()))  # (shared by engines: not changed)
    name, native = next(iter(shared.functions.items()))
    opaque = dataclasses.replace(
        native, check=functools.partial(lambda opaque, *args: None, Opaque()))
    engine.register(dataclasses.replace(shared, functions={**shared.functions, name: opaque}))
    assert engine.fingerprint is None
    engine.load_source(SOURCE, "main.vsl")
    assert entries(store) == []


# -- the linter's findings --------------------------------------------------------------

LINTED = """fn on_helo(ctx) {
    let unused = 1;
    status::next()
}
fn on_rcpt_to(ctx) { lib::f(1); status::nope() }
import "lib" as lib;
"""


def linted(store: Store, main, deferred=False, hit=None):
    """The findings of ``main``, with the cache in ``store`` (``deferred``: from a linter
    made as ``vsl lint`` makes it); with ``hit`` (a monkeypatch), parsing or making the
    engine fails the test."""
    from vsl.lint import Linter
    from vsl.stdlib.ctx import entry_points

    make_engine, make_entries = (refuse, refuse) if hit else (new_engine, entry_points)
    if deferred:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Store, "default", classmethod(lambda cls: store))
            linter = Linter.deferred(make_engine, make_entries, Limits(), "test")
    else:
        linter = Linter(engine_with(store), entry_points())
    if hit is None:
        return linter.lint_file(main)
    with hit.context() as patch:
        patch.setattr("vsl.build.parse", refuse)
        return linter.lint_file(main)


def refuse(*args, **kwargs):
    raise AssertionError("parsed, or the engine made, on a cache hit")


@pytest.mark.parametrize("deferred", [False, True])
def test_lint_findings_from_the_cache_are_the_fresh_ones(store, tmp_path, monkeypatch,
                                                          deferred):
    (tmp_path / "lib.vsl").write_text("fn f(x) { x }\n", encoding="utf-8")
    main = tmp_path / "main.vsl"
    main.write_text(LINTED, encoding="utf-8")
    fresh = linted(store, main, deferred)
    assert {d.code for d in fresh} >= {"unused-variable", "unknown-function"}
    assert linted(store, main, deferred, hit=monkeypatch) == fresh


def test_lint_of_a_file_whose_import_changed_is_done_again(store, tmp_path):
    (tmp_path / "lib.vsl").write_text("fn f(x) { x }\n", encoding="utf-8")
    main = tmp_path / "main.vsl"
    main.write_text('import "lib" as lib;\nlib::f(1);\n', encoding="utf-8")
    assert linted(store, main) == []
    (tmp_path / "lib.vsl").write_text("fn g(x) { x }\n", encoding="utf-8")
    [finding] = linted(store, main)
    assert "module 'lib' has no function 'f'" in finding.message
    (tmp_path / "lib.vsl").unlink()
    assert any("cannot import 'lib'" in d.message for d in linted(store, main))


MAIN_WITH_LOOP = """import "lib" as lib;
fn half(a) { let s = 0; for i in -9..0 { s = i / 2; } s + a }
lib::f()
"""


def test_a_cached_script_whose_import_changed_is_compiled_from_its_whole_ast(store, tmp_path):
    (tmp_path / "lib.vsl").write_text("fn f() { 1 }\n", encoding="utf-8")
    main = tmp_path / "main.vsl"
    main.write_text(MAIN_WITH_LOOP, encoding="utf-8")
    assert engine_with(store).load(main).call("half", 0) == 0
    (tmp_path / "lib.vsl").write_text("fn f() { 1 }\nfn g() { 2 }\n", encoding="utf-8")
    script = engine_with(store).load(main)
    assert script.call("half", 0) == 0  # (-1: the loop's variable taken as never below 0)
    assert engine_with(store).load(main).call("half", 1) == 1  # the new entry is a hit


def test_an_entry_that_fails_to_load_is_a_miss_and_is_replaced(store, monkeypatch):
    engine = engine_with(store)
    engine.load_source(SOURCE, "main.vsl")
    (entry,) = entries(store)
    broken = list(store.get(entry.name))
    broken[0] = ("not an import",)  # an entry of another shape: AttributeError
    store.put(entry.name, tuple(broken))
    assert engine_with(store).load_source(SOURCE, "main.vsl").top_value == 42
    assert load_without_compiling(engine_with(store), SOURCE, "main.vsl",
                                  monkeypatch).top_value == 42


def test_range_starts_needs_the_whole_ast(store):
    from vsl.infer import range_starts
    engine = engine_with(store)
    engine.load_source(SOURCE, "main.vsl")
    cached = engine_with(store).load_source(SOURCE, "main.vsl").module
    with pytest.raises(TypeError):
        range_starts(cached, {})


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_no_cache_below_a_directory_another_user_owns(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "vsl" / "scripts").mkdir(parents=True, mode=0o700)
    os.chown(tmp_path / "vsl", 1234, 1234)
    assert new_engine(use_cache=True).cache is None


def test_a_directory_swapped_after_the_check_is_not_used(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    store = Store.default()
    folder = tmp_path / "vsl" / "scripts"
    folder.rename(tmp_path / "vsl" / "old")
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / "k").write_bytes(b"planted")
    folder.symlink_to(tmp_path / "planted")
    store.put("k", {"a": 1})
    assert store.get("k") == {"a": 1}
    assert (tmp_path / "planted" / "k").read_bytes() == b"planted"
    assert (tmp_path / "vsl" / "old" / "k").exists()


def test_eviction_counts_disk_blocks_and_entries(store):
    for i in range(8):
        store.put(f"k{i}", b"x")
        os.utime(store.directory / f"k{i}", ns=(i * 10**9, i * 10**9))
    block = (store.directory / "k0").stat().st_blocks * 512
    store.evict(max_bytes=4 * block)  # 8 files of one block each: down to 3
    assert [p.name for p in entries(store)] == ["k5", "k6", "k7"]
    store.evict(max_entries=2)  # 3 files: down to 1
    assert [p.name for p in entries(store)] == ["k7"]


def test_one_put_in_evict_every_looks_at_the_directory(store, monkeypatch):
    looks = []
    monkeypatch.setattr(Store, "evict", lambda self: looks.append(1))
    script_cache.random.seed(0)
    for i in range(script_cache.EVICT_EVERY * 8):
        store.put("k", i)
    assert 0 < len(looks) < script_cache.EVICT_EVERY


def test_lint_sees_an_import_pointed_at_another_file(store, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.vsl").write_text("fn f(x) { x }\n", encoding="utf-8")
    (tmp_path / "sub" / "b.vsl").write_text("fn g(x) { x }\n", encoding="utf-8")
    main = tmp_path / "main.vsl"
    main.write_text('import "lib" as lib;\nlib::f(1);\n', encoding="utf-8")
    (tmp_path / "lib.vsl").symlink_to("sub/a.vsl")
    assert linted(store, main) == []
    (tmp_path / "lib.vsl").unlink()
    (tmp_path / "lib.vsl").symlink_to("sub/b.vsl")
    [finding] = linted(store, main)
    assert "module 'lib' has no function 'f'" in finding.message


def test_lint_sees_an_import_from_outside_brought_inside(store, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.vsl").write_text("fn f(x) { x }\n", encoding="utf-8")
    main = root / "main.vsl"
    main.write_text('import "lib" as lib;\nlib::f(1);\n', encoding="utf-8")
    (root / "lib.vsl").symlink_to(tmp_path / "outside.vsl")
    assert any("outside the script directory" in d.message for d in linted(store, main))
    (root / "lib.vsl").unlink()
    (root / "lib.vsl").write_text("fn f(x) { x }\n", encoding="utf-8")
    assert linted(store, main) == []


def test_lint_sees_a_missing_import_made_or_a_large_one_shrunk(store, tmp_path):
    from vsl.lint import Linter
    from vsl.stdlib.ctx import entry_points

    main = tmp_path / "main.vsl"
    main.write_text('import "lib" as lib;\nlib::f(1);\n', encoding="utf-8")
    assert any("cannot import 'lib'" in d.message for d in linted(store, main))
    lib = tmp_path / "lib.vsl"
    lib.write_text("fn f(x) { x }\n" + "// padding\n" * 10_000, encoding="utf-8")
    assert linted(store, main) == []
    limits = Limits(max_script_size=1000)
    small = Linter(engine_with(store, limits), entry_points())
    assert any("script too large" in d.message for d in small.lint_file(main))
    lib.write_text("fn f(x) { x }\n", encoding="utf-8")
    assert Linter(engine_with(store, limits), entry_points()).lint_file(main) == []


def test_a_lint_hit_reads_imports_within_the_size_limit(store, tmp_path, monkeypatch):
    from vsl import lint
    (tmp_path / "lib.vsl").write_text("fn f(x) { x }\n", encoding="utf-8")
    main = tmp_path / "main.vsl"
    main.write_text('import "lib" as lib;\nlib::f(1);\n', encoding="utf-8")
    assert linted(store, main) == []
    limits = []
    read_script = lint.read_script
    monkeypatch.setattr(lint, "read_script",
                        lambda path, limit: limits.append(limit) or read_script(path, limit))
    assert linted(store, main, hit=monkeypatch) == []
    assert limits and 0 not in limits


def test_the_test_run_keeps_its_own_cache(tmp_path_factory):
    store = Store.default()
    assert store is not None and tmp_path_factory.getbasetemp() in store.directory.parents
