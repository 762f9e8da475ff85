"""Delivering one message to a group of recipients over one route.

    transports = Transports(config, "mx.example.com", resolver)
    outcomes = await transports.deliver(route, sender, ["a@x.example", "b@x.example"], data)
    await transports.close()                     # the idle SMTP connections

``outcomes`` maps each recipient to an :class:`Outcome` (delivered, deferred or failed,
with the reply that decided it). SMTP goes through aiosmtplib, and its connections are
kept per destination for the next message (checked with RSET before reuse); MX hosts
come from the configured resolver (null MX: RFC 7505); LMTP (RFC 2033) is a small client
here; Maildir and mbox writes run in a thread, each made durable with fsync.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import itertools
import logging
import os
import random
import re
import socket
import ssl
import time
from collections import defaultdict
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiosmtplib
import dns.name
from aiosmtplib import SMTPException, SMTPHeloError, SMTPResponseException

from vsl.stdlib import dns as dns_natives
from vsl.stdlib.transport import Route
from vsl.errors import ScriptError

from .config import ConfigError
from .relay_logins import RelayCredentials
from .files import make_private_dirs

if TYPE_CHECKING:
    from vsl.stdlib.dns import Resolver

    from .config import DeliveryConfig

log = logging.getLogger("vsl.delivery")

_STATUS = {"2": "delivered", "4": "deferred", "5": "failed"}
_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)")


@dataclass(frozen=True)
class Outcome:
    """One recipient's result: status delivered/deferred/failed, the reply (the remote
    server's, or one made up for a local problem) and the remote MTA that gave it."""

    status: str
    reply: str
    remote_mta: str | None = None


def outcome(code: int, text: str, remote: str | None = None) -> Outcome:
    """The Outcome of an SMTP reply (a code outside 2xx/4xx/5xx counts as a failure)."""
    return Outcome(_STATUS.get(str(code)[:1], "failed"), f"{code} {' '.join(text.split())}",
                   remote)


def _detail(err: BaseException | str) -> str:
    """An error's text on one line (aiosmtplib errors: the server's code and reply)."""
    code = getattr(err, "code", None)
    cause = getattr(err, "__cause__", None)  # aiosmtplib wraps the OSError
    if isinstance(cause, ssl.SSLError):  # its errno says nothing ("Operation not permitted")
        err, cause = cause, None
    text = os.strerror(cause.errno) if isinstance(cause, OSError) and cause.errno else \
        " ".join(str(getattr(err, "message", "") or err).split()) or type(err).__name__
    text = _SSL_SOURCE.sub("", text)  # "... (_ssl.c:1006)": where in CPython, not why
    return f"{code} {text}" if isinstance(code, int) and code >= 400 else text


@dataclass(frozen=True)
class _Kind:
    """What an SMTP session is, beyond its host:port: TLS from the start (smtps), the
    route's ``tls=`` mode, and whether it may log in (a route; MX delivery never does)."""

    implicit_tls: bool = False
    tls: str = "opportunistic"
    may_log_in: bool = False


_MX = _Kind()  # opportunistic STARTTLS, no login
_STARTTLS = {"none": False, "opportunistic": None, "required": True, "verify": True}


class _Unreachable(Exception):
    """No session could be opened (connection, greeting, EHLO, TLS, AUTH): try the next
    host. Deferred, like Postfix, whatever the server said."""

    def __init__(self, where: str, err: BaseException | str):
        super().__init__(where)
        self.outcome = Outcome("deferred", f"451 4.4.1 cannot deliver to {where}: "
                                           f"{_detail(err)}")


@dataclass
class _Lookups:
    """What one MX attempt met besides addresses: the problems (a failed look-up, an
    address that gave no session) and how many hosts ``mx_host_limit`` left unlooked
    up."""

    problems: list[Outcome] = field(default_factory=list)
    tried: int = 0
    skipped: int = 0

    def outcome(self, domain: str) -> Outcome:
        """The result for recipients no server answered: the last problem; when there
        was none, no host had an address: a failure if every host was looked up, else
        a deferral (the hosts not looked up may have one)."""
        if self.problems:
            return self.problems[-1]
        if self.skipped:
            return Outcome("deferred", f"451 4.4.4 none of the first {self.tried} mail "
                                       f"exchangers of {domain} has an address; "
                                       f"{self.skipped} more not looked up "
                                       "(delivery.mx_host_limit)")
        return Outcome("failed", f"550 5.4.4 no address for {domain} or its mail exchangers")


