"""Implicit TLS (the ``smtps`` listener, RFC 8314): the TLS handshake before the session.

asyncio's ``create_server(ssl=...)`` hides a failed handshake: no protocol hears of it.
So an ``smtps`` listener accepts plain TCP, and each connection's :class:`ImplicitTls`
counts it against the connection limits (a connection past them is closed at once: an
idle handshake may last a minute, and would hold a socket uncounted), then puts asyncio's
TLS layer (``sslproto.SSLProtocol``, as aiosmtpd's STARTTLS does) between
the socket and the SMTP protocol as soon as the connection is made, before any byte of
the client is read (``loop.start_tls`` would come a loop iteration later, and uvloop may
have read the client's hello by then). The TLS layer makes the SMTP protocol's connection
once the handshake is done; a failed handshake is counted (``vsl_tls_failures_total``)
and logged with the client's address, as Postfix logs ``SSL_accept error from ...``.
STARTTLS failures are reported the same way (:func:`handshake_failed`). The session gets
the addresses read at the accept: uvloop reads them only when asked, and a client that
resets right after its handshake would have none by then (and its slot would be lost).
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio import sslproto
from collections.abc import Callable

from . import metrics
from .admission import Admission
from .logevents import event
from .session import connection_addresses, log_client_gone

log = logging.getLogger("vsl.smtp")
_FAILED = metrics.Series("vsl_tls_failures_total")
HANDSHAKE_TIMEOUT = 60.0  # seconds (asyncio's default, as create_server(ssl=...) had)


class ImplicitTls(asyncio.Protocol):
    """Admits one connection of an implicit-TLS listener and starts its TLS layer."""

    def __init__(self, session: Callable[[tuple[tuple, tuple]], asyncio.Protocol],
                 context: ssl.SSLContext, admission: Admission):
        self.session, self.context, self.admission = session, context, admission

    def connection_made(self, transport: asyncio.Transport) -> None:
        # read now: uvloop reads them when asked, and a client that resets later has none
        addresses = connection_addresses(transport)
        if addresses is None:
            log_client_gone("smtps")
            transport.abort()
            return
        client_ip = addresses[0][0]
        if not self.admission.admit(client_ip):
            transport.abort()  # logged by admit(); no TLS spent on it
            return
        loop = asyncio.get_running_loop()
        handshake = loop.create_future()
        layer = sslproto.SSLProtocol(loop, self.session(addresses), self.context, handshake,
                                     server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        transport.set_protocol(layer)
        layer.connection_made(transport)
        handshake.add_done_callback(lambda done: self._after_handshake(done, client_ip))

    def _after_handshake(self, handshake: asyncio.Future, client_ip: str) -> None:
        """A failed handshake is reported and frees its connection's slot (the TLS layer
        has closed the connection; the session never began)."""
        if handshake.cancelled() or handshake.exception() is not None:
            handshake_failed(client_ip, "smtps",
                             None if handshake.cancelled() else handshake.exception())
            self.admission.release(client_ip)


def handshake_failed(client_ip: str, listener: str, error: BaseException | None) -> None:
    """Count and log a TLS handshake that failed (``error``: what ended it, if known)."""
    _FAILED.inc()
    why = _why(error)
    event(log, logging.INFO, "tls_failure", "SSL_accept error from unknown[%s]: %s",
          client_ip, why, client_ip=client_ip, listener=listener, reason=why)


def _why(error: BaseException | None) -> str:
    """What ended a handshake, in a few words: the TLS library's reason (``wrong version
    number``, ``tlsv1 alert unknown ca``), ``timed out`` or ``lost connection``."""
    if isinstance(error, ssl.SSLError) and error.reason:
        return error.reason.lower().replace("_", " ")
    if isinstance(error, (TimeoutError, ConnectionAbortedError)):  # asyncio's handshake timer
        return "timed out"
    return "lost connection"
