"""The SMTP server: listeners, connection accounting, the policy, the spool.

    server = Server(config)          # lints and loads the scripts (PolicyError if bad)
    await server.start()             # binds every listener
    await server.serve_forever()     # until cancelled; SIGHUP or a changed script reloads
"""
from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from vsl.stdlib import dns as dns_natives, new_engine
from vsl.stdlib.ctx import Context, Stage
from vsl.engine import Engine

from .auth_throttle import AuthThrottle
from .config import Config, Listener
from .delivery import Delivery
from .passwords import UsersFile
from .policy import Policy
from .queue import QueueError, Spool
from .session import Protocol

log = logging.getLogger("vsl.server")


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


async def recover_spool(spool: Spool) -> None:
    """At start-up, before anything writes to the spool: finish or drop what a stop cut
    short (:meth:`Spool.recover`), warn of directories open to other users and of
    misnamed quarantines, then hold what was never acknowledged."""
    dropped = spool.recover()
    if dropped:
        log.info("spool: dropped %d unacknowledged file(s)", dropped)
    for directory, mode in spool.open_to_others():
        log.warning("spool %s is readable by others (mode %04o): chmod 700 it", directory, mode)
    for warning in spool.quarantine_warnings():
        log.warning("spool: %s", warning)
    await hold_unacknowledged(spool)


async def hold_unacknowledged(spool: Spool) -> None:
    """A message still in ``working`` was on disk when the server stopped, but its 250
    (sent after on_post_queue) was not: its client will send it again. It goes to
    ``hold``: neither lost nor delivered twice; an operator may release it."""
    for entry in spool.list("working"):
        log.warning("%s: never acknowledged to its client (stopped before on_post_queue "
                    "ended): moved to hold; `vsl queue release %s` delivers it",
                    entry.id, entry.id)
        await spool.move(entry.id, "hold", "working")


