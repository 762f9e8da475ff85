"""The linter: every chunk of tests/lint/*.vsl is linted as its own file.

A line holding ``// ### "regex"`` expects a finding on that line whose text
``"<severity>: <message> [<code>]"`` matches the regex; every finding must be
on such a line and match it, and a chunk without ``###`` must lint clean.
Import fixtures live in tests/lint/modules/ (imports are relative to tests/lint).
"""
from __future__ import annotations

import random
import re
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.chunks import collect

ROOT = Path(__file__).resolve().parent.parent
from vsl.stdlib.ctx import entry_points
from vsl.engine import Engine
from vsl.stdlib import new_engine
from vsl.lint import Linter, empty_dirs, format_full, no_script_findings, script_files
from vsl.server.observability_config import ScriptMetric

STAGE_ENTRIES = entry_points()
STAGES = STAGE_ENTRIES.names

LINT = Path(__file__).parent / "lint"
CHUNK_METRICS = (  # the [metrics.script.*] declarations tests/lint/metrics.vsl lints against
    ScriptMetric("spam_hit", "spam", (("reason", ("rbl", "content")), ("stage", ("rcpt", "data")))),
    ScriptMetric("seen", "seen"))
CHUNKS = collect(LINT)
VSL = Path(sys.executable).parent / "vsl"


def finding_text(d) -> str:
    return f"{d.severity}: {d.message} [{d.code}]"


def test_enough_chunks():
    assert len(CHUNKS) >= 60


def test_every_rule_is_covered():
    """Each diagnostic code the resolver and linter can emit has at least one expectation."""
    expected = " ".join(p for c in CHUNKS for p in c.expected.values())
    sources = "".join((ROOT / f).read_text()
                      for f in ("vsl/resolve.py", "vsl/lint.py", "vsl/checks.py"))
    codes = set(re.findall(r'self\.(?:error\(|warn\(|report\(severity,)\s*"([a-z-]+)"',
                           sources))
    codes |= {STAGE_ENTRIES.code(rule)  # about entry points: in the host's word
              for rule in re.findall(r'code\("([a-z{}-]+)"\)', sources)}
    codes |= {"syntax", "import"}  # reported by the linter itself
    codes |= {"unknown-property"}  # checks.py chooses it or unknown-method by member kind
    codes -= {"wait-in-closure"}  # needs an async native: test_wait_in_closure_needs_...
    missing = [c for c in codes if f"[{c}]" not in expected.replace("\\[", "[").replace("\\]", "]")]
    assert not missing, f"no chunk expects {missing}"


@pytest.mark.parametrize("chunk", CHUNKS, ids=[c.id for c in CHUNKS])
def test_chunk(chunk):
    findings = Linter(new_engine(script_metrics=CHUNK_METRICS), entry_points()).lint_source(
        chunk.source, str(chunk.path), chunk.path.parent)
    problems = []
    matched = set()
    for d in findings:
        assert d.file == str(chunk.path)
        text = finding_text(d)
        pattern = chunk.expected.get(d.line)
        if pattern is None:
            problems.append(f"line {d.line}: unexpected finding: {text}")
        elif not re.search(pattern, text):
            problems.append(f"line {d.line}: finding {text!r} does not match {pattern!r}")
        else:
            matched.add(d.line)
    for line, pattern in chunk.expected.items():
        if line not in matched:
            problems.append(f"line {line}: no finding matching {pattern!r}")
    assert not problems, "\n".join(problems)


def test_findings_are_sorted_and_positioned():
    src = 'fn f() {\n    nope;\n    let unused = 1;\n    status::dny();\n}\n'
    findings = Linter(new_engine()).lint_source(src, "p.vsl", None)
    assert [(d.line, d.col, d.code) for d in findings] == [
        (2, 5, "undefined-variable"), (3, 9, "unused-variable"), (4, 5, "unknown-function")]
    assert str(findings[0]) == "p.vsl:2:5: error: undefined variable 'nope' [undefined-variable]"


