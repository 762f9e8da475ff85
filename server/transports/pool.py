"""SMTP sessions, opened and kept for reuse: every SMTP session (relay routes and MX
delivery) goes through one :class:`Pool`.

A session is opened as its :class:`SessionKind` says (TLS from the start or STARTTLS,
whether it may log in), and parked after use for ``idle_timeout`` seconds, to be reused
(after a RSET) by the next session to the same host:port of the same kind. At most
``destination_concurrency`` sessions are in use at once to one host:port, whatever their
kind; one more waits ``BUSY_WAIT`` for one to end, then gives up: :class:`~.outcome.Busy`
(the delivery postpones the message, which gives its delivery slot to mail for other
destinations instead of waiting in it for a slow one).

Opportunistic STARTTLS goes on as Postfix's ``may`` level does: a server that offers
STARTTLS and then refuses it gets the mail in plaintext on the same session; a TLS
handshake that fails (or the EHLO after it) defers a message on its first attempt, and
on a later one (``SessionKind.plaintext_fallback``) the mail goes in plaintext over a new
connection at once, so that a server with broken TLS still gets its mail. A plaintext
session of that fallback is not kept for reuse."""
from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict
from contextlib import asynccontextmanager
import logging
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib import (SMTPException, SMTPHeloError, SMTPResponseException,
                        SMTPServerDisconnected)

from ..config import ConfigError, DeliveryConfig
from ..relay_logins import RelayLogins
from .outcome import Busy, Unreachable, detail

log = logging.getLogger("vsl.delivery")
BUSY_WAIT = 1.0  # s a session waits for a busy host:port (a burst's turn comes sooner)


@dataclass(frozen=True)
class SessionKind:
    """What an SMTP session is, beyond its host:port: TLS from the start (smtps), the
    route's ``tls=`` mode, and whether it may log in (a route; MX delivery never does).
    ``plaintext_fallback``: an opportunistic session whose TLS handshake fails goes on in
    plaintext (a message's later attempt); not part of what a parked session is reused
    for."""

    implicit_tls: bool = False
    tls: str = "opportunistic"
    may_log_in: bool = False
    plaintext_fallback: bool = field(default=False, compare=False)


MX_SESSION = SessionKind()  # opportunistic STARTTLS, no login


