"""RFC 5424 syslog lines over the stdlib's SysLogHandler transports (UDP, unix datagram).

A datagram is ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG``:
PRI = facility * 8 + severity; MSGID the event's name (``-`` for other lines);
STRUCTURED-DATA ``[vsl@32473 session="..." queue_id="..." field="..."]`` (the configured
SD-ID), then the SD elements a script's ``log()`` text began with when they parse
strictly (:func:`split_sd`; invalid ones, and one claiming the server's SD-ID, stay in
MSG); MSG is the message, UTF-8 with a BOM only when it is not ASCII.

Size: a datagram never exceeds ``syslog_max_bytes`` and always parses. A PARAM-VALUE is
capped at :data:`SD_VALUE_MAX` characters (cut between escapes; its element then says
``truncated="1"``); when the header and STRUCTURED-DATA still do not fit, params are
dropped from the end (a script's first, the ids last; ``truncated="1"`` again); only
MSG is cut, at a UTF-8 boundary.

Escaping: ``"``, ``]`` and a ``\\`` that would read as an escape are escaped; any other
``\\`` stays as it is (RFC 5424 §6.3.3), so the ``\\x01`` printable() wrote for a
control byte is written once, not as ``\\\\x01``.

Sending never blocks nor raises into the server: a UDP target is resolved once, at
start (:class:`SyslogTargetError` when it cannot be); the socket is non-blocking; a
datagram that cannot go (no listener, a full buffer) is dropped, counted in
:data:`dropped` and ``vsl_log_dropped_total``, and warned about the first time, then at
most once a minute. A unix socket is kept on a full buffer, and connected again at most
once a second after another failure.
"""
from __future__ import annotations

import logging
import logging.handlers
import re
import socket
import time

from .logformat import record_fields, rfc3339, script_sd
from .observability_config import SD_NAME, SYSLOG_FACILITIES, LogConfig
from .printable import printable

dropped = 0  # datagrams not sent (no listener, buffer full): vsl_log_dropped_total
SD_VALUE_MAX = 256  # characters of a PARAM-VALUE as written (escaped)
DROP_WARNING_EVERY = 60.0  # seconds between two warnings of dropped lines
_PRI_MAX = len("<191>")
_TRUNCATED = ' truncated="1"'
_log = logging.getLogger("vsl.log")
_warned_at: float | None = None

_NAME = SD_NAME.pattern  # printable US-ASCII but = ] " and space, 1 to 32
_ELEMENT = re.compile(rf'\[({_NAME})((?: {_NAME}="(?:[^"\\\]]|\\.)*")*)\]')
_PARAM = re.compile(rf' ({_NAME})="((?:[^"\\\]]|\\.)*)"')
_ESCAPED = re.compile(r'\\(["\\\]])')
_TO_ESCAPE = re.compile(r'(["\]]|\\(?=["\\\]]|$))')  # a "\" escaped when it would escape
_REGISTERED = frozenset({"timeQuality", "origin", "meta"})  # IANA SD-IDs (RFC 5424 §7)
_BOM = "\ufeff"

SdElement = tuple[str, list[tuple[str, str]]]


class SyslogTargetError(ValueError):
    """``log.syslog`` names a host that does not resolve."""


def escape_param(value: str) -> str:
    """A PARAM-VALUE as written between its quotes (see the module docstring)."""
    if '"' not in value and "]" not in value and "\\" not in value:
        return value  # the common case, at a fraction of the substitution's cost
    return _TO_ESCAPE.sub(r"\\\1", value)


def capped_param(value: str) -> tuple[str, bool]:
    """``value`` escaped, cut to :data:`SD_VALUE_MAX` characters without splitting an
    escape; and whether it was cut."""
    escaped = escape_param(value)
    if len(escaped) <= SD_VALUE_MAX:
        return escaped, False
    cut = escaped[:SD_VALUE_MAX]
    backslashes = len(cut) - len(cut.rstrip("\\"))
    return (cut[:-1] if backslashes % 2 else cut), True


def unescape_param(text: str) -> str:
    """A PARAM-VALUE as meant (``\\`` before another character stays a backslash)."""
    return _ESCAPED.sub(r"\1", text)


def split_sd(text: str, reserved: tuple[str, ...] = ()) -> tuple[list[SdElement], str]:
    """The SD elements ``text`` begins with (each parsed strictly; the first one that
    does not parse, repeats an SD-ID or claims a ``reserved`` one, and all after it, stay
    in the text) and the text after them."""
    elements, position, seen = [], 0, set(reserved)
    while found := _ELEMENT.match(text, position):
        sd_id = found[1]
        if sd_id in seen or ("@" not in sd_id and sd_id not in _REGISTERED):
            break
        seen.add(sd_id)
        elements.append((sd_id, [(name, unescape_param(value))
                                 for name, value in _PARAM.findall(found[2])]))
        position = found.end()
    if not elements:
        return [], text
    return elements, text[position:].removeprefix(" ")


class Rfc5424Formatter(logging.Formatter):
    """A record as an RFC 5424 line without its PRI (SysLogHandler puts it in front),
    whose UTF-8 with any PRI fits ``syslog_max_bytes``."""

    def __init__(self, config: LogConfig, hostname: str | None = None):
        super().__init__()
        self.config = config
        self.hostname = _header_field(hostname or socket.gethostname(), 255)
        self.app_name = _header_field(config.syslog_app_name, 48)
        self.budget = config.syslog_max_bytes - _PRI_MAX

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        sd, rest = script_sd(record)
        own = (self.config.syslog_sd_id,
               [(name, value) for name, value in fields.items() if name != "event"])
        elements = [own, *((sd_id, [(name, printable(value)) for name, value in params])
                           for sd_id, params in sd)]
        header = " ".join(("1", rfc3339(record.created), self.hostname, self.app_name,
                           str(record.process), fields.get("event", "-")[:32]))
        head = f"{header} {_structured(elements, self.budget - len(header.encode()) - 1)}"
        message = printable(record.getMessage() if rest is None else rest)
        return head + _msg_part(message, self.budget - len(head.encode("utf-8")))


