"""The AUTH throttle (server/auth_throttle.py) shared by the workers of one ``vsl serve``,
as Postfix's anvil: one supervised child process keeps it, and each worker asks it over a
socket pair of its own.

Design: the parent makes one ``SOCK_SEQPACKET`` socket pair per worker index before it
forks (a message is sent and received whole, so a worker killed mid-write leaves no half
message behind); it keeps both ends, so that a worker or the service started again
inherits its end of the same channel. AUTH is rare next to connections: a login costs
one round trip (``begin``); ``failed``, ``succeeded`` and ``end`` are sent without
waiting for an answer, in order on the worker's channel, so a failure is counted before
its login stops being pending. The service logs the lockouts a failure starts.

The service keeps, per channel, the logins begun there and not yet ended. A worker
starts by saying ``hello``: the logins of the one that died end then (else they would
stay pending for ever), and the worker ignores the answers before the service's
``welcome`` (they were for the one that died). A service started again says
``restarted``: a worker refuses the logins it was waiting for (the answers died with the
old service) and says ``hello`` again. A worker ends any login the service lets through
that no one waits for any more (its session closed meanwhile). The throttle's counts are
lost with a service that dies, as they are with one ``vsl serve`` process that restarts.

A channel's buffer holds a few hundred messages: while the service is down (up to a
second, until the parent starts it again) a worker under an AUTH flood could fill it, and
its sends then block until the new service reads them.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
from collections import Counter

from .auth_throttle import AuthThrottle
from .config import AuthConfig

log = logging.getLogger("vsl.smtp")
_MESSAGE_MAX = 65536  # a user name is at most a command line long


def channels(workers: int) -> list[tuple[socket.socket, socket.socket]]:
    """(worker's end, service's end) for each worker index."""
    return [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(workers)]


def _send(sock: socket.socket, *message) -> None:
    sock.send(json.dumps(message).encode())


def _receive(sock: socket.socket) -> list | None:
    """The next message, or None when the channel is closed."""
    data = sock.recv(_MESSAGE_MAX)
    return json.loads(data) if data else None


class RemoteThrottle:
    """What a worker's sessions use in place of an :class:`AuthThrottle`: the service's,
    over ``sock`` (this worker's end of its channel)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future] = {}
        self._listening = False
        self._hello()

    def _hello(self) -> None:
        """Start over on the channel: the service ends the logins begun on it before."""
        self._welcomed = False
        _send(self.sock, "hello")

    async def begin(self, ip: str, user: str) -> bool:
        """As :meth:`AuthThrottle.begin`, asked of the service."""
        loop = asyncio.get_running_loop()
        if not self._listening:
            loop.add_reader(self.sock, self._read)
            self._listening = True
        request, answer = next(self._ids), loop.create_future()
        self._waiting[request] = answer
        _send(self.sock, "begin", request, ip, user)
        return await answer

    def end(self, ip: str, user: str) -> None:
        _send(self.sock, "end", ip, user)

    def failed(self, ip: str, user: str) -> list[tuple[str, float]]:
        """Count a failed login; the service logs the lockouts it starts (none here)."""
        _send(self.sock, "failed", ip, user)
        return []

    def succeeded(self, ip: str, user: str) -> None:
        _send(self.sock, "succeeded", ip, user)

    def _read(self) -> None:
        message = _receive(self.sock)
        if message is None:
            return
        if message[0] == "restarted":
            for answer in self._waiting.values():
                if not answer.done():
                    answer.set_result(False)
            self._waiting.clear()
            self._hello()
            return
        if message[0] == "welcome":
            self._welcomed = True
            return
        if not self._welcomed:
            return  # an answer to the worker this one replaces
        _, request, allowed, ip, user = message
        answer = self._waiting.pop(request, None)
        if answer is not None and not answer.done():
            answer.set_result(allowed)
        elif allowed:
            self.end(ip, user)  # no one waits for it: it is over


class _Channel:
    """The service's side of one worker's channel: the logins begun there."""

    def __init__(self, throttle: AuthThrottle, sock: socket.socket):
        self.throttle, self.sock = throttle, sock
        self.pending: Counter[tuple[str, str]] = Counter()
        self.generation = 0  # a hello starts a new one
        self.tasks: set[asyncio.Task] = set()

    def read(self) -> None:
        message = _receive(self.sock)
        if message is None:
            return
        operation, *arguments = message
        if operation == "hello":
            self.generation += 1
            for (ip, user), count in self.pending.items():
                for _ in range(count):
                    self.throttle.end(ip, user)
            self.pending.clear()
            _send(self.sock, "welcome")
        elif operation == "begin":
            task = asyncio.ensure_future(self._begin(*arguments))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif operation == "end":
            self._end(*arguments)
        elif operation == "failed":
            for key, seconds in self.throttle.failed(*arguments):
                log.warning("%s: too many failed logins, AUTH refused for %g s", key, seconds)
        elif operation == "succeeded":
            self.throttle.succeeded(*arguments)

    async def _begin(self, request: int, ip: str, user: str) -> None:
        generation = self.generation
        allowed = await self.throttle.begin(ip, user)
        if allowed and generation != self.generation:  # its worker died meanwhile
            self.throttle.end(ip, user)
            return
        if allowed:
            self.pending[ip, user] += 1
        _send(self.sock, "begun", request, allowed, ip, user)

    def _end(self, ip: str, user: str) -> None:
        if self.pending[ip, user]:  # not one begun with a service that died
            self.pending[ip, user] -= 1
            self.throttle.end(ip, user)
        if not self.pending[ip, user]:
            del self.pending[ip, user]


async def serve_throttle(config: AuthConfig, socks: list[socket.socket],
                         restarted: bool) -> None:
    """The throttle service child: answer every worker's channel until killed.
    ``restarted``: another one died before it."""
    loop = asyncio.get_running_loop()
    throttle = AuthThrottle(config)
    for sock in socks:
        loop.add_reader(sock, _Channel(throttle, sock).read)
        if restarted:
            _send(sock, "restarted")
    await asyncio.Event().wait()
