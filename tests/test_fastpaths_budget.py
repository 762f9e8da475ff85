"""The fast paths charge exactly what the general paths charge: the same script needs the
same number of operations (N passes, N - 1 fails) through a compiled entry point of any
arity as through Engine.run, at the top level, and with the inlined operations (split(),
an int index, an assignment into a map) as with their helpers; errors keep their
positions."""
from __future__ import annotations

import ast as py
import textwrap
import time

import pytest

from vsl import fastpaths
from vsl.errors import LimitError, VslError
from vsl.fastpaths import FastPaths
from vsl.limits import Limits
from vsl.pynodes import py_call
from vsl.stdlib import new_engine

FUNCTIONS = textwrap.dedent("""\
    const BLOCKED = ["spam.example"];
    fn check(sender, rcpt, spf, counts) {
        let domain = sender.split("@")[1];
        if domain in global::BLOCKED { return 0; }
        let key = `${domain}:${rcpt}`;
        counts[domain] = (counts[domain] ?? 0) + 1;
        counts.last = key;
        let words = rcpt.split(",");
        let n = 0;
        for i in 0..words.len() { n += words[i].len(); }
        n + key.len()
    }
    fn closing(items, k) { items.map(|x| { let s = 0; for i in 0..k { s += x; } s }) }
""")
LONG = ",".join(["word"] * 30)  # 149 characters: split() charges it
TOP = FUNCTIONS + textwrap.dedent(f"""\
    let counts = #{{}};
    let total = 0;
    for i in 0..5 {{ total += check("a@x.example", "{LONG}", "pass", counts); }}
    total
""")
CALLS = [("check", ("a@x.example", "postmaster,abuse", "pass", {})),
         ("check", ("a@x.example", LONG, "pass", {})),
         ("closing", ([1, 2, 3], 20))]


def fewest_operations(passes) -> int:
    """The smallest max_operations with which ``passes(limits)`` is true (it fails with
    one fewer: the budget is exact)."""
    low, high = 1, 1
    while not passes(Limits(max_operations=high, max_time=0)):
        low, high = high, high * 2
    while low < high:
        middle = (low + high) // 2
        if passes(Limits(max_operations=middle, max_time=0)):
            high = middle
        else:
            low = middle + 1
    return low


def succeeds(run) -> bool:
    try:
        run()
    except LimitError:
        return False
    return True


@pytest.fixture
def without_fast_paths(monkeypatch):
    """Compile with the helpers in place of the new fast paths."""
    def general():
        monkeypatch.setattr(fastpaths, "_INLINE_METHODS", {})
        monkeypatch.setattr(FastPaths, "int_index",
                            lambda self, obj, index, *facts: py_call("_idx", obj, index))
        monkeypatch.setattr(FastPaths, "set_item", lambda self, obj, key, value, helper: [
            py.Expr(py_call(helper, obj, key, value))])
    return general


@pytest.mark.parametrize("name, args", CALLS)
def test_an_entry_point_charges_what_engine_run_charges(name, args):
    def entry(limits):
        return succeeds(lambda: new_engine(limits).load_source(FUNCTIONS).call(name, *args))

    def general(limits):  # Engine.run of f_<name>_<n>
        return succeeds(lambda: new_engine(limits).load_source(FUNCTIONS)._call(name, args))

    needed = fewest_operations(general)
    assert fewest_operations(entry) == needed
    assert entry(Limits(max_operations=needed, max_time=0))
    assert not entry(Limits(max_operations=needed - 1, max_time=0))


@pytest.mark.parametrize("name, args", CALLS)
def test_inlined_operations_charge_what_their_helpers_charge(name, args, without_fast_paths):
    def run(limits):
        return succeeds(lambda: new_engine(limits).load_source(FUNCTIONS).call(name, *args))

    fast = fewest_operations(run)
    without_fast_paths()
    assert fewest_operations(run) == fast


def test_the_top_level_charges_what_it_charges_without_fast_paths(without_fast_paths):
    def load(limits):
        return succeeds(lambda: new_engine(limits).load_source(TOP))

    fast = fewest_operations(load)
    without_fast_paths()
    assert fewest_operations(load) == fast


def test_errors_of_an_entry_point_of_four_arguments_keep_their_positions():
    script = new_engine().load_source(FUNCTIONS, "policy.vsl")
    for run in (lambda: script.call("check", 5, "r", "pass", {}),
                lambda: script._call("check", (5, "r", "pass", {}))):
        with pytest.raises(VslError, match="no method 'split'") as info:
            run()
        assert (info.value.pos.file, info.value.pos.line, info.value.pos.col) == \
            ("policy.vsl", 3, 25)
        assert [frame.function for frame in info.value.stack] == ["check"]


def test_a_hosts_int_beyond_i64_in_a_template_is_held_to_the_size_limit():
    """A template without a check of the whole text lets in only i64s, whose text fits the
    room left; a host's larger int goes to the helper, which checks the size."""
    source = "fn t(x) { `${x}:${x.len()}` }\nfn u(x) { `<${x}>` }\n"
    script = new_engine(Limits(max_string_size=45)).load_source(source, "t.vsl")
    assert script.call("t", "abc") == "abc:3"
    assert script.call("u", 2 ** 63 - 1) == f"<{2 ** 63 - 1}>"
    assert script.call("u", 10 ** 42) == f"<{10 ** 42}>"  # 45 characters
    with pytest.raises(LimitError, match="string too large"):
        script.call("u", 10 ** 43)


