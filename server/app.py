"""The SMTP server: listeners, the policy, the spool, and the collaborators its sessions
work with (:class:`~server.services.SessionServices`: admission, AUTH, intake).

    server = Server(config)          # lints and loads the scripts (PolicyError if bad)
    await server.start()             # binds every listener
    await server.serve_forever()     # until cancelled; SIGHUP or a changed script reloads

A server runs some of three roles (``vsl serve --role``): ``receiver`` (the listeners
and the stages up to on_pre_queue), ``worker`` (on_post_queue, server/post_queue_worker.py)
and ``delivery``. On a queue backend that is not shared between machines (the spool) it
runs all three, and on_post_queue runs inline, in the session, before the 250. On a
shared one (a broker) each role may run elsewhere, and even all three in one process
hand messages over through ``working``: a worker of any machine may run on_post_queue.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

from vsl.stdlib.support.state import StateStore
from vsl.engine import Engine

from .admission import Admission
from .authenticator import Authenticator
from .config import Config, Listener, warn_if_changed
from .delivery import Delivery
from .delivery_hook import FailureHook
from .exporter import Exporter
from .implicit_tls import ImplicitTls
from .intake import Intake
from .open_files import raise_open_files_limit
from . import metrics, readiness
from .post_queue_worker import PostQueueWorker
from .queue_backend import QueueBackend
from .queues import open_queue
from .scripting import Scripting
from .services import SessionServices, SessionSettings
from .shared_counters import SharedCounters
from .throttle_service import RemoteThrottle
from .protocol import Protocol

log = logging.getLogger("vsl.server")

ROLES = ("receiver", "worker", "delivery")
ALL_ROLES = frozenset(ROLES)


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server-side TLS context, or None when no certificate is configured."""
    if not config.tls.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(config.tls.certificate), str(config.tls.key))
    except (OSError, ssl.SSLError) as err:
        raise ValueError(f"tls: cannot load {config.tls.certificate}: {err}") from None
    return context


def check_roles(roles: frozenset[str], queue: QueueBackend) -> None:
    """ValueError unless ``roles`` (some of :data:`ROLES`) can run on ``queue``: a part
    of them needs a queue shared between machines."""
    if not roles or not roles <= ALL_ROLES:
        raise ValueError(f"roles: {', '.join(sorted(roles)) or 'none'} "
                         f"(known: {', '.join(ROLES)})")
    if roles != ALL_ROLES and not queue.shared:
        named = ",".join(role for role in ROLES if role in roles)
        raise ValueError(f'--role {named} needs [queue] backend = "rabbitmq": the spool '
                         f"serves one machine; use --role all")


async def recover_queue(queue: QueueBackend) -> None:
    """At start-up, before anything writes to the queue: finish or drop what a stop cut
    short (:meth:`QueueBackend.recover`), then log what an operator should fix."""
    dropped = await queue.recover()
    if dropped:
        log.info("spool: dropped %d unacknowledged file(s)", dropped)
    for warning in queue.startup_warnings():
        log.warning("%s", warning)


