"""The server's Prometheus metrics: what server code and natives count, and a scrape.

Design (docs/observability.md): every process of one ``vsl serve`` writes its values
to prometheus_client's multiprocess files in one directory, and a scrape sums them.
prometheus_client picks its value class when it is imported, so the parent calls
:func:`prepare` (directory, ``PROMETHEUS_MULTIPROC_DIR``) before anything imports it;
each serving process then calls :func:`enable`, which builds the metric objects of
``server/metrics_catalogue.py`` and installs this module as the natives' telemetry
sink. Server code calls :func:`count` and :func:`observe`, or a :class:`Series` (a
gauge moves by a negative count); while metrics are off they cost one call and a test
of a global. Label values are guarded
by the catalogue (a value outside its set counts as the fallback, and past
``max_series`` label sets in one process a metric counts each label's fallback); a
configured directory is locked for one ``vsl serve``; the labelled children are cached,
so a repeated call costs a dictionary look-up and the increment.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from vsl.stdlib.support import telemetry

from .metrics_catalogue import CATALOGUE, Label, Metric
from .observability_config import MetricsConfig, ScriptMetric

log = logging.getLogger("vsl.metrics")

ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"
SHARED_MEMORY = Path("/dev/shm")
CACHE_PER_SERIES = 4  # raw label sets cached per allowed series (the rest guarded per call)
LOCK = ".lock"        # in a configured directory: held by the `vsl serve` using it
_VERSION_PARAMETER = re.compile(r"\bversion=([^;,]*)")
_VERSION = re.compile(r"\d+(\.\d+)*")


class DirectoryInUse(RuntimeError):
    """``[metrics] dir`` is the directory of another running ``vsl serve``."""


class Recorder:
    """The metric objects of one process, their guarded, cached children; the natives'
    telemetry sink while metrics are on."""

    def __init__(self, config: MetricsConfig):
        self.max_series = config.max_series
        self.specs: dict[str, Metric] = {name: metric for name, metric in CATALOGUE.items()
                                         if not metric.exporter}
        self.specs.update((m.exported_name, script_metric(m)) for m in config.script)
        self.objects = {name: _build(spec) for name, spec in self.specs.items()}
        self.children: dict[tuple, object] = {}
        self.series: dict[str, set[tuple[str, ...]]] = {name: set() for name in self.specs}
        self.warned: set[str] = set()

    def count(self, name: str, amount: float = 1, **labels: str) -> None:
        self.child(name, labels).inc(amount)

    def observe(self, name: str, value: float, **labels: str) -> None:
        self.child(name, labels).observe(value)

    def child(self, name: str, labels: dict[str, str]):
        """The metric object for ``name`` with ``labels`` (guarded), from the cache."""
        key = (name, *labels.items())
        found = self.children.get(key)
        if found is None:
            found = self._labelled(name, labels)
            if len(self.children) < CACHE_PER_SERIES * self.max_series * len(self.specs):
                self.children[key] = found
        return found

    def _labelled(self, name: str, labels: dict[str, str]):
        spec = self.specs.get(name)
        if spec is None:
            raise ValueError(f"metrics: unknown metric '{name}' (not in the catalogue)")
        if set(labels) != set(spec.label_names):
            raise ValueError(f"metrics: {name} takes the labels "
                             f"{', '.join(spec.label_names) or 'none'}, not "
                             f"{', '.join(sorted(labels)) or 'none'}")
        if not spec.labels:
            return self.objects[name]
        values = tuple(label.guard(labels[label.name], labels) for label in spec.labels)
        return self.objects[name].labels(*self._bounded(name, values))

    def _bounded(self, name: str, values: tuple[str, ...]) -> tuple[str, ...]:
        """``values``, or each label's fallback ("other", "none") once ``name`` holds
        max_series sets in this process."""
        known = self.series[name]
        if values in known:
            return values
        if len(known) < self.max_series:
            known.add(values)
            return values
        if name not in self.warned:
            self.warned.add(name)
            log.warning("metrics: %s holds %d label sets (metrics.max_series): "
                        "counting new ones as other", name, self.max_series)
        return tuple(label.fallback for label in self.specs[name].labels)


def script_metric(declared: ScriptMetric) -> Metric:
    """The counter of a ``[metrics.script.NAME]`` declaration."""
    labels = tuple(Label(key, values) for key, values in declared.labels)
    return Metric(declared.exported_name, "counter", declared.help, labels)


def _build(spec: Metric):
    """The prometheus_client object of ``spec`` (registered nowhere: a scrape reads the
    multiprocess files)."""
    import prometheus_client

    common = dict(name=spec.name, documentation=spec.help, labelnames=spec.label_names,
                  registry=None)
    if spec.kind == "counter":
        return prometheus_client.Counter(**common)
    if spec.kind == "gauge":
        return prometheus_client.Gauge(**common, multiprocess_mode=spec.mode)
    return prometheus_client.Histogram(**common, buckets=spec.buckets)


_recorder: Recorder | None = None


def recording() -> bool:
    """Whether metrics are on in this process: a hot path tests it before any label work."""
    return _recorder is not None


def count(name: str, amount: float = 1, **labels: str) -> None:
    """Add ``amount`` to the counter ``name`` (nothing while metrics are off)."""
    if _recorder is not None:
        _recorder.child(name, labels).inc(amount)


def observe(name: str, value: float, **labels: str) -> None:
    """Record ``value`` in the histogram ``name`` (nothing while metrics are off)."""
    if _recorder is not None:
        _recorder.child(name, labels).observe(value)


class Series:
    """One series of a metric, its labels fixed where the code names it: the child is
    looked up once per process (again after :func:`enable` in a new one), so a call on
    the hot path costs the increment alone; nothing while metrics are off."""

    __slots__ = ("name", "labels", "child", "recorder")

    def __init__(self, name: str, **labels: str):
        self.name, self.labels = name, labels
        self.child = self.recorder = None

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (a counter), or move a gauge by it."""
        if _recorder is not None:
            self._child().inc(amount)

    def observe(self, value: float) -> None:
        """Record ``value`` (a histogram)."""
        if _recorder is not None:
            self._child().observe(value)

    def _child(self):
        if self.recorder is not _recorder:
            self.child, self.recorder = _recorder.child(self.name, self.labels), _recorder
        return self.child


