"""A strict RFC 5424 (syslog) message parser, written from the ABNF of its section 6;
every rule it checks is named as the RFC names it. ``parse(datagram)`` returns the
message's parts, or raises ValueError saying which rule failed.

    SYSLOG-MSG      = HEADER SP STRUCTURED-DATA [SP MSG]
    HEADER          = PRI VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID
    PRI             = "<" PRIVAL ">"          ; PRIVAL 1*3DIGIT, 0 to 191
    VERSION         = NONZERO-DIGIT 0*2DIGIT
    HOSTNAME        = NILVALUE / 1*255PRINTUSASCII
    APP-NAME        = NILVALUE / 1*48PRINTUSASCII
    PROCID          = NILVALUE / 1*128PRINTUSASCII
    MSGID           = NILVALUE / 1*32PRINTUSASCII
    TIMESTAMP       = NILVALUE / FULL-DATE "T" FULL-TIME
    STRUCTURED-DATA = NILVALUE / 1*SD-ELEMENT
    SD-ELEMENT      = "[" SD-ID *(SP SD-PARAM) "]"
    SD-PARAM        = PARAM-NAME "=" %d34 PARAM-VALUE %d34
    PARAM-VALUE     = UTF-8-STRING ; '"', '\\' and ']' MUST be escaped
    SD-NAME         = 1*32PRINTUSASCII ; except '=', SP, ']', %d34
    MSG             = MSG-ANY / MSG-UTF8  ; MSG-UTF8 = BOM UTF-8-STRING
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

BOM = b"\xef\xbb\xbf"
_PRINTUSASCII = re.compile(rb"[\x21-\x7e]+")
_FULL_DATE_TIME = re.compile(
    rb"(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"          # FULL-DATE
    rb"T([01]\d|2[0-3]):([0-5]\d):([0-5]\d|60)(\.\d{1,6})?"    # PARTIAL-TIME
    rb"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)")                       # TIME-OFFSET
_SD_NAME_CHARS = frozenset(range(0x21, 0x7f)) - {ord("="), ord("]"), ord('"')}


@dataclass
class SyslogMessage:
    pri: int
    version: int
    timestamp: str | None
    hostname: str | None
    app_name: str | None
    procid: str | None
    msgid: str | None
    sd: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    msg: str | bytes | None = None  # str for MSG-UTF8 (BOM removed), bytes for MSG-ANY

    @property
    def facility(self) -> int:
        return self.pri // 8

    @property
    def severity(self) -> int:
        return self.pri % 8


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def fail(self, rule: str):
        raise ValueError(f"{rule} at octet {self.at}: {self.data[self.at:self.at + 20]!r}")

    def peek(self, n: int = 1) -> bytes:
        return self.data[self.at:self.at + n]

    def expect(self, literal: bytes, rule: str) -> None:
        if self.peek(len(literal)) != literal:
            self.fail(rule)
        self.at += len(literal)

    def until_space(self) -> bytes:
        end = self.data.find(b" ", self.at)
        end = len(self.data) if end < 0 else end
        token, self.at = self.data[self.at:end], end
        return token


def parse(data: bytes) -> SyslogMessage:
    """The parts of the RFC 5424 message ``data``; ValueError when it is not one."""
    reader = _Reader(data)
    pri, version = _pri(reader), _version(reader)
    reader.expect(b" ", "SP")
    timestamp = _timestamp(reader)
    hostname = _header_field(reader, 255, "HOSTNAME")
    app_name = _header_field(reader, 48, "APP-NAME")
    procid = _header_field(reader, 128, "PROCID")
    msgid = _header_field(reader, 32, "MSGID")
    reader.expect(b" ", "SP")
    sd = _structured_data(reader)
    message = SyslogMessage(pri, version, timestamp, hostname, app_name, procid, msgid, sd)
    if reader.at < len(data):
        reader.expect(b" ", "SP before MSG")
        message.msg = _msg(data[reader.at:])
    return message


def _pri(reader: _Reader) -> int:
    reader.expect(b"<", "PRI")
    digits = re.match(rb"\d{1,3}", reader.data[reader.at:])
    if not digits or int(digits[0]) > 191 or (len(digits[0]) > 1 and digits[0][0:1] == b"0"):
        reader.fail("PRIVAL")
    reader.at += len(digits[0])
    reader.expect(b">", "PRI")
    return int(digits[0])


def _version(reader: _Reader) -> int:
    digits = re.match(rb"[1-9]\d{0,2}", reader.data[reader.at:])
    if not digits:
        reader.fail("VERSION")
    reader.at += len(digits[0])
    return int(digits[0])


def _timestamp(reader: _Reader) -> str | None:
    token = reader.until_space()
    if token == b"-":
        return None
    if not _FULL_DATE_TIME.fullmatch(token):
        reader.fail("TIMESTAMP")
    return token.decode("ascii")


def _header_field(reader: _Reader, limit: int, rule: str) -> str | None:
    """SP, then NILVALUE or 1 to ``limit`` PRINTUSASCII."""
    reader.expect(b" ", "SP")
    token = reader.until_space()
    if token == b"-":
        return None
    if not _PRINTUSASCII.fullmatch(token) or len(token) > limit:
        reader.fail(rule)
    return token.decode("ascii")


def _structured_data(reader: _Reader) -> list:
    if reader.peek() == b"-":
        reader.at += 1
        return []
    elements, seen = [], set()
    if reader.peek() != b"[":
        reader.fail("STRUCTURED-DATA")
    while reader.peek() == b"[":
        sd_id, params = _sd_element(reader)
        if sd_id in seen:
            reader.fail(f"SD-ID {sd_id} twice")
        seen.add(sd_id)
        elements.append((sd_id, params))
    return elements


def _sd_element(reader: _Reader) -> tuple[str, list[tuple[str, str]]]:
    reader.expect(b"[", "SD-ELEMENT")
    sd_id, params = _sd_name(reader, "SD-ID"), []
    while reader.peek() == b" ":
        reader.at += 1
        name = _sd_name(reader, "PARAM-NAME")
        reader.expect(b'="', "SD-PARAM")
        params.append((name, _param_value(reader)))
    reader.expect(b"]", "SD-ELEMENT")
    return sd_id, params


def _sd_name(reader: _Reader, rule: str) -> str:
    start = reader.at
    while reader.at < len(reader.data) and reader.data[reader.at] in _SD_NAME_CHARS:
        reader.at += 1
    if not 1 <= reader.at - start <= 32:
        reader.fail(rule)
    return reader.data[start:reader.at].decode("ascii")


def _param_value(reader: _Reader) -> str:
    """PARAM-VALUE up to its closing quote: '"', '\\' and ']' escaped with '\\'; a '\\'
    before any other character is a backslash (RFC 5424 §6.3.3)."""
    out = bytearray()
    while True:
        octet = reader.peek()
        if not octet:
            reader.fail("PARAM-VALUE (unterminated)")
        if octet == b'"':
            reader.at += 1
            break
        if octet == b"]":
            reader.fail("PARAM-VALUE (']' not escaped)")
        if octet == b"\\" and reader.peek(2)[1:] in (b'"', b"\\", b"]"):
            out += reader.peek(2)[1:]
            reader.at += 2
            continue
        out += octet
        reader.at += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        reader.fail("PARAM-VALUE (not UTF-8)")


def _msg(data: bytes) -> str | bytes:
    if not data.startswith(BOM):
        return data  # MSG-ANY
    try:
        return data[len(BOM):].decode("utf-8")  # MSG-UTF8
    except UnicodeDecodeError:
        raise ValueError("MSG-UTF8: not UTF-8 after the BOM") from None
