"""The mail model: envelope addresses (:class:`Mailbox`) and messages (:class:`Message`).

A Mailbox is an RFC 5321 address (RFC 6531: UTF-8 allowed) as scripts see it:
``local_part``, ``domain``, ``is_null()``; it prints as its address (``<>`` for the
null sender) and compares equal to its address string. A Message keeps the bytes it
was parsed from: header edits rewrite only the fields they touch.
"""
from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property

from vsl.errors import ScriptError
from vsl.values import NativeObject, method, preview


class AddressError(ScriptError):
    """Text that is not an RFC 5321 mailbox."""


class HeaderError(ScriptError):
    """A header name or value that cannot go into a message."""


# ---- addresses -----------------------------------------------------------------------

def _or_non_ascii(ascii_class: str) -> str:
    """A class of the characters in ``ascii_class`` and of any non-ASCII one (RFC 6531; bad
    categories are refused first), written as the ASCII characters it leaves out: `re`
    takes ~15 ms to compile a class with a range up to U+10FFFF, ``vsl lint`` included."""
    kept = re.compile(f"[{ascii_class}]")
    spans: list[list[int]] = []  # [first, last] of each run of left-out characters
    for c in range(128):
        if kept.fullmatch(chr(c)):
            continue
        if spans and spans[-1][1] == c - 1:
            spans[-1][1] = c
        else:
            spans.append([c, c])
    return "[^" + "".join(f"\\x{a:02x}-\\x{b:02x}" for a, b in spans) + "]"


