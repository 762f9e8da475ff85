"""server/metrics.py and its catalogue: label values are guarded (outside their set:
"other"), a metric holds at most max_series label sets, unknown names and labels are
refused, script metrics are registered from [metrics.script.*], the calls cost about one
function call while metrics are off, and forked processes' values are summed by a
scrape (in a subprocess: prometheus_client picks its multiprocess mode at import)."""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import timeit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vsl.server import metrics
from vsl.server.metrics_catalogue import CATALOGUE
from vsl.server.observability_config import MetricsConfig, ScriptMetric

SPAM_HIT = ScriptMetric("spam_hit", "messages over the spam threshold",
                        (("reason", ("rbl", "content")),))


def recorder(**options) -> metrics.Recorder:
    return metrics.Recorder(MetricsConfig(listen="127.0.0.1:9187", **options))


def value(rec: metrics.Recorder, name: str, *labels: str) -> float:
    metric = rec.objects[name]
    return (metric.labels(*labels) if labels else metric)._value.get()


def test_the_catalogue_follows_the_naming_rules():
    for name, metric in CATALOGUE.items():
        assert name.startswith("vsl_") and (metric.kind == "counter") == \
            name.endswith("_total"), name
        assert not {"ip", "address", "host", "id", "client"} & set(metric.label_names)


def test_values_outside_their_set_or_pattern_fall_back():
    rec = recorder()
    rec.count("vsl_connections_refused_total", reason="limit_total")
    rec.count("vsl_connections_refused_total", reason="192.0.2.1")
    rec.count("vsl_smtp_replies_total", stage="rcpt", code="554", enhanced="5.7.1")
    rec.count("vsl_smtp_replies_total", stage="rcpt", code="999", enhanced="")
    rec.count("vsl_check_results_total", check="spf", result="softfail")
    rec.count("vsl_check_results_total", check="dnsbl", result="softfail")
    assert value(rec, "vsl_connections_refused_total", "limit_total") == 1
    assert value(rec, "vsl_connections_refused_total", "other") == 1
    assert value(rec, "vsl_smtp_replies_total", "rcpt", "554", "5.7.1") == 1
    assert value(rec, "vsl_smtp_replies_total", "rcpt", "other", "none") == 1
    assert value(rec, "vsl_check_results_total", "spf", "softfail") == 1
    assert value(rec, "vsl_check_results_total", "dnsbl", "other") == 1  # each check's set


def test_unknown_names_and_labels_are_programming_errors():
    rec = recorder()
    with pytest.raises(ValueError, match="unknown metric 'vsl_nothing_total'"):
        rec.count("vsl_nothing_total")
    with pytest.raises(ValueError, match="takes the labels reason, not none"):
        rec.count("vsl_connections_refused_total")
    with pytest.raises(ValueError, match="takes the labels none, not queue"):
        rec.count("vsl_messages_received_total", queue="deliver")


def test_past_max_series_a_metric_counts_other_and_warns_once(caplog):
    rec = recorder(max_series=10)
    with caplog.at_level(logging.WARNING, "vsl.metrics"):
        for n in range(15):
            rec.count("vsl_delivery_failures_total", route="smtp", **{"class": f"c{n}"})
    assert [value(rec, "vsl_delivery_failures_total", "smtp", f"c{n}") for n in range(10)] \
        == [1] * 10
    assert value(rec, "vsl_delivery_failures_total", "other", "other") == 5
    assert len(rec.series["vsl_delivery_failures_total"]) == 10
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "vsl_delivery_failures_total holds 10" in warnings[0]


def test_past_max_series_each_label_records_its_own_fallback():
    rec = recorder(max_series=10)
    for n in range(11):
        rec.count("vsl_smtp_replies_total", stage="rcpt", code=f"{200 + n}",
                  enhanced="2.0.0")
    assert value(rec, "vsl_smtp_replies_total", "other", "other", "none") == 1


def test_a_gauge_series_moves_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv(metrics.ENVIRONMENT, str(tmp_path))
    rec = recorder()
    monkeypatch.setattr(metrics, "_recorder", rec)
    current = metrics.Series("vsl_connections_current")
    current.inc()
    current.inc()
    current.inc(-1)
    assert value(rec, "vsl_connections_current") == 1


def test_labelled_children_are_cached():
    rec = recorder()
    first = rec.child("vsl_auth_total", {"mechanism": "PLAIN", "result": "success"})
    assert rec.child("vsl_auth_total", {"mechanism": "PLAIN", "result": "success"}) is first


