"""The compiler's fast paths: common cases inlined as plain Python, guarded by type tests.

A script operator or method compiles to a call of its checked helper in
:mod:`vsl.ops` (or the method dispatch): correct for every value, but a call.
For the cases policy code hits most (int arithmetic and comparison, a string
compared with a literal, ``x in LIST``, ``ctx.field``, ``map["key"]``,
``arr[i]``, ``map[k] = v``, templates, a few string and array methods, among
them ``split`` of a short string) the compiler emits instead ``fast if <type
tests> else helper(...)``:

- The rule: every fast path equals its helper. For every value that passes the
  tests, the fast expression gives the helper's result, cannot raise, and does
  no work the helper would charge to the budget (``x in arr`` runs inline only
  below the 64 items from which ``_in`` charges); every other value, so every
  error, goes to the helper, given the same temporaries: each operand is
  evaluated once, in order. tests/lang/fast_paths.vsl holds the cases at each
  edge (overflow bounds, sizes, wrong types); a new fast path adds its own.
- Tests are ``x.__class__ is int`` (never isinstance: a bool is not an int, a
  subclass is not its base) and bounds such as ``I64_MIN <= r <= I64_MAX``.
  A fact the resolver proved (an int variable, a literal constant map, a
  parameter never assigned) drops a test or moves it to the function's start;
  so does one inferred (vsl/infer.py: an int variable never below 0 needs only
  its upper i64 bound tested, and so, for ``x - k``, does an int body's
  parameter, an i64, need only its lower one) or tested once (a parameter's
  int flag also bounds it by SMALL, so its sums need no bounds test).
- Generated names are temporaries (``_w``, ``_c``) and the helpers and types the
  engine puts in the module's globals; nothing here is reachable from script text.

``FastPaths`` is a mix-in of the compiler's function body translator
(``compile._Fn``), which supplies ``mc`` (the ModuleCompiler), ``expr``,
``seq``, ``emit``, ``unchanging``, ``binary``, ``budget``, ``charge``,
``walks`` and ``method_budget``.
"""
from __future__ import annotations

import ast as py
import copy

from . import ast as A
from .infer import (NOT_LITERAL, constant_of, is_i64_expr, is_int_expr, literal_value,
                    nonneg_expr)
from .pynodes import py_assign, py_call, py_const, py_dict_get, py_is_type, py_name, py_walrus
from .values import I64_MAX, I64_MIN

_I64_TEXT = len(str(I64_MIN))  # the longest text of an i64
# A parameter's int flag also says |x| <= SMALL (flag_test): then x + y, x - y of two
# such, x + k, x - k (|k| < 2**62) and x * k (|k| <= 3) are i64s, with no bounds test.
SMALL = 2 ** 61
_FLAT_FROM = 16  # a template with more interpolations tests them in one flat tuple
_PY_CMP = {"==": py.Eq, "!=": py.NotEq, "<": py.Lt, "<=": py.LtE, ">": py.Gt, ">=": py.GtE}


def _divisor_past_one(e: A.Binary) -> bool:
    """Whether ``e``'s right operand is an int literal of at least 2."""
    return _int_literal(e.right) and e.right.value >= 2


def _int_literal(e) -> bool:
    return isinstance(e, A.Literal) and type(e.value) is int


def _literal_of(e, kinds) -> bool:
    return isinstance(e, A.Literal) and type(e.value) in kinds


def _py_method(attr: str):
    return lambda w, *args: py_call(py.Attribute(w, attr, py.Load()), *args)


# (method, argument count) -> (receiver type, argument type, fast expression). Generated
# only after the types are checked, so the Python attribute is the one expected.
_INLINE_METHODS = {
    ("len", 0): ("_SIZED", None, lambda w: py_call("_len", w)),
    ("is_empty", 0): ("_SIZED", None,
                      lambda w: py.Compare(py_call("_len", w), [py.Eq()], [py_const(0)])),
    ("starts_with", 1): ("str", "str", _py_method("startswith")),
    ("ends_with", 1): ("str", "str", _py_method("endswith")),
    ("contains", 1): ("str", "str", lambda w, a: py.Compare(a, [py.In()], [w])),
    ("to_lower", 0): ("str", None, _py_method("lower")),
    ("to_upper", 0): ("str", None, _py_method("upper")),
    ("trim", 0): ("str", None, _py_method("strip")),
    ("split", 0): ("str", None, _py_method("split")),
    ("split", 1): ("str", "str", _py_method("split")),
}


_BOOL_METHODS = frozenset({"is_empty", "starts_with", "ends_with", "contains"})
_SIZE_CHECKED = frozenset({"to_lower", "to_upper"})
_UNCHARGED_BELOW = 64  # a string method's receiver from this size is charged (methods._call)


