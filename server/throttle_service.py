"""The AUTH throttle (server/auth_throttle.py) shared by the workers of one ``vsl serve``,
as Postfix's anvil: one supervised child process keeps it, and each worker asks it over a
socket pair of its own.

Design: the parent makes one ``SOCK_SEQPACKET`` socket pair per worker index before it
forks (a message is sent and received whole, so a worker killed mid-write leaves no half
message behind); it keeps both ends, so that a worker or the service started again
inherits its end of the same channel. AUTH is rare next to connections: a login costs
one round trip (``begin``); ``failed``, ``succeeded`` and ``end`` are sent without
waiting for an answer, in order on the worker's channel, so a failure is counted before
its login stops being pending. The service logs the lockouts a failure starts, under
the session id the worker sends with it.

The service keeps, per channel, the logins begun there and not yet ended. A worker
starts by saying ``hello``: the logins of the one that died end then (else they would
stay pending for ever), and the worker ignores the answers before the service's
``welcome`` (they were for the one that died). A service started again says
``restarted``: a worker refuses the logins it was waiting for (the answers died with the
old service) and says ``hello`` again. A worker ends any login the service lets through
that no one waits for any more (its session closed meanwhile). The throttle's counts are
lost with a service that dies, as they are with one ``vsl serve`` process that restarts.

The parent starts the service at the first login a worker begins (the worker asks with
SIGUSR1), so a server that never offers AUTH has no service; once started, the parent
keeps it running. A request waits in the channel until the service reads it.

A worker never blocks on its channel: its end is non-blocking, and a message that does not
fit (a channel's buffer holds a few hundred; the service is down up to a second until the
parent starts it again, or stopped) waits in a small outbox, sent in order when the socket
is writable. When the outbox is full the message is lost, and the worker fails safe: it
refuses every login until the outbox has drained, then starts over with ``hello`` (the
service ends the channel's logins, whose lost ``end`` would keep them pending). A failure
lost that way was reported by a login begun before; none begun since is let through. A
login waits at most ``BEGIN_DEADLINE`` seconds for the service's answer, then is refused.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections import Counter, deque
from typing import Callable

from . import logids
from .auth_throttle import AuthThrottle
from .config import AuthConfig

_MESSAGE_MAX = 65536  # a user name is at most a command line long
BEGIN_DEADLINE = 3.0  # seconds a login waits for the service's answer before it is refused
OUTBOX_LIMIT = 64     # messages a worker holds while its channel is full


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
    over ``sock`` (this worker's end of its channel). ``start_service`` is called at the
    first login; ``deadline``: how long a login waits for the service's answer."""

    def __init__(self, sock: socket.socket, start_service: Callable[[], None] = lambda: None,
                 deadline: float = BEGIN_DEADLINE):
        sock.setblocking(False)
        self.sock, self.deadline = sock, deadline
        self._start_service = start_service
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future] = {}
        self._outbox: deque[bytes] = deque()
        self._lost = False  # a message did not fit: refuse logins until the outbox drains
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hello()

    def _hello(self) -> None:
        """Start over on the channel: the service ends the logins begun on it before."""
        self._welcomed = False
        self._post("hello")

    async def begin(self, ip: str, user: str) -> bool:
        """As :meth:`AuthThrottle.begin`, asked of the service; False (refused) when the
        channel is full or the answer does not come within the deadline."""
        loop = self._listen()
        if self._lost:
            return False
        request, answer = next(self._ids), loop.create_future()
        self._waiting[request] = answer
        try:
            if not self._post("begin", request, ip, user):
                return False
            return await asyncio.wait_for(answer, self.deadline)
        except asyncio.TimeoutError:
            return False  # an answer that lets it through later is ended (see _read)
        finally:
            self._waiting.pop(request, None)

    def end(self, ip: str, user: str) -> None:
        self._post("end", ip, user)

    def failed(self, ip: str, user: str) -> list[tuple[str, float]]:
        """Count a failed login; the service logs the lockouts it starts (none here),
        under this session's id."""
        ids = logids.current()
        self._post("failed", ip, user, ids.session if ids else "")
        return []

    def succeeded(self, ip: str, user: str) -> None:
        self._post("succeeded", ip, user)

    # -- the channel ---------------------------------------------------------------------
    def _listen(self) -> asyncio.AbstractEventLoop:
        """The running loop, reading the channel (from the first login on)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.sock, self._read)
            if self._outbox:
                self._loop.add_writer(self.sock, self._flush)
            self._start_service()
        return self._loop

    def _post(self, *message) -> bool:
        """Send ``message`` after those waiting, without blocking; False when it is lost
        (the outbox is full)."""
        data = json.dumps(message).encode()
        if not self._outbox:
            try:
                self.sock.send(data)
                return True
            except BlockingIOError:
                pass
        if len(self._outbox) >= OUTBOX_LIMIT:
            self._lost = True
            return False
        if not self._outbox and self._loop is not None:
            self._loop.add_writer(self.sock, self._flush)
        self._outbox.append(data)
        return True

    def _flush(self) -> None:
        """Send what waits in the outbox, as much as fits; start over once it is empty
        if a message was lost."""
        while self._outbox:
            try:
                self.sock.send(self._outbox[0])
            except BlockingIOError:
                return
            self._outbox.popleft()
        self._loop.remove_writer(self.sock)
        if self._lost:
            self._lost = False
            self._start_over()

    def _start_over(self) -> None:
        """Refuse the logins waiting for an answer, and say hello again."""
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_result(False)
        self._waiting.clear()
        self._hello()

    def _read(self) -> None:
        try:
            message = _receive(self.sock)
        except BlockingIOError:
            return
        if message is None:
            return
        if message[0] == "restarted":
            self._start_over()
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
            self._failed(*arguments)
        elif operation == "succeeded":
            self.throttle.succeeded(*arguments)

    async def _begin(self, request: int, ip: str, user: str) -> None:
        generation = self.generation
        allowed = await self.throttle.begin(ip, user)
        if generation != self.generation:  # its worker died meanwhile: never answer it
            if allowed:  # (request ids start again at 0: it would settle another's)
                self.throttle.end(ip, user)
            return
        if allowed:
            self.pending[ip, user] += 1
        _send(self.sock, "begun", request, allowed, ip, user)

    def _failed(self, ip: str, user: str, session: str) -> None:
        """Count a failed login (the throttle logs the lockouts it starts) under the
        worker's session."""
        with logids.bound(session):
            self.throttle.failed(ip, user)

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