class Transports:
    """Every delivery method, sharing one SMTP connection pool."""

    def __init__(self, config: "DeliveryConfig", hostname: str,
                 resolver: "Resolver | None" = None):
        self.config, self.hostname = config, hostname
        if resolver is not None:
            self.resolver = resolver
        self.pool = _Pool(config, hostname, RelayCredentials.load(config.credentials))

    @functools.cached_property
    def resolver(self) -> "Resolver":
        """The server's configured resolver ([dns]), made at the first MX look-up."""
        return dns_natives.resolver()

    async def deliver(self, route: Route, sender: str, recipients: list[str],
                      data: bytes) -> dict[str, Outcome]:
        """Deliver ``data`` to ``recipients`` (one domain when the route is ``mx``)."""
        if route.kind in ("maildir", "mbox"):
            return {r: await _local(route, sender, r, data) for r in recipients}
        if route.kind == "lmtp":
            return await self._lmtp(route, sender, recipients, data)
        if route.kind == "mx":
            return await self._mx(sender, recipients, data)
        kind = _Kind(route.kind == "smtps", route.tls, may_log_in=True)
        try:
            return await self._smtp(route.host, route.port, kind, route.host, sender,
                                    recipients, data)
        except _Unreachable as err:
            return dict.fromkeys(recipients, err.outcome)

    async def close(self) -> None:
        await self.pool.close()

    async def _smtp(self, host, port, kind, remote, sender, recipients, data):
        async with self.pool.session(host, port, kind) as client:
            return await _transaction(client, sender, recipients, data, remote)

    # -- MX ------------------------------------------------------------------------------
    async def _mx(self, sender: str, recipients: list[str], data: bytes) -> dict:
        """One attempt at the domain's mail exchangers, within ``mx_attempt_timeout``:
        recipients no server has answered for by then are deferred."""
        domain = recipients[0].rpartition("@")[2]
        answered: dict[str, Outcome] = {}
        limit = asyncio.timeout(self.config.mx_attempt_timeout)
        try:
            async with limit:
                return await self._mx_attempt(domain, sender, recipients, data, answered)
        except TimeoutError:
            if not limit.expired():
                raise
        late = Outcome("deferred", f"451 4.4.2 delivery to {domain} took longer than "
                                   f"{self.config.mx_attempt_timeout:g} s "
                                   "(delivery.mx_attempt_timeout)")
        return {r: answered.get(r, late) for r in recipients}

    async def _mx_attempt(self, domain: str, sender: str, recipients: list[str],
                          data: bytes, answered: dict[str, Outcome]) -> dict:
        """Addresses of the exchangers in turn (see :meth:`_mx_addresses`); the
        recipients a session defers go on to the next one, for at most
        ``mx_session_limit`` sessions (Postfix's smtp_mx_session_limit). ``answered``
        gets each server's replies as they come."""
        try:
            hosts = await self._exchangers(domain)
        except ScriptError as err:  # DnsTempError, or no usable resolver
            return dict.fromkeys(recipients, Outcome("deferred", f"451 4.4.3 {err}"))
        if not hosts:
            return dict.fromkeys(recipients, Outcome(
                "failed", f"556 5.1.10 {domain} accepts no mail (null MX)"))
        lookups = _Lookups()
        pending, sessions = list(recipients), 0
        async with aclosing(self._mx_addresses(domain, hosts, lookups)) as addresses:
            async for name, address in addresses:
                try:
                    replies = await self._smtp(address, self.config.mx_port, _MX, name,
                                               sender, pending, data)
                except _Unreachable as err:
                    lookups.problems.append(err.outcome)
                    continue
                answered.update(replies)
                pending = [r for r in pending if replies[r].status == "deferred"]
                sessions += 1
                if not pending or sessions == self.config.mx_session_limit:
                    break
        last = lookups.outcome(domain)
        return {r: answered.get(r, last) for r in recipients}

    async def _mx_addresses(self, domain: str, hosts: list[str], lookups: "_Lookups"):
        """(host, address) pairs, by preference and A before AAAA, at most
        ``mx_address_limit``. A host without an address (its look-up failed, its error
        added to ``lookups``) costs queries for nothing: after ``mx_host_limit`` of them
        the rest are not looked up (``lookups.skipped``). So one attempt looks up at most
        mx_host_limit + mx_address_limit hosts."""
        addresses_left, misses_left = self.config.mx_address_limit, self.config.mx_host_limit
        for index, name in enumerate(hosts):
            if not misses_left:
                lookups.tried, lookups.skipped = index, len(hosts) - index
                log.info("%s: %d mail exchangers without an address, %d more not looked "
                         "up (delivery.mx_host_limit)", domain,
                         self.config.mx_host_limit, lookups.skipped)
                return
            addresses = await self._host_addresses(name, lookups)
            if not addresses:
                misses_left -= 1
            for address in addresses[:addresses_left]:
                yield name, address
            addresses_left -= min(addresses_left, len(addresses))
            if not addresses_left:
                return

    async def _host_addresses(self, name: str, lookups: "_Lookups") -> list[str]:
        """An exchanger's addresses ([] when its look-up fails: the error goes to
        ``lookups``); an address literal is its own."""
        if name.startswith("["):
            return [name[1:-1].removeprefix("IPv6:")]
        try:
            return await self.resolver.addresses(name)
        except ScriptError as err:
            lookups.problems.append(Outcome("deferred", f"451 4.4.3 {err}"))
            return []

    async def _exchangers(self, domain: str) -> list[str]:
        """Mail exchangers by preference (equal ones shuffled, so that a cut by
        ``mx_host_limit`` falls elsewhere at each attempt); the domain itself when it has
        no MX; [] for a null MX."""
        if domain.startswith("["):
            return [domain]
        records = await self.resolver.query(domain, "MX")
        if not records:
            return [domain]
        usable = [r for r in records if r.exchange != dns.name.root]
        usable.sort(key=lambda r: (r.preference, random.random()))
        return [r.exchange.to_text(omit_final_dot=True) for r in usable]

    # -- LMTP ------------------------------------------------------------------------------
    async def _lmtp(self, route: Route, sender: str, recipients: list[str], data: bytes):
        remote = route.path or route.host
        try:
            client = await _Lmtp.open(route, self.hostname, self.config)
        except _Unreachable as err:
            return dict.fromkeys(recipients, err.outcome)
        try:
            return await _transaction(client, sender, recipients, data, remote)
        finally:
            await client.close()


