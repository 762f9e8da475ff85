"""``metrics::`` -- counters a script moves, declared in vsl.toml and exported by the
server's ``[metrics]`` endpoint as ``vsl_script_<name>_total``.

    metrics::inc("spam_hit", #{ reason: "rbl", stage: "rcpt" });

    [metrics.script.spam_hit]
    help = "messages over the spam threshold"
    labels = { reason = ["rbl", "content"], stage = ["rcpt", "data"] }

A call names a declared metric and gives exactly its declared label keys, both as
literals (`vsl serve`, and `vsl lint --config vsl.toml`, check them against the
declarations); a value outside a label's declared set is counted as ``other`` (and
logged once), so a counter never holds more series than its declaration allows. While
the server's metrics are off, calls are checked and count nothing.
"""
# Checked twice: `vsl lint` (so `vsl serve` at start and at each reload) checks literal
# names, keys and values against the declarations bound by namespace_for; a call checks
# again what it is given (the name and keys it must be given as literals, but an
# imported module or a dynamic value can still differ). Without declarations (`vsl lint`
# without --config, `vsl run`) names and keys are not checked and nothing is counted.
# The counting itself goes to stdlib/support/telemetry.py's sink: dropped while the
# server's metrics are off.
from __future__ import annotations

import dataclasses
import logging
from functools import partial
from typing import Iterable, Protocol

from vsl.errors import ScriptError
from vsl.natives import Namespace
from vsl.resolve import DYNAMIC, ArgumentProblem

from .support import telemetry

log = logging.getLogger("vsl.metrics")

namespace = Namespace("metrics", "Counters declared in vsl.toml [metrics.script.NAME]")

OTHER = "other"          # the value of a label given one outside its declared set
MAX_AMOUNT = 1_000_000
MAX_WARNED = 256         # (metric, value) pairs warned of per engine; later ones are not
_FIX = "declare it in vsl.toml as [metrics.script.{name}]{labels}"


class Declaration(Protocol):
    """A declared metric (server/observability_config.py's ScriptMetric)."""

    name: str
    labels: tuple[tuple[str, tuple[str, ...]], ...]  # (key, allowed values), in order

    @property
    def exported_name(self) -> str: ...


class Counters:
    """The declared metrics of one engine (None: undeclared, nothing checked or counted)
    and the out-of-set values already warned of."""

    def __init__(self, declarations: Iterable[Declaration] | None):
        self.declared = None if declarations is None else \
            {m.name: m for m in declarations}
        # name -> (exported name, {label key: its allowed values}): one look-up a call
        self.counted = {name: (m.exported_name,
                               {key: frozenset(values) for key, values in m.labels})
                        for name, m in (self.declared or {}).items()}
        self.warned: set[tuple[str, str, str]] = set()

    def count(self, where: str, name, labels, amount: int) -> None:
        """Add ``amount`` to the metric ``name`` with ``labels`` (checked; see module)."""
        if self.declared is None:
            return
        found = self.counted.get(name) if type(name) is str else None
        if found is None:
            raise ScriptError(f"{where}: {_undeclared(name, labels)}")
        exported, allowed = found
        if labels is None:
            labels = {}
        if not isinstance(labels, dict) or labels.keys() != allowed.keys():
            raise ScriptError(f"{where}: {_keys_problem(self.declared[name], labels)}")
        counted = {}
        for key, values in allowed.items():
            value = labels[key]
            counted[key] = value if type(value) is str and value in values \
                else self._other(name, key, value)
        telemetry.count(exported, amount, **counted)

    def _other(self, name: str, key: str, value) -> str:
        """"other", for ``value`` given to ``key`` outside its declared values (warned of
        once)."""
        shown = repr(value)[:80]
        if (name, key, shown) not in self.warned and len(self.warned) < MAX_WARNED:
            self.warned.add((name, key, shown))
            log.warning("metrics: %s: label %s=%s is not declared in "
                        "[metrics.script.%s]: counted as \"other\"", name, key, shown, name)
        return OTHER


UNDECLARED = Counters(None)


def _labels_text(labels) -> str:
    """" labels = { k = [...] }" for the keys of a map ``labels`` (for a fix to copy)."""
    keys = list(labels) if isinstance(labels, dict) else []
    return f" labels = {{ {', '.join(f'{k} = [...]' for k in keys)} }}" if keys else ""


def _undeclared(name, labels) -> str:
    """Why ``name`` names no declared metric, and how to declare it."""
    if not isinstance(name, str):
        return "the metric's name must be a string, e.g. metrics::inc(\"spam_hit\")"
    return f"metric '{name}' is not declared: " + _FIX.format(name=name,
                                                               labels=_labels_text(labels))


