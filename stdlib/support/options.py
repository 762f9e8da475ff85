"""Checking the ``#{ key: value }`` option maps that natives take."""
from __future__ import annotations

from dataclasses import dataclass, field

from vsl.errors import ScriptError
from vsl.values import FrozenMap, type_name


def options(arg, where: str, required: dict, optional: dict | None = None) -> dict:
    """Validate an option map: every required key present, no unknown key, each value of
    its expected type (a type, a tuple of types, or a NativeObject class)."""
    if type(arg) is not dict and type(arg) is not FrozenMap:
        raise ScriptError(f"{where} takes a map of options, not {type_name(arg)}")
    optional = optional or {}
    known = {**required, **optional}
    for key in arg:
        if key not in known:
            raise ScriptError(f"{where}: unknown option '{key}' (known: {', '.join(known)})")
    for key in required:
        if key not in arg or arg[key] is None:
            raise ScriptError(f"{where}: option '{key}' is required")
    out = {}
    for key, kind in known.items():
        value = arg.get(key)
        if value is None:
            continue
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (type(value) is bool and bool not in kinds):
            names = " or ".join(getattr(k, "vsl_type", None) or _NAMES.get(k, k.__name__)
                                for k in kinds)
            raise ScriptError(f"{where}: option '{key}' must be {names}, not {type_name(value)}")
        out[key] = value
    return out


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
          list: "an array", tuple: "an array", dict: "a map"}


@dataclass(frozen=True)
class Options:
    """The option map one native takes, declared beside it so that the linter knows its keys
    (``@namespace.native(options=X.keys)``) and the native checks it (``X.parse``)."""

    required: dict
    optional: dict = field(default_factory=dict)

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key the map may have, required ones first (what the linter checks)."""
        return (*self.required, *self.optional)

    def parse(self, arg, where: str) -> dict:
        """The checked options of ``arg`` (see :func:`options`); ``where`` names the native
        in errors."""
        return options(arg, where, self.required, self.optional)