def test_every_stage_name_is_accepted():
    src = "\n".join(f"fn {s}(ctx) {{ status::next() }}" for s in STAGES)
    assert Linter(new_engine(), entry_points()).lint_source(src, "stages.vsl", None) == []


def test_without_a_host_only_the_language_is_checked():
    """A bare engine and no entry points: no natives, and no rule about entry functions."""
    src = "fn on_helo(a, b) { a + b }\nfn on_rcpt(x) { x }\n"
    assert Linter(Engine()).lint_source(src, "bare.vsl", None) == []
    findings = Linter(Engine()).lint_source("status::next();\n", "bare.vsl", None)
    assert [d.code for d in findings] == ["unknown-namespace"]


def test_entry_point_findings_use_the_hosts_word():
    entries = replace(STAGE_ENTRIES, kind="hook")
    findings = Linter(new_engine(), entries).lint_source(
        "fn on_helo(ctx, more) { status::next() }\nfn on_rcpt(ctx) { status::next() }\n",
        "hooks.vsl", None)
    assert [finding_text(d) for d in findings] == [
        "error: hook function 'on_helo' must take exactly one parameter (ctx), not 2 "
        "[hook-arity]",
        "error: 'on_rcpt' is not a hook function (did you mean 'on_rcpt_to'?) [unknown-hook]"]


# -- the stage-availability mistakes the example policies could have had -----------------

EXAMPLE_MISTAKES = [  # (example, text of its main.vsl, the mistake, the finding)
    ("inbound", "reverse DNS for ${ctx.client_ip}", "reverse DNS for ${ctx.helo}",
     "ctx.helo is not available in on_connect: it is available from on_helo on"),
    ("inbound", "mail_from: ctx.sender,", "mail_from: ctx.rcpt,",
     "ctx.rcpt is not available in on_mail_from: it is available from on_rcpt_to on"),
    ("inbound-full", 'if iprev != "pass" {', 'if iprev != "pass" && ctx.sender.domain != "x" {',
     "ctx.sender is not available in on_connect: it is available from on_mail_from on"),
    ("inbound-full", "dkim ${dkim}, spf", "dkim ${dkim}, to ${ctx.rcpt}, spf",
     "ctx.rcpt is not available in on_pre_queue: only up to on_rcpt_to"),
    ("outbound-signing", 'if ctx.sender.domain != "example.test" {',
     'if !ctx.get_header("From").contains("@example.test") {',
     "ctx.get_header() is not available in on_mail_from: it is available from on_pre_queue on"),
    ("outbound-signing", 'dkim::sign(ctx, #{ sdid: "example.test"',
     'dkim::sign(ctx, #{ sdid: ctx.sever_name',
     "ctx has no property 'sever_name' (did you mean 'server_name'?)"),
]


@pytest.mark.parametrize("example, text, mistake, finding", EXAMPLE_MISTAKES,
                         ids=[f"{m[0]}-{i}" for i, m in enumerate(EXAMPLE_MISTAKES)])
def test_lint_finds_mistakes_injected_into_the_examples(tmp_path, example, text, mistake,
                                                        finding):
    """A copy of examples/<example>/ with one mistake: exactly one error, at the member."""
    shutil.copytree(ROOT / "examples" / example, tmp_path / example)
    main = tmp_path / example / "main.vsl"
    source = main.read_text()
    assert Linter(new_engine(), STAGE_ENTRIES).lint_file(main) == []
    assert source.count(text) == 1
    source = source.replace(text, mistake)
    main.write_text(source)
    member = re.match(r"(ctx)\.(\w+)|ctx has no property '(\w+)'", finding)
    name = member[2] or member[3]
    offset = source.index(mistake) + mistake.index(f"ctx.{name}") + len("ctx.")
    line = source.count("\n", 0, offset) + 1
    col = offset - source.rfind("\n", 0, offset)
    [error] = Linter(new_engine(), STAGE_ENTRIES).lint_file(main)
    assert (error.severity, error.line, error.col, error.message) == ("error", line, col,
                                                                      finding)