class Server:
    """Everything one ``vsl serve`` process (or one worker of it) runs."""

    def __init__(self, config: Config, engine: Engine | None = None):
        self.config = config
        dns = config.dns  # [dns] override: every resolver asks those servers (staging)
        dns_natives.configure_defaults(dns.config, dns.override or dns.nameservers,
                                       dns.timeout, forced=bool(dns.override),
                                       cache_bytes=dns.cache_bytes)
        self.engine = engine or new_engine(limits=config.script_limits)
        # stage functions that may run long (Script.call_off_loop)
        self.script_pool = ThreadPoolExecutor(config.script_threads, "vsl-script")
        self.policy = Policy(self.engine, config.scripts)
        if config.scripts is not None and self.policy.script is None:
            log.warning("%s: no main.vsl, serving with the built-in rules only",
                        config.scripts)
        self.spool = Spool(config.queue_dir)
        self.delivery = Delivery(self.spool, config.delivery, config.hostname, config.domains)
        self.users = UsersFile(config.auth.users_file) if config.auth.users_file else None
        self.auth_throttle = AuthThrottle(config.auth)
        self.tls = tls_context(config)
        self.per_ip: Counter = Counter()
        self.replay_peer: tuple[str, int] | None = None  # the client address in `vsl test`
        self.servers: list[asyncio.base_events.Server] = []
        self.bound: list[tuple[Listener, tuple]] = []
        self._tasks: list[asyncio.Task] = []

    # -- connections -------------------------------------------------------------
    def protocol(self, listener: Listener) -> Protocol:
        return Protocol(self, listener, self.tls)

    def admit(self, ip: str) -> bool:
        """Count a new connection; False when a connection limit is reached."""
        limits = self.config.limits
        if sum(self.per_ip.values()) >= limits.connections or \
                self.per_ip[ip] >= limits.connections_per_ip:
            log.warning("%s: connection refused, limit reached", ip)
            return False
        self.per_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    def offers_auth(self) -> bool:
        """AUTH is offered when something can check credentials."""
        script = self.policy.script
        return bool(self.config.auth.mechanisms) and (
            self.users is not None or (script is not None and script.has("on_auth")))

    async def check_credentials(self, user: str, password: str) -> bool:
        """The users file's verdict (scrypt runs off the event loop)."""
        if self.users is None:
            return False
        return await asyncio.get_running_loop().run_in_executor(
            None, self.users.check, user, password)

    async def queued(self, msg_id: str, queue: str, ctx: Context, runner,
                     data: bytes) -> None:
        """After a message is on disk (``data``: its bytes there): on_post_queue decides
        where it goes next. The message is kept whatever fails here (the client gets its
        250, as a 421 would make it send the message again): whatever fails to route it,
        a full spool or a bug (logged with its traceback), holds it for an operator."""
        if queue != "working":
            return
        try:
            await self._post_queue(msg_id, queue, ctx, runner, data)
        except Exception as err:  # noqa: BLE001 - stored: never answered as a failure
            log.error("%s: accepted but not routed (%s): moving it to hold", msg_id, err,
                      exc_info=not isinstance(err, (QueueError, OSError)))
            await self._hold(msg_id, queue)

    async def _post_queue(self, msg_id: str, queue: str, ctx: Context, runner,
                          data: bytes) -> None:
        """Run on_post_queue and move the message where it decided."""
        status = await runner.run(ctx, Stage.POST_QUEUE)
        if runner.failed:
            target = "hold"  # accepted, but the policy could not route it: an operator looks
        elif runner.quarantine is not None:
            target = f"quarantine/{runner.quarantine}"
        else:
            target = "dead" if status.kind == "deny" else "deliver"
        if target == "deliver":
            await self.delivery.reroute(msg_id, queue, ctx, data)
        await self.spool.move(msg_id, target, queue)

    async def _hold(self, msg_id: str, queue: str) -> None:
        """Put a message in hold; if even that fails, it stays where it is until the next
        start moves it to hold (hold_unacknowledged)."""
        try:
            await self.spool.move(msg_id, "hold", queue)
        except (QueueError, OSError) as err:
            log.error("%s: cannot move it to hold (%s): it stays in %s until the next start",
                      msg_id, err, queue)

    # -- life cycle ------------------------------------------------------------------
    async def start(self, sockets: list[tuple[Listener, socket.socket]] | None = None) -> None:
        """Recover the spool and bind every listener. ``sockets``: (listener, socket) pairs
        already bound and listening, by the parent of several workers (server/workers.py),
        which recovered the spool before starting them: then the spool is not recovered
        here (that would drop another worker's files being written)."""
        if sockets is None:
            await recover_spool(self.spool)
            sockets = [(listener, None) for listener in self.config.listen]
        self.delivery.start()
        loop = asyncio.get_running_loop()
        for listener, sock in sockets:
            where = {"sock": sock} if sock else \
                {"host": listener.host, "port": listener.port, "reuse_address": True}
            server = await loop.create_server(
                lambda listener=listener: self.protocol(listener),
                ssl=self.tls if listener.kind == "smtps" else None, **where)
            self.servers.append(server)
            for bound in server.sockets:
                self.bound.append((listener, bound.getsockname()))
                log.info("listening: %s on %s", listener.kind, bound.getsockname()[:2])
        log.info("started: %s, scripts %s, queue %s", self.config.hostname,
                 self.config.scripts or "(none)", self.spool.root)

    async def serve_forever(self) -> None:
        """Serve until cancelled; reload the scripts on SIGHUP and when they change."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.policy.request_reload)
        except (NotImplementedError, RuntimeError):
            pass  # not the main thread, or no signals here
        self._tasks.append(asyncio.ensure_future(self.policy.watch()))
        try:
            await asyncio.gather(*(s.serve_forever() for s in self.servers))
        finally:
            await self.stop()

    async def stop(self) -> None:
        log.info("stopping")
        await self.delivery.stop()
        for task in self._tasks:
            task.cancel()
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()
        self.script_pool.shutdown(wait=False)
        log.info("stopped")
