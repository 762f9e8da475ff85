"""A finding of the linter (vsl/resolve.py, vsl/checks.py, vsl/lint.py): its own module,
light to import, so that findings read back from the cache need nothing else."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Diagnostic:
    """One finding: ``path:line:col: severity: message [code]``."""

    file: str
    line: int
    col: int
    severity: str  # "error" | "warning"
    code: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file  # 0: a path
        return f"{where}: {self.severity}: {self.message} [{self.code}]"