def test_script_metrics_are_registered_from_their_declarations():
    rec = recorder(script=(SPAM_HIT,))
    rec.count("vsl_script_spam_hit_total", reason="rbl")
    rec.count("vsl_script_spam_hit_total", reason="bayes")
    assert value(rec, "vsl_script_spam_hit_total", "rbl") == 1
    assert value(rec, "vsl_script_spam_hit_total", "other") == 1
    assert rec.objects["vsl_script_spam_hit_total"]._documentation == SPAM_HIT.help


def _empty(name, amount=1, **labels):
    pass


def test_off_the_calls_cost_about_one_function_call():
    metrics.disable()
    calls = 200_000
    off = min(timeit.repeat(lambda: metrics.count("vsl_auth_total", mechanism="PLAIN",
                                                  result="success"), number=calls, repeat=5))
    empty = min(timeit.repeat(lambda: _empty("vsl_auth_total", mechanism="PLAIN",
                                             result="success"), number=calls, repeat=5))
    rec = recorder()
    on = min(timeit.repeat(lambda: rec.child("vsl_auth_total", {
        "mechanism": "PLAIN", "result": "success"}).inc(), number=calls // 10, repeat=3))
    print(f"metrics off: {off / calls * 1e9:.0f} ns a call (an empty function: "
          f"{empty / calls * 1e9:.0f} ns); on, cached child: {on / (calls // 10) * 1e9:.0f} ns")
    assert off < 2 * empty


CHILDREN = textwrap.dedent("""\
    import os, sys
    from dataclasses import replace
    from pathlib import Path
    from vsl.server import metrics
    from vsl.server.config import load
    from vsl.server.observability_config import MetricsConfig
    from vsl.stdlib.support import telemetry

    config = replace(load(None), metrics=MetricsConfig(listen="127.0.0.1:9187",
                                                       dir=Path(sys.argv[1])))
    metrics.prepare(config)
    metrics.enable(config)
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            metrics.enable(config)
            for _ in range(1000):
                metrics.count("vsl_messages_received_total")
            telemetry.count("vsl_dns_cache_total", result="hit")
            metrics.observe("vsl_message_size_bytes", 2000)
            metrics.Series("vsl_connections_current").inc()
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    print(metrics.collect()[0].decode())
    print("---")
    for pid in pids:
        metrics.mark_dead(pid)
    print(metrics.collect()[0].decode())
""")


def samples(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_forked_processes_are_summed(tmp_path):
    (tmp_path / "counter_1.db").write_bytes(b"stale")  # removed by prepare
    run = subprocess.run([sys.executable, "-c", CHILDREN, str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    alive, dead = (samples(part) for part in run.stdout.split("---\n"))
    assert alive[("vsl_messages_received_total", ())] == 2000
    assert alive[("vsl_dns_cache_total", (("result", "hit"),))] == 2
    assert alive[("vsl_message_size_bytes_count", ())] == 2
    assert alive[("vsl_message_size_bytes_bucket", (("le", "4096.0"),))] == 2
    assert alive[("vsl_connections_current", ())] == 2
    assert dead[("vsl_connections_current", ())] == 0  # livesum: dead processes leave
    assert dead[("vsl_messages_received_total", ())] == 2000  # counters never drop


class _Configured:
    def __init__(self, directory):
        self.metrics = MetricsConfig(listen="127.0.0.1:9187", dir=directory)


_HOLD = """
import sys, time
from vsl.server import metrics
from tests.test_metrics_catalogue import _Configured
metrics.prepare(_Configured(sys.argv[1]))
print("held", flush=True)
time.sleep(30)
"""


def test_a_configured_directory_is_held_by_one_vsl_serve(tmp_path, monkeypatch):
    directory = tmp_path / "metrics"
    monkeypatch.setenv(metrics.ENVIRONMENT, "")  # prepare() sets it: restored after
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(directory)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        (directory / "counter_1.db").write_bytes(b"")
        with pytest.raises(metrics.DirectoryInUse) as err:
            metrics.prepare(_Configured(directory))
        assert str(err.value) == (f"metrics.dir {directory} is in use by another vsl serve "
                                  f"(pid {holder.pid}): give each instance its own")
        assert (directory / "counter_1.db").exists()  # not wiped
    finally:
        holder.kill()
        holder.wait()
    assert metrics.prepare(_Configured(directory)) == directory  # free again
    assert metrics.prepare(_Configured(directory)) == directory  # this process holds it
    assert not (directory / "counter_1.db").exists()