def test_other_servers_scripts_are_named_by_the_host(tmp_path):
    """The language core knows no other server: the host passes the extensions of other
    servers' scripts (vSMTP's ``.rhai``) as it passes its entry points."""
    (tmp_path / "main.rhai").write_text("#{}\n")
    [plain] = no_script_findings(empty_dirs([tmp_path]))
    assert (plain.severity, plain.message) == ("warning", "no .vsl file here")
    [named] = no_script_findings(empty_dirs([tmp_path]), STAGE_ENTRIES.foreign_scripts)
    assert (named.severity, named.message) == (
        "error", "no .vsl file here (1 .rhai file(s): vSL scripts end in .vsl)")
    assert "rhai" not in (ROOT / "vsl" / "lint.py").read_text()


def test_checks_design_note_counts_its_cases():
    """The module note of vsl.checks says in how many cases types are known: as many as it
    lists."""
    import vsl.checks

    note = vsl.checks.__doc__
    word = re.search(r"known in (\w+) cases only", note)[1]
    listed = re.search(r"cases only.*?:\n\n(.*?)\n\n", note, re.S)[1]
    assert ["one", "two", "three", "four", "five"].index(word) + 1 == listed.count("\n- ") + 1


@pytest.mark.parametrize("helper", ["vsl.checks.Checker.run", "vsl.stdlib.support.options.Options.keys",
                                    "vsl.stdlib.support.options.Options.parse"])
def test_lint_helpers_say_what_they_do(helper):
    import importlib
    import inspect

    module, cls, name = helper.rsplit(".", 2)
    assert inspect.getdoc(getattr(getattr(importlib.import_module(module), cls), name))


def test_import_without_script_directory():
    findings = Linter(new_engine()).lint_source('import "x" as x;\n', "<stdin>", None)
    assert [(d.code, d.severity) for d in findings] == [("import", "error")]
    assert "script directory" in findings[0].message


def test_lint_file_that_cannot_be_read(tmp_path):
    bad = tmp_path / "bad.vsl"
    bad.write_bytes(b"let x = \xff\xfe;\n")
    linter = Linter(new_engine())
    findings = linter.lint_file(bad)
    assert [(d.line, d.severity, d.code) for d in findings] == [(1, "error", "io")]
    assert findings[0].message == "cannot read: not UTF-8 text (byte 9)"
    assert format_full(findings, linter.sources) == str(findings[0])  # no empty line, caret


