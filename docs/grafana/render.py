"""Draws docs/grafana/vsl.png: the panels of vsl.json over scrapes recorded in a real run.

Usage: python docs/grafana/render.py scrapes.jsonl [-o docs/grafana/vsl.png]

The scrapes are JSONL, one ``{"time": unix seconds, "text": "<the /metrics text>"}`` a
line (``bench/observability.py --record FILE`` writes them). Every panel's expressions
are evaluated with promql_lite at each scrape time; an expression outside its subset is
an error naming the panel. The picture is laid out by each panel's ``gridPos`` (24
columns) and says in a caption that it is not a Grafana screenshot. Drawing needs
matplotlib (the ``docs`` extra), imported only by ``draw``.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from promql_lite import PromqlError, Recording, evaluate_over

HERE = Path(__file__).resolve().parent
CAPTION = ("Drawn by docs/grafana/render.py from /metrics scrapes recorded in a real run "
           "of vsl serve, with the expressions of docs/grafana/vsl.json; "
           "not a Grafana screenshot.")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_COLUMNS, _INCHES_PER_GRID_ROW, _FIGURE_INCHES, _MARGIN_INCHES = 24, 0.32, 18, 0.5


@dataclass
class Series:
    """One line of a panel: its legend and its value at each scrape time (NaN: none)."""

    legend: str
    values: list[float]


def _legend(template: str, labels: tuple[tuple[str, str], ...]) -> str:
    named = dict(labels)
    if template:
        return _LEGEND_LABEL.sub(lambda match: named.get(match.group(1), ""), template)
    return ", ".join(f"{k}={v}" for k, v in labels) or "value"


def evaluate_panel(panel: dict, recording: Recording) -> list[Series]:
    """Every series of ``panel``'s targets; PromqlError naming the panel on a bad expr."""
    found = []
    for target in panel.get("targets", ()):
        try:
            evaluated = evaluate_over(target["expr"], recording)
        except PromqlError as err:
            raise PromqlError(f"panel {panel['title']!r}: {target['expr']}: {err}") from err
        found += [Series(_legend(target.get("legendFormat", ""), labels), values)
                  for labels, values in sorted(evaluated.items())]
    return found


def format_value(value: float, unit: str) -> str:
    """``value`` in Grafana's ``unit`` (reqps, s, bytes, Bps, percentunit, short)."""
    if math.isnan(value):
        return "no data"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "s":
        return f"{value * 1000:.3g} ms" if 0 < abs(value) < 1 else f"{value:.3g} s"
    if unit in ("bytes", "Bps"):
        size, prefix = value, ""
        for prefix in ("", "Ki", "Mi", "Gi"):
            if abs(size) < 1024:
                break
            size /= 1024
        return f"{size:.3g} {prefix}B" + ("/s" if unit == "Bps" else "")
    return f"{value:.3g}" + (" req/s" if unit == "reqps" else "")


@dataclass
class _Layout:
    """Grid cells to figure fractions: ``rows`` grid rows between two margins."""

    rows: int

    @property
    def inches(self) -> float:
        return self.rows * _INCHES_PER_GRID_ROW + 2 * _MARGIN_INCHES

    def top(self, grid_row: float) -> float:
        """The figure fraction of the top of ``grid_row`` (0 is the first)."""
        return 1 - (_MARGIN_INCHES + grid_row * _INCHES_PER_GRID_ROW) / self.inches

    def box(self, grid: dict) -> tuple[float, float, float, float]:
        """(left, bottom, width, height) of a panel's axes, room kept for its ticks."""
        left, width = grid["x"] / _COLUMNS, grid["w"] / _COLUMNS
        bottom, top = self.top(grid["y"] + grid["h"]), self.top(grid["y"])
        tick_room, title_room = 0.045, 0.4 / self.inches
        return (left + tick_room, bottom + title_room, width - tick_room - 0.008,
                top - bottom - 2 * title_room)


def _draw_timeseries(axes, panel: dict, series: list[Series], times: list) -> None:
    """Lines (or stacked areas) over the scrape times, the y axis in the panel's unit."""
    from matplotlib.dates import DateFormatter
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    stacked = panel["fieldConfig"]["defaults"].get("custom", {}).get(
        "stacking", {}).get("mode") == "normal"
    if stacked and series:
        axes.stackplot(times, *[[0 if math.isnan(v) else v for v in s.values] for s in series],
                       labels=[s.legend for s in series], alpha=0.75)
    else:
        for line in series:
            axes.plot(times, line.values, label=line.legend, linewidth=1.2)
    axes.set_xlim(times[0], times[-1])
    axes.xaxis.set_major_locator(MaxNLocator(max(2, panel["gridPos"]["w"] // 3)))
    axes.xaxis.set_major_formatter(DateFormatter("%H:%M:%S"))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: format_value(value, unit)))
    axes.tick_params(labelsize=7)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.2)
    if series:
        axes.legend(fontsize=6, loc="upper left", ncol=2, frameon=False)
    else:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes,
                  alpha=0.6)


def _draw_stat(axes, panel: dict, series: list[Series]) -> None:
    """The last value of the first series, large, as Grafana's stat panel shows it."""
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    seen = [v for line in series[:1] for v in line.values if not math.isnan(v)]
    axes.axis("off")
    axes.text(0.5, 0.45, format_value(seen[-1] if seen else math.nan, unit), ha="center",
              va="center", fontsize=22, color="#73bf69", transform=axes.transAxes)


def draw(dashboard: dict, recording: Recording, output: Path) -> None:
    """Lays the dashboard's panels out by gridPos and writes the picture to ``output``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = dashboard["panels"]
    evaluated = {panel["id"]: evaluate_panel(panel, recording) for panel in panels}
    plt.style.use("dark_background")
    layout = _Layout(max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels))
    figure = plt.figure(figsize=(_FIGURE_INCHES, layout.inches), facecolor="#111217")
    times = [datetime.fromtimestamp(t, timezone.utc) for t in recording.times]
    figure.suptitle(f"{dashboard['title']} (UTC {times[0]:%Y-%m-%d %H:%M:%S} to "
                    f"{times[-1]:%H:%M:%S})", fontsize=13, y=layout.top(-0.6))
    for panel in panels:
        if panel["type"] == "row":
            figure.text(0.005, layout.top(panel["gridPos"]["y"] + 0.8), panel["title"],
                        fontsize=11, weight="bold")
            continue
        axes = figure.add_axes(layout.box(panel["gridPos"]))
        axes.set_facecolor("#181b1f")
        axes.set_title(panel["title"], fontsize=9, loc="left")
        if panel["type"] == "stat":
            _draw_stat(axes, panel, evaluated[panel["id"]])
        else:
            _draw_timeseries(axes, panel, evaluated[panel["id"]], times)
    figure.text(0.5, 0.3 / layout.inches, CAPTION, ha="center", fontsize=9, style="italic",
                alpha=0.8)
    figure.savefig(output, dpi=64, facecolor=figure.get_facecolor())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scrapes", type=Path, help="JSONL of recorded /metrics scrapes")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "vsl.png")
    parser.add_argument("--dashboard", type=Path, default=HERE / "vsl.json")
    args = parser.parse_args(argv)
    recording = Recording.load(args.scrapes)
    if len(recording.times) < 2:
        parser.error(f"{args.scrapes}: a picture needs two scrapes or more")
    try:
        draw(json.loads(args.dashboard.read_text()), recording, args.output)
    except PromqlError as err:
        print(f"render.py: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