# -- life cycle ----------------------------------------------------------------------------
def prepare(config) -> Path | None:
    """In the parent, before prometheus_client is imported: the multiprocess directory
    (``[metrics] dir``, locked against another ``vsl serve`` (DirectoryInUse), with its
    ``*.db`` files and ready marks removed; else a private one, in /dev/shm when there
    is one), named in the environment for every process; None when metrics are off."""
    if not config.metrics.enabled:
        return None
    if config.metrics.dir is None:
        where = SHARED_MEMORY if SHARED_MEMORY.is_dir() else None
        directory = Path(tempfile.mkdtemp(prefix="vsl-metrics-", dir=where))
    else:
        directory = Path(config.metrics.dir)
        directory.mkdir(parents=True, exist_ok=True)
        _hold(directory)
        for stale in directory.glob("*.db"):
            stale.unlink()
        shutil.rmtree(directory / "ready", ignore_errors=True)
    os.environ[ENVIRONMENT] = str(directory)
    return directory


_held: dict[Path, int] = {}  # directory -> the descriptor of its lock (never closed)


def _hold(directory: Path) -> None:
    """Lock ``directory`` for this process's life (its children inherit the lock), or
    DirectoryInUse naming the ``vsl serve`` holding it."""
    if directory in _held:
        return
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise DirectoryInUse(f"metrics.dir {directory} is in use by another vsl serve "
                             f"(pid {holder}): give each instance its own") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held[directory] = fd


def directory() -> Path | None:
    """The multiprocess directory :func:`prepare` chose (None: metrics are off)."""
    named = os.environ.get(ENVIRONMENT)
    return Path(named) if named else None


def enable(config) -> None:
    """In a serving process (again after a fork): build the metrics and install the
    natives' sink. Nothing when metrics are off; RuntimeError without :func:`prepare`."""
    global _recorder
    if not config.metrics.enabled:
        return
    if directory() is None:
        raise RuntimeError(f"metrics: enable() before prepare(): {ENVIRONMENT} is not set")
    _recorder = Recorder(config.metrics)
    telemetry.install(_recorder)


def disable() -> None:
    """Metrics off again in this process (tests)."""
    global _recorder
    _recorder = None
    telemetry.install(None)


def mark_dead(pid: int) -> None:
    """A process that exited: its live gauges no longer count."""
    if _recorder is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(directory()))


def encoding(accept: str) -> tuple[Callable, str]:
    """prometheus_client's encoder and content type for ``accept`` (an Accept header):
    OpenMetrics when asked for, but the text format when a ``version=`` is not digits
    and dots (prometheus_client would fail on it, or echo it in the content type)."""
    from prometheus_client.exposition import choose_encoder

    versions = _VERSION_PARAMETER.findall(accept)
    if not all(_VERSION.fullmatch(version.strip()) for version in versions):
        accept = ""
    return choose_encoder(accept)


def render(encoder: Callable, collectors=()) -> bytes:
    """The values of every process plus ``collectors`` (computed now, by the exporter),
    encoded by ``encoder`` (see :func:`encoding`)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(directory()))
    for collector in collectors:
        registry.register(collector)
    return encoder(registry)


def collect(accept: str = "", collectors=()) -> tuple[bytes, str]:
    """A scrape encoded as ``accept`` asks: (body, content type)."""
    encoder, content_type = encoding(accept)
    return render(encoder, collectors), content_type
