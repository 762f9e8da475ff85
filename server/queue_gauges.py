"""The queue gauges, computed at each scrape by the exporter (``[metrics] queue_gauges``).

``vsl_queue_messages{queue}``: messages per queue of the backend (the spool: envelope
files per queue directory, by scandir; a broker: ``AmqpQueue.counts()`` on the
exporter's own connection). ``vsl_queue_oldest_age_seconds{queue}``: the spool only,
from the oldest id (spool ids begin with the time in milliseconds, in hex); a broker
cannot tell without reading every message. The queue label is bounded as the serving
processes' labels are: a name outside the catalogue's pattern, and every queue past the
first ``max_series``, count together as "other".
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from pathlib import Path

from .metrics_catalogue import CATALOGUE
from .queue_backend import MESSAGE_ID, QueueBackend

log = logging.getLogger("vsl.metrics")

BROKER_WAIT = 2.0  # seconds a scrape waits for the broker's counts
_ID_TIME_DIGITS = 12


def spool_queue(directory: Path) -> tuple[int, float | None]:
    """(envelopes in a spool queue directory, the time its oldest arrived or None)."""
    found, oldest = 0, None
    with os.scandir(directory) as entries:
        for entry in entries:
            stem, dot, ext = entry.name.partition(".")
            if ext != "json" or not MESSAGE_ID.fullmatch(stem):
                continue
            found += 1
            arrived = int(stem[:_ID_TIME_DIGITS], 16) / 1000
            oldest = arrived if oldest is None else min(oldest, arrived)
    return found, oldest


def bounded(counts: dict[str, int], oldest: dict[str, float], max_series: int
            ) -> tuple[dict[str, int], dict[str, float]]:
    """``counts`` and ``oldest`` by queue with at most ``max_series`` queue labels: a
    name the label does not take, and the queues past the first ``max_series - 1`` when
    there are more, are summed (the earliest arrival kept) as "other"."""
    label = CATALOGUE["vsl_queue_messages"].labels[0]
    named = {queue: label.guard(queue, {}) for queue in counts}
    kept = [queue for queue in sorted(counts) if named[queue] != label.fallback]
    if len(kept) + (len(kept) < len(counts)) > max_series:  # "other" is one more
        kept = kept[:max_series - 1]
    out_counts: dict[str, int] = {}
    out_oldest: dict[str, float] = {}
    for queue, number in counts.items():
        key = queue if queue in kept else label.fallback
        out_counts[key] = out_counts.get(key, 0) + number
        if queue in oldest:
            out_oldest[key] = min(out_oldest.get(key, oldest[queue]), oldest[queue])
    return out_counts, out_oldest


class QueueGauges:
    """A prometheus_client collector of the queue gauges of ``queue``; ``loop``: the
    event loop where a broker's queue is open (a scrape runs in another thread);
    ``max_series``: the most queue labels it shows."""

    def __init__(self, queue: QueueBackend, loop: asyncio.AbstractEventLoop,
                 max_series: int):
        self.queue, self.loop, self.max_series = queue, loop, max_series

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        counts, oldest = bounded(*self._read(), self.max_series)
        families = [GaugeMetricFamily(name, CATALOGUE[name].help, labels=["queue"])
                    for name in ("vsl_queue_messages", "vsl_queue_oldest_age_seconds")]
        now = time.time()
        for queue, number in counts.items():
            families[0].add_metric([queue], number)
            if queue in oldest:
                families[1].add_metric([queue], max(now - oldest[queue], 0.0))
        return families

    def _read(self) -> tuple[dict[str, int], dict[str, float]]:
        if self.queue.shared:
            return self._broker_counts(), {}
        counts, oldest = {}, {}
        for queue in self.queue.queues():
            try:
                counts[queue], arrived = spool_queue(self.queue.root / queue)
            except OSError:
                continue  # a quarantine removed meanwhile
            if arrived is not None:
                oldest[queue] = arrived
        return counts, oldest

    def _broker_counts(self) -> dict[str, int]:
        """The broker's counts, or none when it does not answer in time (the scrape
        goes on without them; /readyz tells why)."""
        future = asyncio.run_coroutine_threadsafe(self.queue.counts(), self.loop)
        try:
            return future.result(BROKER_WAIT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            log.warning("metrics: the broker did not count its queues within %g s",
                        BROKER_WAIT)
        except Exception as err:  # noqa: BLE001 - any failure: no queue gauges this time
            log.warning("metrics: the broker did not count its queues: %s", err)
        return {}
