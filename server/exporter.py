"""The metrics endpoint of one ``vsl serve``: /metrics, /healthz and /readyz.

It runs on the Server's own loop when there is one process (``workers = 1``), and in a
supervised child of its own with several (server/workers.py): there a scrape, which
sums every process's files, blocks no SMTP session. Besides the processes' values it
computes, at each scrape, the queue gauges (server/queue_gauges.py) and
``vsl_build_info``; readiness is server/readiness.py's checks, and health that the
process that started it (the workers' parent) is still there.
"""
from __future__ import annotations

import asyncio
import os
import socket
from functools import partial
from importlib import metadata

from . import metrics, readiness
from .config import Config, parse_listen
from .metrics_catalogue import CATALOGUE
from .metrics_http import MetricsHttp
from .queue_gauges import QueueGauges
from .queues import open_queue

PACKAGE = "vsl-mta"


UNKNOWN_VERSION = "unknown"


def installed_version() -> str:
    """The installed package's version (guarded as the label's values are), "unknown"
    when the package metadata cannot tell (not installed)."""
    try:
        version = metadata.version(PACKAGE)
    except Exception:  # noqa: BLE001 - metadata fails in several ways; this is a label
        return UNKNOWN_VERSION
    return CATALOGUE["vsl_build_info"].labels[0].guard(version, {})


class BuildInfo:
    """The collector of ``vsl_build_info{version}`` (always 1), its version read once."""

    def __init__(self):
        self.version = installed_version()

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("vsl_build_info", CATALOGUE["vsl_build_info"].help,
                                   labels=["version"])
        family.add_metric([self.version], 1)
        return [family]


class Exporter:
    """Serves the metrics of ``config`` for ``workers`` serving processes; ``parent``:
    the pid of the workers' parent, for the exporter child (None: in the server)."""

    def __init__(self, config: Config, workers: int, parent: int | None = None):
        self.config, self.workers, self.parent = config, workers, parent
        self.queue = open_queue(config)
        self.collectors: list = [BuildInfo()]
        self.http = MetricsHttp(self.scrape, self.health, self.problems)
        self.redis = None

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Open what the checks need and serve on ``sockets`` (None: bind
        ``[metrics] listen``; OSError naming it when that fails)."""
        if self.queue.shared:
            await self.queue.open()
        if self.config.metrics.queue_gauges:
            self.collectors.append(QueueGauges(self.queue, asyncio.get_running_loop(),
                                               self.config.metrics.max_series))
        if self.config.state.backend == "redis":
            self.redis = _redis_client(self.config)
        if sockets is not None:
            await self.http.start(sockets)
            return
        listen = self.config.metrics.listen
        where = parse_listen(listen, key="metrics.listen")
        try:
            await self.http.listen(where.host, where.port)
        except OSError as err:
            raise OSError(f"metrics {listen}: {err}") from None

    async def stop(self) -> None:
        await self.http.stop()
        if self.queue.shared:
            await self.queue.close()
        if self.redis is not None:
            await self.redis.aclose()

    def scrape(self, accept: str):
        """(the content type ``accept`` gets, what makes the body: in a thread)."""
        encoder, content_type = metrics.encoding(accept)
        return content_type, partial(metrics.render, encoder, self.collectors)

    async def health(self) -> list[str]:
        """What is wrong with the exporter itself: its parent is gone (the workers'
        parent no longer supervises them)."""
        if self.parent is not None and os.getppid() != self.parent:
            return [f"parent pid {self.parent} is gone"]
        return []

    async def problems(self) -> list[str]:
        """What keeps this ``vsl serve`` from taking mail, one line each."""
        found = readiness.worker_problems(metrics.directory(), self.workers)
        if self.queue.shared:
            found.append(await readiness.answer_problem("broker", self.queue.counts))
        else:
            found.append(readiness.spool_problem(self.queue.root))
        if self.redis is not None:
            found.append(await readiness.answer_problem("redis", self.redis.ping))
        return [line for line in found if line]


def _redis_client(config: Config):
    import redis.asyncio

    from .state_store import redis_url

    return redis.asyncio.Redis.from_url(redis_url(config.state),
                                        socket_timeout=readiness.WAIT,
                                        socket_connect_timeout=readiness.WAIT)


async def serve_exporter(config: Config, sockets: list[socket.socket]) -> None:
    """The exporter child of several workers: serve until killed."""
    exporter = Exporter(config, config.workers, parent=os.getppid())
    await exporter.start(sockets)
    try:
        await asyncio.Event().wait()
    finally:
        await exporter.stop()
