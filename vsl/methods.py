"""Built-in methods of script values (``s.len()``, ``a.push(x)``, ``m.keys()``...).

Strings are immutable: string methods return new strings. Arrays and maps
change in place, unless they are constants (frozen). Any method can also be
called as a function with the receiver first: ``len(s)``.
"""
from __future__ import annotations

import math
import re

from .errors import ScriptError
from .values import (I64_MAX, I64_MIN, Closure, FrozenMap, NativeObject, debug, display, equals,
                     preview, type_name)

# Keyed by type_name(); "any" holds the methods every value has.
_TABLES: dict[str, dict[str, tuple]] = {"string": {}, "array": {}, "map": {}, "i64": {},
                                         "f64": {}, "range": {}, "any": {}}


def _register(kinds: str, name: str, lo: int, hi: int, linear: bool = True,
              walks: bool = False):
    """Add a method; ``linear``: its work grows with the receiver's size (it is charged);
    ``walks``: it walks nested values, charging what it walks: it is passed the call's
    budget (an ExecState, whose ``ops`` the others are passed)."""
    def add(fn):
        for kind in kinds.split():
            _TABLES[kind][name] = (fn, lo, hi, linear and kind in ("string", "array", "map"),
                                   walks)
            if linear and kind != "string":
                _walking.add(name)
        return fn
    return add


# Methods whose work can grow with a value in Python code (walking arrays and maps,
# printing, calling closures) or that build arrays from a string: a function calling
# one may run long (see ModuleCompiler.quick). Filled by _register.
_walking: set[str] = {"split", "chars"}


METHOD_NAMES: frozenset[str] = frozenset()  # filled at the end of the module


def has_method(obj, name: str) -> bool:
    """Whether ``obj.name(...)`` exists for this value."""
    if isinstance(obj, NativeObject):
        return name in obj.vsl_methods
    return name in _TABLES.get(type_name(obj), {}) or name in _TABLES["any"]


def call_method(st, obj, name: str, args: tuple):
    """Dispatch ``obj.name(*args)`` to a built-in or native method.

    ``st`` is the call's ExecState: a method whose work grows with its receiver
    is charged operations in proportion to the receiver's size (and one that walks
    nested values, for what it walks).
    """
    entry = _BY_TYPE.get((type(obj), name))
    if entry is not None:
        return _call(entry, name, obj, st, args)
    if isinstance(obj, NativeObject):
        native = obj.vsl_methods.get(name)
        if native is not None:
            fn, lo, hi = native
            _arity(name, lo, hi, len(args))
            return st.ops.from_native(fn(obj, *args), obj, f"{name}()")
    entry = _TABLES["any"].get(name)
    if entry is None:
        raise ScriptError(f"{type_name(obj)} has no method '{name}'")
    return _call(entry, name, obj, st, args)


def _call(entry, name, obj, st, args):
    fn, lo, hi, linear, walks = entry
    if not lo <= len(args) <= hi:
        _arity(name, lo, hi, len(args))
    if linear and len(obj) > 63:
        st.work(len(obj))
    return fn(st if walks else st.ops, obj, *args)


def _arity(name, lo, hi, n):
    if not lo <= n <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        raise ScriptError(f"method '{name}' takes {want} argument(s), not {n}")


def _str_arg(v, what="argument"):
    if type(v) is not str:
        raise ScriptError(f"{what} must be a string, not {type_name(v)}")
    return v


def _int_arg(v, what="argument"):
    if type(v) is not int:
        raise ScriptError(f"{what} must be an integer, not {type_name(v)}")
    return v


def _mutable(a):
    if type(a) is tuple or type(a) is FrozenMap:
        raise ScriptError(f"cannot modify a constant {type_name(a)}")
    return a


def _fn_arg(f):
    if type(f) is not Closure:
        raise ScriptError(f"expected a closure such as |x| ..., not {type_name(f)}")
    return f


# ---- any value ------------------------------------------------------------
@_register("any", "type_of", 0, 0, linear=False)
def _type_of(ops, v):
    return type_name(v)


@_register("any", "to_string", 0, 0, walks=True)
def _to_string(st, v):
    return display(v, st.ops.max_string, st)


@_register("any", "to_debug", 0, 0, walks=True)
def _to_debug(st, v):
    return debug(v, st.ops.max_string, st)


# ---- strings --------------------------------------------------------------
@_register("string array map", "len", 0, 0, linear=False)
def _len(ops, v):
    return len(v)


@_register("string array map", "is_empty", 0, 0, linear=False)
def _is_empty(ops, v):
    return len(v) == 0


@_register("string", "contains", 1, 1)
def _s_contains(ops, s, sub):
    return _str_arg(sub) in s


@_register("string", "starts_with", 1, 1)
def _starts_with(ops, s, prefix):
    return s.startswith(_str_arg(prefix))


@_register("string", "ends_with", 1, 1)
def _ends_with(ops, s, suffix):
    return s.endswith(_str_arg(suffix))


@_register("string", "to_lower", 0, 0)
def _to_lower(ops, s):
    return ops.string(s.lower())  # can grow: 'İ' is two characters in lower case