# ---- one SMTP/LMTP transaction -----------------------------------------------------------

async def _transaction(client, sender: str, recipients: list[str], data: bytes,
                       remote: str) -> dict[str, Outcome]:
    """MAIL, RCPT for each recipient, DATA; a lost connection or a timeout defers every
    recipient without an answer yet."""
    outcomes: dict[str, Outcome] = {}
    if not all(a.isascii() for a in (sender, *recipients)) and not client.supports("smtputf8"):
        return dict.fromkeys(recipients, Outcome(
            "failed", "553 5.6.7 the remote server does not support SMTPUTF8", remote))
    try:
        code, text = await client.command("MAIL", *_mail_args(client, sender, recipients,
                                                              data))
        if code != 250:
            return dict.fromkeys(recipients, outcome(code, text, remote))
        accepted = []
        for rcpt in recipients:
            code, text = await client.command("RCPT", f"TO:<{rcpt}>")
            if code in (250, 251):
                accepted.append(rcpt)
            else:
                outcomes[rcpt] = outcome(code, text, remote)
        if not accepted:
            await client.command("RSET")
            return outcomes
        for rcpt, (code, text) in zip(accepted, await client.data(data, len(accepted))):
            outcomes[rcpt] = outcome(code, text, remote)
    except (SMTPException, OSError) as err:
        lost = Outcome("deferred", f"451 4.4.2 lost connection with {remote}: "
                                   f"{_detail(err)}", remote)
        return {rcpt: outcomes.get(rcpt, lost) for rcpt in recipients}
    return outcomes


