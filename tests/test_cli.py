"""The ``vsl`` command line, run as the installed console script."""
from __future__ import annotations

import json
import re
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mailsink import free_port

VSL = Path(sys.executable).parent / "vsl"

pytestmark = pytest.mark.skipif(not VSL.exists(), reason="the vsl console script is not installed")


def vsl(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(VSL), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- help --------------------------------------------------------------------------

def test_help_lists_commands():
    proc = vsl("--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("Usage: vsl")
    assert re.search(r"^\s+lint\s+\S", proc.stdout, re.M)
    assert re.search(r"^\s+run\s+\S", proc.stdout, re.M)


def test_short_help_option():
    assert vsl("-h").stdout == vsl("--help").stdout


def test_the_command_list_shows_each_commands_own_help():
    """`vsl --help` lists the commands from vsl.cli.COMMANDS without importing them: the
    help there is each command's own."""
    import click

    from vsl.cli import COMMANDS, main

    ctx = click.Context(main)
    for name, (_, _, first_sentence) in COMMANDS.items():
        assert main.get_command(ctx, name).get_short_help_str(1000) == first_sentence, name


def test_help_imports_neither_the_language_nor_the_server():
    code = ("import sys\nfrom vsl.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('lark', 'vsl.'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.rstrip().endswith("['vsl.cli']"), proc.stdout


def test_lint_help():
    proc = vsl("lint", "--help")
    assert proc.returncode == 0
    assert "Usage: vsl lint" in proc.stdout
    assert "--format" in proc.stdout and "json" in proc.stdout
    assert "Exit status 1" in proc.stdout


def test_run_help():
    proc = vsl("run", "--help")
    assert proc.returncode == 0
    for option in ("--call", "--arg", "--json"):
        assert option in proc.stdout


def test_unknown_command_is_a_usage_error():
    proc = vsl("frobnicate")
    assert proc.returncode == 2
    assert "No such command" in proc.stderr


# -- lint --------------------------------------------------------------------------

CLEAN = """\
const BLOCKED = ["spam.example"];

fn on_mail_from(ctx) {
    if ctx.sender.domain in global::BLOCKED {
        return status::deny("550 5.7.1 Sender blocked");
    }
    status::next()
}
"""


def test_lint_clean_file_exits_0_with_only_the_summary(tmp_path):
    f = write(tmp_path, "clean.vsl", CLEAN)
    proc = vsl("lint", f)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "0 errors, 0 warnings in 1 file\n")


def test_lint_error_exits_1_with_location(tmp_path):
    f = write(tmp_path, "bad.vsl", "fn on_helo(ctx) {\n    status::dny()\n}\n")
    proc = vsl("lint", "--format", "concise", f)
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert lines == [f"{f}:2:5: error: unknown function 'status::dny' (did you mean 'deny'?) "
                     "[unknown-function]"]


def test_lint_syntax_error_format(tmp_path):
    f = write(tmp_path, "syntax.vsl", "let x = 1 +;\n")
    proc = vsl("lint", "--format=concise", f)
    assert proc.returncode == 1
    assert re.fullmatch(re.escape(str(f)) + r":1:12: error: unexpected ';', expected .+ \[syntax\]\n",
                        proc.stdout)


def test_lint_warnings_only_exit_0(tmp_path):
    f = write(tmp_path, "warn.vsl", "fn len(x) {\n    let unused = 1;\n    3\n}\n")
    proc = vsl("lint", "--format", "concise", f)
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{f}:1:4: warning: function 'len' replaces the built-in method")
    assert lines[0].endswith("[shadows-method]")
    assert lines[1] == f"{f}:2:9: warning: variable 'unused' is never used [unused-variable]"
    assert proc.stderr == "0 errors, 2 warnings in 1 file\n"


def test_lint_every_line_has_the_documented_shape(tmp_path):
    f = write(tmp_path, "many.vsl", "let a = 1;\nnope;\nloop { break; }\ncontinue;\n"
                                    "status::deny(\"250 ok\");\n")
    proc = vsl("lint", "--format", "concise", f)
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 5
    shape = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+): (?P<sev>error|warning): "
                       r".+ \[(?P<code>[a-z-]+)\]$")
    parsed = [shape.match(line) for line in lines]
    assert all(parsed), lines
    assert [int(m["line"]) for m in parsed] == [1, 2, 4, 5, 5]
    assert [m["code"] for m in parsed] == ["unused-variable", "undefined-variable",
                                          "continue-outside-loop", "unreachable",
                                          "native-argument"]
    assert [m["sev"] for m in parsed] == ["warning", "error", "error", "warning", "error"]


