"""Hardening of the language core: injective generated names, errors with positions for
every import problem, bounded and linear loading, and engine slips that were internal
errors."""
from __future__ import annotations

import math
import os
from pathlib import Path
import re
import subprocess
import sys
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from vsl.server import policy as policy_module
from vsl.server.config import from_dict
from tests.support.servers import config_for, running
from tests.support.smtp_tools import wait_for
from tests.test_server_reload import policy, verdict, write
from vsl.engine import Engine
from vsl.errors import LimitError, VslError, VslSyntaxError
from vsl.limits import Limits
from vsl.stdlib import new_engine
from vsl.lint import Linter, script_files

VSL = Path(sys.executable).with_name("vsl")


def value(source: str, script_dir=None):
    return new_engine().load_source(source, "t.vsl", script_dir).top_value


# ---- generated names are injective ----------------------------------------------------
@pytest.mark.parametrize("source, expected", [
    ("let x = 1; let x_1 = 2; let x = 3; x_1", 2),
    ("const LIMIT_1 = 10; let LIMIT = 0; let LIMIT = 999; LIMIT_1", 10),
    ("let v = 1; let v = 2; let v1_v = 3; v1_v", 3),
])
def test_redeclared_names_do_not_collide(source, expected):
    assert value(source) == expected


def test_import_aliases_do_not_collide(tmp_path):
    (tmp_path / "x.vsl").write_text('fn c(n) { "x::c" }')
    (tmp_path / "y.vsl").write_text('fn b_c(n) { "y::b_c" }')
    source = 'import "x" as a_b; import "y" as a; [a_b::c(1), a::b_c(1)]'
    assert value(source, tmp_path) == ["x::c", "y::b_c"]


# Names built to collide under a naive "name_N" scheme.
_NAMES = ["x", "x_1", "x_2", "x_1_1", "_x", "v", "v_x", "v1_x", "x1"]


@st.composite
def _programs(draw):
    """A block of lets (some in nested blocks) and the reference values, computed with
    plain Python scoping: the expected value of every name at the end."""
    statements, scope = [], {}

    def block(depth: int, scopes: list) -> list[str]:
        out = []
        for _ in range(draw(st.integers(1, 5))):
            if depth < 2 and draw(st.booleans()):
                out.append("{ " + " ".join(block(depth + 1, scopes + [{}])) + " }")
                continue
            name, n = draw(st.sampled_from(_NAMES)), draw(st.integers(0, 99))
            out.append(f"let {name} = {n};")
            scopes[-1][name] = n
        return out

    statements = block(0, [scope])
    names = sorted(scope)
    return " ".join(statements) + " [" + ", ".join(names) + "]", [scope[n] for n in names]


@settings(max_examples=150, deadline=None)
@given(_programs())
def test_random_redeclarations_agree_with_python_scoping(program):
    source, expected = program
    assert value(source) == expected


# ---- engine slips: script errors with positions, limits that hold exactly ----------
def load_error(source: str, engine: Engine | None = None) -> VslError:
    with pytest.raises(VslError) as info:
        (engine or new_engine()).load_source(source, "t.vsl")
    assert info.value.pos is not None, "every error has a position"
    assert "internal error" not in info.value.message
    return info.value


def caught(expression: str):
    """A script whose ``f(x)`` is ``expression``, or "caught: <message>" if it throws."""
    return new_engine().load_source(
        f"fn f(x) {{ let r = (); try {{ r = {expression}; }} catch (e) {{ r = `caught: ${{e}}`; }} r }}",
        "t.vsl")


@pytest.mark.parametrize("index", [200_000, 100_000, -1, 0])
def test_insert_into_a_full_array_changes_nothing(index):
    script = new_engine(Limits(max_array_size=5)).load_source(
        f"fn f(a) {{ a.insert({index}, 9) }}", "t.vsl")
    full = [1, 2, 3, 4, 5]
    with pytest.raises(LimitError, match="array too large") as info:
        script.call("f", full)
    assert info.value.pos.line == 1
    assert full == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("literal", ["1e999999", "-1e999999", "1.5e309"])
