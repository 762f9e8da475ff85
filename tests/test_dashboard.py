"""docs/grafana/vsl.json and its renderer: the dashboard is well formed (unique ids,
gridPos inside 24 columns without overlaps, a DS_PROMETHEUS input, the instance
variable), reads only metrics of server/metrics_catalogue.py, and every expression is in
the subset promql_lite evaluates; the evaluator gives Prometheus's numbers on a small
synthetic recording; every panel evaluates over scrapes of a real `vsl serve`."""
from __future__ import annotations

import importlib
import json
import math
import sys
import time
from pathlib import Path

import pytest

from server.metrics_catalogue import CATALOGUE
from tests.test_metrics_http import Served, send_one

GRAFANA = Path(__file__).resolve().parent.parent / "docs" / "grafana"
DASHBOARD = json.loads((GRAFANA / "vsl.json").read_text())
PANELS = [panel for panel in DASHBOARD["panels"] if panel["type"] != "row"]
EXPRESSIONS = [(panel["title"], target["expr"]) for panel in PANELS
               for target in panel["targets"]]
_SUFFIXES = {"counter": ("_total",), "gauge": ("",),
             "histogram": ("_bucket", "_sum", "_count")}


def _load(name: str):
    """A module of docs/grafana (not a package: render.py runs as a script there)."""
    if str(GRAFANA) not in sys.path:
        sys.path.insert(0, str(GRAFANA))
    return importlib.import_module(name)


promql = _load("promql_lite")
render = _load("render")


def _sample_names() -> set[str]:
    """Every sample name the catalogue's metrics export (suffixes resolved)."""
    names = set()
    for metric in CATALOGUE.values():
        base = metric.name.removesuffix("_total")
        names |= {base + suffix for suffix in _SUFFIXES[metric.kind]}
    return names


def test_the_dashboard_imports_into_grafana_10_to_13():
    assert DASHBOARD["schemaVersion"] == 39
    assert [i["name"] for i in DASHBOARD["__inputs"]] == ["DS_PROMETHEUS"]
    variable, = DASHBOARD["templating"]["list"]
    assert (variable["name"], variable["multi"], variable["includeAll"]) == (
        "instance", True, True)
    assert "vsl_build_info" in variable["definition"]
    assert {panel["type"] for panel in PANELS} == {"timeseries", "stat"}
    assert all(panel["fieldConfig"]["defaults"]["unit"] for panel in PANELS)


def test_panel_ids_are_unique():
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def test_panels_fit_24_columns_and_do_not_overlap():
    taken: dict[tuple[int, int], str] = {}
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for row in range(grid["y"], grid["y"] + grid["h"]):
            for column in range(grid["x"], grid["x"] + grid["w"]):
                assert (row, column) not in taken, (panel["title"], taken[row, column])
                taken[row, column] = panel["title"]


@pytest.mark.parametrize("title, expr", EXPRESSIONS)
def test_every_expression_parses_and_reads_catalogued_metrics(title, expr):
    names = promql.metric_names(promql.parse(expr))
    assert names and names <= _sample_names(), title
    assert 'instance=~"$instance"' in expr, title


@pytest.mark.parametrize("expr", ["avg(vsl_dns_seconds_count)", "vsl_auth_total[5m]",
                                  "rate(vsl_auth_total)", "vsl_auth_total + 1",
                                  "sum without (le) (vsl_auth_total)"])
def test_an_expression_outside_the_subset_is_refused(expr):
    with pytest.raises(promql.PromqlError):
        promql.parse(expr)


def test_a_panel_outside_the_subset_is_named():
    recording = promql.Recording([(0.0, ""), (10.0, "")])
    panel = {"title": "Odd", "targets": [{"expr": "avg(vsl_auth_total)"}]}
    with pytest.raises(promql.PromqlError, match="panel 'Odd': avg"):
        render.evaluate_panel(panel, recording)


_SCRAPES = [
    (1000.0, 0, 0, (0, 0, 0)),
    (1010.0, 20, 3, (10, 18, 20)),
    (1020.0, 5, 6, (14, 30, 40)),  # the counter was reset between scrapes 2 and 3
]