class Pool:
    """SMTP connections: at most ``destination_concurrency`` at once to one host:port,
    kept ``idle_timeout`` seconds for reuse by a session to the same host:port of the same
    :class:`SessionKind`."""

    def __init__(self, config: DeliveryConfig, hostname: str,
                 relay_logins: RelayLogins):
        self.config, self.hostname, self.relay_logins = config, hostname, relay_logins
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
    async def session(self, host: str, port: int, kind: SessionKind):
        """A connected, greeted ``aiosmtplib.SMTP`` (logged in when the ``kind`` may, and
        the credentials file has a login for host:port); Unreachable when none can be
        opened, Busy when ``destination_concurrency`` stay in use there ``BUSY_WAIT``."""
        key, destination = (host, port, kind), (host, port)
        slot = self.slots.setdefault(destination, [asyncio.Semaphore(
            self.config.destination_concurrency), 0])
        slot[1] += 1
        try:
            try:
                async with asyncio.timeout(BUSY_WAIT):
                    await slot[0].acquire()
            except TimeoutError:
                raise Busy() from None
            try:
                smtp, shared = await self._reuse(key), True
                if smtp is None:
                    smtp, shared = await self._open(host, port, kind)
                try:
                    yield smtp
                except BaseException:
                    smtp.close()
                    raise
                if shared:
                    self._park(key, smtp)
                else:
                    self._quit(smtp)
            finally:
                slot[0].release()
        finally:
            slot[1] -= 1
            if not slot[1]:
                del self.slots[destination]

    async def _reuse(self, key: tuple) -> aiosmtplib.SMTP | None:
        """A parked session of ``key`` that still answers RSET, if any."""
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

    async def _open(self, host: str, port: int,
                    kind: SessionKind) -> tuple[aiosmtplib.SMTP, bool]:
        """A new session (see :meth:`_connect`) and whether it may be kept for others;
        when its TLS handshake fails, one in plaintext that is not, if the ``kind``
        allows that, else Unreachable."""
        try:
            return await self._connect(host, port, kind), True
        except _TlsFailed as failed:
            if not kind.plaintext_fallback or kind.tls != "opportunistic":
                raise Unreachable(_where(host, port), failed.__cause__) from None
            log.warning("%s: TLS failed (%s); the message has waited, so it goes in "
                        "plaintext (tls=opportunistic)", _where(host, port),
                        detail(failed.__cause__))
            return await self._connect(host, port, kind, plaintext=True), False

    async def _connect(self, host: str, port: int, kind: SessionKind,
                       plaintext: bool = False) -> aiosmtplib.SMTP:
        """Connect (with TLS for smtps), EHLO (else HELO), STARTTLS as ``kind.tls`` says
        unless ``plaintext``, and AUTH when the ``kind`` may and the credentials file has
        a login. Unreachable when that fails, _TlsFailed when TLS did."""
        config = self.config
        verify = kind.tls == "verify"
        smtp = aiosmtplib.SMTP(hostname=host, port=port, local_hostname=self.hostname,
                               timeout=config.command_timeout, use_tls=kind.implicit_tls,
                               start_tls=False,
                               tls_context=self.verifying if verify else self.tls)
        try:
            await smtp.connect(timeout=config.connect_timeout)
            self.opened += 1
            await _greet(smtp)
            if not (kind.implicit_tls or plaintext or kind.tls == "none"):
                await _start_tls(smtp, kind.tls == "opportunistic")
            login = self.relay_logins.get(host, port) if kind.may_log_in else None
            if login is not None:
                await _log_in(smtp, verify, *login)
        except _TlsFailed:
            smtp.close()
            raise
        except (SMTPException, OSError) as err:
            smtp.close()
            raise Unreachable(_where(host, port), err) from None
        return smtp

    def _park(self, key: tuple, smtp: aiosmtplib.SMTP) -> None:
        if not smtp.is_connected:
            return
        if _unasked_replies(smtp):
            smtp.close()
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
        """QUIT every idle session, and wait for those already closing."""
        for idle in self.idle.values():
            for smtp, timer in idle.items():
                timer.cancel()
                self._quit(smtp)
        self.idle.clear()
        await asyncio.gather(*self.closing, return_exceptions=True)


class _TlsFailed(Exception):
    """STARTTLS was accepted but TLS, or the EHLO over it, failed (the cause)."""


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _greet(smtp: aiosmtplib.SMTP) -> None:
    """EHLO, else HELO; a server that closed the session on EHLO (421) is not asked,
    and its refusal is the error."""
    try:
        await smtp.ehlo()
    except SMTPHeloError as refused:
        if not smtp.is_connected:
            raise
        try:
            await smtp.helo()
        except SMTPServerDisconnected:
            raise refused from None


async def _start_tls(smtp: aiosmtplib.SMTP, opportunistic: bool) -> None:
    """STARTTLS and EHLO again (RFC 3207). Opportunistically, a server that does not
    offer it or refuses it (a reply other than 220) gets the session in plaintext, as
    Postfix's ``may`` level goes on; otherwise that is an SMTPException."""
    if not smtp.supports_extension("starttls"):
        if opportunistic:
            return
        raise SMTPException("the server does not offer STARTTLS")
    try:
        await smtp.starttls()
    except SMTPResponseException as err:  # a 421 closes the session: no going on
        if opportunistic and err.code > 0 and err.code != 421 and smtp.is_connected:
            log.info("%s refused STARTTLS (%s): going on in plaintext",
                     _where(smtp.hostname, smtp.port), detail(err))
            return
        raise
    except (SMTPException, OSError) as err:
        raise _TlsFailed() from err
    try:
        await _greet(smtp)
    except SMTPResponseException as err:
        if err.code > 0:  # the server's answer over TLS: TLS worked
            raise
        raise _TlsFailed() from err
    except (SMTPException, OSError) as err:
        raise _TlsFailed() from err


def _unasked_replies(smtp: aiosmtplib.SMTP) -> bool:
    """Whether the server sent more than the commands asked for (two replies in one
    packet): the extra would answer the next command (the RSET before a reuse, then each
    command of the next message one reply late). aiosmtplib keeps such bytes in its
    protocol's buffer."""
    return bool(getattr(smtp.protocol, "_buffer", None))


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
