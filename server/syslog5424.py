"""RFC 5424 syslog lines over the stdlib's SysLogHandler transports (UDP, unix datagram).

A datagram is ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG``:
PRI = facility * 8 + severity; MSGID the event's name (``-`` for other lines);
STRUCTURED-DATA ``[vsl@32473 session="..." queue_id="..." field="..."]`` (the configured
SD-ID; PARAM-VALUE escapes ``"``, ``\\`` and ``]``), then the SD elements a script's
``log()`` text began with when they parse strictly (:func:`split_sd`; invalid ones stay
in MSG); MSG is the message, UTF-8 with a BOM only when it is not ASCII. A datagram
longer than ``syslog_max_bytes`` is cut at a UTF-8 boundary.

Sending never blocks nor raises into the server: the socket is non-blocking, and a
datagram that cannot go (no listener, a full buffer) is dropped and counted in
:data:`dropped`.
"""
from __future__ import annotations

import logging
import logging.handlers
import re
import socket

from . import metrics
from .logformat import record_fields, rfc3339, script_sd
from .observability_config import SD_NAME, SYSLOG_FACILITIES, LogConfig
from .printable import printable

dropped = 0  # datagrams not sent (no listener, buffer full): vsl_log_dropped_total

_NAME = SD_NAME.pattern  # printable US-ASCII but = ] " and space, 1 to 32
_ELEMENT = re.compile(rf'\[({_NAME})((?: {_NAME}="(?:[^"\\\]]|\\.)*")*)\]')
_PARAM = re.compile(rf' ({_NAME})="((?:[^"\\\]]|\\.)*)"')
_ESCAPED = re.compile(r'\\(["\\\]])')
_TO_ESCAPE = re.compile(r'(["\\\]])')
_REGISTERED = frozenset({"timeQuality", "origin", "meta"})  # IANA SD-IDs (RFC 5424 §7)
_BOM = "\ufeff"

SdElement = tuple[str, list[tuple[str, str]]]


def escape_param(value: str) -> str:
    """A PARAM-VALUE as written between its quotes."""
    return _TO_ESCAPE.sub(r"\\\1", value)


def unescape_param(text: str) -> str:
    """A PARAM-VALUE as meant (``\\`` before another character stays a backslash)."""
    return _ESCAPED.sub(r"\1", text)


def split_sd(text: str) -> tuple[list[SdElement], str]:
    """The SD elements ``text`` begins with (each parsed strictly; the first one that
    does not parse, and all after it, stay in the text) and the text after them."""
    elements, position, seen = [], 0, set()
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


def sd_element(sd_id: str, params) -> str:
    """``[ID name="value" ...]``, every value escaped."""
    return f"[{sd_id}" + "".join(f' {name}="{escape_param(str(value))}"'
                                 for name, value in params) + "]"


class Rfc5424Formatter(logging.Formatter):
    """A record as an RFC 5424 line without its PRI (SysLogHandler puts it in front)."""

    def __init__(self, config: LogConfig, hostname: str | None = None):
        super().__init__()
        self.config = config
        self.hostname = _header_field(hostname or socket.gethostname(), 255)
        self.app_name = _header_field(config.syslog_app_name, 48)

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        sd, rest = script_sd(record)
        message = printable(record.getMessage() if rest is None else rest)
        params = [(name, value) for name, value in fields.items() if name != "event"]
        structured = (sd_element(self.config.syslog_sd_id, params) if params else "") \
            + "".join(sd_element(sd_id, [(name, printable(value)) for name, value in params])
                      for sd_id, params in sd)
        header = " ".join(("1", rfc3339(record.created), self.hostname, self.app_name,
                           str(record.process), fields.get("event", "-")[:32],
                           structured or "-"))
        return f"{header} {message if message.isascii() else _BOM + message}"


def _header_field(text: str, limit: int) -> str:
    """A header field: printable US-ASCII, at most ``limit`` characters, else ``-``."""
    return text[:limit] if re.fullmatch(r"[!-~]+", text) else "-"


class Syslog5424Handler(logging.handlers.SysLogHandler):
    """SysLogHandler sending RFC 5424 datagrams without blocking; drops are counted."""

    append_nul = False

    def __init__(self, config: LogConfig):
        _, address = config.syslog_target()
        super().__init__(address, SYSLOG_FACILITIES[config.syslog_facility],
                         socket.SOCK_DGRAM)
        self.max_bytes = config.syslog_max_bytes
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
        """``<PRI>`` and the formatted line, cut at ``max_bytes`` (a UTF-8 boundary)."""
        pri = self.encodePriority(self.facility, self.mapPriority(record.levelname))
        data = f"<{pri}>{self.format(record)}".encode("utf-8")
        return data[:self.max_bytes].decode("utf-8", "ignore").encode("utf-8")

    def _send_unix(self, datagram: bytes) -> None:
        """Send on the unix socket, connecting it again when the last send failed."""
        if self.socket.fileno() < 0:
            self.createSocket()
        try:
            self.socket.send(datagram)
        except OSError:
            self.socket.close()  # connected again at the next line
            raise


def _drop() -> None:
    global dropped  # noqa: PLW0603 - a module counter the metrics export
    dropped += 1
    metrics.count("vsl_log_dropped_total")