TEMPLATES = textwrap.dedent("""\
    fn short(a, b) { `${a}:${b}` }
    fn many(a) { `${a}""" + "-${a}" * 70 + """` }
    fn repeated(n, s) { let t = ""; for i in 0..n { t = `${i}<${s}>`; } t }
""")
TEMPLATE_CALLS = [("short", (7, "x")), ("short", ("a" * 300, 2 ** 63 - 1)),
                  ("many", ("abc",)), ("repeated", (50, "b" * 130)),
                  ("short", ("a" * 1000, "b"))]  # the last: longer than max_string_size


@pytest.mark.parametrize("name, args", TEMPLATE_CALLS)
@pytest.mark.parametrize("max_string_size", [1000, 0])
def test_a_template_charges_what_its_helper_charges(name, args, max_string_size,
                                                    monkeypatch):
    """The f-string of a template charges the parts and the text's size, as _tpl does."""
    def run(limits):
        limits = limits.with_changes(max_string_size=max_string_size)
        script = new_engine(limits).load_source(TEMPLATES)
        try:
            script.call(name, *args)
        except LimitError as err:  # too long: charged up to the error
            return "too many operations" not in err.message
        return True

    fast = fewest_operations(run)
    monkeypatch.setattr(FastPaths, "formattable", lambda self, *args: py.Constant(False))
    assert fewest_operations(run) == fast



IN_LOOP = textwrap.dedent("""\
    fn words(items) {
        let out = [];
        for w in items { out.push(`${w}:${w.len()}`); }
        out
    }
    fn pair(a, b) { let s = `${a}<${b}>`; s.to_upper() + `${s}!` }
""")


@pytest.mark.parametrize("name, args", [("words", (["a" * 100, "b", "c" * 70, "d" * 200],)),
                                        ("pair", ("c" * 150, "d" * 100))])
@pytest.mark.parametrize("max_time", [0, 60])  # the first chunk: all, or 16 operations
def test_a_template_charged_in_place_fails_where_its_helper_call_fails(name, args, max_time,
                                                                      monkeypatch):
    """A template's text is charged by statements (FastPaths.text_in_place), not by a
    call of _text, in a loop and in an entry point without a budget yet (_owed_charge):
    the same operations pass, and each limit below fails at the same template, with the
    same message and stack."""
    def outcomes():
        def error(limits):
            script = new_engine(limits.with_changes(max_time=max_time)).load_source(
                IN_LOOP, "w.vsl")
            try:
                script.call(name, *args)
            except LimitError as err:
                return err
            return None
        needed = fewest_operations(lambda limits: error(limits) is None)
        failures = [error(Limits(max_operations=n)) for n in range(max(needed - 12, 1), needed)]
        return needed, [(e.message, e.pos.line, e.pos.col, [f.function for f in e.stack])
                        for e in failures]

    in_place = outcomes()
    assert all(line in (3, 6) for _, line, _, _ in in_place[1])
    monkeypatch.setattr(FastPaths, "text_in_place", lambda self, *args: None)  # _text
    assert outcomes() == in_place


OWED = textwrap.dedent("""\
    fn one(a, b) { `${a}:${b}` }
    fn two(a) { let s = `${a}<${a}>`; s.to_upper() + `${s}!` }
""")
OWED_CALLS = [("one", (7, "x")), ("one", ("a" * 2000, "b")), ("two", ("abc",)),
              ("two", ("c" * 1500,))]


@pytest.mark.parametrize("name, args", OWED_CALLS)
@pytest.mark.parametrize("max_time", [0, 60])  # the first chunk: all, or 16 operations
def test_a_template_without_a_budget_is_held_to_the_limit_at_its_position(name, args,
                                                                         max_time):
    """A straight-line entry point counts its templates' work in a local until it needs a
    budget: N operations pass and N - 1 fail, as through Engine.run, with the error at the
    template that went over."""
    def error(limits, general=False):
        script = new_engine(limits.with_changes(max_time=max_time)).load_source(OWED, "o.vsl")
        try:
            script._call(name, args) if general else script.call(name, *args)
        except LimitError as err:
            return err
        return None

    needed = fewest_operations(lambda limits: error(limits, general=True) is None)
    assert error(Limits(max_operations=needed)) is None
    for limit in (needed - 1, max(needed - 3, 1)):
        fast, general = error(Limits(max_operations=limit)), \
            error(Limits(max_operations=limit), general=True)
        assert "too many operations" in fast.message
        assert (fast.pos.line, fast.pos.col) == (general.pos.line, general.pos.col)


NESTINGS = {  # each inline path nested in itself: its code must grow linearly
    "push": lambda x: f"a.push({x})",
    "index": lambda x: f"a[{x}]",
    "map index": lambda x: f"m[{x}]",
    "int pair": lambda x: f"({x} + n)",
    "int literal": lambda x: f"({x} * 3)",
    "comparison": lambda x: f"({x} < n)",
    "method": lambda x: f"s.starts_with({x})",
    "split": lambda x: f"({x}).split(\",\")",
    "in": lambda x: f"({x} in a)",
    "negation": lambda x: f"!({x})",
}


@pytest.mark.parametrize("name", NESTINGS)
def test_an_inline_path_nested_to_the_depth_limit_loads_at_once(name):
    """An inline path never copies a sub-expression into both of its branches (nested
    pushes doubled the code per level: 14 levels took 15 s to load)."""
    inner = "n"
    for _ in range(28):  # with their parentheses: near max_expr_depth (64)
        inner = NESTINGS[name](inner)
    source = (f"fn f(a, m, s, n) {{ let b = {inner}; b }}\n"
              f"fn g(a, m, s, n) {{ m[{inner}] = k(); m.x = {inner}; }}\nfn k() {{ 1 }}\n")
    started = time.process_time()
    new_engine(Limits(max_time=0)).load_source(source)
    assert time.process_time() - started < 1