def test_lint_json_format(tmp_path):
    warn = write(tmp_path, "a_warn.vsl", "fn f() {\n    let unused = 1;\n}\n")
    bad = write(tmp_path, "b_bad.vsl", "fn f() {\n    undefined_thing\n}\n")
    proc = vsl("lint", "--format", "json", warn, bad)
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert isinstance(data, list) and len(data) == 2
    for item in data:
        assert set(item) == {"file", "line", "col", "severity", "code", "message"}
        assert isinstance(item["line"], int) and isinstance(item["col"], int)
    assert data[0] == {"file": str(warn), "line": 2, "col": 9, "severity": "warning",
                       "code": "unused-variable", "message": "variable 'unused' is never used"}
    assert data[1]["file"] == str(bad)
    assert (data[1]["line"], data[1]["col"], data[1]["severity"], data[1]["code"]) == (
        2, 5, "error", "undefined-variable")
    assert "undefined_thing" in data[1]["message"]


def test_lint_json_clean_is_an_empty_list(tmp_path):
    f = write(tmp_path, "clean.vsl", CLEAN)
    proc = vsl("lint", "--format", "json", f)
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == []


def test_lint_json_syntax_error(tmp_path):
    f = write(tmp_path, "s.vsl", "fn f( {\n")
    proc = vsl("lint", "--format=json", f)
    assert proc.returncode == 1
    [item] = json.loads(proc.stdout)
    assert (item["line"], item["code"], item["severity"]) == (1, "syntax", "error")


def test_lint_directory_recurses_in_sorted_order(tmp_path):
    write(tmp_path, "b/inner.vsl", "nope1;\n")
    write(tmp_path, "a.vsl", "nope2;\n")
    write(tmp_path, "b/ignored.txt", "this is not a script {{{\n")
    proc = vsl("lint", "--format", "concise", tmp_path)
    assert proc.returncode == 1
    files = [line.split(":")[0] for line in proc.stdout.strip().splitlines()]
    assert files == [str(tmp_path / "a.vsl"), str(tmp_path / "b" / "inner.vsl")]


def test_lint_resolves_imports_from_the_files_directory(tmp_path):
    write(tmp_path, "lib.vsl", "fn twice(x) { x * 2 }\n")
    main = write(tmp_path, "main.vsl", 'import "lib" as lib;\nprint(lib::twice(2));\n'
                 'print(lib::thrice(2));\n')
    proc = vsl("lint", "--format", "concise", main, cwd=tmp_path.parent)
    assert proc.returncode == 1
    assert proc.stdout.strip() == (f"{main}:3:7: error: module 'lib' has no function 'thrice' "
                                   "(did you mean 'twice'?) [unknown-function]")