def flag_test(param: str, kind: str) -> py.expr:
    """The test of a parameter's flag (ModuleCompiler.param_flag), once per call:
    ``p.__class__ is T``; for ``small``, an int of at most SMALL either way."""
    if kind != "small":
        return py_is_type(py_name(param), kind)
    return py.BoolOp(py.And(), [py_is_type(py_name(param), "int"), py.Compare(
        py_const(-SMALL), [py.LtE(), py.LtE()], [py_name(param), py_const(SMALL)])])


def every(tests: list[py.expr]) -> py.expr:
    """Whether every test (a bool) is true, evaluating each in order (they assign the
    parts' values): ``t1 & t2 & ...``, or for many parts the flat ``False not in (t1,
    t2, ...)``, as CPython refuses a chain of ``&`` nested a thousand deep."""
    if len(tests) > _FLAT_FROM:
        return py.Compare(py_const(False), [py.NotIn()], [py.Tuple(tests, py.Load())])
    test = tests[0]
    for more in tests[1:]:
        test = py.BinOp(test, py.BitAnd(), more)
    return test


def _text_work(parts: int) -> int:
    """What ``_text`` adds to a template's size: its parts' work and the one of its text
    (Ops.joined charges ``work(parts)`` then ``work(size)``; work(n) counts 1 + n // 64)."""
    return 64 * (parts >> 6) + 64


def _unblock(e):
    """``${ x }``: the expression of a one-expression block (no scope needed)."""
    if isinstance(e, A.Block) and len(e.body) == 1 and isinstance(e.body[0], A.ExprStmt):
        return e.body[0].expr
    return e