def _mail_args(client, sender: str, recipients: list[str], data: bytes) -> list[str]:
    args = [f"FROM:<{sender}>"]
    if client.supports("size"):
        args.append(f"SIZE={len(data)}")
    if not data.isascii() and client.supports("8bitmime"):
        args.append("BODY=8BITMIME")
    if not all(a.isascii() for a in (sender, *recipients)):
        args.append("SMTPUTF8")
    return args


class _Smtp:
    """aiosmtplib's client with the interface :func:`_transaction` uses."""

    def __init__(self, smtp: aiosmtplib.SMTP):
        self.smtp = smtp

    def supports(self, extension: str) -> bool:
        return self.smtp.supports_extension(extension)

    async def command(self, *args: str) -> tuple[int, str]:
        reply = await self.smtp.execute_command(*(a.encode() for a in args))
        return reply.code, reply.message

    async def data(self, data: bytes, count: int) -> list[tuple[int, str]]:
        try:
            reply = await self.smtp.data(data)
        except SMTPResponseException as err:
            return [(err.code, err.message)] * count
        return [(reply.code, reply.message)] * count


class _Pool:
    """SMTP connections: at most ``destination_concurrency`` at once to one host:port,
    kept ``idle_timeout`` seconds for reuse by a session to the same host:port of the same
    :class:`_Kind`."""

    def __init__(self, config: "DeliveryConfig", hostname: str,
                 credentials: RelayCredentials):
        self.config, self.hostname, self.credentials = config, hostname, credentials
        self.slots: dict[tuple, list] = {}  # (host, port) -> [semaphore, users]
        self.idle: dict[tuple, dict[aiosmtplib.SMTP, asyncio.TimerHandle]] = defaultdict(dict)
        self.closing: set[asyncio.Task] = set()
        self.opened = 0  # connections made (tests check reuse with it)
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False  # like Postfix's "may" and "encrypt": no verification
        self.tls.verify_mode = ssl.CERT_NONE
        self.verifying = ssl.create_default_context()  # tls=verify: the system's CAs ...
        if config.ca_file is not None:                  # ... and the configured ones
            try:
                self.verifying.load_verify_locations(config.ca_file)
            except OSError as err:  # ssl.SSLError included
                raise ConfigError(f"delivery.ca_file: cannot load {config.ca_file}: "
                                  f"{err.strerror or err}") from None

    @asynccontextmanager
    async def session(self, host: str, port: int, kind: "_Kind"):
        """A connected, greeted client (logged in when the ``kind`` may, and the
        credentials file has a login for host:port); _Unreachable when none can be
        opened."""
        key = (host, port, kind)
        slot = self.slots.setdefault((host, port), [asyncio.Semaphore(
            self.config.destination_concurrency), 0])
        slot[1] += 1
        try:
            async with slot[0]:
                smtp = await self._reuse(key) or await self._open(host, port, kind)
                try:
                    yield _Smtp(smtp)
                except BaseException:
                    smtp.close()
                    raise
                self._park(key, smtp)
        finally:
            slot[1] -= 1
            if not slot[1]:
                del self.slots[(host, port)]

    async def _reuse(self, key: tuple) -> aiosmtplib.SMTP | None:
        idle = self.idle[key]
        while idle:
            smtp, timer = idle.popitem()
            timer.cancel()
            try:
                if smtp.is_connected and (await smtp.execute_command(b"RSET")).code == 250:
                    return smtp
            except SMTPException:
                pass
            smtp.close()
        self._forget(key)
        return None

    async def _open(self, host: str, port: int, kind: "_Kind") -> aiosmtplib.SMTP:
        """Connect (with TLS for smtps), EHLO (else HELO), STARTTLS as ``kind.tls`` says,
        and AUTH when the ``kind`` may and the credentials file has a login."""
        config = self.config
        verify = kind.tls == "verify"
        smtp = aiosmtplib.SMTP(hostname=host, port=port, local_hostname=self.hostname,
                               timeout=config.command_timeout, use_tls=kind.implicit_tls,
                               start_tls=None if kind.implicit_tls else _STARTTLS[kind.tls],
                               tls_context=self.verifying if verify else self.tls)
        try:
            await smtp.connect(timeout=config.connect_timeout)
            self.opened += 1
            if smtp.is_ehlo_or_helo_needed:
                try:
                    await smtp.ehlo()
                except SMTPHeloError:
                    await smtp.helo()
            login = self.credentials.get(host, port) if kind.may_log_in else None
            if login is not None:
                await _log_in(smtp, verify, *login)
        except (SMTPException, OSError) as err:
            smtp.close()
            raise _Unreachable(f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                               err) from None
        return smtp

    def _park(self, key: tuple, smtp: aiosmtplib.SMTP) -> None:
        if not smtp.is_connected:
            return
        if self.config.idle_timeout <= 0:
            self._quit(smtp)
            return
        self.idle[key][smtp] = asyncio.get_running_loop().call_later(
            self.config.idle_timeout, self._expire, key, smtp)

    def _expire(self, key: tuple, smtp: aiosmtplib.SMTP) -> None:
        if self.idle.get(key, {}).pop(smtp, None) is not None:
            self._quit(smtp)
            self._forget(key)

    def _forget(self, key: tuple) -> None:
        if not self.idle.get(key, True):
            del self.idle[key]

    def _quit(self, smtp: aiosmtplib.SMTP) -> None:
        task = asyncio.ensure_future(_quit(smtp))
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    async def close(self) -> None:
        for idle in self.idle.values():
            for smtp, timer in idle.items():
                timer.cancel()
                self._quit(smtp)
        self.idle.clear()
        await asyncio.gather(*self.closing, return_exceptions=True)