class _Element:
    """An SD element being fitted: its params as written, whether one was cut or
    dropped, and its length in bytes."""

    def __init__(self, sd_id: str, params):
        self.sd_id, self.params, self.truncated = sd_id, [], False
        for name, value in params:
            written, cut = capped_param(str(value))
            self.params.append(f' {name}="{written}"')
            self.truncated |= cut
        self.size = len(self.text().encode("utf-8"))

    def drop_last(self) -> None:
        """Leave out the last param (it did not fit)."""
        if not self.truncated:
            self.size += len(_TRUNCATED)
        self.truncated = True
        self.size -= len(self.params.pop().encode("utf-8"))

    def text(self) -> str:
        return f"[{self.sd_id}{''.join(self.params)}{_TRUNCATED if self.truncated else ''}]"


def _structured(elements: list[SdElement], room: int) -> str:
    """STRUCTURED-DATA of ``elements`` (those with params) in at most ``room`` bytes:
    params dropped from the end until it fits; ``-`` when none is left."""
    fitted = [_Element(sd_id, params) for sd_id, params in elements if params]
    while fitted and sum(element.size for element in fitted) > room:
        fitted[-1].drop_last()
        if not fitted[-1].params:
            fitted.pop()
    return "".join(element.text() for element in fitted) or "-"


def _msg_part(message: str, room: int) -> str:
    """`` MSG`` (a BOM before a message that is not ASCII) in at most ``room`` bytes, cut
    at a UTF-8 boundary; "" when no character of it fits."""
    data = f" {message if message.isascii() else _BOM + message}".encode("utf-8")
    text = data[:max(room, 0)].decode("utf-8", "ignore")
    return text if text.lstrip(" " + _BOM) else ""


def _header_field(text: str, limit: int) -> str:
    """A header field: printable US-ASCII, at most ``limit`` characters, else ``-``."""
    return text[:limit] if re.fullmatch(r"[!-~]+", text) else "-"


class Syslog5424Handler(logging.handlers.SysLogHandler):
    """SysLogHandler sending RFC 5424 datagrams without blocking; drops are counted."""

    append_nul = False
    reconnect_every = 1.0  # seconds: a unix socket is connected again at most this often

    def __init__(self, config: LogConfig):
        kind, address = config.syslog_target()
        self.connected_at = time.monotonic()
        super().__init__(resolved(address) if kind == "udp" else address,
                         SYSLOG_FACILITIES[config.syslog_facility], socket.SOCK_DGRAM)
        self.setFormatter(Rfc5424Formatter(config))

    def createSocket(self) -> None:  # noqa: N802 - SysLogHandler's name
        """The handler's socket, non-blocking (a unix one is connected when its listener
        is there; else it stays closed until a later line)."""
        super().createSocket()
        if self.socket.fileno() >= 0:
            self.socket.setblocking(False)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            datagram = self.datagram(record)
            if self.unixsocket:
                self._send_unix(datagram)
            else:
                self.socket.sendto(datagram, self.address)
        except Exception:  # noqa: BLE001 - a log line never fails the server
            _drop()

    def datagram(self, record: logging.LogRecord) -> bytes:
        """``<PRI>`` and the formatted line (which leaves room for it)."""
        pri = self.encodePriority(self.facility, self.mapPriority(record.levelname))
        return f"<{pri}>{self.format(record)}".encode("utf-8")

    def _send_unix(self, datagram: bytes) -> None:
        """Send on the unix socket. A full buffer (BlockingIOError) drops the datagram
        and keeps the socket; another failure closes it, connected again at a later line
        at most every :attr:`reconnect_every` seconds."""
        if self.socket.fileno() < 0:
            self._reconnect()
        try:
            self.socket.send(datagram)
        except BlockingIOError:
            raise
        except OSError:
            self.socket.close()
            raise

    def _reconnect(self) -> None:
        now = time.monotonic()
        if now - self.connected_at < self.reconnect_every:
            raise ConnectionError("syslog: the unix socket is connected again later")
        self.connected_at = now
        self.createSocket()


def resolved(address: tuple[str, int]) -> tuple[str, int]:
    """``(host, port)`` with the host's address, looked up once (not at every line)."""
    host, port = address
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][:2]
    except socket.gaierror as err:
        raise SyslogTargetError(f"log.syslog: cannot resolve {host!r}: {err.strerror}") \
            from None


def _drop() -> None:
    """Count a datagram that could not go; warn the first time, then once a minute."""
    from . import metrics  # here: it imports the language, slow for every `vsl --help`

    global dropped, _warned_at  # noqa: PLW0603 - module state, like the counter it mirrors
    dropped += 1
    metrics.count("vsl_log_dropped_total")
    now = time.monotonic()
    if _warned_at is None or now - _warned_at >= DROP_WARNING_EVERY:
        _warned_at = now  # before logging: this warning may itself be dropped
        _log.warning("syslog: log lines dropped (no listener or a full buffer): "
                     "%d so far", dropped)