class FastPaths:
    """Fast-path translations of expressions; each returns a Python expression, or None
    where only the general translation applies."""

    def truth(self, value: py.expr) -> py.expr:
        """The script truth of a value not known to be a bool (the helper ``_cond`` rejects
        a non-bool). An inlined method whose fast branch is a bool: only the other branch
        is checked."""
        if isinstance(value, py.IfExp) and getattr(value, "vsl_bool", False):
            value.orelse = py_call("_cond", value.orelse)
            return value
        return self.unless_bool(value, True, "_cond")

    def negation(self, operand: py.expr) -> py.expr:
        """``!x`` of a value not known to be a bool (the helper ``_not`` rejects a non-bool)."""
        return self.unless_bool(operand, False, "_not")

    def unless_bool(self, value: py.expr, result: bool, helper: str) -> py.expr:
        """``_w is R or (_w is not (not R) and helper(_w))``: no call for a bool."""
        w = self.mc.tmp("_w")
        return py.BoolOp(py.Or(), [
            py.Compare(py_walrus(w, value), [py.Is()], [py_const(result)]),
            py.BoolOp(py.And(), [py.Compare(py_name(w), [py.IsNot()], [py_const(not result)]),
                                 py_call(helper, py_name(w))])])

    def e_Template(self, e: A.Template) -> py.expr:
        """An f-string when every interpolated value is an int (whose f-string text is the
        script's) or a string of at most its share of max_string_size, so the text never
        grows far past the limit before it is checked; else the ``_tpl`` helper, which
        checks the size before it builds the text and stops printing at the limit. Where
        the shares, after the literal text, leave room for an i64's text, the f-string
        cannot pass the limit: an i64 and a string within its share need no later check."""
        parts = [A.Literal(e.pos, p) if isinstance(p, str) else _unblock(p) for p in e.parts]
        text_only = [isinstance(p, A.Literal) and type(p.value) is str for p in parts]
        share, bounded = self.share(parts, text_only)
        values, tests, args = [], [], []
        compiled = self.seq(parts)
        # parts that are all variables are read where used, their tests joined by ``and``;
        # any other part is kept in a temporary as its test evaluates it (``&``: in order)
        names = all(isinstance(v, py.Name) for v, text in zip(compiled, text_only) if not text)
        for part, value, text in zip(parts, compiled, text_only):
            if text:
                values.append(py_const(part.value))
                args.append(py_const(part.value))
                continue
            if getattr(value, "vsl_size", False):
                ref, test = self.formattable_size(value, share, bounded)
                tests.append(test)
            else:
                ref, first = (value, value) if names else self.kept(value)
                tests.append(self.formattable(ref, first, share, bounded, self.likely_int(part)))
            values.append(py.FormattedValue(ref, -1, None))
            args.append(ref)
        if not tests:  # only literal text: too long is still a run-time error
            text = "".join(v.value for v in values)
            if self.mc.max_string and len(text) > self.mc.max_string:
                return py_call("_too_long", py_const(len(text)))
            return py_const(text)
        test = py.BoolOp(py.And(), tests) if names and len(tests) > 1 else every(tests)
        joined, general = py.JoinedStr(values), py_call("_tpl", self.text_budget(), *args)
        in_place = self.text_in_place(test, joined, len(args), general, bounded, e.pos)
        return in_place or py.IfExp(test, self.charged_text(joined, len(args), bounded),
                                    general)

    def text_in_place(self, test: py.expr, joined: py.JoinedStr, parts: int,
                      general: py.expr, bounded: bool, pos) -> py.Name | None:
        """A template whose text cannot pass max_string_size as statements charging what
        ``_text`` would, without its call (the same count, at the template's position)::

            if test: _s = f"..."; _t.n -= 1 + ((_len(_s) + work) >> 6); if _t.n < 0: ...
            else: _s = _tpl(_t, ...)

        its value the temporary ``_s``; None for any other template."""
        if self.mc.max_string and not bounded:
            return None
        s = self.mc.tmp("_s")
        size = py.BinOp(py_call("_len", py_name(s)), py.Add(), py_const(_text_work(parts)))
        charge = self.charge(py.BinOp(py_const(1), py.Add(),
                                      py.BinOp(size, py.RShift(), py_const(6))))
        self.text_budget()  # (what the charge uses)
        self.emit(py.If(test, [py_assign(s, joined), *charge], [py_assign(s, general)]), pos)
        return py_name(s)

    def text_budget(self) -> py.Name:
        """The budget of a template: its text, and so its work, is bounded by
        max_string_size (printing stops there), so a template alone never sends a
        function off the event loop."""
        return self.budget() if self.mc.max_string else self.walks()

    def charged_text(self, joined: py.JoinedStr, parts: int, bounded: bool) -> py.expr:
        """The f-string ``joined`` of a template of ``parts`` parts, charged as ``_tpl``
        charges it (Ops.joined: ``work(parts)``, then ``work(size)``; only the first when
        the text is too long) by ``_text`` (engine.charged_text). ``bounded``: the text
        cannot pass max_string_size (see share), else its size is checked first."""
        parts_work = _text_work(parts) - 64
        if not self.mc.max_string or bounded:
            return py_call("_text", self.text_budget(), joined, py_const(parts_work + 64))
        r = self.mc.tmp("_w")
        fits = py.Compare(py_call("_len", py_walrus(r, joined)), [py.LtE()],
                          [py_const(self.mc.max_string)])
        too_long = py.BoolOp(py.Or(), [
            py_call(py.Attribute(self.text_budget(), "work", py.Load()), py_const(parts_work)),
            py_call("_too_long", py_call("_len", py_name(r)))])
        return py.IfExp(fits, py_call("_text", self.text_budget(), py_name(r),
                                      py_const(parts_work + 64)), too_long)

    def share(self, parts: list, text_only: list[bool]) -> tuple[int, bool]:
        """(the characters each interpolated value may have in the f-string, whether the
        text is then bounded by max_string_size: whether the shares of the room the literal
        text leaves hold an i64's text)."""
        count = max(text_only.count(False), 1)
        literal = sum(len(p.value) for p, text in zip(parts, text_only) if text)
        share = (self.mc.max_string - literal) // count
        if share >= _I64_TEXT:
            return share, True
        return self.mc.max_string // count, False

    def kept(self, value: py.expr) -> tuple[py.Name, py.NamedExpr]:
        """(a new temporary, the expression evaluating ``value`` into it)."""
        w = self.mc.tmp("_w")
        return py_name(w), py_walrus(w, value)

    def likely_int(self, e) -> bool:
        """Whether a template part is an int, or most likely one (a size): tested first."""
        return self.known_int(e) or (isinstance(e, A.MethodCall) and e.name == "len")

    def formattable_size(self, value: py.IfExp, share: int,
                         bounded: bool) -> tuple[py.Name, py.expr]:
        """(a new temporary, the test evaluating into it) for an inlined ``x.len()``: its
        fast branch gives an int below 2**63, which goes into the f-string untested; only
        the other branch's value is tested (formattable)."""
        w = self.mc.tmp("_w")
        size = py.Compare(py_walrus(w, value.body), [py.Is()], [py_name(w)])  # (true)
        other = self.formattable(py_name(w), py_walrus(w, value.orelse), share, bounded, True)
        return py_name(w), py.IfExp(value.test, size, other)

    def formattable(self, ref: py.expr, first: py.expr, share: int, bounded: bool,
                    int_first: bool) -> py.expr:
        """Whether a value (evaluated by ``first``, then read as ``ref``) goes into the
        f-string: a string of at most ``share`` characters (any string when there is no
        size limit) or an int (an i64 when ``bounded``: a host's larger int has a longer
        text); ``int_first``: the int test goes first."""
        cls = py.Attribute(first, "__class__", py.Load())
        if not share:
            return py.Compare(cls, [py.In()], [py_name("_FMT")])
        c = self.mc.tmp("_c")
        more = {"str": [py.Compare(py_call("_len", ref), [py.LtE()], [py_const(share)])],
                "int": [py.Compare(py_const(I64_MIN), [py.LtE(), py.LtE()],
                                   [ref, py_const(I64_MAX)])] if bounded else []}

        def kind_test(kind: str, cls_: py.expr) -> py.expr:
            test = py.Compare(cls_, [py.Is()], [py_name(kind)])
            return py.BoolOp(py.And(), [test, *more[kind]]) if more[kind] else test
        first_kind, then_kind = ("int", "str") if int_first else ("str", "int")
        return py.BoolOp(py.Or(), [kind_test(first_kind, py_walrus(c, cls)),
                                   kind_test(then_kind, py_name(c))])

    def literal_in(self, e: A.Binary, left: py.expr, right: py.expr) -> py.expr | None:
        """``x in ["a", "b"]`` or ``x in global::LIST`` (a literal constant) of fewer than
        64 strings is Python's ``in`` for any x (a string's == is the script's); ``x in
        global::MAP`` of a constant_map() is ``x.__class__ is str and x in MAP``."""
        value = literal_value(e.right)
        if value is NOT_LITERAL:
            value = constant_of(e.right, self.mc.res.literal_constants)
        negate = e.op == "!in"
        if type(value) is tuple and len(value) < 64 and all(type(v) is str for v in value):
            return py.Compare(left, [py.NotIn() if negate else py.In()], [right])
        if self.constant_map(e.right) is not None:  # (a plain read: safe to skip)
            w = self.mc.tmp("_w")
            found = py.BoolOp(py.And(), [py_is_type(py_walrus(w, left), "str"),
                                         py.Compare(py_name(w), [py.In()], [right])])
            return py.UnaryOp(py.Not(), found) if negate else found
        return None

    def fast_in(self, op: str, left: py.expr, right: py.expr, frozen: bool) -> py.expr:
        """A string in a small array, a map or a string is Python's ``in`` (Python's ``==``
        is the script's for a string needle); the helper does the rest and charges work.
        ``frozen``: the container is a constant (a tuple or a FrozenMap)."""
        a, b = self.mc.tmp("_w"), self.mc.tmp("_w")
        kinds = ["tuple", "_FMAP"] if frozen else ["list", "dict", "str", "tuple", "_FMAP"]
        types = py.BinOp(py_is_type(py_walrus(a, left), "str"), py.BitAnd(),
                         self.class_in(py_walrus(b, right), kinds))
        small = py.Compare(py_call("_len", py_name(b)), [py.Lt()], [py_const(64)])
        fast = py.Compare(py_name(a), [py.In() if op == "in" else py.NotIn()], [py_name(b)])
        return py.IfExp(py.BoolOp(py.And(), [types, small]), fast,
                        self.binary(op, py_name(a), py_name(b)))

    def class_in(self, value: py.expr, kinds: list[str]) -> py.expr:
        """``value.__class__ is A`` or ``(_c := value.__class__) is A or _c is B ...``
        (a chain of ``is`` is faster than ``in`` a frozenset)."""
        if len(kinds) == 1:
            return py_is_type(value, kinds[0])
        c = self.mc.tmp("_c")
        cls = py.Attribute(value, "__class__", py.Load())
        tests = [py.Compare(py_walrus(c, cls), [py.Is()], [py_name(kinds[0])])]
        tests += [py.Compare(py_name(c), [py.Is()], [py_name(k)]) for k in kinds[1:]]
        return py.BoolOp(py.Or(), tests)

    def nonneg(self, e) -> bool:
        """Whether ``e`` is an int >= 0 whenever it evaluates (infer.nonneg_expr: a literal,
        a variable never below 0, sums, products, ``/`` or ``%`` a positive literal)."""
        return nonneg_expr(e, self.mc.res.names, self.mc.nonneg_vars)

    def known_i64(self, e) -> bool:
        """Whether ``e`` is an int within the i64 bounds whenever it evaluates (infer.
        is_i64_expr: arithmetic, checked for overflow, or a parameter of an int body)."""
        res = self.mc.res
        return is_i64_expr(e, res.names, res.int_vars, res.literal_constants, self.mc.i64_vars)

    def known_int(self, e) -> bool:
        res = self.mc.res
        return is_int_expr(e, res.names, res.int_vars, res.literal_constants, self.mc.int_call)

    def fast_binary(self, e: A.Binary, left: py.expr, right: py.expr) -> py.expr | None:
        """Inline the common int/str cases; the helper handles everything else."""
        left_int, right_int = self.known_int(e.left), self.known_int(e.right)
        if e.op in ("==", "!=") and (_literal_of(e.right, (str,)) or
                                     _literal_of(e.left, (str,))):
            # Python's == with a string is the script's for any value (NativeObject.__eq__)
            return py.Compare(left, [_PY_CMP[e.op]()], [right])
        if e.op in ("/", "%") and self.nonneg(e) and (e.op == "%" or _divisor_past_one(e)):
            # cannot fail: Python's // and % as they are (x / 1 is x, which may be past
            # I64_MAX: a range's variable, from a host's bounds)
            return py.BinOp(left, py.FloorDiv() if e.op == "/" else py.Mod(), right)
        if e.op in ("+", "-", "*", "/", "%") and _int_literal(e.right):
            return self.fast_int_arith(e.op, left, e.right.value, left_int, self.nonneg(e.left),
                                       self.known_i64(e.left))
        if e.op in ("+", "-") and left_int and right_int:
            return self.known_int_sum(e.op, left, right, self.nonneg(e.left),
                                      self.nonneg(e.right))
        if e.op in _PY_CMP or e.op in ("+", "-"):
            return self.fast_int_pair(e.op, (left, left_int), (right, right_int))
        return None

    def known_int_sum(self, op: str, left: py.expr, right: py.expr, left_nonneg: bool,
                      right_nonneg: bool) -> py.expr:
        """``a + b`` or ``a - b`` of two known ints, each evaluated where first used: the
        result tested against the i64 bounds (only the upper one for a sum of two ints
        >= 0); the helper reports an overflow. (An int >= 0 may still be past I64_MAX: a
        range's variable, from a host's bounds.)"""
        (a, a_first), (b, b_first) = self.named(left), self.named(right)
        pyop = py.Add() if op == "+" else py.Sub()
        r = self.mc.tmp("_w")
        result = py_walrus(r, py.BinOp(a_first, pyop, b_first))
        if left_nonneg and right_nonneg and op == "+":
            in_range = py.Compare(result, [py.LtE()], [py_const(I64_MAX)])
        else:
            in_range = py.Compare(py_const(I64_MIN), [py.LtE(), py.LtE()],
                                  [result, py_const(I64_MAX)])
        return py.IfExp(in_range, py_name(r), self.int_binary(op, a, b))

    def int_operand(self, operand: py.expr, known: bool) -> tuple[py.expr, list, bool]:
        """The operand to use, the type tests it needs (none for a known-int name) and
        whether they also bound it by SMALL (a parameter's flag: see flag_test)."""
        if known and isinstance(operand, (py.Name, py.Constant)):
            return operand, [], False
        flag = self.mc.param_flag(operand, "small")
        if flag is not None:
            return operand, [flag], True
        w = self.mc.tmp("_w")
        return py_name(w), [py_is_type(py_walrus(w, operand), "int")], False

    def named(self, operand: py.expr) -> tuple[py.expr, py.expr]:
        """(the operand's value for later uses, the expression that evaluates it first)."""
        if isinstance(operand, (py.Name, py.Constant)):
            return operand, operand
        w = self.mc.tmp("_w")
        return py_name(w), py_walrus(w, operand)

    def fast_int_pair(self, op: str, left, right) -> py.expr:
        """Two ints: compare or add/subtract inline. Operands are evaluated once, in order
        (the non-short-circuit ``&``); those known to be ints are not tested."""
        if left[1] and right[1] and op in _PY_CMP:  # both known: no tests
            return py.Compare(left[0], [_PY_CMP[op]()], [right[0]])
        a, tests, a_small = self.int_operand(*left)
        b, more, b_small = self.int_operand(*right)
        tests += more
        slow = self.binary(op, a, b)
        if op in _PY_CMP:
            fast = py.Compare(a, [_PY_CMP[op]()], [b])
            if not tests:
                return fast
            test = tests[0] if len(tests) == 1 else py.BinOp(tests[0], py.BitAnd(), tests[1])
            return py.IfExp(test, fast, slow)
        r = self.mc.tmp("_w")
        pyop = py.Add() if op == "+" else py.Sub()
        if a_small and b_small:  # two ints of at most SMALL: the result is an i64
            return py.IfExp(py.BinOp(tests[0], py.BitAnd(), tests[1]), py.BinOp(a, pyop, b), slow)
        in_range = py.Compare(py_const(I64_MIN), [py.LtE(), py.LtE()],
                              [py_walrus(r, py.BinOp(a, pyop, b)), py_const(I64_MAX)])
        if len(tests) == 2:
            tests = [py.BinOp(tests[0], py.BitAnd(), tests[1])]
        test = py.BoolOp(py.And(), [*tests, in_range]) if tests else in_range
        return py.IfExp(test, py_name(r), slow)

    def fast_int_arith(self, op: str, left: py.expr, k: int, known: bool,
                       nonneg: bool, i64: bool = False) -> py.expr | None:
        """``x + 3`` without a helper call when x is an int and the result cannot overflow
        (x known to be an int: not tested; known to be >= 0: only against its upper bound,
        as lo <= 0 here; known to be an i64: only against the bound past which it may be)."""
        if op in ("/", "%"):  # Python's // and % agree with Rust's on x >= 0, k > 0
            if k <= 0:
                return None
            lo, hi = 0, I64_MAX
        elif op == "*":
            if k == 0:
                return None
            bound = I64_MAX // abs(k)
            lo, hi = -bound, bound
        elif (op == "+") == (k >= 0):
            lo, hi = I64_MIN, I64_MAX - abs(k)
        else:
            lo, hi = I64_MIN + abs(k), I64_MAX
        pyop = {"+": py.Add, "-": py.Sub, "*": py.Mult, "/": py.FloorDiv, "%": py.Mod}[op]()
        if known:  # no type test: evaluated in the bounds test (or the operation)
            w, first = self.named(left)
            low = not nonneg and (lo > I64_MIN or not i64)  # whether x >= lo is tested
            high = hi < I64_MAX or not i64
            if not (low or high):
                return py.BinOp(first, pyop, py_const(k))
            bounds = py.Compare(py_const(lo), [py.LtE()], [first]) if not high else \
                py.Compare(first, [py.LtE()], [py_const(hi)]) if not low else \
                py.Compare(py_const(lo), [py.LtE(), py.LtE()], [first, py_const(hi)])
            return py.IfExp(bounds, py.BinOp(w, pyop, py_const(k)),
                            self.int_binary(op, w, py_const(k)))
        w, tests, small = self.int_operand(left, known)
        in_range = small and lo <= -SMALL and SMALL <= hi  # the flag bounds x
        bounds = [] if (lo, hi) == (I64_MIN, I64_MAX) or in_range else \
            [py.Compare(py_const(lo), [py.LtE(), py.LtE()], [w, py_const(hi)])]
        fast = py.BinOp(w, pyop, py_const(k))
        test = tests + bounds
        if not test:
            return fast
        return py.IfExp(test[0] if len(test) == 1 else py.BoolOp(py.And(), test), fast,
                        self.binary(op, w, py_const(k)))

    def map_get(self, obj: py.expr, key: str, helper: str, frozen: bool) -> py.expr:
        """``obj.get(key)`` when obj is a map (a constant's FrozenMap when ``frozen``),
        else the checked helper. A parameter that is never assigned is tested once, when
        the function starts (``_k0 = v_ctx.__class__ is dict``); a variable only ever
        given a map literal is not tested."""
        if self.literal_container(obj, A.MapLit):
            return py_dict_get(obj, py_const(key))
        flag = self.mc.param_flag(obj, "dict")
        if flag is not None:
            get = py_dict_get(py_name(obj.id), py_const(key))
            return py.IfExp(flag, get, py_call(helper, py_name(obj.id), py_const(key)))
        w = self.mc.tmp("_w")
        get = py_dict_get(py_name(w), py_const(key))
        return py.IfExp(py_is_type(py_walrus(w, obj), "_FMAP" if frozen else "dict"), get,
                        py_call(helper, py_name(w), py_const(key)))

    def constant_map(self, e) -> dict | None:
        """The value of ``e`` if it is a literal constant map read as a plain global."""
        value = constant_of(e, self.mc.res.literal_constants)
        return value if type(value) is dict and self.mc.res.constants_first else None

    def constant_map_get(self, e: A.Index, *default: py.expr) -> py.expr:
        """``global::MAP[key]`` of a constant_map(): ``MAP.get(key[, default])`` for a
        string key; the helper reports the error for any other key."""
        obj, index = self.seq([e.obj, e.index])
        if isinstance(index, py.Constant) and type(index.value) is str:
            return py_dict_get(obj, index, *default)
        i = self.mc.tmp("_w")
        get = py_dict_get(obj, py_name(i), *default)
        return py.IfExp(py_is_type(py_walrus(i, index), "str"), get,
                        py_call("_idx", obj, py_name(i)))

    def e_Index(self, e: A.Index) -> py.expr:
        if self.constant_map(e.obj) is not None:
            return self.constant_map_get(e)
        if _literal_of(e.index, (str,)):
            return self.map_get(self.expr(e.obj), e.index.value, "_idx",
                                isinstance(e.obj, A.NsVar))
        obj, index = self.seq([e.obj, e.index])
        if self.known_int(e.index):
            return self.int_index(obj, index, isinstance(e.obj, A.NsVar), self.nonneg(e.index))
        i = self.mc.tmp("_w")
        if self.literal_container(obj, A.MapLit):
            return py.IfExp(py_is_type(py_walrus(i, index), "str"), py_dict_get(obj, py_name(i)),
                            py_call("_idx", obj, py_name(i)))
        # a map and a string key: get(); an array and an int in range: [i]
        frozen = isinstance(e.obj, A.NsVar)
        flag = None if frozen else self.mc.param_flag(obj, "dict")
        if flag is not None:  # a parameter never assigned, tested when the function starts
            o = obj
            is_map = flag
        else:
            o, first = self.kept(obj)
            is_map = py_is_type(first, "_FMAP" if frozen else "dict")
        in_map = py.BinOp(is_map, py.BitAnd(), py_is_type(py_walrus(i, index), "str"))
        size = py_call("_len", o)
        in_seq = py.BoolOp(py.And(), [
            self.class_in(o, ["tuple"] if frozen else ["list", "tuple"]),
            py_is_type(py_name(i), "int"),
            py.Compare(py.UnaryOp(py.USub(), size), [py.LtE(), py.Lt()],
                       [py_name(i), copy.deepcopy(size)])])
        get = py_dict_get(o, py_name(i))
        item = py.Subscript(o, py_name(i), py.Load())
        return py.IfExp(in_map, get, py.IfExp(in_seq, item, py_call("_idx", o, py_name(i))))

    def int_index(self, obj: py.expr, index: py.expr, frozen: bool, nonneg: bool) -> py.expr:
        """``arr[i]`` of an index known to be an int: ``o[i]`` for an array and ``0 <= i <
        len`` (``i < len`` when ``nonneg``), else the helper (a negative index, a map, an
        error). The array's test goes first, then the index is evaluated (``&``: whatever
        the test gave); a variable only ever given an array literal is not tested."""
        if isinstance(index, py.Constant) and index.value < 0:
            return py_call("_idx", obj, index)
        i, first = self.named(index)
        if self.literal_container(obj, A.ArrayLit):
            o = obj
            test = self.index_in_range(first, py_call("_len", o), nonneg)
        else:
            o, first_o = self.kept(obj)
            is_seq = self.class_in(first_o, ["tuple"] if frozen else ["list", "tuple"])
            size = py_call("_len", o)
            if first is i:  # a name or a constant: read after the array's test
                test = py.BoolOp(py.And(), [is_seq, self.index_in_range(i, size, nonneg)])
            else:
                evaluated = py.BinOp(is_seq, py.BitAnd(),
                                     py.Compare(py_const(0), [py.LtE()], [first]))
                test = py.BoolOp(py.And(), [evaluated, py.Compare(i, [py.Lt()], [size])])
        return py.IfExp(test, py.Subscript(o, i, py.Load()), py_call("_idx", o, i))

    @staticmethod
    def index_in_range(first: py.expr, size: py.expr, nonneg: bool) -> py.expr:
        """``first < size`` for an index >= 0 (``nonneg`` or a constant), else ``0 <= first
        < size``."""
        if nonneg or isinstance(first, py.Constant):
            return py.Compare(first, [py.Lt()], [size])
        return py.Compare(py_const(0), [py.LtE(), py.Lt()], [first, size])

    def inline_method(self, name: str, obj: py.expr, args: list[py.expr]) -> py.expr | None:
        """A few hot methods run inline when the receiver (and argument) have the expected
        Python type; the generic dispatch handles everything else, errors included."""
        if name == "push" and len(args) == 1:
            return self.inline_push(obj, args[0])
        shape = _INLINE_METHODS.get((name, len(args)))
        if shape is None or (name == "split" and not self.splits_inline(args)):
            return None
        receiver_type, arg_type, make = shape
        w = self.mc.tmp("_w")
        tests = [py.Compare(py.Attribute(py_walrus(w, obj), "__class__", py.Load()),
                            [py.In() if receiver_type.startswith("_") else py.Is()],
                            [py_name(receiver_type)])]
        names = []
        for arg in args:
            if isinstance(arg, py.Constant) and type(arg.value).__name__ == arg_type:
                names.append(arg)
                continue
            a = self.mc.tmp("_w")
            names.append(py_name(a))
            tests.append(py_is_type(py_walrus(a, arg), arg_type))
        test = tests[0] if len(tests) == 1 else py.BinOp(tests[0], py.BitAnd(), tests[1])
        size = self.size_guard(name, py_name(w))
        if size is not None:
            test = py.BoolOp(py.And(), [test, size])
        slow = py_call("_meth", self.method_budget(name), py_name(w), py_const(name),
                     py.Tuple(names, py.Load()))
        node = py.IfExp(test, make(py_name(w), *names), slow)
        node.vsl_bool = name in _BOOL_METHODS  # the fast branch is a bool
        node.vsl_size = name == "len"  # ... a size (see formattable_size)
        return node

    def splits_inline(self, args: list[py.expr]) -> bool:
        """Whether ``s.split(...)`` may run inline: on whitespace or a literal separator
        (not empty: the helper splits that into characters), where the parts of a string
        below the charged size (at most one more than its length) fit max_array_size."""
        literal = not args or (isinstance(args[0], py.Constant) and args[0].value)
        return bool(literal) and self.mc.max_array > _UNCHARGED_BELOW

    def size_guard(self, name: str, w: py.Name) -> py.expr | None:
        """The bound on the receiver of an inlined method, if it has one: to_lower() and
        to_upper() may grow a string up to 3x; split() is charged from 64 characters."""
        if name in _SIZE_CHECKED and self.mc.max_string:
            return py.Compare(py_call("_len", w), [py.LtE()],
                              [py_const(self.mc.max_string // 3)])
        if name == "split":
            return py.Compare(py_call("_len", w), [py.Lt()], [py_const(_UNCHARGED_BELOW)])
        return None

    def inline_push(self, obj: py.expr, arg: py.expr) -> py.expr:
        """``a.push(x)`` on a mutable array below the size limit is ``list.append`` (a
        variable only ever given an array literal is not tested for the type). The array,
        then the argument are evaluated before the size is tested (the argument may push
        to the array); an argument that is not a name or a constant is kept in a
        temporary, read by both branches (never copied into them: nested pushes would
        double the code per level)."""
        literal = self.literal_container(obj, A.ArrayLit)
        w, first = (obj, obj) if literal else self.kept(obj)
        evaluated = []
        if not literal:
            evaluated.append(py_is_type(first, "list"))
        arg, first_arg = self.named(arg)
        if first_arg is not arg:
            evaluated.append(py.Compare(first_arg, [py.Is()], [arg]))  # always true
        below = py.Compare(py_call("_len", w), [py.Lt()], [py_const(self.mc.max_array)])
        test = below if not evaluated else py.BoolOp(py.And(), [
            evaluated[0] if len(evaluated) == 1 else
            py.BinOp(evaluated[0], py.BitAnd(), evaluated[1]), below])
        fast = py_call(py.Attribute(w, "append", py.Load()), arg)
        slow = py_call("_meth", self.budget(), w, py_const("push"), py.Tuple([arg], py.Load()))
        return py.IfExp(test, fast, slow)

    def set_item(self, obj: py.expr, key: py.expr, value: py.expr, helper: str) -> list[py.stmt]:
        """``m[k] = v`` (or ``m.k = v``): the three values evaluated in order (a script
        variable read before ``v`` is kept in a temporary), then
        ``m[k] = v`` for a mutable map, a string key and a map below max_map_size or
        already holding the key; the helper (``_setidx``, ``_setprop``) does the rest."""
        spilled, names = [], []
        parts = (obj, key, value)
        for i, part in enumerate(parts):
            # a variable may be read late when the parts after it only read (a call there
            # could assign it); a temporary is never reassigned
            later_plain = all(isinstance(p, (py.Constant, py.Name)) for p in parts[i + 1:])
            if self.unchanging(part) or isinstance(part, py.Name) and (
                    later_plain or part.id.startswith("_")):
                names.append(part)
                continue
            w = self.mc.tmp("_w")
            spilled.append(py_assign(w, part))
            names.append(py_name(w))
        o, k, v = names
        fits = py.BoolOp(py.Or(), [py.Compare(k, [py.In()], [o]), py.Compare(
            py_call("_len", o), [py.Lt()], [py_name("_MAX_MAP")])])
        tests = [] if self.literal_container(o, A.MapLit) else \
            [self.mc.param_flag(o, "dict") or py_is_type(o, "dict")]
        if not (isinstance(k, py.Constant) and type(k.value) is str):
            tests.append(py_is_type(k, "str"))
        store = py.Assign([py.Subscript(o, k, py.Store())], v)
        test = py.BoolOp(py.And(), [*tests, fits]) if tests else fits
        return [*spilled, py.If(test, [store], [py.Expr(py_call(helper, o, k, v))])]

    def literal_container(self, value: py.expr, literal: type) -> bool:
        """Whether ``value`` reads a variable (not a constant) only ever given one
        ``literal`` (an A.ArrayLit or an A.MapLit): a mutable array or map, whatever the
        script did with it."""
        if not isinstance(value, py.Name) or value.id in self.mc.frozen_vars:
            return False
        sources = self.mc.res.sources.get(value.id, ())
        return len(sources) == 1 and isinstance(sources[0], literal)

    def constant_map_default(self, e: A.Binary) -> py.expr | None:
        """``global::MAP[k] ?? 5`` of a constant_map() without None values: one get()."""
        if isinstance(e.left, A.Index) and _literal_of(e.right, (str, int, float, bool)):
            values = self.constant_map(e.left.obj)
            if values is not None and all(v is not None for v in values.values()):
                return self.constant_map_get(e.left, py_const(e.right.value))
        return None
