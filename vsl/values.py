"""Script values: type names, display, equality, freezing and the native object base.

Script values are plain Python values: ``int`` (i64), ``float``, ``str``,
``bool``, ``None`` (unit ``()``), ``list`` (array), ``dict`` (map), ``range``,
:class:`Closure` and :class:`NativeObject`. Frozen (constant) arrays are
``tuple`` and frozen maps :class:`FrozenMap`.
"""
from __future__ import annotations

import math

from .errors import LimitError, ScriptError
from .names import script_name

I64_MIN, I64_MAX = -(2 ** 63), 2 ** 63 - 1


class FrozenMap(dict):
    """A map that can no longer change (a top-level constant's value)."""

    __slots__ = ()

    def _frozen(self, *args, **kwargs):
        raise ScriptError("cannot modify a constant map")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _frozen


class Undefined:
    """The value of a constant's Python global before the top level defines it."""

    __slots__ = ()


class Closure:
    """A script closure (``|x| x + 1``) as a value."""

    __slots__ = ("fn", "arity")

    def __init__(self, fn, arity: int):
        self.fn, self.arity = fn, arity

    def call(self, *args):
        if len(args) != self.arity:
            raise ScriptError(f"closure takes {self.arity} argument(s), not {len(args)}")
        return self.fn(*args)


class NativeObject:
    """Base of Python objects handed to scripts by natives.

    Scripts can read only the attributes named in ``vsl_props`` and call only
    the methods registered with :func:`method`; nothing else is reachable.
    """

    vsl_type = "object"
    vsl_props: frozenset[str] = frozenset()
    vsl_methods: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        methods = {}
        for base in reversed(cls.__mro__):
            for name, attr in vars(base).items():
                spec = getattr(attr, "_vsl_method", None)
                if spec is not None:
                    methods[spec[0]] = (attr, spec[1], spec[2])
        cls.vsl_methods = methods

    def vsl_get(self, name: str):
        if name in self.vsl_props:
            return getattr(self, name)
        raise ScriptError(f"{self.vsl_type} has no property '{name}'")

    def vsl_display(self) -> str:
        return f"<{self.vsl_type}>"

    def vsl_equals(self, other) -> bool:
        return self is other

    def __eq__(self, other) -> bool:  # so that Python's `in` agrees with the script's ==
        return self.vsl_equals(other)

    __hash__ = object.__hash__


def method(name: str | None = None):
    """Mark a NativeObject method as callable from scripts (``obj.name(...)``, ``name``
    its Python name without a trailing ``_`` unless given), taking the arguments its
    signature takes."""
    import inspect

    def mark(fn):
        params = list(inspect.signature(fn).parameters.values())[1:]
        required = sum(1 for p in params if p.default is p.empty)
        fn._vsl_method = (name or fn.__name__.rstrip("_"), required, len(params))
        return fn

    return mark


def type_name(v) -> str:
    """Rhai's type_of() name of a value."""
    t = type(v)
    if t is int:
        return "i64"
    if t is str:
        return "string"
    if t is bool:
        return "bool"
    if v is None:
        return "()"
    if t is float:
        return "f64"
    if t is list or t is tuple:
        return "array"
    if t is dict or t is FrozenMap:
        return "map"
    if t is range:
        return "range"
    if t is Closure:
        return "Fn"
    if isinstance(v, NativeObject):
        return v.vsl_type
    return "unknown"


def _float_text(f: float) -> str:
    if math.isfinite(f) and f == int(f) and abs(f) < 1e16:
        return f"{f:.1f}"
    return repr(f)


MAX_NESTING = 200  # arrays/maps nested deeper than this cannot be printed, compared or frozen
_UNLIMITED = float("inf")


