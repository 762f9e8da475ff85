"""Operators of the language, checked the way Rhai checks them.

One :class:`Ops` instance per engine holds the size limits; the compiled
code calls its bound methods. Those whose work grows with their operands
(``+``, ``==``, ``in``, templates, join) take the call's budget ``st`` first
and charge it by size (ExecState.work). Every failure is a catchable
ScriptError, except a limit (LimitError).
"""
from __future__ import annotations

import math

from .errors import LimitError, ScriptError
from .values import (I64_MAX, I64_MIN, Closure, FrozenMap, NativeObject, display, equals,
                     type_name)

_NUM = (int, float)


def _both_num(a, b) -> bool:
    ta, tb = type(a), type(b)
    return (ta is int or ta is float) and (tb is int or tb is float)


def _overflow(a, op, b):
    raise ScriptError(f"integer overflow: {display(a)} {op} {display(b)}")


def _type_error(op: str, a, b):
    raise ScriptError(f"cannot apply '{op}' to {type_name(a)} and {type_name(b)}")


def at_depth(st, depth: int, fn, *args):
    """``fn(*args)``, where a closure it calls runs one call level below ``depth``: a
    closure starts at ``st.depth + 1`` (compile.e_Closure), like any script function one
    level below its caller, so recursion through closures meets max_call_depth."""
    outer, st.depth = st.depth, depth
    try:
        return fn(*args)
    finally:
        st.depth = outer