@_register("string", "to_upper", 0, 0)
def _to_upper(ops, s):
    return ops.string(s.upper())


@_register("string", "trim", 0, 0)
def _trim(ops, s):
    return s.strip()


@_register("string", "split", 0, 1)
def _split(ops, s, sep=None):
    """Stops after one part more than max_array_size (an error): never builds more."""
    if sep is not None and _str_arg(sep, "separator") == "":
        return _chars(ops, s)
    most = ops.max_array
    return ops.array(s.split(sep, -1 if most == math.inf else most))


@_register("string", "replace", 2, 2)
def _replace(ops, s, old, new):
    old, new = _str_arg(old), _str_arg(new)
    if old == "":
        raise ScriptError("replace() needs a non-empty string to find")
    if new and len(new) > len(old):
        size = s.count(old) * (len(new) - len(old)) + len(s)
        if size > ops.max_string:
            ops.too_large(size)
    return s.replace(old, new)


@_register("string", "sub_string", 1, 2)
def _sub_string(ops, s, start, length=None):
    start = _int_arg(start, "start")
    if start < 0:
        start = max(len(s) + start, 0)
    if length is None:
        return s[start:]
    if _int_arg(length, "length") < 0:
        return ""
    return s[start:start + length]


@_register("string array", "index_of", 1, 2, walks=True)
def _index_of(st, v, item, start=0):
    start = _int_arg(start, "start")
    if start < 0:
        start = max(len(v) + start, 0)
    if type(v) is str:
        return v.find(_str_arg(item), start)
    for i in range(start, len(v)):
        if equals(v[i], item, st):
            return i
    return -1


@_register("string", "chars", 0, 0)
def _chars(ops, s):
    ops.array_size(len(s))
    return list(s)


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


@_register("string", "parse_int", 0, 1)
def _parse_int(ops, s, radix=10):
    """ASCII digits of the radix with an optional sign; nothing else (no 0x, no '_')."""
    radix = _int_arg(radix, "radix")
    if not 2 <= radix <= 36:
        raise ScriptError(f"radix must be between 2 and 36, not {radix}")
    text = s.strip()
    digits = text[1:] if text[:1] in ("+", "-") else text
    allowed = _DIGITS[:radix]
    if not digits or any(c.lower() not in allowed for c in digits) or not digits.isascii():
        raise ScriptError(f"cannot parse {preview(s)} as an integer")
    significant = digits.lstrip("0")
    if len(significant) > 64:  # more than any i64 has, even in base 2
        raise ScriptError(f"{preview(s)} is out of range for an integer")
    value = int(text[:len(text) - len(digits)] + (significant or "0"), radix)
    if not I64_MIN <= value <= I64_MAX:
        raise ScriptError(f"{preview(s)} is out of range for an integer")
    return value


@_register("string", "parse_float", 0, 0)
def _parse_float(ops, s):
    """Decimal notation only (``1.5``, ``-2``, ``3e8``): no '_', inf, nan or other digits."""
    text = s.strip()
    if not _FLOAT_RE.fullmatch(text):
        raise ScriptError(f"cannot parse {preview(s)} as a float")
    value = float(text)
    if math.isinf(value):
        raise ScriptError(f"{preview(s)} is out of range for a float")
    return value


# ---- arrays ---------------------------------------------------------------
@_register("array", "push", 1, 1, linear=False)
def _push(ops, a, x):
    _mutable(a).append(x)
    if len(a) > ops.max_array:
        a.pop()
        ops.array_size(len(a) + 1)


@_register("array", "pop", 0, 0, linear=False)
def _pop(ops, a):
    return _mutable(a).pop() if a else None


@_register("array", "insert", 2, 2)
def _insert(ops, a, i, x):
    i = _int_arg(i, "index")
    if len(_mutable(a)) >= ops.max_array:
        ops.array(a + [x])  # the limit error, before the array changes
    a.insert(i if i >= 0 else max(len(a) + i, 0), x)


@_register("array", "remove", 1, 1)
def _remove(ops, a, i):
    i = _int_arg(i, "index")
    n = len(a)
    j = i + n if i < 0 else i
    if not 0 <= j < n:
        return None
    return _mutable(a).pop(j)


@_register("array map", "clear", 0, 0, linear=False)
def _clear(ops, v):
    _mutable(v).clear()


@_register("array", "contains", 1, 1, walks=True)
def _a_contains(st, a, x):
    return any(equals(x, y, st) for y in a)


@_register("array", "get", 1, 1, linear=False)
def _a_get(ops, a, i):
    i = _int_arg(i, "index")
    n = len(a)
    j = i + n if i < 0 else i
    return a[j] if 0 <= j < n else None


@_register("array", "reverse", 0, 0)
def _reverse(ops, a):
    _mutable(a).reverse()


@_register("array", "sort", 0, 0, walks=True)
def _sort(st, a):
    _mutable(a)
    kinds = {type_name(x) for x in a}
    if kinds and not (kinds <= {"i64", "f64"} or kinds == {"string"}):
        raise ScriptError(f"sort() needs numbers or strings, not {', '.join(sorted(kinds))}")
    st.work(len(a) * len(a).bit_length())  # n log n comparisons (n is charged already)
    a.sort()


