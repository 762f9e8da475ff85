"""A small PromQL evaluator for the expressions of docs/grafana/vsl.json.

Design: render.py draws the dashboard from scrapes recorded in a real run (JSONL lines
``{"time": unix seconds, "text": "<the /metrics text>"}``), without Prometheus. This
module parses the subset of PromQL the dashboard uses into a small tree and evaluates it
at each scrape time; anything outside the subset raises ``PromqlError``, so the dashboard
cannot drift from what the renderer (and tests/test_dashboard.py) understands.

The subset:
- selectors ``name{k="v", k!="v", k=~"re", k!~"re"}``; a value holding a Grafana
  variable (``$instance``) matches everything;
- ``rate(sel[w])`` and ``increase(sel[w])`` over the samples in the window ending at the
  evaluation time (clipped to the recording's start; counter resets handled). Unlike
  Prometheus there is no extrapolation: ``increase`` is the counted rise inside the
  window, ``rate`` that rise over the time between its first and last sample;
- ``sum``, ``max``, ``min`` with an optional ``by (labels)`` before the argument;
- ``topk(k, expr)``; ``histogram_quantile(q, expr)`` over ``le`` buckets (Prometheus's
  linear interpolation);
- binary ``/`` and ``*`` between two expressions (series with the same labels) or an
  expression and a number; parentheses.

A value at one time is an instant vector: ``{labels: float}`` with ``labels`` a sorted
tuple of (name, value) pairs.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Vector = dict[Labels, float]

_TOKEN = re.compile(r"""\s*(?:
    (?P<number>\d+(?:\.\d+)?)(?![\w.])
  | (?P<duration>\d+[smhd])
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<op>=~|!~|!=|[=(){}\[\],/*])
)""", re.VERBOSE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_AGGREGATIONS = {"sum": sum, "max": max, "min": min}


class PromqlError(ValueError):
    """An expression outside the subset, or one that does not parse."""


# --- the tree ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str

    def matches(self, labels: dict[str, str]) -> bool:
        if "$" in self.value:
            return True
        found = labels.get(self.label, "")
        if self.op in ("=", "!="):
            return (found == self.value) == (self.op == "=")
        return bool(re.fullmatch(self.value, found)) == (self.op == "=~")


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[Matcher, ...]


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class RangeFunction:
    function: str  # rate | increase
    selector: Selector
    window: float


@dataclass(frozen=True)
class Call:
    """A function of an instant vector: ``sum``/``max``/``min`` (grouped ``by``),
    ``topk`` and ``histogram_quantile`` (their number is ``parameter``)."""

    function: str
    argument: object
    by: tuple[str, ...] | None = None
    parameter: float = 0.0


@dataclass(frozen=True)
class Binary:
    op: str
    left: object
    right: object


# --- parsing ----------------------------------------------------------------------------

def _tokens(text: str) -> list[tuple[str, str]]:
    found, position, text = [], 0, text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            raise PromqlError(f"cannot read {text[position:position + 20]!r}")
        found.append((match.lastgroup, match.group(match.lastgroup)))
        position = match.end()
    return found


class _Parser:
    """Recursive descent over the tokens: expr := term (('/'|'*') term)*."""

    def __init__(self, text: str):
        self.tokens, self.at = _tokens(text), 0

    def parse(self):
        tree = self.expression()
        if self.at != len(self.tokens):
            raise PromqlError(f"unexpected {self.peek()[1]!r}")
        return tree

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", "end")

    def take(self, kind: str, value: str | None = None) -> str:
        found = self.peek()
        if found[0] != kind or (value is not None and found[1] != value):
            raise PromqlError(f"expected {value or kind}, found {found[1]!r}")
        self.at += 1
        return found[1]

    def expression(self):
        tree = self.term()
        while self.peek() in (("op", "/"), ("op", "*")):
            op = self.take("op")
            tree = Binary(op, tree, self.term())
        return tree

    def term(self):
        kind, value = self.peek()
        if kind == "number":
            return Number(float(self.take("number")))
        if (kind, value) == ("op", "("):
            return self.parenthesised(self.expression)
        if kind != "name":
            raise PromqlError(f"unexpected {value!r}")
        if self.tokens[self.at + 1:self.at + 2] in ([("op", "(")], [("name", "by")]):
            return self.call(self.take("name"))
        selector = self.selector()
        if self.peek() == ("op", "["):
            raise PromqlError(f"a range {selector.name}[...] outside rate() or increase()")
        return selector

    def parenthesised(self, inner):
        self.take("op", "(")
        tree = inner()
        self.take("op", ")")
        return tree

    def call(self, function: str):
        if function in ("rate", "increase"):
            return self.parenthesised(lambda: self.range_function(function))
        if function in _AGGREGATIONS:
            by = self.by() if self.peek() == ("name", "by") else None
            return Call(function, self.parenthesised(self.expression), by=by)
        if function in ("topk", "histogram_quantile"):
            parameter, argument = self.parenthesised(self.number_and_expression)
            return Call(function, argument, parameter=parameter)
        raise PromqlError(f"{function}() is outside the subset")

    def range_function(self, function: str) -> RangeFunction:
        selector = self.selector()
        self.take("op", "[")
        duration = self.take("duration")
        self.take("op", "]")
        return RangeFunction(function, selector, int(duration[:-1]) * _SECONDS[duration[-1]])

    def number_and_expression(self):
        number = float(self.take("number"))
        self.take("op", ",")
        return number, self.expression()

    def by(self) -> tuple[str, ...]:
        self.take("name", "by")
        self.take("op", "(")
        names = [self.take("name")]
        while self.peek() == ("op", ","):
            self.take("op", ",")
            names.append(self.take("name"))
        self.take("op", ")")
        return tuple(names)

    def selector(self) -> Selector:
        name, matchers = self.take("name"), []
        if self.peek() == ("op", "{"):
            self.take("op", "{")
            while self.peek() != ("op", "}"):
                label = self.take("name")
                op = self.take("op")
                if op not in ("=", "!=", "=~", "!~"):
                    raise PromqlError(f"unexpected {op!r} after {label}")
                matchers.append(Matcher(label, op, json.loads(self.take("string"))))
                if self.peek() == ("op", ","):
                    self.take("op", ",")
            self.take("op", "}")
        return Selector(name, tuple(matchers))


def parse(text: str):
    """The tree of ``text``; PromqlError when it is outside the subset."""
    return _Parser(text).parse()


def metric_names(tree) -> set[str]:
    """The metric (sample) names a parsed expression reads."""
    if isinstance(tree, Selector):
        return {tree.name}
    if isinstance(tree, RangeFunction):
        return {tree.selector.name}
    if isinstance(tree, Binary):
        return metric_names(tree.left) | metric_names(tree.right)
    if isinstance(tree, Call):
        return metric_names(tree.argument)
    return set()


# --- the recording ----------------------------------------------------------------------

class Recording:
    """Scrapes at increasing times: ``series[name][labels]`` is a list of (time, value)."""

    def __init__(self, scrapes: list[tuple[float, str]]):
        self.times = [when for when, _ in scrapes]
        self.series: dict[str, dict[Labels, list[tuple[float, float]]]] = {}
        for when, text in scrapes:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    labels = tuple(sorted(sample.labels.items()))
                    self.series.setdefault(sample.name, {}).setdefault(labels, []).append(
                        (when, sample.value))

    @classmethod
    def load(cls, path: Path) -> Recording:
        """Reads the JSONL that ``bench/observability.py --record`` writes."""
        lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
        return cls(sorted((line["time"], line["text"]) for line in lines))

    def select(self, selector: Selector) -> dict[Labels, list[tuple[float, float]]]:
        return {labels: points for labels, points in self.series.get(selector.name, {}).items()
                if all(m.matches(dict(labels)) for m in selector.matchers)}


# --- evaluation -------------------------------------------------------------------------

def _rise(points: list[tuple[float, float]]) -> float:
    """How much a counter rose over ``points`` (a drop is a reset to zero)."""
    return sum(b - a if b >= a else b for (_, a), (_, b) in zip(points, points[1:]))


def _range_value(node: RangeFunction, points: list[tuple[float, float]]) -> float | None:
    if len(points) < 2:
        return None
    rise = _rise(points)
    return rise if node.function == "increase" else rise / (points[-1][0] - points[0][0])


def _aggregate(node: Call, vector: Vector) -> Vector:
    groups: dict[Labels, list[float]] = {}
    for labels, value in vector.items():
        kept = tuple((k, v) for k, v in labels if node.by is not None and k in node.by)
        groups.setdefault(kept, []).append(value)
    combine = _AGGREGATIONS[node.function]
    return {labels: combine(values) for labels, values in groups.items()}


def _quantile(q: float, vector: Vector) -> Vector:
    """Prometheus's histogram_quantile: linear interpolation inside the bucket."""
    histograms: dict[Labels, list[tuple[float, float]]] = {}
    for labels, count in vector.items():
        bound = dict(labels).get("le")
        if bound is not None:
            rest = tuple((k, v) for k, v in labels if k != "le")
            histograms.setdefault(rest, []).append((float(bound), count))
    found = {}
    for labels, buckets in histograms.items():
        value = _bucket_quantile(q, sorted(buckets))
        if value is not None:
            found[labels] = value
    return found


def _bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    if not buckets or not math.isinf(buckets[-1][0]) or buckets[-1][1] <= 0:
        return None
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return None


def _binary(op: str, left, right) -> Vector | float:
    apply = (lambda a, b: a / b if b else math.nan) if op == "/" else (lambda a, b: a * b)
    if isinstance(left, float) and isinstance(right, float):
        return apply(left, right)
    if isinstance(right, float):
        return {labels: apply(value, right) for labels, value in left.items()}
    if isinstance(left, float):
        return {labels: apply(left, value) for labels, value in right.items()}
    return {labels: apply(value, right[labels]) for labels, value in left.items()
            if labels in right}


def _latest(selector: Selector, recording: Recording, when: float) -> Vector:
    """Each matching series' last value scraped at or before ``when``."""
    found = {}
    for labels, points in recording.select(selector).items():
        seen = [value for at, value in points if at <= when]
        if seen:
            found[labels] = seen[-1]
    return found


def _over_window(node: RangeFunction, recording: Recording, when: float) -> Vector:
    """``rate`` or ``increase`` of each matching series over the window ending at ``when``."""
    found = {}
    for labels, points in recording.select(node.selector).items():
        value = _range_value(node, [p for p in points if when - node.window < p[0] <= when])
        if value is not None:
            found[labels] = value
    return found


def _call(node: Call, vector: Vector) -> Vector:
    if node.function in _AGGREGATIONS:
        return _aggregate(node, vector)
    if node.function == "histogram_quantile":
        return _quantile(node.parameter, vector)
    return dict(sorted(vector.items(), key=lambda item: -item[1])[:int(node.parameter)])


def evaluate(tree, recording: Recording, when: float) -> Vector | float:
    """The value of ``tree`` at time ``when``: an instant vector, or a float for numbers."""
    if isinstance(tree, Number):
        return tree.value
    if isinstance(tree, Selector):
        return _latest(tree, recording, when)
    if isinstance(tree, RangeFunction):
        return _over_window(tree, recording, when)
    if isinstance(tree, Call):
        return _call(tree, evaluate(tree.argument, recording, when))
    return _binary(tree.op, evaluate(tree.left, recording, when),
                   evaluate(tree.right, recording, when))


def evaluate_over(text: str, recording: Recording) -> dict[Labels, list[float]]:
    """``text`` evaluated at every scrape time: each series' values (NaN where absent)."""
    tree = parse(text)
    series: dict[Labels, list[float]] = {}
    for index, when in enumerate(recording.times):
        value = evaluate(tree, recording, when)
        vector = {(): value} if isinstance(value, float) else value
        for labels, number in vector.items():
            series.setdefault(labels, [math.nan] * len(recording.times))[index] = number
    return series