_ATOM = _or_non_ascii(r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-") + "+"
_DOT_STRING = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_QTEXT = _or_non_ascii(r"\x20\x21\x23-\x5b\x5d-\x7e")
_QUOTED = re.compile(rf'"((?:{_QTEXT}|\\[\x20-\x7e])*)"')
_LABEL_CHAR = _or_non_ascii("A-Za-z0-9")
_LABEL = re.compile(rf"{_LABEL_CHAR}(?:{_or_non_ascii('A-Za-z0-9-')}*{_LABEL_CHAR})?")
_BAD_CATEGORIES = {"Cc", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"}  # controls, unassigned, spaces
MAX_LOCAL, MAX_DOMAIN, MAX_LABEL = 64, 255, 63  # octets (RFC 5321 4.5.3.1, RFC 1035)


class Mailbox(NativeObject):
    """An envelope address; build one with :meth:`Mailbox.parse`."""

    vsl_type = "mailbox"
    vsl_props = frozenset({"local_part", "domain"})

    def __init__(self, local_part: str, domain: str):
        self.local_part, self.domain = local_part, domain  # local part unquoted
        local = local_part if _DOT_STRING.fullmatch(local_part) else _quote(local_part)
        self.address = f"{local}@{domain}" if domain else ""  # canonical; "" for null
        self._key = (local_part, domain_key(domain))

    @classmethod
    def parse(cls, text: str) -> "Mailbox":
        """``local@domain``, ``<local@domain>``, or ``""``/``<>`` for the null address."""
        if type(text) is not str:
            raise AddressError(f"an address must be a string, not {preview(text)}")
        inner = text[1:-1] if text.startswith("<") and text.endswith(">") else text
        if inner == "":
            return NULL
        bad = next((c for c in inner if not c.isascii() and unicodedata.category(c)
                    in _BAD_CATEGORIES), None)
        at = inner.rfind("@")
        if bad is not None or at < 0:
            why = f"character U+{ord(bad):04X}" if bad is not None else "no '@'"
            raise AddressError(f"{preview(text)} is not an address ({why})")
        local, domain = _local_part(inner[:at], text), inner[at + 1:]
        _check_domain(domain, text)
        return cls(local, domain)

    @method()
    def is_null(self) -> bool:
        """Whether this is the null sender ``<>`` (bounces)."""
        return self.domain == ""

    def vsl_display(self) -> str:
        return self.address or "<>"

    def vsl_equals(self, other) -> bool:
        if type(other) is str:
            try:
                other = Mailbox.parse(other)
            except AddressError:
                return False
        return isinstance(other, Mailbox) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"Mailbox({self.vsl_display()!r})"


def _quote(local: str) -> str:
    return '"' + re.sub(r'(["\\])', r"\\\1", local) + '"'


def _local_part(text: str, whole: str) -> str:
    """The local part without its quoting (``"a b"`` -> ``a b``)."""
    quoted = _QUOTED.fullmatch(text)
    if quoted:
        local = re.sub(r"\\(.)", r"\1", quoted.group(1))
    elif _DOT_STRING.fullmatch(text):
        local = text
    else:
        raise AddressError(f"{preview(whole)} is not an address (bad local part)")
    if len(text.encode()) > MAX_LOCAL:
        raise AddressError(f"{preview(whole)}: the local part is longer than {MAX_LOCAL} octets")
    return local


def _check_domain(domain: str, whole: str) -> None:
    if domain.startswith("["):
        _ip_literal(domain, whole)
        return
    labels = domain.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise AddressError(f"{preview(whole)} is not an address (bad domain)")
    if any(len(_a_label(label)) > MAX_LABEL for label in labels) or \
            len(domain.encode()) > MAX_DOMAIN:
        raise AddressError(f"{preview(whole)}: the domain is too long")


def _ip_literal(literal: str, whole: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (no other tag, no zone index)."""
    inner = literal[1:-1] if literal.endswith("]") else ""
    try:
        if inner[:5].lower() == "ipv6:" and "%" not in inner:
            return ipaddress.IPv6Address(inner[5:])
        return ipaddress.IPv4Address(inner)
    except ValueError:
        raise AddressError(f"{preview(whole)} is not an address (bad address literal)") from None


def _a_label(label: str) -> str:
    """The ASCII form of a label (``münchen`` -> ``xn--mnchen-3ya``), lower-cased."""
    label = unicodedata.normalize("NFC", label.lower())
    return label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")


def domain_key(domain: str) -> str:
    """What domains compare by: case-insensitive, U-label = A-label, IPs normalised."""
    if domain.startswith("["):
        ip = _ip_literal(domain, domain)
        return f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"
    return ".".join(_a_label(label) for label in domain.split("."))


NULL = Mailbox("", "")


# ---- messages --------------------------------------------------------------------------

_NAME_COLON = rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:"  # obsolete WSP before ':' too
_FIELD_START = re.compile(_NAME_COLON)
# One header field: a name line, then its folded lines; the last may lack its line end.
_FIELD = re.compile(_NAME_COLON + rb"[^\n]*(?:\n[ \t][^\n]*)*\n?")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")  # controls, CR/LF, surrogates
_FOLD_AT = re.compile(r"(?<=[^ \t])(?=[ \t])")  # before each run of WSP
FOLD_WIDTH, MAX_LINE = 78, 998  # octets per line, RFC 5322 2.1.1 (SHOULD, MUST)


class HeaderLimitError(ValueError):
    """A received header over a :class:`HeaderLimits` bound (the text says which)."""


class HopLimitError(HeaderLimitError):
    """More ``Received:`` fields than allowed: the message is probably looping."""


@dataclass(frozen=True)
class HeaderLimits:
    """Bounds on the header of a message being parsed: they also bound the parse's time
    and memory, whatever the message's size."""

    fields: int = 1000                # header fields
    section_size: int = 1024 * 1024   # bytes of the whole header (the blank line excluded)
    field_size: int = 102400          # bytes of one field, folded lines included
    received: int = 50                # Received: fields (trace hops)


class _Field:
    """One header field: its name and its exact bytes (folding and line ending included)."""

    __slots__ = ("name", "key", "raw")

    def __init__(self, name: str, raw: bytes):
        self.name, self.key, self.raw = name, name.lower(), raw

    @property
    def value(self) -> str:
        """The value unfolded, without surrounding whitespace (encoded words kept)."""
        raw = self.raw[self.raw.index(b":") + 1:].decode("utf-8", "replace")
        return _FOLD.sub("", raw).strip(" \t\r\n")


def _parse_fields(data: bytes, limits: HeaderLimits) -> tuple[list[_Field], int]:
    """The header fields at the start of ``data`` and where they end; a line that is
    neither a field nor the folded part of one ends them. Linear, and it stops at the
    first bound ``limits`` sets (:class:`HeaderLimitError`)."""
    fields: list[_Field] = []
    received = pos = 0
    end = min(len(data), limits.section_size + 1)  # enough to tell the section is too big
    while match := _FIELD.match(data, pos, end):
        if len(fields) == limits.fields:
            raise HeaderLimitError("too many header fields")
        if match.end() - pos > limits.field_size:
            raise HeaderLimitError("a header field is too long")
        if match.end() > limits.section_size:
            raise HeaderLimitError("message header too big")
        field = _Field(match.group(1).decode("ascii"), match.group(0))
        received += field.key == "received"
        if received > limits.received:
            raise HopLimitError("too many hops")
        fields.append(field)
        pos = match.end()
    if end < len(data) and _FIELD_START.match(data, pos):  # a field goes on past ``end``
        raise HeaderLimitError("message header too big")
    return fields, pos


class Message:
    """A message as received by DATA: header fields and body, kept byte-exact. The fields
    are indexed by name, so a look-up costs what it finds, not the size of the header."""

    def __init__(self, data: bytes, limits: HeaderLimits = HeaderLimits()):
        first_end = data.find(b"\n")
        bare_lf = first_end >= 0 and data[first_end - 1:first_end] != b"\r"
        self._eol = b"\n" if bare_lf else b"\r\n"  # for the fields we add
        self._fields, pos = _parse_fields(data, limits)
        self._index()
        # the empty line after the header, if there is one
        self._separator = next((eol for eol in (b"\r\n", b"\n") if data.startswith(eol, pos)),
                               b"")
        self.body_bytes = data[pos + len(self._separator):]

    def to_bytes(self) -> bytes:
        """The message, byte for byte as received except for the edited fields."""
        return self._header_bytes() + self.body_bytes

    def head(self, limit: int) -> bytes:
        """The first ``limit`` bytes of :meth:`to_bytes`, without copying the body past them."""
        header = self._header_bytes()
        return (header + self.body_bytes[:max(0, limit - len(header))])[:limit]

    def _header_bytes(self) -> bytes:
        """The header fields as they are now and the blank line that ends them."""
        return b"".join(f.raw for f in self._fields) + self._separator

    @property
    def size(self) -> int:
        """The message's length in bytes, as to_bytes() would give it (without building it)."""
        return sum(len(f.raw) for f in self._fields) + len(self._separator) + \
            len(self.body_bytes)

    @cached_property
    def body(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced)."""
        return self.body_bytes.decode("utf-8", "replace")

    # -- reading ---------------------------------------------------------------
    def _matching(self, name) -> list[_Field]:
        if type(name) is not str:
            raise HeaderError(f"a header name must be a string, not {preview(name)}")
        return self._by_name.get(name.lower(), [])

    def get(self, name: str) -> str | None:
        """The first value of a field, or None."""
        found = self._matching(name)
        return found[0].value if found else None

    def get_all(self, name: str) -> list[str]:
        """Every value of a field, in order."""
        return [f.value for f in self._matching(name)]

    def fields(self) -> list[tuple[str, str]]:
        """Every field as (name as written, value)."""
        return [(f.name, f.value) for f in self._fields]

    # -- editing -----------------------------------------------------------------
    def append(self, name: str, value: str) -> None:
        """Add a field at the end of the header."""
        self._add(self._new(name, value), top=False)

    def prepend(self, name: str, value: str) -> None:
        """Add a field at the top of the header (where trace fields go)."""
        self._add(self._new(name, value), top=True)

    def set(self, name: str, value: str) -> None:
        """Replace the first field of that name (keeping its spelling), or append one."""
        found = self._matching(name)
        if not found:
            self.append(name, value)
            return
        field = self._new(found[0].name, value)
        self._fields[self._fields.index(found[0])] = field
        found[0] = field  # in the index too

    def rename(self, old: str, new: str) -> bool:
        """Rename every field called ``old``; their values stay byte-exact."""
        new = _checked_name(new)
        found = self._matching(old)
        for f in found:
            f.raw = new.encode("ascii") + f.raw[len(f.name):]
            f.name, f.key = new, new.lower()
        self._index()
        return bool(found)

    def remove(self, name: str) -> bool:
        """Remove every field of that name; whether there was one."""
        found = self._matching(name)
        if found:
            self._fields = [f for f in self._fields if f.key != found[0].key]
            del self._by_name[found[0].key]
        return bool(found)

    def _index(self) -> None:
        """Index the fields by lower-cased name, in header order."""
        self._by_name: dict[str, list[_Field]] = {}
        for f in self._fields:
            self._by_name.setdefault(f.key, []).append(f)

    def _new(self, name, value) -> _Field:
        """A field of a checked name and value, folded to FOLD_WIDTH where it can be."""
        name = _checked_name(name)
        if type(value) is not str:
            raise HeaderError(f"a header value must be a string, not {preview(value)}")
        value = value.strip(" \t")
        text = f"{name}: {value}" if value else f"{name}:"
        lines = re.split(r"\r?\n", text)
        if _BAD_VALUE.search(_FOLD.sub("", value)) or not all(
                line.strip(" \t") for line in lines):
            raise HeaderError(f"header {name}: the value {preview(value)} has a line break or "
                              "control character (only folding, a line break then a space, "
                              "is allowed)")
        if len(lines) == 1:
            lines = _fold(text)
        encoded = [line.encode("utf-8") for line in lines]
        if any(len(line) > MAX_LINE for line in encoded):
            raise HeaderError(f"header {name}: a line is longer than {MAX_LINE} octets")
        return _Field(name, self._eol.join(encoded) + self._eol)

    def _add(self, field: _Field, top: bool) -> None:
        """Add a field at the top or the end, without merging it with its neighbours."""
        if not top and self._fields and not self._fields[-1].raw.endswith(b"\n"):
            self._fields[-1].raw += self._eol  # the data ended inside this field
        if not self._separator and self.body_bytes:
            self._separator = self._eol  # the header had no end: give it one
        same_name = self._by_name.setdefault(field.key, [])
        if top:
            self._fields.insert(0, field)
            same_name.insert(0, field)
        else:
            self._fields.append(field)
            same_name.append(field)


def _checked_name(name) -> str:
    if type(name) is not str or not _FIELD_NAME.fullmatch(name):
        raise HeaderError(f"{preview(name)} is not a header name (printable ASCII but ':')")
    return name


def _fold(text: str) -> list[str]:
    """``Name: value`` in lines of at most FOLD_WIDTH octets, broken before whitespace; the
    value's first word stays on the name's line and a longer word stays whole."""
    name, *pieces = _FOLD_AT.split(text)
    lines = [name + (pieces.pop(0) if pieces else "")]
    for piece in pieces:
        if len((lines[-1] + piece).encode("utf-8")) > FOLD_WIDTH:
            lines.append(piece)
        else:
            lines[-1] += piece
    return lines