def _quoted(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _scalar_text(v, t) -> str | None:
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return str(v)
    if v is None:
        return "()"
    if t is float:
        return _float_text(v)
    if t is range:
        return f"{v.start}..{v.stop}"
    if t is Closure:
        return "Fn(<closure>)"
    if isinstance(v, NativeObject):
        return v.vsl_display()
    return None


class _Printer:
    """Renders nested values within a character budget (shared structure can be huge),
    charging each array or map it walks to the call's budget ``st`` (if any)."""

    def __init__(self, limit: float, st=None):
        self.limit, self.left, self.out, self.st = limit, limit, [], st

    def put(self, text: str) -> None:
        self.left -= len(text)
        if self.left < 0:
            raise LimitError(f"string too large (more than {self.limit} characters, "
                             "limits.max_string_size)")
        self.out.append(text)

    def value(self, v, quote: bool, depth: int) -> None:
        t = type(v)
        if t is str:
            self.put(_quoted(v) if quote else v)
            return
        if depth > MAX_NESTING:
            raise LimitError(f"value nested more than {MAX_NESTING} levels deep "
                             "(does it contain itself?)")
        if self.st is not None and (t in _ARRAYS or t in _MAPS):
            self.st.work(len(v))
        if t is list or t is tuple:
            self.put("[")
            for i, x in enumerate(v):
                if i:
                    self.put(", ")
                self.value(x, True, depth + 1)
            self.put("]")
        elif t is dict or t is FrozenMap:
            self.put("#{")
            for i, (k, x) in enumerate(v.items()):
                if i:
                    self.put(", ")
                self.value(k, True, depth + 1)
                self.put(": ")
                self.value(x, True, depth + 1)
            self.put("}")
        else:
            text = _scalar_text(v, t)
            self.put("<?>" if text is None else text)


def debug(v, limit: float = _UNLIMITED, st=None) -> str:
    """How a value prints inside an array or map (strings quoted); at most ``limit`` chars.
    ``st``: the call's budget, charged for the arrays and maps walked."""
    printer = _Printer(limit, st)
    printer.value(v, True, 0)
    return "".join(printer.out)


def display(v, limit: float = _UNLIMITED, st=None) -> str:
    """to_string(): how a value prints in `${}` and string concatenation (``st``: as for
    debug)."""
    t = type(v)
    if t is str:
        if len(v) > limit:
            _Printer(limit).put(v)
        return v
    text = _scalar_text(v, t)
    if text is not None:
        return text
    printer = _Printer(limit, st)
    printer.value(v, False, 0)
    return "".join(printer.out)


def preview(v, limit: int = 200) -> str:
    """A short debug form of a value for error messages (never raises)."""
    try:
        return debug(v, limit)
    except LimitError:
        return f"<{type_name(v)} too large to print>"


def equals(a, b, st=None) -> bool:
    """Script ``==``: values of different types are unequal (ints and floats compare by value).

    Container pairs already being compared count as equal, so shared and self-containing
    structures compare in linear time. ``st``: the call's budget, charged for each pair
    of arrays or maps compared (ExecState.work), so a deep comparison stops at max_time.
    """
    return _equals(a, b, None, 0, st)


def _equals(a, b, seen, depth, st) -> bool:
    if a is b:
        return True
    ta, tb = type(a), type(b)
    arrays = ta in _ARRAYS and tb in _ARRAYS
    maps = ta in _MAPS and tb in _MAPS
    if arrays or maps:
        if len(a) != len(b) or (maps and a.keys() != b.keys()):
            return False
        if depth > MAX_NESTING:
            raise LimitError(f"values nested more than {MAX_NESTING} levels deep to compare")
        if st is not None:
            st.work(len(a))
        seen = set() if seen is None else seen
        key = (id(a), id(b))
        if key in seen:
            return True
        seen.add(key)
        pairs = zip(a, b) if arrays else ((x, b[k]) for k, x in a.items())
        return all(_equals(x, y, seen, depth + 1, st) for x, y in pairs)
    if ta is tb:
        if isinstance(a, NativeObject):
            return a.vsl_equals(b)
        return a == b
    if (ta is int and tb is float) or (ta is float and tb is int):
        return a == b
    if isinstance(a, NativeObject):
        return a.vsl_equals(b)
    if isinstance(b, NativeObject):
        return b.vsl_equals(a)
    return False


_ARRAYS = (list, tuple)
_MAPS = (dict, FrozenMap)


def freeze(v, st=None):
    """Deep-freeze a value so it can be shared by concurrent script calls.

    Shared parts are frozen once; a value that contains itself, or a closure that
    captures variables (state shared between calls), cannot be a constant. ``st``: the
    call's budget, charged for each array or map frozen.
    """
    return _freeze(v, {}, set(), st)


def _freeze(v, done: dict, path: set, st):
    t = type(v)
    if t is Closure:
        captured = [n for n in map(script_name, v.fn.__code__.co_freevars) if n]
        if captured or v.fn.__kwdefaults__:
            names = ", ".join(captured) or "loop variables"
            raise ScriptError(f"a constant cannot hold a closure that captures variables "
                              f"({names}): pass them as parameters")
        return v
    if not (t is list or t is tuple or t is dict or t is FrozenMap):
        return v
    key = id(v)
    if key in done:
        return done[key]
    if key in path:
        raise ScriptError("a constant cannot hold a value that contains itself")
    if len(path) > MAX_NESTING:
        raise LimitError(f"value nested more than {MAX_NESTING} levels deep to freeze")
    if st is not None:
        st.work(len(v))
    path.add(key)
    if t is list or t is tuple:
        frozen = tuple(_freeze(x, done, path, st) for x in v)
    else:
        frozen = FrozenMap((k, _freeze(x, done, path, st)) for k, x in v.items())
    path.discard(key)
    done[key] = frozen
    return frozen


def from_python(v, where: str = "value", depth: int = 0):
    """Check/convert a host (JSON-like) value into a script value."""
    t = type(v)
    if t is float and not math.isfinite(v):
        raise ScriptError(f"{where}: {v} is not a finite number")
    if v is None or t in (bool, str, float) or isinstance(v, (NativeObject, Closure)):
        return v
    if t is int:
        if not I64_MIN <= v <= I64_MAX:
            raise ScriptError(f"{where}: integer {v} out of range for i64")
        return v
    _check_nesting(depth)
    if t in (list, tuple):
        return [from_python(x, where, depth + 1) for x in v]
    if t in (dict, FrozenMap):
        return {str(k): from_python(x, where, depth + 1) for k, x in v.items()}
    raise ScriptError(f"{where}: a {t.__name__} cannot be passed to a script")


def _check_nesting(depth: int) -> None:
    if depth > MAX_NESTING:
        raise LimitError(f"value nested more than {MAX_NESTING} levels deep")


def to_python(v, depth: int = 0):
    """A script value as plain JSON-like Python (for `vsl run` output and tests)."""
    t = type(v)
    if t is list or t is tuple:
        _check_nesting(depth)
        return [to_python(x, depth + 1) for x in v]
    if t is dict or t is FrozenMap:
        _check_nesting(depth)
        return {k: to_python(x, depth + 1) for k, x in v.items()}
    if t is range:
        return list(v)
    if t is Closure or isinstance(v, NativeObject):
        return display(v)
    return v
