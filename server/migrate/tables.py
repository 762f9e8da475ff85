r"""Postfix lookup tables read from their source text, as vSL data.

``hash:``, ``btree:``, ``texthash:`` (and ``lmdb:``, ``cdb:``) read the text file the
indexed file is made from (``postmap``): ``key value`` lines, keys in lower case.
``inline:{ key=value, { key = text with spaces } }`` is the same in main.cf itself.
``cidr:`` is ``network action`` lines, ``pcre:``/``regexp:`` ``/pattern/flags action``
lines (Postfix matches them case-insensitively unless the ``i`` flag turns that off).
Every table becomes a vSL map ``#{ kind: "hash" | "cidr" | "regexp", entries: ... }``
that postfix.vsl's ``find`` reads. Every network is checked with ``ipaddress`` and every
pattern compiled as ``regex::captures`` compiles it (the ``regex`` module, which reads
PCRE's ``\z`` and ``(?<name>`` as they are, within regex::'s size bounds): a line vSL
could not use is left out and listed, never kept to fail at run time.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from vsl.errors import ScriptError
from vsl.stdlib.net import bare_network, is_network
from vsl.stdlib.regex import compile_pattern

from .maincf import logical_lines, split_list

INDEXED = ("hash", "btree", "texthash", "lmdb", "cdb", "dbm", "sdbm")
PATTERN = re.compile(r"^/(?P<pattern>(?:\\.|[^/])*)/(?P<flags>[A-Za-z]*)\s+(?P<action>.*)$")


class TableError(ValueError):
    """A table this translation cannot read (its kind, its file, a line)."""


@dataclass
class Table:
    """One lookup table: its kind for postfix.vsl and its entries."""

    spec: str   # as main.cf names it: "hash:/etc/postfix/access"
    kind: str   # "hash", "cidr" or "regexp"
    entries: dict[str, str] | list[list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # lines left out, and why

    def values(self) -> list[str]:
        if isinstance(self.entries, dict):
            return list(self.entries.values())
        return [entry[-1] for entry in self.entries]


def load_table(spec: str, directory: Path | None) -> Table:
    """The table main.cf names ``spec``; relative paths are relative to ``directory``."""
    kind, colon, where = spec.partition(":")
    if not colon:
        raise TableError(f"'{spec}' is no lookup table (type:name)")
    if kind == "inline":
        return Table(spec, "hash", inline_entries(where))
    reader = READERS.get(kind)
    if reader is None:
        raise TableError(f"table type '{kind}' is not translated (only "
                         f"{', '.join([*INDEXED, 'inline', *READERS.keys() - set(INDEXED)])})")
    path = Path(where)
    if not path.is_absolute() and directory is not None:
        path = directory / path
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise TableError(f"cannot read {path}: {err.strerror}") from None
    table = Table(spec, "hash" if kind in INDEXED else kind if kind == "cidr" else "regexp")
    reader(table, text)
    return table


def inline_entries(text: str) -> dict[str, str]:
    """``{ key=value, { key = value } }``: the entries of an inline: table."""
    inner = text.strip()
    if not (inner.startswith("{") and inner.endswith("}")):
        raise TableError(f"inline:{text} has no {{ ... }}")
    entries = {}
    for item in split_list(inner[1:-1]):
        item = item.strip()
        if item.startswith("{") and item.endswith("}"):
            item = item[1:-1].strip()
        key, equals, value = item.partition("=")
        if not equals:
            raise TableError(f"inline: entry '{item}' has no '='")
        entries[key.strip().lower()] = normalize_action(value)
    return entries


def normalize_action(value: str) -> str:
    """An action with one space between its command and its text."""
    command, _, text = value.strip().partition(" ")
    command, _, tabbed = command.partition("\t")
    text = f"{tabbed} {text}".strip()
    return f"{command} {text}" if text else command


def read_indexed(table: Table, text: str) -> None:
    entries: dict[str, str] = {}
    for number, line in logical_lines(text):
        key, _, value = line.replace("\t", " ").partition(" ")
        entries.setdefault(key.lower(), normalize_action(value))
    table.entries = entries


def read_cidr(table: Table, text: str) -> None:
    entries = []
    for number, line in logical_lines(text):
        network, _, action = line.replace("\t", " ").partition(" ")
        if network.lower() in ("if", "endif") or network.startswith("!"):
            table.problems.append(f"{table.spec} line {number}: '{line}' (if/endif and "
                                  "negation are not translated)")
            continue
        network = bare_network(network)
        if not is_network(network):
            table.problems.append(f"{table.spec} line {number}: '{line}' (not an address "
                                  "or network)")
            continue
        entries.append([network, normalize_action(action)])
    table.entries = entries


def read_patterns(table: Table, text: str) -> None:
    entries = []
    for number, line in logical_lines(text):
        match = PATTERN.match(line)
        if match is None:
            table.problems.append(f"{table.spec} line {number}: '{line}' (only /pattern/flags "
                                  "action lines are translated)")
            continue
        flags = match.group("flags")
        case = "" if "i" in flags else "i"  # Postfix's i flag toggles its case-insensitivity
        if set(flags) - set("i"):
            table.problems.append(f"{table.spec} line {number}: flags '{flags}' other than i "
                                  "are not translated")
            continue
        pattern = match.group("pattern")
        try:
            compile_pattern(pattern, case)
        except ScriptError as err:
            table.problems.append(f"{table.spec} line {number}: '{line}' ({err})")
            continue
        entries.append([pattern, case, normalize_action(match.group("action"))])
    table.entries = entries


READERS = {**{kind: read_indexed for kind in INDEXED}, "cidr": read_cidr,
           "pcre": read_patterns, "regexp": read_patterns}
