"""Where natives report what they did, for the server's metrics to count.

The natives know nothing of the server (stdlib never imports server/), so they report
to the sink installed here: by default one that does nothing, and in a server with
``[metrics]`` on, the Prometheus one of ``server/metrics.py`` (``install``). A report
names a metric of the server's catalogue and its labels' values; the sink checks and
bounds them.
"""
from __future__ import annotations

import functools
from typing import Protocol


class Sink(Protocol):
    def count(self, name: str, amount: float = 1, **labels: str) -> None:
        """Add ``amount`` to the counter ``name`` with these labels."""

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record ``value`` (seconds, bytes) in the histogram ``name``."""


class _Nothing:
    """The sink while metrics are off: every report is dropped at the cost of a call."""

    def count(self, name: str, amount: float = 1, **labels: str) -> None:
        pass

    def observe(self, name: str, value: float, **labels: str) -> None:
        pass


NOTHING: Sink = _Nothing()
sink: Sink = NOTHING


def install(new: Sink | None) -> None:
    """Make ``new`` the sink every native reports to (None: back to dropping)."""
    global sink
    sink = new if new is not None else NOTHING


def count(name: str, amount: float = 1, **labels: str) -> None:
    """Report to the installed sink (see Sink.count)."""
    sink.count(name, amount, **labels)


def observe(name: str, value: float, **labels: str) -> None:
    """Report to the installed sink (see Sink.observe)."""
    sink.observe(name, value, **labels)


def counted_check(check: str, names: dict[str, str] | None = None):
    """Decorate an async native returning a check result: count its ``.value`` (renamed
    by ``names``) in ``vsl_check_results_total{check}``."""
    names = names or {}

    def decorate(native):
        @functools.wraps(native)
        async def counted(*args):
            result = await native(*args)
            sink.count("vsl_check_results_total", check=check,
                       result=names.get(result.value, result.value))
            return result
        return counted
    return decorate