def test_script_files_expands_directories(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/z.vsl", "a.vsl", "b/a.vsl", "notes.txt"):
        (tmp_path / name).write_text("1\n")
    assert [p.relative_to(tmp_path).as_posix() for p in script_files([tmp_path])] == [
        "a.vsl", "b/a.vsl", "b/z.vsl"]


def test_clean_chunks_also_load():
    """A chunk the linter passes without errors must also compile and run its top level."""
    failures = []
    for chunk in CHUNKS:
        if chunk.expected or "import" in chunk.source:
            continue
        try:
            new_engine().load_source(chunk.source, str(chunk.path), chunk.path.parent)
        except Exception as err:  # noqa: BLE001 - report every mismatch
            failures.append(f"{chunk.id}: {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)


# -- a realistic 5,000-line policy tree ----------------------------------------

_DOMAINS = ["example.com", "example.org", "example.net", "mail.test", "corp.example"]


def _policy_function(rng: random.Random, i: int) -> str:
    domain = rng.choice(_DOMAINS)
    limit = rng.randint(2, 50)
    code = rng.choice([550, 554, 450, 451])
    cls = str(code)[0]
    return textwrap.dedent(f"""\
        // Rule {i}: checks for {domain}.
        fn rule_{i}(ctx) {{
            let score = 0;
            let seen = #{{}};
            let hosts = ["mx1.{domain}", "mx2.{domain}", "relay{i}.{domain}"];
            for host in hosts {{
                if host.ends_with("{domain}") {{
                    score += {rng.randint(1, 9)};
                }} else if host.len() > {limit} {{
                    score -= 1;
                }} else {{
                    continue;
                }}
                seen[host] = score;
            }}
            let sender = `${{ctx.sender}}`;
            if sender.contains("@{domain}") && score > {limit} {{
                log("info", `rule {i} matched ${{sender}} with score ${{score}}`);
                return status::deny("{code} {cls}.7.{i % 30} rule {i}: rejected");
            }}
            let total = 0;
            for (key, n) in seen.keys() {{
                total += n + key.len();
            }}
            switch total % 4 {{
                0 => status::next(),
                1 | 2 => status::accept("250 2.0.0 rule {i} ok"),
                3 if total > 100 => status::quarantine("rule{i}"),
                _ => status::next(),
            }}
        }}

        """)


def _policy_file(rng: random.Random, n: int, first: int) -> str:
    parts = [f"// Generated policy file with rules {first}..{first + n - 1}.\n",
             f"const THRESHOLD = {rng.randint(5, 20)};\n\n"]
    parts += [_policy_function(rng, i) for i in range(first, first + n)]
    parts.append("fn on_rcpt_to(ctx) {\n")
    for i in range(first, first + n):
        parts.append(f"    let r{i} = rule_{i}(ctx);\n"
                     f"    if r{i}.kind != \"next\" {{ return r{i}; }}\n")
    parts.append("    status::next()\n}\n")
    return "".join(parts)


def _write_policy_tree(root: Path, target_lines: int = 5000) -> int:
    rng = random.Random(1234)
    lines, first, k = 0, 0, 0
    while lines < target_lines:
        text = _policy_file(rng, 12, first)
        sub = root / f"part{k % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"policy_{k}.vsl").write_text(text)
        lines += text.count("\n")
        first += 12
        k += 1
    return lines


def test_generated_policy_is_clean_in_process(tmp_path):
    _write_policy_tree(tmp_path, 400)
    linter = Linter(new_engine())
    findings = [d for f in script_files([tmp_path]) for d in linter.lint_file(f)]
    assert findings == []
    for f in script_files([tmp_path]):
        new_engine().load(f)  # and it compiles


def test_lint_5000_lines(tmp_path, capsys):
    lines = _write_policy_tree(tmp_path)
    assert lines >= 5000
    start = time.perf_counter()
    proc = subprocess.run([str(VSL), "lint", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""
    start = time.perf_counter()
    linter = Linter(new_engine())
    findings = [d for f in script_files([tmp_path]) for d in linter.lint_file(f)]
    in_process = time.perf_counter() - start
    assert findings == []
    with capsys.disabled():
        print(f"\n[lint] {lines} lines in {len(script_files([tmp_path]))} files: "
              f"`vsl lint` {elapsed:.2f} s (process), Linter {in_process:.2f} s (in process)")


def test_wait_in_closure_needs_an_async_native():
    """wait-in-closure: natives that wait on I/O cannot run inside a closure."""
    import asyncio

    from vsl.natives import Namespace

    ns = Namespace("net", "test natives that wait")

    @ns.native
    async def lookup(name):
        await asyncio.sleep(0)
        return name

    engine = new_engine()
    engine.register(ns)
    src = ("fn f(names) {\n"
           "    let first = net::lookup(names[0]);\n"
           "    names.map(|n| net::lookup(n)) + [first]\n"
           "}\n")
    findings = Linter(engine).lint_source(src, "w.vsl", None)
    assert [(d.line, d.severity, d.code) for d in findings] == [(3, "error", "wait-in-closure")]
    assert "'net::lookup' waits for I/O" in findings[0].message
    clean = "fn f(names) {\n    let out = [];\n    for n in names { out.push(net::lookup(n)); }\n    out\n}\n"
    assert Linter(engine).lint_source(clean, "w.vsl", None) == []