async def _log_in(smtp: aiosmtplib.SMTP, verified: bool, user: str, password: str) -> None:
    """AUTH as ``user``: only over TLS whose certificate was verified (a tls=verify route),
    else the connection fails (and the mail waits)."""
    if smtp.get_transport_info("sslcontext") is None or not verified:
        raise SMTPException(f"not sending the password of {user} without verified TLS "
                            "(route option tls=verify)")
    try:
        await smtp.login(user, password)
    except SMTPResponseException as err:
        raise SMTPException(f"login as {user} refused: {err.code} {err.message}") from None


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.quit(timeout=5)
    except (SMTPException, OSError):
        smtp.close()


class _Lmtp:
    """A small LMTP client (RFC 2033): LHLO, and one reply per recipient after DATA."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float):
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.extensions: set[str] = set()

    @classmethod
    async def open(cls, route: Route, hostname: str, config: "DeliveryConfig") -> "_Lmtp":
        where = route.path or f"{route.host}:{route.port}"
        try:
            connect = asyncio.open_unix_connection(route.path) if route.path else \
                asyncio.open_connection(route.host, route.port)
            client = cls(*await asyncio.wait_for(connect, config.connect_timeout),
                         config.command_timeout)
        except OSError as err:
            raise _Unreachable(where, err) from None
        try:
            greeting = await client._reply()
            hello = await client.command("LHLO", hostname) if greeting[0] == 220 else greeting
        except OSError as err:
            await client.close()
            raise _Unreachable(where, err) from None
        if hello[0] != 250:
            await client.close()
            raise _Unreachable(where, f"{hello[0]} {hello[1]}")
        client.extensions = {line.split()[0].lower() for line in hello[1].split("\n")[1:]
                             if line.strip()}
        return client

    def supports(self, extension: str) -> bool:
        return extension.lower() in self.extensions

    async def command(self, *args: str) -> tuple[int, str]:
        self.writer.write(" ".join(args).encode() + b"\r\n")
        return await self._reply()

    async def data(self, data: bytes, count: int) -> list[tuple[int, str]]:
        reply = await self.command("DATA")
        if reply[0] != 354:
            return [reply] * count
        self.writer.write(dot_stuffed(data))
        return [await self._reply() for _ in range(count)]

    async def _reply(self) -> tuple[int, str]:
        """One reply: (code, its lines' texts joined by \\n); OSError if none comes."""
        lines = []
        while True:
            try:
                line = await asyncio.wait_for(self.reader.readline(), self.timeout)
            except ValueError:  # a line over the stream limit
                raise ConnectionError("reply line too long") from None
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if not line.endswith(b"\n") or not text[:3].isdigit() or text[3:4] not in " -":
                raise ConnectionError(f"bad reply {text!r}" if line else "connection closed")
            lines.append(text[4:])
            if text[3:4] != "-":
                return int(text[:3]), "\n".join(lines)

    async def close(self) -> None:
        try:
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self.reader.read(), 1)
        except OSError:
            pass
        self.writer.close()