class Ops:
    """Checked operators bound to one engine's limits."""

    def __init__(self, limits):
        self.max_string = limits.max_string_size or float("inf")
        self.max_array = limits.max_array_size or float("inf")
        self.max_map = limits.max_map_size or float("inf")

    # -- size checks ---------------------------------------------------------
    def string(self, s: str) -> str:
        if len(s) > self.max_string:
            self.too_large(len(s))
        return s

    def too_large(self, size) -> None:
        raise LimitError(f"string too large ({size} characters > limit {self.max_string}, "
                         "limits.max_string_size)")

    def array(self, a: list) -> list:
        self.array_size(len(a))
        return a

    def array_size(self, size: int) -> None:
        """An array of ``size`` items is too large: a LimitError (check before building)."""
        if size > self.max_array:
            raise LimitError(f"array too large ({size} items > limit {self.max_array}, "
                             "limits.max_array_size)")

    def map(self, m: dict) -> dict:
        if len(m) > self.max_map:
            raise LimitError(f"map too large ({len(m)} entries > limit {self.max_map}, "
                             "limits.max_map_size)")
        return m

    def from_native(self, value, obj, name: str):
        """``value`` of the property or method ``name`` of a native object, held to the
        limits of values the script builds; too large is a ScriptError the script can
        catch (it did not build it)."""
        t = type(value)
        if t is str:
            if len(value) > self.max_string:
                raise ScriptError(f"{obj.vsl_type}.{name} is {len(value)} characters, more "
                                  f"than limits.max_string_size ({self.max_string})")
        elif (t is list or t is tuple) and len(value) > self.max_array:
            raise ScriptError(f"{obj.vsl_type}.{name} has {len(value)} items, more than "
                              f"limits.max_array_size ({self.max_array})")
        return value

    # -- arithmetic ------------------------------------------------------------
    def add(self, st, a, b):
        """``a + b``; joining strings, arrays or maps is charged by size and checked
        against the limits before anything is built."""
        ta, tb = type(a), type(b)
        if ta is int and tb is int:
            r = a + b
            if I64_MIN <= r <= I64_MAX:
                return r
            _overflow(a, "+", b)
        if ta is str or tb is str:
            if ta is str and tb is str:
                size = len(a) + len(b)
                if size > self.max_string:
                    self.too_large(size)
                st.work(size)
                return a + b
            return self.joined(st, (a, b), "")
        if _both_num(a, b):
            return self._float(a + b)
        if (ta is list or ta is tuple) and (tb is list or tb is tuple):
            self.array_size(len(a) + len(b))
            st.work(len(a) + len(b))
            return [*a, *b]
        if (ta is dict or ta is FrozenMap) and (tb is dict or tb is FrozenMap):
            st.work(len(a) + len(b))
            return self.map({**a, **b})
        _type_error("+", a, b)

    def sub(self, a, b):
        if type(a) is int and type(b) is int:
            r = a - b
            if I64_MIN <= r <= I64_MAX:
                return r
            _overflow(a, "-", b)
        if _both_num(a, b):
            return self._float(a - b)
        _type_error("-", a, b)

    def mul(self, a, b):
        if type(a) is int and type(b) is int:
            r = a * b
            if I64_MIN <= r <= I64_MAX:
                return r
            _overflow(a, "*", b)
        if _both_num(a, b):
            return self._float(a * b)
        _type_error("*", a, b)

    def div(self, a, b):
        if type(a) is int and type(b) is int:
            if b == 0:
                raise ScriptError("division by zero")
            q = abs(a) // abs(b)
            r = q if (a < 0) == (b < 0) else -q
            if r > I64_MAX:
                _overflow(a, "/", b)
            return r
        if _both_num(a, b):
            if b == 0:
                raise ScriptError("division by zero")
            return self._float(a / b)
        _type_error("/", a, b)

    def mod(self, a, b):
        if type(a) is int and type(b) is int:
            if b == 0:
                raise ScriptError("division by zero")
            r = abs(a) % abs(b)
            return -r if a < 0 else r
        if _both_num(a, b):
            if b == 0:
                raise ScriptError("division by zero")
            try:
                return math.fmod(a, b)
            except ValueError:  # inf % b: inf only comes from a host
                raise ScriptError(f"cannot apply '%' to {display(a)} and {display(b)}") from None
        _type_error("%", a, b)

    def pow(self, a, b):
        if type(a) is int and type(b) is int:
            if b < 0:
                raise ScriptError(f"negative exponent: {a} ** {b}")
            if abs(a) > 1 and b > 64:
                _overflow(a, "**", b)
            r = a ** b
            if I64_MIN <= r <= I64_MAX:
                return r
            _overflow(a, "**", b)
        if _both_num(a, b):
            try:
                return self._float(float(a) ** b)
            except (OverflowError, ZeroDivisionError):
                raise ScriptError(f"float overflow: {display(a)} ** {display(b)}") from None
        _type_error("**", a, b)

    @staticmethod
    def _float(r: float) -> float:
        if type(r) is complex or math.isnan(r):
            raise ScriptError("arithmetic result is not a number")
        if math.isinf(r):
            raise ScriptError("float overflow")
        return r

    def neg(self, a):
        if type(a) is int:
            if a == I64_MIN:
                raise ScriptError("integer overflow: -(-9223372036854775808)")
            return -a
        if type(a) is float:
            return -a
        raise ScriptError(f"cannot negate {type_name(a)}")

    def pos(self, a):
        if type(a) is int or type(a) is float:
            return a
        raise ScriptError(f"unary '+' needs a number, not {type_name(a)}")

    # -- logic and comparison ------------------------------------------------
    @staticmethod
    def cond(v):
        if v is True or v is False:
            return v
        raise ScriptError(f"expected a boolean, got {type_name(v)}")

    @staticmethod
    def not_(v):
        if v is True:
            return False
        if v is False:
            return True
        raise ScriptError(f"'!' needs a boolean, not {type_name(v)}")

    @staticmethod
    def eq(st, a, b):
        return equals(a, b, st)

    @staticmethod
    def ne(st, a, b):
        return not equals(a, b, st)

    @staticmethod
    def _ordered(op, a, b):
        ta, tb = type(a), type(b)
        if ta is tb and (ta is int or ta is str or ta is float):
            return True
        if _both_num(a, b):
            return True
        if ta is tb or (ta in (list, tuple) and tb in (list, tuple)):
            raise ScriptError(f"cannot compare {type_name(a)} values with '{op}'")
        return False

    def lt(self, a, b):
        return self._ordered("<", a, b) and a < b

    def le(self, a, b):
        return self._ordered("<=", a, b) and a <= b

    def gt(self, a, b):
        return self._ordered(">", a, b) and a > b

    def ge(self, a, b):
        return self._ordered(">=", a, b) and a >= b

    @staticmethod
    def in_(st, a, b):
        tb = type(b)
        if tb is list or tb is tuple:
            for x in b:
                if x is a or equals(a, x, st):
                    return True
            return False
        if tb is dict or tb is FrozenMap:
            return type(a) is str and a in b
        if tb is str:
            if type(a) is not str:
                raise ScriptError(f"'in' a string needs a string on the left, not {type_name(a)}")
            return a in b
        if tb is range:
            return type(a) is int and a in b
        if isinstance(b, NativeObject) and "contains" in b.vsl_methods:
            fn, _, _ = b.vsl_methods["contains"]
            return fn(b, a)
        raise ScriptError(f"'in' needs an array, map, string or range on the right, "
                          f"not {type_name(b)}")

    @staticmethod
    def range_(a, b):
        if type(a) is int and type(b) is int:
            return range(a, b)
        raise ScriptError(f"a range needs integers, not {type_name(a)} and {type_name(b)}")

    @staticmethod
    def range_incl(a, b):
        if type(a) is int and type(b) is int:
            return range(a, b + 1)
        raise ScriptError(f"a range needs integers, not {type_name(a)} and {type_name(b)}")

    # -- indexing and properties -------------------------------------------
    @staticmethod
    def _position(seq, i, what):
        if type(i) is not int:
            raise ScriptError(f"{what} index must be an integer, not {type_name(i)}")
        n = len(seq)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise ScriptError(f"{what} index {i} out of bounds (length {n})")
        return j

    def index(self, obj, i):
        t = type(obj)
        if t is dict or t is FrozenMap:
            if type(i) is not str:
                raise ScriptError(f"map key must be a string, not {type_name(i)}")
            return obj.get(i)
        if t is list or t is tuple:
            return obj[self._position(obj, i, "array")]
        if t is str:
            return obj[self._position(obj, i, "string")]
        if isinstance(obj, NativeObject) and "get" in obj.vsl_methods:
            return obj.vsl_methods["get"][0](obj, i)
        raise ScriptError(f"cannot index {type_name(obj)}")

    def set_index(self, obj, i, v):
        t = type(obj)
        if t is dict:
            if type(i) is not str:
                raise ScriptError(f"map key must be a string, not {type_name(i)}")
            obj[i] = v
            if len(obj) > self.max_map:
                del obj[i]
                self.map(obj | {i: v})
        elif t is list:
            obj[self._position(obj, i, "array")] = v
        elif t is tuple or t is FrozenMap:
            raise ScriptError(f"cannot modify a constant {type_name(obj)}")
        elif t is str:
            raise ScriptError("strings are immutable; build a new one instead")
        else:
            raise ScriptError(f"cannot assign into {type_name(obj)} by index")

    def getprop(self, obj, name):
        t = type(obj)
        if t is dict or t is FrozenMap:
            return obj.get(name)
        if isinstance(obj, NativeObject):
            return self.from_native(obj.vsl_get(name), obj, name)
        from .methods import has_method
        hint = f"; did you mean '{name}()'?" if has_method(obj, name) else ""
        raise ScriptError(f"{type_name(obj)} has no property '{name}'{hint}")

    def setprop(self, obj, name, v):
        if type(obj) is dict or type(obj) is FrozenMap:
            return self.set_index(obj, name, v)
        raise ScriptError(f"cannot set property '{name}' on {type_name(obj)}")

    # -- strings and iteration -------------------------------------------------
    def template(self, st, *parts):
        """A template's text when a part is not a string or an int (see e_Template)."""
        return self.joined(st, parts, "")

    def joined(self, st, items, sep: str) -> str:
        """Join the text of values: the size limit is checked before the text is built
        (printing stops at the limit) and the work is charged by size."""
        out, size = [], 0
        st.work(len(items))
        for i, item in enumerate(items):
            t = type(item)
            text = item if t is str else str(item) if t is int else \
                display(item, self.max_string - size, st)
            size += len(text) + (len(sep) if i else 0)
            if size > self.max_string:
                self.too_large(f"more than {self.max_string}")
            out.append(text)
        st.work(size)
        return sep.join(out)

    @staticmethod
    def iterate(v):
        t = type(v)
        if t is range or t is tuple:
            return v
        if t is list:
            return tuple(v)
        if t is str:
            return tuple(v)
        if t is dict or t is FrozenMap:
            raise ScriptError("cannot iterate a map directly; use map.keys() or map.values()")
        raise ScriptError(f"cannot iterate over {type_name(v)}")

    @staticmethod
    def call_value(st, depth: int, f, args: tuple):
        """``f.call(*args)`` from code at call depth ``depth`` (at_depth, inlined: one
        Python frame less per closure call)."""
        if type(f) is not Closure:
            raise ScriptError(f"{type_name(f)} is not a function")
        outer, st.depth = st.depth, depth
        try:
            return f.call(*args)
        finally:
            st.depth = outer