def test_lint_full_format_shows_the_line_a_caret_and_a_summary(tmp_path):
    a = write(tmp_path, "a.vsl", "fn f() {\n\tlet unused = 1;\n    status::dny()\n}\n")
    write(tmp_path, "b.vsl", "let x = 1\nlet y = x;\nprint(y);\n")
    write(tmp_path, "c.vsl", "print(1);\n")
    proc = vsl("lint", tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == (
        f"{a}:2:6: warning: variable 'unused' is never used [unused-variable]\n"
        "   let unused = 1;\n"
        "       ^\n\n"
        f"{a}:3:5: error: unknown function 'status::dny' (did you mean 'deny'?) "
        "[unknown-function]\n"
        "      status::dny()\n"
        "      ^\n\n"
        f"{tmp_path / 'b.vsl'}:1:10: error: missing ';' (add `;` here: the next line starts "
        "with 'let') [syntax]\n"
        "  let x = 1\n"
        "           ^\n")
    assert proc.stderr == "2 errors, 1 warning in 3 files\n"


def test_lint_warns_about_a_directory_without_scripts(tmp_path):
    (tmp_path / "empty").mkdir()
    write(tmp_path, "ok.vsl", "print(1);\n")
    proc = vsl("lint", "--format", "concise", tmp_path / "empty", tmp_path / "ok.vsl")
    assert proc.returncode == 0
    assert proc.stdout == f"{tmp_path / 'empty'}: warning: no .vsl file here [no-scripts]\n"
    assert proc.stderr == "0 errors, 1 warning in 1 file\n"


def test_lint_missing_path_is_a_usage_error(tmp_path):
    proc = vsl("lint", tmp_path / "missing.vsl")
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr


def test_lint_needs_a_path():
    proc = vsl("lint")
    assert proc.returncode == 2
    assert "Missing argument" in proc.stderr


# -- run ---------------------------------------------------------------------------

def test_run_prints_top_level_array(tmp_path):
    proc = vsl("run", write(tmp_path, "a.vsl", "[1, 2]\n"))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "[1, 2]\n", "")


def test_run_prints_top_level_map(tmp_path):
    proc = vsl("run", write(tmp_path, "m.vsl", 'let m = #{"a": 1};\nm\n'))
    assert (proc.returncode, proc.stdout) == (0, '#{"a": 1}\n')