def _scrape(hits: int, misses: int, buckets: tuple[int, int, int]) -> str:
    le_01, le_1, inf = buckets
    return (
        "# TYPE vsl_dns_cache counter\n"
        f'vsl_dns_cache_total{{result="hit"}} {hits}\n'
        f'vsl_dns_cache_total{{result="miss"}} {misses}\n'
        "# TYPE vsl_dns_seconds histogram\n"
        f'vsl_dns_seconds_bucket{{le="0.1"}} {le_01}\n'
        f'vsl_dns_seconds_bucket{{le="1.0"}} {le_1}\n'
        f'vsl_dns_seconds_bucket{{le="+Inf"}} {inf}\n'
        f"vsl_dns_seconds_count {inf}\nvsl_dns_seconds_sum 1.0\n")


@pytest.fixture
def synthetic():
    return promql.Recording([(when, _scrape(hits, misses, buckets))
                             for when, hits, misses, buckets in _SCRAPES])




def test_rate_and_increase_over_the_window(synthetic):
    rates = promql.evaluate_over(
        'sum by (result) (rate(vsl_dns_cache_total{instance=~"$instance"}[5m]))', synthetic)
    hit, miss = rates[(("result", "hit"),)], rates[(("result", "miss"),)]
    assert math.isnan(hit[0])  # one sample: no rate yet
    assert hit[1:] == [2.0, 1.25]  # 20 in 10 s; then 20 + 5 (after the reset) in 20 s
    assert miss[1:] == [0.3, 0.3]
    short = promql.evaluate_over("sum(increase(vsl_dns_cache_total[15s]))", synthetic)[()]
    assert short[1:] == [23.0, 8.0]  # the window holds the last two scrapes only


def test_a_ratio_of_two_sums(synthetic):
    expr = ('sum(rate(vsl_dns_cache_total{result="hit"}[5m])) / '
            'sum(rate(vsl_dns_cache_total[5m])) * 100')
    ratio = promql.evaluate_over(expr, synthetic)[()]
    assert ratio[1] == pytest.approx(100 * 20 / 23)


def test_histogram_quantile_interpolates_in_the_bucket(synthetic):
    expr = ("histogram_quantile(0.5, sum by (le) "
            '(rate(vsl_dns_seconds_bucket{instance=~"$instance"}[5m])))')
    median = promql.evaluate_over(expr, synthetic)[()]
    # at 1010: 20 in total, rank 10, the 0.1 bucket holds 10 -> its upper bound
    assert median[1] == pytest.approx(0.1)
    # at 1020: rises 14/30/40, rank 20 lies in (0.1, 1.0]: 0.1 + 0.9 * (20 - 14) / 16
    assert median[2] == pytest.approx(0.1 + 0.9 * 6 / 16)
    p99 = promql.evaluate_over(expr.replace("0.5", "0.99"), synthetic)[()]
    assert p99[2] == pytest.approx(1.0)  # rank 39.6 lies in +Inf: the last finite bound


def test_topk_and_gauges(synthetic):
    top = promql.evaluate_over("topk(1, sum by (result) (vsl_dns_cache_total))", synthetic)
    assert top[(("result", "hit"),)][1] == 20 and top[(("result", "miss"),)][2] == 6
    assert math.isnan(top[(("result", "miss"),)][1])


def test_values_are_shown_in_their_units():
    assert render.format_value(0.0123, "s") == "12.3 ms"
    assert render.format_value(0.5, "percentunit") == "50%"
    assert render.format_value(3 * 1024 * 1024, "Bps") == "3 MiB/s"
    assert render.format_value(2.5, "reqps") == "2.5 req/s"
    assert render.format_value(math.nan, "short") == "no data"


def test_the_picture_is_drawn_from_a_recording(tmp_path):
    scrapes = tmp_path / "scrapes.jsonl"
    scrapes.write_text("".join(json.dumps({"time": when, "text": _scrape(h, m, b)}) + "\n"
                               for when, h, m, b in _SCRAPES))
    assert render.main([str(scrapes), "-o", str(tmp_path / "vsl.png")]) == 0
    assert (tmp_path / "vsl.png").read_bytes().startswith(b"\x89PNG")


def test_every_panel_evaluates_over_scrapes_of_a_real_server(tmp_path):
    server = Served(tmp_path, 1)
    server.start()
    try:
        server.wait_ready()
        scrapes = []
        for _ in range(3):
            send_one(server.smtp_port)
            scrapes.append((time.time(), server.get("/metrics")[1]))
            time.sleep(1)
    finally:
        server.stop()
    recording = promql.Recording(scrapes)
    evaluated = {panel["title"]: render.evaluate_panel(panel, recording) for panel in PANELS}
    queued = {line.legend: line.values[-1] for line in evaluated["Messages per queue"]}
    assert queued["deliver"] == 3
