"""Sandbox limits: every bound a script can hit, with safe defaults.

``0`` means unlimited for every size and count (as in Rhai).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True, slots=True)
class Limits:
    max_operations: int = 1_000_000   # loop iterations + function calls per script call
    max_time: float = 5.0             # seconds of wall clock per script call
    max_call_depth: int = 64          # nested script function calls
    max_expr_depth: int = 64          # syntax nesting, checked at parse time
    max_string_size: int = 1_000_000  # characters
    max_array_size: int = 100_000     # items
    max_map_size: int = 100_000       # entries
    max_modules: int = 64             # imported modules per loaded script
    max_script_size: int = 1_000_000  # characters of one script file, checked before parsing

    def with_changes(self, **changes) -> "Limits":
        """A copy with some limits changed; unknown names are an error."""
        known = {f.name for f in fields(self)}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown limit '{name}' (known: {', '.join(sorted(known))})")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"limit '{name}' must be a number >= 0, not {value!r}")
        return replace(self, **changes)
