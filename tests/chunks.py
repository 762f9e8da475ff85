"""Chunked script test files, in the style of starlark-go's testdata.

A file is split into independent chunks by lines that are exactly ``---``.
Each chunk keeps its line numbers (it is padded with blank lines). A line
holding ``// ### "regex"`` expects an error reported on that line whose
message matches the regex; ``// option:NAME=VALUE`` sets a limit for the chunk.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

_EXPECT = re.compile(r"//\s*###\s*(.+?)\s*$")
_OPTION = re.compile(r"//\s*option:(\w+)=(\S+)")


@dataclass
class Chunk:
    path: Path
    start: int  # 1-based line of the chunk's first line
    source: str  # padded: line numbers match the file
    expected: dict[int, str] = field(default_factory=dict)  # line -> regex
    options: dict[str, float] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.start}"


def read_chunks(path: Path) -> list[Chunk]:
    """Split one test file into chunks."""
    lines = path.read_text(encoding="utf-8").split("\n")
    chunks, start = [], 0
    for i, line in enumerate(lines + ["---"]):
        if line.strip() != "---":
            continue
        body = lines[start:i]
        source = "\n" * start + "\n".join(body)
        chunk = Chunk(path, start + 1, source)
        for n, text in enumerate(body, start + 1):
            if m := _EXPECT.search(text):
                chunk.expected[n] = ast.literal_eval(m.group(1))
            for name, value in _OPTION.findall(text):
                chunk.options[name] = float(value) if "." in value else int(value)
        chunks.append(chunk)
        start = i + 1
    return [c for c in chunks if c.source.strip()]


def collect(directory: Path) -> list[Chunk]:
    return [c for p in sorted(directory.glob("*.vsl")) for c in read_chunks(p)]
