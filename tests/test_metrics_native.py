"""``metrics::inc`` and ``metrics::add``: script counters declared in [metrics.script.NAME],
counted through the telemetry sink; `vsl lint --config` and `vsl serve` check the calls
against the declarations (the lint messages themselves: tests/lint/metrics.vsl)."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from vsl.errors import ScriptError, VslError
from vsl.server.observability_config import ScriptMetric
from vsl.stdlib import metrics, new_engine
from vsl.stdlib.support import telemetry

VSL = Path(sys.executable).parent / "vsl"
DECLARED = (ScriptMetric("spam_hit", "spam",
                         (("reason", ("rbl", "content")), ("stage", ("rcpt", "data")))),
            ScriptMetric("seen", "seen"))
CONFIG = """\
[metrics.script.spam_hit]
help = "messages over the spam threshold"
labels = { reason = ["rbl", "content"], stage = ["rcpt", "data"] }

[metrics.script.seen]
"""
POLICY = """\
fn on_rcpt_to(ctx) {
    metrics::inc("seen");
    metrics::inc("spam_hit", #{ reason: "rbl", stage: "rcpt" });
    status::next()
}
"""


class Recording:
    """A sink that keeps every count."""

    def __init__(self):
        self.counts: list[tuple[str, float, dict]] = []

    def count(self, name, amount=1, **labels):
        self.counts.append((name, amount, labels))

    def observe(self, name, value, **labels):
        raise AssertionError("metrics:: only counts")


@pytest.fixture
def sink():
    recording = Recording()
    telemetry.install(recording)
    yield recording
    telemetry.install(None)


def script(source: str, declared=DECLARED):
    return new_engine(script_metrics=declared).load_source(source, "m.vsl")


def test_inc_counts_the_exported_name_with_its_labels(sink):
    s = script('fn f() { metrics::inc("seen"); '
               'metrics::inc("spam_hit", #{ stage: "data", reason: "content" }) }')
    s.call("f")
    assert sink.counts == [
        ("vsl_script_seen_total", 1, {}),
        ("vsl_script_spam_hit_total", 1, {"reason": "content", "stage": "data"})]


def test_add_counts_its_amount(sink):
    s = script('fn f(n) { metrics::add("spam_hit", #{ reason: "rbl", stage: "rcpt" }, n) }')
    s.call("f", 1)
    s.call("f", 1_000_000)
    assert [amount for _, amount, _ in sink.counts] == [1, 1_000_000]


@pytest.mark.parametrize("amount", [0, -1, 1_000_001, 1.5, "2", True])
def test_add_refuses_an_amount_out_of_bounds(sink, amount):
    s = script('fn f(n) { metrics::add("seen", #{}, n) }')
    with pytest.raises(ScriptError, match="metrics::add: the amount must be an integer "
                                          "from 1 to 1000000"):
        s.call("f", amount)
    assert sink.counts == []


def test_a_value_outside_the_declared_set_counts_as_other_warned_once(sink, caplog):
    s = script('fn f(r) { metrics::inc("spam_hit", #{ reason: r, stage: "rcpt" }) }')
    with caplog.at_level(logging.WARNING, "vsl.metrics"):
        for value in ("dns", "dns", "rbl", 7):
            s.call("f", value)
    assert [labels["reason"] for _, _, labels in sink.counts] == \
        ["other", "other", "rbl", "other"]
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "metrics: spam_hit: label reason='dns' is not declared in [metrics.script.spam_hit]: "
        "counted as \"other\"",
        "metrics: spam_hit: label reason=7 is not declared in [metrics.script.spam_hit]: "
        "counted as \"other\""]


def test_warnings_are_bounded(sink, caplog):
    s = script('fn f(r) { metrics::inc("spam_hit", #{ reason: r, stage: "rcpt" }) }')
    with caplog.at_level(logging.WARNING, "vsl.metrics"):
        for n in range(metrics.MAX_WARNED + 10):
            s.call("f", f"r{n}")
    assert len(caplog.records) == metrics.MAX_WARNED
    assert len(sink.counts) == metrics.MAX_WARNED + 10


def test_a_call_checks_the_name_and_keys_it_is_given(sink):
    """What lint cannot see (a call from Python, a map built at run time) is checked."""
    natives = metrics.namespace_for(DECLARED).functions
    with pytest.raises(ScriptError, match=r"metrics::inc: metric 'nope' is not declared: "
                                          r"declare it in vsl.toml as \[metrics.script.nope\]"):
        natives["inc"].func("nope")
    with pytest.raises(ScriptError, match="metric 'spam_hit' needs the label 'stage'"):
        natives["inc"].func("spam_hit", {"reason": "rbl"})
    with pytest.raises(ScriptError, match="metric 'seen' has no label 'x'"):
        natives["add"].func("seen", {"x": "y"}, 2)
    with pytest.raises(ScriptError, match="the labels must be a map"):
        natives["inc"].func("seen", ["x"])
    assert sink.counts == []


def test_metrics_off_checks_names_and_counts_nothing():
    """Without an installed sink (metrics off) a call is checked and dropped."""
    natives = metrics.namespace_for(DECLARED).functions
    natives["inc"].func("seen")
    with pytest.raises(ScriptError, match="not declared"):
        natives["inc"].func("nope")


def test_without_declarations_nothing_is_checked_or_counted(sink):
    """`vsl run`, `vsl lint` without --config: the engine has no declarations."""
    s = script('fn f() { metrics::inc("anything", #{ any: "thing" }) }', declared=None)
    s.call("f")
    assert sink.counts == []


def test_engines_do_not_share_declarations(sink):
    script('fn f() { metrics::inc("seen") }').call("f")
    with pytest.raises(VslError, match="metric 'seen' is not declared"):
        script('fn f() { metrics::inc("seen") }', declared=()).call("f")


# -- the server ----------------------------------------------------------------------

TRANSCRIPT = """\
# config: vsl.toml
S: 220 *
C: HELO client.test
S: 250 *
C: MAIL FROM:<alice@example.org>
S: 250 *
C: RCPT TO:<one@example.test>
S: 250 *
C: RCPT TO:<spam@example.test>
S: 550 *
C: RCPT TO:<two@example.test>
S: 250 *
C: QUIT
S: 221 *
"""
COUNTING_POLICY = """\
fn on_rcpt_to(ctx) {
    metrics::inc("seen");
    if ctx.rcpt.local_part == "spam" {
        metrics::add("spam_hit", #{ reason: "content", stage: "rcpt" }, 2);
        return status::deny("550 5.7.1 spam");
    }
    status::next()
}
"""


def test_the_server_counts_declared_metrics_of_its_config(tmp_path, sink):
    """A session's N recipients move the declared counter by N (server/scripting.py
    passes config.metrics.script to the engine)."""
    from vsl.server.transcript import parse, replay

    scripts = policy(tmp_path, COUNTING_POLICY)
    (tmp_path / "vsl.toml").write_text(CONFIG + '[server]\nlocal_domains = ["example.test"]\n')
    (tmp_path / "s.transcript").write_text(TRANSCRIPT)
    outcome = replay(parse(tmp_path / "s.transcript"), scripts)
    assert outcome.problems == []
    assert sink.counts == [
        ("vsl_script_seen_total", 1, {}),
        ("vsl_script_seen_total", 1, {}),
        ("vsl_script_spam_hit_total", 2, {"reason": "content", "stage": "rcpt"}),
        ("vsl_script_seen_total", 1, {})]


# -- the command line -----------------------------------------------------------------

def policy(tmp_path: Path, source: str) -> Path:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "main.vsl").write_text(source)
    (tmp_path / "vsl.toml").write_text(CONFIG)
    return scripts


def vsl(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([VSL, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


def test_lint_with_config_checks_the_declarations(tmp_path):
    scripts = policy(tmp_path, POLICY.replace('"seen"', '"unseen"'))
    result = vsl("lint", "--format", "concise", "--config", "vsl.toml", scripts, cwd=tmp_path)
    assert result.returncode == 1
    assert "scripts/main.vsl:2:18: error: metrics::inc: metric 'unseen' is not declared: " \
           "declare it in vsl.toml as [metrics.script.unseen] [native-argument]" in result.stdout
    assert "note:" not in result.stderr


def test_lint_points_at_the_wrong_argument(tmp_path):
    scripts = policy(tmp_path, """\
fn on_rcpt_to(ctx) {
    metrics::inc(
        "spam_hit",
        #{ stage: "rcpt", reason: "dns" });
    metrics::add("seen", #{}, -1);
    metrics::inc("seen", #{ why: "x" });
    status::next()
}
""")
    result = vsl("lint", "--format", "concise", "--config", "vsl.toml", scripts, cwd=tmp_path)
    found = [line.split(": error: ")[0].rpartition("/")[2]
             for line in result.stdout.splitlines()]
    assert found == ["main.vsl:4:35", "main.vsl:5:31", "main.vsl:6:26"], result.stdout


def test_lint_with_config_passes_declared_calls(tmp_path):
    scripts = policy(tmp_path, POLICY)
    result = vsl("lint", "--config", "vsl.toml", scripts, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "")


def test_lint_without_config_says_once_that_names_are_unchecked(tmp_path):
    scripts = policy(tmp_path, POLICY.replace('"seen"', '"unseen"'))
    (scripts / "more.vsl").write_text('fn f() { metrics::inc("other") }\n')
    result = vsl("lint", scripts, cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr.count("note: metrics:: names and labels were not checked: give "
                               "--config vsl.toml") == 1


def test_lint_without_metrics_calls_says_nothing_of_them(tmp_path):
    scripts = policy(tmp_path, "// metrics::inc(\"x\") is for later\n"
                               "fn on_helo(ctx) { log(\"info\", \"metrics::inc\"); "
                               "status::next() }\n")
    assert "note:" not in vsl("lint", scripts, cwd=tmp_path).stderr


def test_serve_refuses_an_undeclared_metric_at_start_up(tmp_path):
    scripts = policy(tmp_path, POLICY.replace('"seen"', '"unseen"'))
    result = vsl("serve", "--config", "vsl.toml", "--scripts", scripts, "--listen",
                 "127.0.0.1:1", "--queue-dir", tmp_path / "q", cwd=tmp_path)
    assert result.returncode == 1
    assert "the scripts do not lint" in result.stderr
    assert "main.vsl:2:18: error: metrics::inc: metric 'unseen' is not declared" \
        in result.stderr