class Server:
    """Everything one ``vsl serve`` process (or one worker of it) runs. ``state``: where
    its limits and greylisting count (None: the configured ``[state]``). ``roles``: the
    roles it runs (see the module docstring); ValueError when the queue backend cannot
    serve them. ``index``: which worker it is (server/workers.py), for readiness;
    ``counters``, ``throttle``: the connections counted and the AUTH throttle of every
    worker (None: this process's own)."""

    def __init__(self, config: Config, engine: Engine | None = None,
                 state: StateStore | None = None, roles: frozenset[str] = ALL_ROLES,
                 index: int = 0, counters: SharedCounters | None = None,
                 throttle: RemoteThrottle | None = None):
        self.config, self.roles, self.index = config, roles, index
        self.spool: QueueBackend = open_queue(config)
        check_roles(roles, self.spool)
        dns_defaults = config.dns.resolver_defaults()
        self.scripting = Scripting(config, engine, state, on_self_learned=_count_self_learned)
        self.policy = self.scripting.policy
        if config.scripts is not None and self.policy.script is None:
            log.warning("%s: no main.vsl, serving with the built-in rules only",
                        config.scripts)
        self.delivery = Delivery(self.spool, config.resolved_delivery, config.hostname,
                                 config.domains, dns_defaults=dns_defaults,
                                 hook=FailureHook(self.policy, self.scripting.pool))
        intake = Intake(self.spool, self.delivery, hands_off=self.spool.shared)
        self.services = SessionServices(
            SessionSettings.of(config), Admission(config.limits, counters),
            Authenticator(config.auth, self.policy, throttle), intake, self.scripting.new_runner)
        self.post_queue = PostQueueWorker(self.spool, intake, self.scripting.new_runner,
                                          config) \
            if self.spool.shared and "worker" in roles else None
        self.tls = tls_context(config)
        self.servers: list[asyncio.base_events.Server] = []
        self.bound: list[tuple[Listener, tuple]] = []
        self._tasks: list[asyncio.Task] = []
        self.exporter: Exporter | None = None
        self.metrics_dir = metrics.directory() if config.metrics.enabled else None

    # -- connections -------------------------------------------------------------
    def protocol(self, listener: Listener, accepted: tuple[tuple, tuple] | None = None
                 ) -> Protocol:
        """The SMTP protocol of one connection (``accepted``: see Session)."""
        return Protocol(self.services, listener, self.tls, accepted)

    def _connection_factory(self, listener: Listener) -> Callable[[], asyncio.Protocol]:
        """What each connection of ``listener`` starts with: the SMTP protocol, after the
        TLS handshake on an ``smtps`` listener."""
        if listener.kind == "smtps":
            return lambda: ImplicitTls(lambda accepted: self.protocol(listener, accepted),
                                       self.tls, self.services.admission)
        return lambda: self.protocol(listener)

    # -- life cycle ------------------------------------------------------------------
    async def start(self, sockets: list[tuple[Listener, socket.socket]] | None = None) -> None:
        """Raise the open-files limit for ``limits.connections`` (server/open_files.py),
        open and recover the spool, start the worker and delivery loops of its roles,
        and bind every listener (a receiver). ``sockets``: (listener, socket) pairs
        already bound and listening, by the parent of several workers
        (server/workers.py), which raised the limit and recovered the spool before
        starting them: then neither is done here (recovering would drop another worker's
        files being written); nor is the metrics endpoint served here then (its own
        process does)."""
        await self.spool.open()
        if sockets is None:
            raise_open_files_limit(self.config.limits.connections)
            await self._export()  # a metrics port in use stops the start before recovery
            await recover_queue(self.spool)
            sockets = [(listener, None) for listener in self.config.listen]
        if "delivery" in self.roles:
            self.delivery.start()
        if self.post_queue is not None:
            self.post_queue.start()
        if "receiver" not in self.roles:
            sockets = []
        loop = asyncio.get_running_loop()
        for listener, sock in sockets:
            where = {"sock": sock} if sock else \
                {"host": listener.host, "port": listener.port, "reuse_address": True}
            server = await loop.create_server(self._connection_factory(listener), **where)
            self.servers.append(server)
            for bound in server.sockets:
                self.bound.append((listener, bound.getsockname()))
                log.info("listening: %s on %s", listener.kind, bound.getsockname()[:2])
        log.info("started: %s (%s), scripts %s, queue %s, state %s", self.config.hostname,
                 ", ".join(role for role in ROLES if role in self.roles),
                 self.config.scripts or "(none)", self.config.queue_dir, self.scripting.state)
        if self.metrics_dir is not None:
            readiness.mark_ready(self.metrics_dir, self.index)

    async def _export(self) -> None:
        """Serve /metrics on this loop (one process, ``[metrics] listen`` set)."""
        if self.metrics_dir is not None:
            self.exporter = Exporter(self.config, workers=1)
            await self.exporter.start()

    async def serve_forever(self) -> None:
        """Serve until cancelled; reload the scripts on SIGHUP and when they change."""
        # one process: its SIGHUP is the operator's (with workers, the parent's is)
        self._tasks.append(self.policy.follow_changes(
            on_sighup=(lambda: warn_if_changed(self.config)) if self.config.workers == 1
            else None))
        serving = [s.serve_forever() for s in self.servers] or \
            [asyncio.Event().wait()]  # no listener (no receiver): until cancelled
        try:
            await asyncio.gather(*serving)
        finally:
            await self.stop()

    async def stop(self) -> None:
        log.info("stopping")
        if self.metrics_dir is not None:
            readiness.unmark_ready(self.metrics_dir, self.index)
        if self.exporter is not None:
            await self.exporter.stop()
        if self.post_queue is not None:
            await self.post_queue.stop()
        await self.delivery.stop()
        for task in self._tasks:
            task.cancel()
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()
        await self.spool.close()  # its writer thread and delivery journal
        await self.scripting.close()
        log.info("stopped")


def _count_self_learned(reason: str) -> None:
    """Count an example the bounce classifier's self-learning kept."""
    metrics.count("vsl_bounce_self_learned_total", reason=reason)