@_register("array", "join", 0, 1, walks=True)
def _join(st, a, sep=""):
    return st.ops.joined(st, a, _str_arg(sep, "separator"))


@_register("array", "filter", 1, 1)
def _filter(ops, a, f):
    f = _fn_arg(f)
    return [x for x in tuple(a) if ops.cond(f.call(x))]


@_register("array", "map", 1, 1)
def _map(ops, a, f):
    f = _fn_arg(f)
    return [f.call(x) for x in tuple(a)]


@_register("array", "any", 1, 1)
def _any(ops, a, f):
    f = _fn_arg(f)
    return any(ops.cond(f.call(x)) for x in tuple(a))


@_register("array", "all", 1, 1)
def _all(ops, a, f):
    f = _fn_arg(f)
    return all(ops.cond(f.call(x)) for x in tuple(a))


@_register("array", "reduce", 1, 2)
def _reduce(ops, a, f, acc=None):
    f = _fn_arg(f)
    for x in tuple(a):
        acc = f.call(acc, x)
    return acc


# ---- maps -----------------------------------------------------------------
@_register("map", "keys", 0, 0)
def _keys(ops, m):
    return list(m.keys())


@_register("map", "values", 0, 0)
def _values(ops, m):
    return list(m.values())


@_register("map", "contains", 1, 1, linear=False)
def _m_contains(ops, m, key):
    return _str_arg(key, "key") in m


@_register("map", "get", 1, 1, linear=False)
def _m_get(ops, m, key):
    return m.get(_str_arg(key, "key"))


@_register("map", "remove", 1, 1, linear=False)
def _m_remove(ops, m, key):
    return _mutable(m).pop(_str_arg(key, "key"), None)


# ---- numbers --------------------------------------------------------------
@_register("i64", "abs", 0, 0)
def _abs(ops, n):
    return ops.neg(n) if n < 0 else n


@_register("f64", "abs", 0, 0)
def _fabs(ops, n):
    return abs(n)


@_register("i64", "to_float", 0, 0)
def _to_float(ops, n):
    return float(n)


@_register("f64", "to_int", 0, 0)
def _to_int(ops, f):
    if not float(I64_MIN) <= f < float(I64_MAX):
        raise ScriptError(f"{display(f)} is out of range for an integer")
    return int(f)


@_register("i64", "to_int", 0, 0)
def _int_to_int(ops, n):
    return n


def _finite(f: float, method: str) -> float:
    """``f`` if it is a number, else a script error (inf and nan only come from a host)."""
    if not math.isfinite(f):
        raise ScriptError(f"cannot {method} {display(f)}: not a finite number")
    return f


@_register("f64", "floor", 0, 0)
def _floor(ops, f):
    return float(math.floor(_finite(f, "floor")))


@_register("f64", "ceiling", 0, 0)
def _ceil(ops, f):
    return float(math.ceil(_finite(f, "ceiling")))


@_register("f64", "round", 0, 0)
def _round(ops, f):
    f = _finite(f, "round")
    return float(math.floor(f + 0.5)) if f >= 0 else -float(math.floor(-f + 0.5))


@_register("range", "len", 0, 0)
def _range_len(ops, r):
    n = max(r.stop - r.start, 0)  # len() itself overflows past sys.maxsize
    if n > I64_MAX:
        raise ScriptError(f"the length of {r.start}..{r.stop} is out of range for an integer")
    return n


@_register("range", "contains", 1, 1)
def _range_contains(ops, r, x):
    return type(x) is int and x in r


def method_arities(name: str, cls: type | None = None) -> set[tuple[int, int]]:
    """(fewest, most) arguments a method ``name`` takes: on a native object of class
    ``cls`` (a NativeObject subclass), else on any value or native object there is."""
    if cls is not None:
        entry = cls.vsl_methods.get(name) or _TABLES["any"].get(name)
        return {(entry[1], entry[2])} if entry else set()
    found = {(entry[1], entry[2]) for table in _TABLES.values() if (entry := table.get(name))}
    return found | {native.vsl_methods[name][1:] for native in _native_classes()
                    if name in native.vsl_methods}


def _native_classes(base: type = NativeObject):
    for cls in base.__subclasses__():
        yield cls
        yield from _native_classes(cls)


METHOD_NAMES = frozenset(name for table in _TABLES.values() for name in table)
ANY_METHODS = frozenset(_TABLES["any"])  # the methods every value has (type_of, ...)
WALKING_METHODS = frozenset(_walking)

_PY_TYPES = {"string": (str,), "array": (list, tuple), "map": (dict, FrozenMap), "i64": (int,),
             "f64": (float,), "range": (range,)}
# (Python type, method name) -> entry: one dictionary look-up per call.
_BY_TYPE = {(t, name): entry
            for kind, types in _PY_TYPES.items() for t in types
            for name, entry in {**_TABLES["any"], **_TABLES[kind]}.items()}
