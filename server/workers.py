"""``[server] workers = N`` (N > 1): N server processes accepting on the same sockets.

One Python process is held to about one core by the GIL; N workers are not. The parent
(``vsl serve`` itself) never serves a connection:

- it recovers the spool once, before any worker runs (a worker never does: it would drop
  the temporary files another worker is writing);
- it binds every listener (when the workers are receivers), then forks the workers, which
  run the same roles, inherit the listening sockets and accept on them; the kernel hands
  each connection to one of them;
- on the spool, only worker 0 runs the delivery worker; on a queue shared between
  machines (a broker) every worker may deliver (each with its own delivery journal) and
  run on_post_queue;
- with ``[metrics] listen``, it binds the metrics socket with the listeners and forks an
  exporter child (server/exporter.py), supervised as the workers are; each process that
  exits is marked dead for the metrics (its live gauges stop counting), and each worker
  started again counts in ``vsl_worker_restarts_total``;
- SIGTERM or SIGINT stops every worker (cleanly: each logs ``stopping`` and ``stopped``;
  one still running ``STOP_GRACE`` seconds later is killed), then the parent exits 0;
  SIGHUP reloads the scripts in every worker; a worker that dies otherwise is logged and
  started again (as Postfix's master does), at most once a second.

The connection limits (``limits.connections``, ``limits.connections_per_ip``) hold across
the workers: the parent makes their shared counts (server/shared_counters.py) before it
forks, and clears a dead worker's count before starting it again. So does the AUTH
throttle: it runs in a supervised child of its own, which every worker asks over a socket
pair (server/throttle_service.py). The parent starts that child when a worker first asks
for it (SIGUSR1, at its first login), so a server that offers no AUTH runs none.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import replace

from . import event_loop, metrics
from .app import ALL_ROLES, Server, recover_queue
from .config import Config, Listener, parse_listen, warn_if_changed
from .exporter import serve_exporter
from .open_files import raise_open_files_limit
from .queues import open_queue
from .shared_counters import SharedCounters
from .throttle_service import RemoteThrottle, channels, serve_throttle

log = logging.getLogger("vsl.workers")

BACKLOG = 100           # as asyncio's create_server
RESTART_INTERVAL = 1.0  # a worker that keeps dying is started again at most this often
STOP_GRACE = 10.0       # seconds the children have to stop after SIGTERM, then SIGKILL
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
_WANT_THROTTLE = signal.SIGUSR1  # a worker's first login: start the AUTH throttle
EXPORTER = -1           # the exporter child's index among the children
THROTTLE = -2           # the AUTH throttle's


def bind(listener: Listener) -> list[socket.socket]:
    """Listening sockets for ``listener``, one per address its host resolves to, bound as
    asyncio's create_server would (SO_REUSEADDR, IPv6 sockets IPv6-only)."""
    infos = socket.getaddrinfo(listener.host, listener.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    sockets = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as err:
                raise OSError(err.errno, f"error while attempting to bind on address "
                                         f"{address!r}: {err.strerror}") from None
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def _recover(config: Config) -> bool:
    """Recover the queue; whether it is shared between machines."""
    queue = open_queue(config)
    try:
        await queue.open()
        await recover_queue(queue)
    finally:
        await queue.close()  # no thread may run in the parent when it forks
    return queue.shared


class Workers:
    """The parent of ``config.workers`` worker processes, each running ``roles`` (see
    the module docstring)."""

    def __init__(self, config: Config, roles: frozenset[str] = ALL_ROLES):
        self.config, self.roles = config, roles
        self.shared = False  # the queue is shared between machines (known once prepared)
        self.sockets: list[tuple[Listener, socket.socket]] = []
        self.metrics_sockets: list[socket.socket] = []
        self.children: dict[int, int] = {}   # pid -> worker index (or EXPORTER, THROTTLE)
        self.started: dict[int, float] = {}  # worker index -> when it last started
        self.stopping = False
        self.counters = SharedCounters(config.workers, config.limits.connections)
        self.channels = channels(config.workers)  # the throttle's: (worker's, its) ends

    def prepare(self) -> None:
        """Bind every listener of a receiver and the metrics endpoint, then recover the
        spool (OSError if one cannot bind); raise the open-files limit, once for every
        worker."""
        raise_open_files_limit(self.config.limits.connections)
        listeners = self.config.listen if "receiver" in self.roles else ()
        try:
            for listener in listeners:
                self.sockets += [(listener, sock) for sock in bind(listener)]
            self.metrics_sockets = self._bind_metrics()
        except BaseException:
            self.close()
            raise
        self.shared = event_loop.run(_recover(self.config), self.config.event_loop)

    def _bind_metrics(self) -> list[socket.socket]:
        """The exporter's sockets (none when metrics are off); an OSError naming
        ``metrics HOST:PORT`` when they cannot bind."""
        if not self.config.metrics.enabled:
            return []
        listen = self.config.metrics.listen
        try:
            return bind(parse_listen(listen, key="metrics.listen"))
        except OSError as err:
            raise OSError(f"metrics {listen}: {err}") from None

    def run(self) -> int:
        """Start the workers and look after them until SIGTERM or SIGINT; returns the exit
        status (0)."""
        handlers = {sig: signal.signal(sig, self._signal) for sig in _SIGNALS}
        handlers[_WANT_THROTTLE] = signal.signal(_WANT_THROTTLE, self._throttle_wanted)
        handlers[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._stop_overdue)
        try:
            if self.metrics_sockets:
                self._start(EXPORTER)
            for index in range(self.config.workers):
                if self.stopping:
                    break  # SIGTERM while starting: the rest are never started
                self._start(index)
            self._supervise()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            self.close()
        return 0

    def close(self) -> None:
        for sock in (*(sock for _, sock in self.sockets), *self.metrics_sockets,
                     *(sock for pair in self.channels for sock in pair)):
            sock.close()
        self.channels.clear()
        self.sockets.clear()
        self.metrics_sockets.clear()

    # -- the parent ----------------------------------------------------------------------
    def _signal(self, signum: int, _frame) -> None:
        workers = [pid for pid, index in self.children.items() if index >= 0]
        if signum == signal.SIGHUP:
            log.info("SIGHUP: reloading the scripts in %d worker(s)", len(workers))
            warn_if_changed(self.config)
            self._send(signal.SIGHUP, workers)
            return
        if self.stopping:
            return  # the children were told once (a second SIGTERM would cut their stop)
        log.info("%s: stopping %d worker(s)", signal.Signals(signum).name, len(workers))
        signal.setitimer(signal.ITIMER_REAL, STOP_GRACE)  # then _stop_overdue
        self.stopping = True
        self._send(signal.SIGTERM, list(self.children))

    def _stop_overdue(self, _signum: int, _frame) -> None:
        """SIGALRM, ``STOP_GRACE`` seconds after the stop began: kill what still runs (a
        worker stops its sessions and deliveries cleanly, which never takes that long)."""
        if self.children:
            log.error("%d process(es) still running %.0f s after the stop began: killing "
                      "them", len(self.children), STOP_GRACE)
            self._send(signal.SIGKILL, list(self.children))

    def _throttle_wanted(self, _signum: int, _frame) -> None:
        """Start the AUTH throttle the first time a worker asks (then it is supervised)."""
        if THROTTLE not in self.started and not self.stopping:
            self._start(THROTTLE)

    @staticmethod
    def _send(signum: int, pids: list[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass  # exited; waitpid will say so

    def _supervise(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            index = self.children.pop(pid, None)
            if index is None:
                continue
            metrics.mark_dead(pid)
            if index >= 0:
                self.counters.clear(index)  # its connections died with it
            if self.stopping:
                continue
            log.error("%s (pid %d) %s: starting it again", _name(index), pid,
                      _describe(status))
            if index >= 0:
                metrics.count("vsl_worker_restarts_total")
            wait = self.started.get(index, 0.0) + RESTART_INTERVAL - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # a SIGTERM meanwhile still stops everything
            if not self.stopping:
                self._start(index)

    def _start(self, index: int) -> None:
        if threading.active_count() > 1:  # fork copies only this thread: locks could hang
            raise RuntimeError("workers: a thread is running in the parent; cannot fork")
        sys.stdout.flush()
        sys.stderr.flush()
        # none handled half-way; a child leaves _WANT_THROTTLE blocked (the parent's)
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS | {_WANT_THROTTLE})
        try:
            pid = os.fork()
            if pid == 0:
                self._child(index)  # never returns
            self.children[pid] = index
            self.started[index] = time.monotonic()
            if self.stopping:  # a SIGTERM handled between the caller's check and the fork
                os.kill(pid, signal.SIGTERM)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS | {_WANT_THROTTLE})
        log.info("%s started (pid %d)", _name(index), pid)

    # -- a worker ------------------------------------------------------------------------
    def _child(self, index: int) -> None:
        status = 1
        try:
            # the parent's stop: at once until a worker serves, then a clean stop
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            # Ctrl-C reaches the whole process group: the parent stops the workers
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS - {signal.SIGHUP})
            event_loop.run(self._work(index), self.config.event_loop, announce=False,
                           stop_on_sigterm=index >= 0)
            status = 0
        except BaseException:  # noqa: BLE001 - logged; the parent starts it again
            log.exception("%s failed", _name(index))
        finally:
            logging.shutdown()
            os._exit(status)


    def _work(self, index: int):
        """What child ``index`` runs: the exporter, the AUTH throttle, or a worker's
        Server (each closes the listening sockets it does not serve)."""
        if index == EXPORTER:
            _close(sock for _, sock in self.sockets)
            return serve_exporter(self.config, self.metrics_sockets)
        _close(self.metrics_sockets)
        if index == THROTTLE:
            _close(sock for _, sock in self.sockets)
            return serve_throttle(self.config.auth, [theirs for _, theirs in self.channels],
                                  restarted=THROTTLE in self.started)
        metrics.enable(self.config)
        config = child_config(self.config, index, self.shared)
        self.counters.use(index)
        parent = os.getppid()
        throttle = RemoteThrottle(self.channels[index][0],
                                  start_service=lambda: os.kill(parent, _WANT_THROTTLE))
        server = Server(config, roles=self.roles, index=index, counters=self.counters,
                        throttle=throttle)
        return _serve(server, self.sockets)


def child_config(config: Config, index: int, shared: bool) -> Config:
    """Worker ``index``'s configuration. On the spool only worker 0 delivers. On a shared
    queue every worker delivers, each with a delivery journal of its own, the same across
    its restarts (``delivered.journal``, ``delivered-1.journal``, ...): one file
    compacted by one process only."""
    delivery = config.delivery
    if index == 0:
        return config
    if not shared:
        return replace(config, delivery=replace(delivery, enabled=False))
    journal = config.journal_path.with_name(
        f"{config.journal_path.stem}-{index}{config.journal_path.suffix}")
    return replace(config, delivery=replace(delivery, journal=journal))


async def _serve(server: Server, sockets: list[tuple[Listener, socket.socket]]) -> None:
    await server.start(sockets)
    # SIGHUP stayed blocked since the fork: one sent meanwhile reloads once serve_forever
    # handles it (it does before its first suspension, so before this callback runs)
    asyncio.get_running_loop().call_soon(signal.pthread_sigmask, signal.SIG_UNBLOCK,
                                         {signal.SIGHUP})
    await server.serve_forever()


def _close(sockets) -> None:
    for sock in sockets:
        sock.close()


def _name(index: int) -> str:
    return {EXPORTER: "exporter", THROTTLE: "AUTH throttle"}.get(index, f"worker {index}")


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.WEXITSTATUS(status)}"