def dot_stuffed(data: bytes) -> bytes:
    """Message bytes as sent after DATA: CRLF line ends, leading dots doubled, the final
    ``.`` line."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", data) + b".\r\n"


# ---- local files -----------------------------------------------------------------------------

async def _local(route: Route, sender: str, rcpt: str, data: bytes) -> Outcome:
    """One copy into a Maildir or an mbox (in a thread); a file error defers. The reply
    (which a DSN to an outside sender quotes) names no local path: the log does."""
    content = local_copy(sender, rcpt, data)
    try:
        if route.kind == "maildir":
            await asyncio.to_thread(write_maildir, route.path, content)
        else:
            await asyncio.to_thread(append_mbox, route.path, content, sender)
    except OSError as err:
        log.warning("%s %s: %s", route.kind, route.path, err)
        why = os.strerror(err.errno) if err.errno else "I/O error"
        return Outcome("deferred", f"451 4.3.0 mailbox unavailable: {why}")
    return Outcome("delivered", f"250 2.0.0 delivered to {route.kind}")


def local_copy(sender: str, rcpt: str, data: bytes) -> bytes:
    """The message as stored locally: Return-Path and Delivered-To first, LF line ends."""
    head = f"Return-Path: <{sender}>\nDelivered-To: {rcpt}\n".encode()
    return head + re.sub(rb"\r\n", b"\n", data)


_sequence = itertools.count()


def write_maildir(directory: str, content: bytes) -> str:
    """Write into ``directory``/tmp, fsync, rename into new/ and sync that directory;
    returns the file name (time.MusecPpidQn.host, unique on this host)."""
    tmp_dir, new_dir, cur_dir = (confined(directory, sub) for sub in ("tmp", "new", "cur"))
    for sub in (tmp_dir, new_dir, cur_dir):
        make_private_dirs(sub)
    now = time.time()
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
    name = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_sequence)}.{host}"
    tmp = os.path.join(tmp_dir, name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        _write_all(fd, content)
    except OSError:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, os.path.join(new_dir, name))
    _sync_directory(new_dir)
    return name


def append_mbox(path: str, content: bytes, sender: str) -> None:
    """Append a From_ line and the message (``>From `` quoting, mboxrd) under an fcntl
    lock; a failed write is cut off again, so the file never keeps half a message."""
    directory, name = os.path.split(path)
    make_private_dirs(directory)
    stamp = time.asctime(time.gmtime())
    body = re.sub(rb"(?m)^(>*From )", rb">\1", content)
    blob = f"From {sender or 'MAILER-DAEMON'} {stamp}\n".encode() + body + \
        (b"\n" if body.endswith(b"\n") else b"\n\n")
    fd = os.open(confined(directory, name),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, blob)
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def confined(directory: str, name: str) -> str:
    """``directory``/``name``, checked to stay there once symbolic links are resolved
    (Maildir's tmp, new and cur; an mbox file): OSError when it leads elsewhere."""
    path = os.path.join(directory, name)
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(directory):
        raise OSError(errno.EPERM, f"{name} leaves its directory (a symbolic link)")
    return path


def _write_all(fd: int, content: bytes) -> None:
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _sync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