def _keys_problem(metric: Declaration, labels: dict | None) -> str | None:
    """Why ``labels`` are not a map with exactly ``metric``'s label keys, or None."""
    if labels is None:
        labels = {}
    if not isinstance(labels, dict):
        return "the labels must be a map, e.g. #{ reason: \"rbl\" }"
    declared = [key for key, _ in metric.labels]
    shown = ", ".join(declared) or "none"
    for key in labels:
        if key not in declared:
            return (f"metric '{metric.name}' has no label '{key}' (declared: {shown}): "
                    + _FIX.format(name=metric.name, labels=f" labels = {{ {key} = [...] }}"))
    for key in declared:
        if key not in labels:
            return (f"metric '{metric.name}' needs the label '{key}' (declared: {shown}): "
                    f"give it in the map, or remove it from [metrics.script.{metric.name}] "
                    "labels in vsl.toml")
    return None


def _amount_problem(amount) -> str | None:
    """Why ``amount`` cannot be added to a counter, or None."""
    if type(amount) is not int or not 1 <= amount <= MAX_AMOUNT:
        return f"the amount must be an integer from 1 to {MAX_AMOUNT}, not {amount!r}"
    return None


def _one_step(*args) -> int:
    """The size of a call's work: 0, so the engine charges it one operation, as a step
    of the script (its labels are few, bounded by declaration)."""
    return 0


def _lint(counters: Counters, args) -> str | None:
    """vsl lint: a literal name, declared; a literal map with exactly the declared keys,
    its literal values in their sets; a literal amount in bounds."""
    name = args[0]
    labels = args[1] if len(args) > 1 else None
    if not isinstance(name, str):
        return ArgumentProblem("the metric's name must be a literal string, e.g. "
                               "metrics::inc(\"spam_hit\")", 0)
    if labels is DYNAMIC or not (labels is None or isinstance(labels, dict)):
        return ArgumentProblem("the labels must be a literal map, e.g. "
                               "#{ reason: \"rbl\" }", 1)
    if len(args) > 2 and args[2] is not DYNAMIC and (problem := _amount_problem(args[2])):
        return ArgumentProblem(problem, 2)
    if counters.declared is None:
        return None
    metric = counters.declared.get(name)
    if metric is None:
        return _undeclared(name, labels)
    problem = _keys_problem(metric, labels)
    return ArgumentProblem(problem, 1) if problem else _values_problem(metric, labels or {})


def _values_problem(metric: Declaration, labels: dict) -> str | None:
    """Why a literal value of ``labels`` is outside its declared set, or None."""
    for key, values in metric.labels:
        value = labels[key]
        if value is not DYNAMIC and value not in values:
            shown = f'"{value}"' if isinstance(value, str) else repr(value)
            return ArgumentProblem(
                f"label {key} = {shown} is not one of {', '.join(values)}: add it to "
                f"[metrics.script.{metric.name}] labels in vsl.toml (a value outside them "
                "is counted as \"other\")", 1, key)
    return None


@namespace.native(check=partial(_lint, UNDECLARED), charges=_one_step)
def inc(name, labels=None, *, counters: Counters = UNDECLARED) -> None:
    """inc(name, labels?): add 1 to the metric ``name`` declared in vsl.toml
    [metrics.script.NAME], with a map of exactly its declared labels (a value outside a
    label's declared set counts as "other"); exported as vsl_script_NAME_total."""
    counters.count("metrics::inc", name, labels, 1)


@namespace.native(check=partial(_lint, UNDECLARED), charges=_one_step)
def add(name, labels, amount, *, counters: Counters = UNDECLARED) -> None:
    """add(name, labels, amount): add ``amount`` (an integer from 1 to 1000000) to the
    metric ``name``, as inc adds 1."""
    problem = _amount_problem(amount)
    if problem:
        raise ScriptError(f"metrics::add: {problem}")
    counters.count("metrics::add", name, labels, amount)


def namespace_for(declarations: Iterable[Declaration] | None) -> Namespace:
    """The ``metrics::`` namespace of one engine, counting ``declarations`` (the server's
    ``config.metrics.script``); None: names unchecked and nothing counted (`vsl lint`
    without --config, `vsl run`)."""
    counters = Counters(declarations)
    bound = namespace.binding("inc", counters=counters).binding("add", counters=counters)
    functions = {name: dataclasses.replace(native, check=partial(_lint, counters))
                 for name, native in bound.functions.items()}
    return dataclasses.replace(bound, functions=functions)