@pytest.mark.parametrize("source, shown", [
    ('"héllo"', "héllo"),
    ("()", "()"),
    ("1.5", "1.5"),
    ("2.0", "2.0"),
    ("true", "true"),
    ('["a", #{"k": [1, "b"]}]', '["a", #{"k": [1, "b"]}]'),
    ("status::deny()", "deny(554 5.7.1 Transaction rejected by policy)"),
    ("let x = 40; x + 2", "42"),
])
def test_run_display(tmp_path, source, shown):
    proc = vsl("run", write(tmp_path, "v.vsl", source + "\n"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == shown + "\n"


@pytest.mark.parametrize("source, data", [
    ("[1, 2]", [1, 2]),
    ('#{"a": 1, "b": [true, ()]}', {"a": 1, "b": [True, None]}),
    ('"héllo"', "héllo"),
    ("()", None),
    ("1.5", 1.5),
    ("0..3", [0, 1, 2]),
])
def test_run_json(tmp_path, source, data):
    proc = vsl("run", "--json", write(tmp_path, "v.vsl", source + "\n"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == data


FUNCS = """\
fn f(n, s) { [n * 2, s] }
fn key_list(m) { m.keys() }
fn g() { 1 / 0 }
fn h(x) { g() }
fn none() { 7 }
"""


def test_run_call_with_json_args(tmp_path):
    f = write(tmp_path, "f.vsl", FUNCS)
    proc = vsl("run", "--call", "f", "--arg", "2", "--arg", '"x"', f)
    assert (proc.returncode, proc.stdout) == (0, '[4, "x"]\n')


def test_run_call_json_output(tmp_path):
    f = write(tmp_path, "f.vsl", FUNCS)
    proc = vsl("run", f, "--call", "f", "--arg", "2", "--arg", '"x"', "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == [4, "x"]


def test_run_call_with_map_arg(tmp_path):
    f = write(tmp_path, "f.vsl", FUNCS)
    proc = vsl("run", f, "--call", "key_list", "--arg", '{"b": 1, "a": 2}', "--json")
    assert proc.returncode == 0
    assert sorted(json.loads(proc.stdout)) == ["a", "b"]


def test_run_call_without_args(tmp_path):
    f = write(tmp_path, "f.vsl", FUNCS)
    proc = vsl("run", f, "--call", "none")
    assert (proc.returncode, proc.stdout) == (0, "7\n")


def test_run_call_unknown_function(tmp_path):
    f = write(tmp_path, "f.vsl", FUNCS)
    proc = vsl("run", f, "--call", "f", "--arg", "1")
    assert proc.returncode == 1
    assert "no function 'f' with 1 parameter(s)" in proc.stderr
    assert proc.stdout == ""


def test_run_call_of_a_misspelled_function_suggests_one(tmp_path):
    f = write(tmp_path, "f.vsl", "fn on_helo(ctx) { status::next() }\n")
    proc = vsl("run", f, "--call", "on_hello", "--arg", "{}")
    assert proc.returncode == 1
    assert "hint: did you mean 'on_helo'?" in proc.stderr


STAGE = """\
fn on_rcpt_to(ctx) {
    if ctx.sender.domain == "spam.example" || ctx.rcpt.local_part == "abuse" {
        return status::deny("550 5.7.1 no");
    }
    status::accept(`250 ${ctx.recipients.len()} ${ctx.recipients[0].domain}`)
}
"""


@pytest.mark.parametrize("ctx, printed", [
    ('{"sender": "a@spam.example", "rcpt": "b@x.test", "recipients": ["b@x.test"]}',
     "deny(550 5.7.1 no)"),
    ('{"sender": "a@ok.test", "rcpt": "abuse@x.test", "recipients": []}', "deny(550 5.7.1 no)"),
    ('{"sender": "a@ok.test", "rcpt": "b@x.test", "recipients": ["b@X.test"]}',
     "accept(250 1 X.test)"),
])
def test_run_call_of_a_stage_makes_the_addresses_of_its_ctx_mailboxes(tmp_path, ctx, printed):
    proc = vsl("run", write(tmp_path, "s.vsl", STAGE), "--call", "on_rcpt_to", "--arg", ctx)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, printed, "")


def test_run_call_of_a_stage_refuses_a_ctx_address_that_is_none(tmp_path):
    proc = vsl("run", write(tmp_path, "s.vsl", STAGE), "--call", "on_rcpt_to", "--arg",
               '{"sender": "a@@x.test", "rcpt": "b@x.test"}')
    assert proc.returncode == 2
    assert '"a@@x.test" is not an address' in proc.stderr


def test_run_arg_without_call_is_a_usage_error(tmp_path):
    proc = vsl("run", "--arg", "1", write(tmp_path, "a.vsl", "1\n"))
    assert proc.returncode == 2
    assert "--arg needs --call" in proc.stderr


@pytest.mark.parametrize("arg", ["{bad", "99999999999999999999", "'single'"])
def test_run_bad_json_arg_is_a_usage_error(tmp_path, arg):
    f = write(tmp_path, "f.vsl", FUNCS)
    proc = vsl("run", f, "--call", "h", "--arg", arg)
    assert proc.returncode == 2
    assert "--arg" in proc.stderr


def test_run_runtime_error_in_function(tmp_path):
    f = write(tmp_path, "f.vsl", FUNCS)
    proc = vsl("run", f, "--call", "h", "--arg", "1")
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0] == f"{f}:3:12: division by zero"
    assert lines[1] == "  fn g() { 1 / 0 }"
    assert lines[2] == "  " + " " * 11 + "^"
    assert lines[3] == f"  in g at {f}:3:12"
    assert lines[4] == f"  in h at {f}:4:11"
    assert len(lines) == 5


def test_run_runtime_error_at_top_level(tmp_path):
    f = write(tmp_path, "top.vsl", "let xs = [1];\nlet y = xs[5];\n")
    proc = vsl("run", f)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert re.fullmatch(re.escape(str(f)) + r":2:\d+: array index 5 out of bounds \(length 1\)",
                        lines[0])
    col = int(lines[0].split(":")[2])
    assert lines[1] == "  let y = xs[5];"
    assert lines[2] == "  " + " " * (col - 1) + "^"
    assert lines[3] == f"  in <top level> at {f}:2:{col}"


def test_run_call_of_a_stage_that_returns_no_status_exits_1(tmp_path):
    f = write(tmp_path, "stage.vsl", 'fn on_helo(ctx) {\n    if ctx.helo == "x" {\n'
                                     '        let reply = "550 go away";\n'
                                     '        return reply;\n    }\n    status::next()\n}\n')
    proc = vsl("run", f, "--call", "on_helo", "--arg", '{"helo": "x"}')
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"{f}:4:9: on_helo returned a string, not a status (use ")
    proc = vsl("run", f, "--call", "on_helo", "--arg", '{"helo": "y"}')
    assert (proc.returncode, proc.stdout) == (0, "next()\n")


def test_run_thrown_value(tmp_path):
    f = write(tmp_path, "th.vsl", 'fn fail(why) {\n    throw `nope: ${why}`;\n}\nfail("x")\n')
    proc = vsl("run", f)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == f"{f}:2:5: nope: x"
    assert lines[1] == "      throw `nope: ${why}`;"
    assert lines[2] == "      ^"
    assert lines[3] == f"  in fail at {f}:2:5"
    assert lines[4] == f"  in <top level> at {f}:4:1"


def test_run_runaway_recursion_is_reported_compactly(tmp_path):
    f = write(tmp_path, "rec.vsl", "fn r(n) { r(n + 1) }\nr(0)\n")
    proc = vsl("run", f)
    assert proc.returncode == 1
    assert "call depth limit exceeded" in proc.stderr.splitlines()[0]
    assert "repeated" in proc.stderr
    assert len(proc.stderr.splitlines()) < 12


def test_run_syntax_error(tmp_path):
    f = write(tmp_path, "bad.vsl", "let a = 1;\nlet x = 1 +;\n")
    proc = vsl("run", f)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert re.fullmatch(re.escape(str(f)) + r":2:12: unexpected ';', expected .+", lines[0])
    assert lines[1] == "  let x = 1 +;"
    assert lines[2] == "  " + " " * 11 + "^"
    assert len(lines) == 3


def test_run_static_error_is_reported_before_running(tmp_path):
    f = write(tmp_path, "static.vsl", 'print("ran");\nfn f() {\n    nope\n}\n')
    proc = vsl("run", f)
    assert proc.returncode == 1
    assert "ran" not in proc.stdout
    lines = proc.stderr.splitlines()
    assert lines[0] == f"{f}:3:5: undefined variable 'nope'"
    assert lines[1] == "      nope"
    assert lines[2] == "      ^"


def test_run_print_goes_to_stdout_before_the_result(tmp_path):
    f = write(tmp_path, "p.vsl", 'print("first");\nprint(`second ${1 + 1}`);\n"result"\n')
    proc = vsl("run", f)
    assert (proc.returncode, proc.stdout) == (0, "first\nsecond 2\nresult\n")


def test_run_imports_relative_to_the_script(tmp_path):
    write(tmp_path, "lib/util.vsl", "fn twice(x) { x * 2 }\n")
    f = write(tmp_path, "main.vsl", 'import "lib/util" as u;\nu::twice(21)\n')
    proc = vsl("run", f, cwd="/")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "42\n", "")


def test_run_missing_file_is_a_usage_error(tmp_path):
    proc = vsl("run", tmp_path / "nope.vsl")
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr


def test_run_directory_is_a_usage_error(tmp_path):
    proc = vsl("run", tmp_path)
    assert proc.returncode == 2


# -- operator hints --------------------------------------------------------------------

def test_version():
    proc = vsl("--version")
    assert proc.returncode == 0
    assert re.fullmatch(r"vsl, version \d+\.\d+\S*\n", proc.stdout)


def test_run_call_without_its_args_hints_at_arg(tmp_path):
    f = write(tmp_path, "f.vsl", "fn on_helo(ctx) { ctx.helo }\n")
    proc = vsl("run", f, "--call", "on_helo")
    assert proc.returncode == 1
    assert "on_helo takes 1 argument(s): give each with --arg JSON" in proc.stderr


def test_lint_of_a_directory_of_rhai_scripts_says_so(tmp_path):
    write(tmp_path, "main.rhai", "#{}\n")
    write(tmp_path, "sub/other.rhai", "#{}\n")
    proc = vsl("lint", tmp_path)
    assert proc.returncode == 1
    assert (f"{tmp_path}: error: no .vsl file here (2 .rhai file(s): vSL scripts end in .vsl)"
            " [no-scripts]") in proc.stdout


def test_test_with_rhai_scripts_is_an_error(tmp_path):
    write(tmp_path, "main.rhai", "#{}\n")
    t = write(tmp_path, "t.transcript", "S: 220 *\n")
    proc = vsl("test", "--scripts", tmp_path, t)
    assert proc.returncode == 1
    assert "no main.vsl (1 .rhai file(s): vSL scripts end in .vsl)" in proc.stdout


def test_serve_with_rhai_scripts_says_so(tmp_path):
    write(tmp_path, "scripts/main.rhai", "#{}\n")
    proc = vsl("serve", "--scripts", tmp_path / "scripts", "--listen", "127.0.0.1:1",
               "--queue-dir", tmp_path / "q")
    assert proc.returncode == 1
    assert "no main.vsl (the policy) there (1 .rhai file(s)" in proc.stderr


# -- local DNS: --zone, --dns-override -------------------------------------------------

ZONE = "$ORIGIN example.test.\n$TTL 300\nmail A 192.0.2.7\n"
GOOGLE = 'dns::resolver(#{ config: "google_tls", timeout: 2 })'


def test_run_zone_answers_every_resolver(tmp_path):
    zone = write(tmp_path, "z.zone", ZONE)
    f = write(tmp_path, "f.vsl", f'[{GOOGLE}.lookup("mail.example.test", "A"), '
                                 f'{GOOGLE}.lookup("none.example.test", "A")]\n')
    proc = vsl("run", "--zone", zone, f, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [["192.0.2.7"], []]


def test_run_zone_error_is_reported(tmp_path):
    proc = vsl("run", "--zone", tmp_path / "none.zone", write(tmp_path, "a.vsl", "1\n"))
    assert proc.returncode != 0
    assert "none.zone: cannot read" in proc.stderr and "Traceback" not in proc.stderr



def test_serve_zone_answers_the_scripts_resolvers(tmp_path):
    zone = write(tmp_path, "z.zone", ZONE)
    write(tmp_path, "scripts/main.vsl",
          f'fn on_helo(ctx) {{\n    if {GOOGLE}.lookup(ctx.helo, "A") == [] {{\n'
          '        return status::deny("550 5.7.1 who?");\n    }\n    status::next()\n}\n')
    port = free_port()
    proc = subprocess.Popen(
        [str(VSL), "serve", "--zone", str(zone), "--scripts", str(tmp_path / "scripts"),
         "--listen", f"127.0.0.1:{port}", "--queue-dir", str(tmp_path / "queue"),
         "--hostname", "mx.test"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert any("zones served on 127.0.0.1:" in line for line in lines), lines
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            assert client.helo("mail.example.test")[0] == 250
            assert client.helo("none.example.test")[0] == 550
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_zone_with_workers_is_a_usage_error(tmp_path, monkeypatch):
    """--zone serves from a thread of this process, which cannot fork workers."""
    from click.testing import CliRunner

    from vsl.cli import main, serve

    served = []
    monkeypatch.setattr(serve, "_serve", lambda config, role: served.append(config))
    zone = write(tmp_path, "z.zone", ZONE)
    result = CliRunner().invoke(main, ["serve", "--zone", str(zone), "--workers", "2",
                                       "--queue-dir", str(tmp_path / "q")])
    assert result.exit_code == 2 and served == []
    assert "give --workers 1" in result.output


def test_serve_dns_is_checked_like_the_other_nameservers(tmp_path, monkeypatch):
    """`--dns not-an-ip` stops the start, as `[dns] nameservers` and `--dns-override` do."""
    from click.testing import CliRunner

    from vsl.cli import main, serve

    served = []
    monkeypatch.setattr(serve, "_serve", lambda config, role: served.append(config))
    result = CliRunner().invoke(main, ["serve", "--dns", "not-an-ip",
                                       "--queue-dir", str(tmp_path / "q")])
    assert result.exit_code == 1 and served == []
    assert "--dns: " in result.output and "not-an-ip" in result.output
    result = CliRunner().invoke(main, ["serve", "--dns", "127.0.0.1:5353",
                                       "--queue-dir", str(tmp_path / "q")])
    assert result.exit_code == 0 and served[0].dns.nameservers == ("127.0.0.1:5353",)