def test_a_float_literal_that_overflows_is_a_syntax_error(literal):
    err = load_error(f"let x = {literal};")
    assert isinstance(err, VslSyntaxError)
    assert re.search("float literal .* out of range", err.message)
    assert (err.pos.line, err.pos.col) == (1, 9 + literal.startswith("-"))


@pytest.mark.parametrize("call", ["x % 2.0", "x.floor()", "x.round()", "x.ceiling()",
                                  "x.to_int()", "2.0 % x"])
@pytest.mark.parametrize("x", [math.inf, -math.inf, math.nan])
def test_non_finite_floats_from_the_host_are_script_errors(call, x):
    result = caught(call).call("f", x)
    assert type(result) is float or re.fullmatch(r"caught: .*(inf|nan).*", result)
    assert "Error" not in str(result)


@pytest.mark.parametrize("digits, expected", [
    ("1" * 5000, "caught: .* out of range for an integer"), ("0" * 5000 + "7", 7), ("-" + "0" * 5000, 0)])
def test_parse_int_of_thousands_of_digits(digits, expected):
    result = caught("x.parse_int()").call("f", digits)
    assert result == expected if type(expected) is int else re.fullmatch(expected, result)


@pytest.mark.parametrize("flag", [[], ["--json"]])
def test_vsl_run_of_a_deeply_nested_value_is_an_error_not_a_traceback(tmp_path, flag):
    script = tmp_path / "deep.vsl"
    script.write_text("let a = []; for i in 0..1000 { a = [a]; } a")
    done = subprocess.run([VSL, "run", *flag, script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert re.match(r".*deep.vsl:\d+:\d+: value nested more than \d+ levels", done.stderr)


@pytest.mark.parametrize("arg", ["[" * 1000 + "]" * 1000, "1e999", "NaN"])
def test_vsl_run_refuses_arguments_a_script_cannot_hold(tmp_path, arg):
    script = tmp_path / "f.vsl"
    script.write_text("fn f(x) { x }")
    done = subprocess.run([VSL, "run", script, "--call", "f", "--arg", arg],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--arg" in done.stderr


# ---- every import problem is a VslError with a position; the watcher never dies -------
def chain_of_imports(directory: Path, depth: int) -> Path:
    """main.vsl imports m0, which imports m1, ... ``depth`` modules deep."""
    for i in range(depth):
        text = f'import "m{i + 1}" as n;\nfn f(x) {{ n::f(x) }}\n' if i < depth - 1 else \
            "fn f(x) { x }\n"
        (directory / f"m{i}.vsl").write_text(text)
    main = directory / "main.vsl"
    main.write_text('import "m0" as n;\nfn on_helo(ctx) { status::next() }\n')
    return main


BAD_IMPORTS = {
    "nul byte": 'import "a\\0b" as x;\nfn on_helo(ctx) { status::next() }\n',
    "directory": 'import "sub" as x;\nfn on_helo(ctx) { status::next() }\n',
    "long name": f'import "{"a" * 5000}" as x;\nfn on_helo(ctx) {{ status::next() }}\n',
    "fifo": 'import "fifo" as x;\nfn on_helo(ctx) { status::next() }\n',  # reading it blocks
}


def bad_import(directory: Path, kind: str) -> Path:
    (directory / "sub.vsl").mkdir()
    os.mkfifo(directory / "fifo.vsl")
    main = directory / "main.vsl"
    if kind == "deep chain":
        return chain_of_imports(directory, 1500)
    main.write_text(BAD_IMPORTS[kind])
    return main


@pytest.mark.parametrize("kind", [*BAD_IMPORTS, "deep chain"])
@pytest.mark.parametrize("max_modules", [64, 0])
def test_a_bad_import_is_a_located_error_when_loading(tmp_path, kind, max_modules):
    main = bad_import(tmp_path, kind)
    with pytest.raises(VslError) as info:
        new_engine(Limits(max_modules=max_modules)).load(main)
    assert info.value.pos is not None and info.value.pos.line == 1
    assert "internal error" not in info.value.message


@pytest.mark.parametrize("kind", [*BAD_IMPORTS, "deep chain"])
@pytest.mark.parametrize("command", ["lint", "run"])
def test_a_bad_import_is_reported_by_the_cli_without_a_traceback(tmp_path, kind, command):
    main = bad_import(tmp_path, kind)
    done = subprocess.run([VSL, command, main], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert re.search(r"main\.vsl:1:\d+", done.stderr + done.stdout)


@pytest.mark.parametrize("bad", ["nul import", "deep chain", "unexpected error"])
def test_the_watcher_survives_a_bad_edit_and_loads_a_later_good_one(tmp_path, caplog,
                                                                    monkeypatch, bad):
    with running(config_for(tmp_path, policy("v1", "a"))) as server:
        port, main = server.port(), server.config.scripts / "main.vsl"
        if bad == "unexpected error":
            monkeypatch.setattr(policy_module, "load_policy", _fails_once(monkeypatch))
            write(main, policy("v1b", "a"))
        elif bad == "deep chain":
            chain_of_imports(server.config.scripts, 100)
            write(main, 'import "m0" as n;\n' + policy("v1b", "a"))
        else:
            write(main, 'import "a\\0b" as x;\n' + policy("v1b", "a"))
        assert wait_for(lambda: "reload failed" in caplog.text, 15, 0.1), caplog.text
        assert verdict(port, "a@example.test") == (550, b"5.7.1 refused by v1")
        for module in server.config.scripts.glob("m*.vsl"):
            module.unlink()
        write(main, policy("v2", "b"))
        assert wait_for(lambda: verdict(port, "b@example.test")[0] == 550, 15, 0.2), \
            "a good edit after the bad one was not loaded"


def _fails_once(monkeypatch):
    original = policy_module.load_policy

    def fails(engine, directory):
        monkeypatch.setattr(policy_module, "load_policy", original)
        raise RuntimeError("a bug in the loader")
    return fails


def test_sessions_are_answered_while_a_slow_reload_runs(tmp_path, monkeypatch):
    """The watcher's reload runs off the event loop: a CPU-bound load of 3 s (Python code
    that holds the GIL between switches) does not hold up the sessions meanwhile."""
    started, original = [], policy_module.load_policy

    def slow(engine, directory):
        started.append(time.monotonic())
        while time.monotonic() < started[0] + 3:
            pass
        return original(engine, directory)

    with running(config_for(tmp_path, policy("v1", "a"))) as server:
        port = server.port()
        monkeypatch.setattr(policy_module, "load_policy", slow)
        write(server.config.scripts / "main.vsl", policy("v2", "b"))
        assert wait_for(lambda: started, 15, 0.05)
        begin = time.monotonic()
        assert verdict(port, "a@example.test") == (550, b"5.7.1 refused by v1")
        assert time.monotonic() - begin < 1.5
        assert time.monotonic() < started[0] + 3, "the reload ended before the session"
        assert wait_for(lambda: verdict(port, "b@example.test")[0] == 550, 20, 0.2)


# ---- bounded loading -------------------------------------------------------------------
@pytest.mark.parametrize("size, loads", [(1000, True), (1001, False)])
def test_a_script_longer_than_max_script_size_is_refused_before_parsing(size, loads):
    source = "let x = 1;" + " " * (size - len("let x = 1;"))
    engine = new_engine(Limits(max_script_size=1000))
    if loads:
        engine.load_source(source, "t.vsl")
        return
    with pytest.raises(LimitError, match=r"script too large \(1001 characters > limit 1000, "
                                         r"limits.max_script_size\)") as info:
        engine.load_source(source, "t.vsl")
    assert (info.value.pos.line, info.value.pos.col) == (1, 1)


def test_an_imported_module_and_the_linter_obey_max_script_size(tmp_path):
    (tmp_path / "big.vsl").write_text("const X = 1;" + " " * 2000)
    main = tmp_path / "main.vsl"
    main.write_text('import "big" as big;\nbig::X\n')
    engine = new_engine(Limits(max_script_size=1000))
    with pytest.raises(LimitError, match="script too large") as info:
        engine.load(main)
    assert info.value.stack[0].pos.file == str(main)
    findings = Linter(engine).lint_file(main)
    assert any("script too large" in d.message and d.line == 1 for d in findings)


def test_max_script_size_is_a_vsl_toml_key(tmp_path):
    config = from_dict({"script_limits": {"max_script_size": 5000}}, tmp_path)
    assert config.script_limits.max_script_size == 5000
    assert from_dict({}, tmp_path).script_limits.max_script_size == 1_000_000


# ---- reading script files: only regular files, never more than the limit --------------
def finishes(call, timeout: float = 30):
    """``call()``'s result (or the error it raised), run in a thread: a call that blocks
    (on a FIFO, say) fails the test instead of hanging the suite."""
    outcome = []

    def run():
        try:
            outcome.append(call())
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome.append(err)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"still running after {timeout} s (blocked reading a script?)")
    return outcome[0]


def good_main(directory: Path) -> Path:
    main = directory / "main.vsl"
    main.write_text("fn on_helo(ctx) { status::next() }\n")
    return main


def test_a_fifo_in_the_script_directory_neither_hangs_lint_nor_the_policy_load(tmp_path):
    good_main(tmp_path)
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "sub" / "pipe.vsl")
    linter = Linter(new_engine())
    findings = finishes(lambda: [d for f in script_files([tmp_path]) for d in linter.lint_file(f)])
    assert [(Path(d.file).name, d.severity, d.message) for d in findings] == \
        [("pipe.vsl", "error", "cannot read: not a regular file")]
    error = finishes(lambda: policy_module.load_policy(new_engine(), tmp_path))
    assert isinstance(error, policy_module.PolicyError)
    assert "pipe.vsl:1:1: error: cannot read: not a regular file" in str(error)


@pytest.mark.parametrize("command", ["lint", "run"])
def test_a_fifo_as_main_vsl_is_refused_by_the_cli(tmp_path, command):
    os.mkfifo(tmp_path / "main.vsl")
    done = subprocess.run([VSL, command, tmp_path / "main.vsl"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "not a regular file" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_the_engine_refuses_a_fifo_as_main_script(tmp_path):
    os.mkfifo(tmp_path / "main.vsl")
    error = finishes(lambda: new_engine().load(tmp_path / "main.vsl"))
    assert isinstance(error, VslError) and "not a regular file" in error.message


def unbounded(directory: Path, kind: str) -> Path:
    """A main.vsl that reading whole would never end: a link to /dev/zero, or a sparse
    file of 1 TB."""
    main = directory / "main.vsl"
    if kind == "/dev/zero":
        main.symlink_to("/dev/zero")
    else:
        good_main(directory)
        os.truncate(main, 1 << 40)
    return main


@pytest.mark.parametrize("kind, message", [
    ("/dev/zero", "cannot read script: not a regular file"),
    ("sparse 1 TB", "script too large (more than 1000000 characters, "
                    "limits.max_script_size)"),
], ids=["dev-zero", "sparse"])
@pytest.mark.parametrize("command", ["lint", "run"])
def test_an_endless_main_vsl_is_refused_without_reading_it_all(tmp_path, kind, message,
                                                               command):
    """In a process, killed after the timeout: a regression would fill the memory."""
    main = unbounded(tmp_path, kind)
    done = subprocess.run([VSL, command, main], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert message.split(": ")[-1] in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_an_endless_import_is_refused_at_the_import(tmp_path):
    main = tmp_path / "main.vsl"
    unbounded(tmp_path, "sparse 1 TB").rename(tmp_path / "big.vsl")
    main.write_text('let x = 1;\nimport "big" as big;\n')
    done = subprocess.run([VSL, "run", main], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "script too large" in done.stderr and f"in <import> at {main}:2:1" in done.stderr
    done = subprocess.run([VSL, "lint", main], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"{main}:2:1: error: module 'big' does not parse: script too large" in done.stdout
