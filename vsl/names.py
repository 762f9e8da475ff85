"""Python names of script variables, shared by the resolver and the freezer.

The mapping must be injective: two bindings never share a Python name. The first
binding of ``x`` is ``v_x``; the n-th redeclaration is ``v<n>_x``. A script name
never starts with a digit, so ``v``, the digits and ``_`` split unambiguously
(``x`` redeclared once is ``v1_x``, ``x_1`` is ``v_x_1``).
"""
from __future__ import annotations

import re

_LOCAL = re.compile(r"v[0-9]*_(.+)")


def local_name(name: str, n: int) -> str:
    """The Python name of the ``n``-th binding (from 0) of script variable ``name``."""
    return f"v_{name}" if n == 0 else f"v{n}_{name}"


def script_name(py_name: str) -> str | None:
    """The script variable a Python name stands for, or None for a generated name."""
    m = _LOCAL.fullmatch(py_name)
    return m.group(1) if m else None
