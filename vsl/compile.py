"""Compile a resolved module to Python code, once, at load time.

Each script function becomes one Python function (``async def`` when it
waits on I/O); statements map to Python statements and every operator to a
checked helper from :mod:`vsl.ops`. Generated nodes carry the script's
line:col, so a runtime error is located from the Python traceback alone.
Script names are mangled (``v_x``) and the code runs with empty builtins:
no Python name, attribute or import is reachable from script text.
"""
from __future__ import annotations

import ast as py
import copy
import itertools

from . import ast as A
from .infer import NOT_LITERAL, constant_of, is_int_expr, literal_value
from .methods import WALKING_METHODS
from .resolve import BuiltinMethod, ModuleFn, NativeFn, Resolution, ScriptFn, ValueCall

_BINARY_HELPERS = {"+": "_add", "-": "_sub", "*": "_mul", "/": "_div", "%": "_mod", "**": "_pow",
                   "==": "_eq", "!=": "_ne", "<": "_lt", "<=": "_le", ">": "_gt", ">=": "_ge",
                   "in": "_in", "!in": "_notin", "..": "_range", "..=": "_rangei"}
_ASSIGN_HELPERS = {"+=": "_add", "-=": "_sub", "*=": "_mul", "/=": "_div", "%=": "_mod",
                   "**=": "_pow"}
_BOOL_OPS = {"==", "!=", "<", "<=", ">", ">=", "in", "!in", "&&", "||"}
# Helpers whose work can grow with their operands' size: they are passed the budget.
_CHARGED = {"+", "==", "!=", "in", "!in", "+="}


def script_fn_name(name: str, arity: int) -> str:
    return f"f_{name}_{arity}"


def native_name(ns: str, name: str) -> str:
    """The Python global of a native; the length of ``ns`` keeps it injective."""
    return f"n_{len(ns)}_{ns}_{name}"


def constant_name(ns: str, name: str) -> str:
    """The Python global holding a constant: ``global::X`` or ``alias::X``."""
    return f"g_{name}" if ns == "global" else f"mg_{len(ns)}_{ns}_{name}"


def entry_fn_name(name: str, arity: int) -> str:
    """The entry point of a one-argument script function (see ModuleCompiler.entry)."""
    return f"e_{name}_{arity}"


_PROLOGUE = 3  # statements: the depth guard and the operation count
_FLAT_FROM = 16  # a template with more interpolations tests them in one flat tuple


def module_fn_name(alias: str, name: str, arity: int) -> str:
    """The Python global of ``alias::name`` (injective, as constant_name)."""
    return f"m_{len(alias)}_{alias}_{name}_{arity}"


def _name(id_: str, store: bool = False) -> py.Name:
    return py.Name(id_, py.Store() if store else py.Load())


def _call(fn: str | py.expr, *args: py.expr) -> py.Call:
    func = _name(fn) if isinstance(fn, str) else fn
    return py.Call(func, list(args), [])


def _dict_get(obj: py.expr, *args: py.expr) -> py.Call:
    """``obj.get(*args)``: generated only where ``obj`` is known to be a dict."""
    return _call(py.Attribute(obj, "get", py.Load()), *args)


def _const(v) -> py.Constant:
    return py.Constant(v)


def _assign(target: str, value: py.expr) -> py.Assign:
    return py.Assign([_name(target, store=True)], value)


def _tick() -> list[py.stmt]:
    """``_t.n -= 1; if _t.n < 0: _t.slow()`` -- counts one operation."""
    counter = py.Attribute(_name("_t"), "n", py.Store())
    return [py.AugAssign(counter, py.Sub(), _const(1)),
            py.If(py.Compare(py.Attribute(_name("_t"), "n", py.Load()), [py.Lt()], [_const(0)]),
                  [py.Expr(_call(py.Attribute(_name("_t"), "slow", py.Load())))], [])]


def _located(nodes, pos: A.Loc):
    """Give every node without a position the script position ``pos``. A node that has
    one was located with everything below it, so the walk stops there: each node is
    visited about once however deep the code nests."""
    def place(node) -> bool:
        """Give ``node`` the position if it has none; whether it had one."""
        if getattr(node, "lineno", None) is not None:
            return True
        node.lineno, node.end_lineno = pos[0], pos[0]
        node.col_offset, node.end_col_offset = pos[1] - 1, pos[1]
        return False

    todo = list(nodes) if isinstance(nodes, list) else [nodes]
    for node in todo:
        if "lineno" in node._attributes:
            place(node)
    while todo:
        node = todo.pop()
        for field in node._fields:
            value = getattr(node, field, None)
            for child in value if isinstance(value, list) else (value,):
                if not isinstance(child, py.AST):
                    continue
                if "lineno" in child._attributes:
                    if place(child):
                        continue  # located, with everything below it
                elif not child._fields:
                    continue  # Load, Add, ...: nothing below
                todo.append(child)
    return nodes


class _Fn:
    """Compiles the body of one Python function (script fn, top level or closure)."""

    def __init__(self, mc: "ModuleCompiler", is_async: bool, kind: str):
        self.mc = mc
        self.is_async = is_async
        self.kind = kind  # "fn" | "top" | "closure"
        self.out: list[py.stmt] = []
        self.depth = 0  # block nesting, for top-level constants

    # -- helpers ---------------------------------------------------------
    def emit(self, stmts, pos: A.Loc) -> None:
        if not isinstance(stmts, list):
            stmts = [stmts]
        self.out.extend(_located(stmts, pos))

    def tmp(self) -> str:
        return self.mc.tmp()

    def budget(self) -> py.Name:
        """The call's budget ``_t`` (an entry point makes it only when used: see entry)."""
        self.mc.uses.add("budget")
        return _name("_t")

    def tick(self) -> list[py.stmt]:
        self.mc.uses.add("tick")
        return _tick()

    def walks(self) -> py.Name:
        """The budget, for a step whose work grows with a value's size (the function then
        may run long: see ModuleCompiler.quick)."""
        self.mc.uses.add("walks")
        return self.budget()

    def binary(self, op: str, *args: py.expr) -> py.Call:
        """A call of the helper of ``op`` (or ``op=``), with the budget if it is charged
        (with a number operand it walks nothing: ``x + 1``, ``x == 0``)."""
        helper = _BINARY_HELPERS.get(op) or _ASSIGN_HELPERS[op]
        if op not in _CHARGED:
            return _call(helper, *args)
        number = any(isinstance(a, py.Constant) and type(a.value) in (int, float) for a in args)
        return _call(helper, self.budget() if number else self.walks(), *args)

    def wait(self, call: py.expr) -> py.expr:
        return py.Await(call)

    def capture(self, fn) -> list[py.stmt]:
        """Run ``fn`` with a fresh statement buffer and return what it emitted."""
        saved, self.out = self.out, []
        try:
            fn()
            return self.out
        finally:
            self.out = saved

    def names(self, node, slot: str) -> str:
        return self.mc.res.names[(id(node), slot)]

    # -- blocks and statements --------------------------------------------
    def body(self, stmts, sink, pos: A.Loc) -> None:
        """Compile statements; the last one's value goes to ``sink``."""
        if not stmts:
            self.sink(sink, _const(None), pos)
            return
        for s in stmts[:-1]:
            self.stmt(s)
        self.last(stmts[-1], sink)

    def sink(self, sink, value: py.expr, pos: A.Loc) -> None:
        if sink is None:
            if not isinstance(value, (py.Constant, py.Name)):
                self.emit(py.Expr(value), pos)
        elif sink == "return":
            self.emit(py.Return(value), pos)
        else:
            self.emit(_assign(sink, value), pos)

    def last(self, s, sink) -> None:
        if sink is None:
            self.stmt(s)
        elif isinstance(s, A.ExprStmt):
            if isinstance(s.expr, (A.If, A.Switch, A.Block)):
                self.valued(s.expr, sink)
            else:
                self.sink(sink, self.expr(s.expr), s.pos)
        elif isinstance(s, (A.Return, A.Throw, A.Break, A.Continue)):
            self.stmt(s)
        else:
            self.stmt(s)
            self.sink(sink, _const(None), s.pos)

    def block(self, block: A.Block, sink) -> None:
        self.depth += 1
        self.body(block.body, sink, block.pos)
        self.depth -= 1

    def nested(self, fn) -> list[py.stmt]:
        """Statements for a Python suite (if/loop body); never empty."""
        stmts = self.capture(fn)
        return stmts or [py.Pass()]

    def valued(self, e, sink) -> None:
        """Compile an if/switch/block expression, sending its value to ``sink``."""
        if isinstance(e, A.Block):
            self.block(e, sink)
        elif isinstance(e, A.If):
            self.if_chain(list(e.branches), e.orelse, sink, e.pos)
        else:
            self.switch(e, sink)

    def if_chain(self, branches, orelse, sink, pos) -> None:
        (cond, body), rest = branches[0], branches[1:]
        test = self.condition(cond)
        then = self.nested(lambda: self.block(body, sink))
        if rest:
            other = self.nested(lambda: self.if_chain(rest, orelse, sink, pos))
        elif orelse is not None:
            other = self.nested(lambda: self.block(orelse, sink))
        elif sink is not None:
            other = self.nested(lambda: self.sink(sink, _const(None), pos))
        else:
            other = []
        self.emit(py.If(test, then, other), cond.pos)

    def switch(self, e: A.Switch, sink) -> None:
        subject, done = self.tmp(), self.tmp()
        self.emit([_assign(subject, self.expr(e.subject)), _assign(done, _const(False))], e.pos)
        has_default = False
        for arm in e.arms:
            tests = [py.UnaryOp(py.Not(), _name(done))]
            if A.WILDCARD in arm.patterns:
                has_default = has_default or arm.guard is None
            else:
                matches = [_call("_eqv", _name(subject), _const(p)) for p in arm.patterns]
                tests.append(matches[0] if len(matches) == 1 else py.BoolOp(py.Or(), matches))

            def arm_body(arm=arm):
                def taken():
                    self.emit(_assign(done, _const(True)), arm.pos)
                    if isinstance(arm.body, (A.If, A.Switch, A.Block)):
                        self.valued(arm.body, sink)
                    else:
                        self.sink(sink, self.expr(arm.body), arm.pos)
                if arm.guard is None:
                    taken()
                else:
                    guard = self.condition(arm.guard)
                    self.emit(py.If(guard, self.nested(taken), []), arm.guard.pos)

            self.emit(py.If(py.BoolOp(py.And(), tests) if len(tests) > 1 else tests[0],
                            self.nested(arm_body), []), arm.pos)
        if sink is not None and not has_default:
            self.emit(py.If(py.UnaryOp(py.Not(), _name(done)),
                            self.nested(lambda: self.sink(sink, _const(None), e.pos)), []), e.pos)

    def stmt(self, s) -> None:
        getattr(self, "s_" + type(s).__name__)(s)

    def s_ExprStmt(self, s: A.ExprStmt) -> None:
        if isinstance(s.expr, (A.If, A.Switch, A.Block)):
            self.valued(s.expr, None)
        else:
            self.sink(None, self.expr(s.expr), s.pos)

    def s_Let(self, s: A.Let) -> None:
        target = self.names(s, "name")
        value = self.expr(s.value) if s.value is not None else _const(None)
        if s.const:  # freezing walks the value (a literal is frozen as it is)
            budget = self.budget() if isinstance(value, py.Constant) else self.walks()
            value = _call("_freeze", value, budget)
        self.emit(_assign(target, value), s.pos)
        if s.const and self.kind == "top" and self.depth == 0:
            store = py.Subscript(_name("_G"), _const(s.name), py.Store())
            name = constant_name("global", s.name)
            self.mc.top_globals.add(name)
            self.emit(py.Assign([store, _name(name, store=True)], _name(target)), s.pos)

    def s_Assign(self, s: A.Assign) -> None:
        t = s.target
        if isinstance(t, A.Var):
            name = self.mc.res.names[(id(t), "ref")]
            if s.op == "=":
                value = self.expr(s.value)
            else:  # x op= v  is  x = x op v
                value = self.expr(A.Binary(s.pos, s.op[:-1], t, s.value))
            self.emit(_assign(name, value), s.pos)
            return
        if isinstance(t, A.Index):
            obj, key, value = self.seq([t.obj, t.index, s.value])
            getter, setter = "_idx", "_setidx"
        else:
            obj, value = self.seq([t.obj, s.value])
            key = _const(t.name)
            getter, setter = "_getprop", "_setprop"
        if s.op != "=":
            obj_t, key_t = self.tmp(), self.tmp()
            self.emit([_assign(obj_t, obj), _assign(key_t, key)], s.pos)
            obj, key = _name(obj_t), _name(key_t)
            value = self.binary(s.op, _call(getter, obj, key), value)
        self.emit(py.Expr(_call(setter, obj, key, value)), s.pos)

    def s_Return(self, s: A.Return) -> None:
        value = self.expr(s.value) if s.value is not None else _const(None)
        self.emit(py.Return(value), s.pos)

    def s_Throw(self, s: A.Throw) -> None:
        value = self.expr(s.value) if s.value is not None else _const(None)
        self.emit(py.Raise(_call("_throw", value), None), s.pos)

    def s_Break(self, s) -> None:
        self.emit(py.Break(), s.pos)

    def s_Continue(self, s) -> None:
        self.emit(py.Continue(), s.pos)

    def s_Import(self, s) -> None:
        """Imports are loaded when the script is compiled; nothing runs here."""

    def loop_suite(self, body: A.Block, pos: A.Loc, head=()) -> list[py.stmt]:
        def build():
            self.emit(self.tick(), pos)
            self.out.extend(head)
            self.block(body, None)
        return self.nested(build)

    def s_While(self, s: A.While) -> None:
        pre = self.capture(lambda: setattr(self, "_cond", self.condition(s.cond)))
        cond = self._cond
        if not pre:
            self.emit(py.While(cond, self.loop_suite(s.body, s.pos), []), s.pos)
            return
        stop = _located([py.If(py.UnaryOp(py.Not(), cond), [py.Break()], [])], s.cond.pos)
        self.emit(py.While(_const(True), self.loop_suite(s.body, s.pos, pre + stop), []), s.pos)

    def s_Loop(self, s: A.Loop) -> None:
        self.emit(py.While(_const(True), self.loop_suite(s.body, s.pos), []), s.pos)

    def s_For(self, s: A.For) -> None:
        it = s.iterable
        if isinstance(it, A.Binary) and it.op in ("..", "..="):
            source = self.expr(it)
        else:
            source = _call("_iter", self.expr(it))
        var = self.names(s, "var")
        if s.index_var is None:
            target: py.expr = _name(var, store=True)
        else:
            source = _call("_enumerate", source)
            target = py.Tuple([_name(self.names(s, "index"), store=True),
                               _name(var, store=True)], py.Store())
        self.emit(py.For(target, source, self.loop_suite(s.body, s.pos), []), s.pos)

    def s_Try(self, s: A.Try) -> None:
        body = self.nested(lambda: self.block(s.body, None))

        def handler():
            if s.err_name is not None:
                self.emit(_assign(self.names(s, "err"), _call("_errval", _name("_e"))),
                          s.handler.pos)
            self.block(s.handler, None)

        handler_suite = self.nested(handler)
        self.emit(py.Try(body, [py.ExceptHandler(_name("_Catch"), "_e", handler_suite)], [], []),
                  s.pos)

    # -- expressions -----------------------------------------------------
    def expr(self, e) -> py.expr:
        node = getattr(self, "e_" + type(e).__name__)(e)
        return _located(node, e.pos)

    def seq(self, exprs) -> list[py.expr]:
        """Compile expressions left to right, spilling earlier ones to temporaries
        when a later one needs statements (keeps evaluation order)."""
        results: list[py.expr] = []
        for e in exprs:
            mark = len(self.out)
            value = self.expr(e)
            if len(self.out) > mark:
                for i, prev in enumerate(results):
                    if not isinstance(prev, py.Constant):
                        name = self.tmp()
                        self.out.insert(mark, _located(_assign(name, prev), e.pos))
                        mark += 1
                        results[i] = _name(name)
            results.append(value)
        return results

    def condition(self, e) -> py.expr:
        value = self.expr(e)
        if _known_bool(e):
            return value
        if isinstance(value, py.IfExp) and getattr(value, "vsl_bool", False):
            # an inlined method whose fast branch is a bool: check only the other one
            value.orelse = _located(_call("_cond", value.orelse), e.pos)
            return value
        # ``_w is True or (_w is not False and _cond(_w))``: no call for a boolean
        w = self.mc.tmp("_w")
        test = py.BoolOp(py.Or(), [
            py.Compare(_walrus(w, value), [py.Is()], [_const(True)]),
            py.BoolOp(py.And(), [py.Compare(_name(w), [py.IsNot()], [_const(False)]),
                                 _call("_cond", _name(w))])])
        return _located(test, e.pos)

    def e_Literal(self, e: A.Literal) -> py.expr:
        return _const(e.value)

    def e_Template(self, e: A.Template) -> py.expr:
        """An f-string when every interpolated value is an int (whose f-string text is the
        script's) or a string of at most its share of max_string_size, so the text never
        grows far past the limit before it is checked; else the ``_tpl`` helper, which
        checks the size before it builds the text and stops printing at the limit."""
        parts = [A.Literal(e.pos, p) if isinstance(p, str) else _unblock(p) for p in e.parts]
        text_only = [isinstance(p, A.Literal) and type(p.value) is str for p in parts]
        share = self.mc.max_string // max(text_only.count(False), 1)
        values, tests, args = [], [], []
        for part, value, text in zip(parts, self.seq(parts), text_only):
            if text:
                values.append(_const(part.value))
                args.append(_const(part.value))
                continue
            w = self.mc.tmp("_w")
            tests.append(self.formattable(w, value, share))
            values.append(py.FormattedValue(_name(w), -1, None))
            args.append(_name(w))
        if not tests:  # only literal text: too long is still a run-time error
            text = "".join(v.value for v in values)
            if self.mc.max_string and len(text) > self.mc.max_string:
                return _call("_too_long", _const(len(text)))
            return _const(text)
        joined: py.expr = py.JoinedStr(values)
        if self.mc.max_string:
            r = self.mc.tmp("_w")
            size = _call("_len", _walrus(r, joined))
            joined = py.IfExp(py.Compare(size, [py.LtE()], [_const(self.mc.max_string)]),
                              _name(r), _call("_too_long", _call("_len", _name(r))))
        # its text, and so its work, is bounded by max_string_size (printing stops there):
        # a template alone never sends a function off the event loop
        budget = self.budget() if self.mc.max_string else self.walks()
        return py.IfExp(_every(tests), joined, _call("_tpl", budget, *args))

    def formattable(self, w: str, value: py.expr, share: int) -> py.expr:
        """Whether ``value`` (kept in ``w``) goes into the f-string: an int, or a string of
        at most ``share`` characters (any string when there is no size limit)."""
        cls = py.Attribute(_walrus(w, value), "__class__", py.Load())
        if not share:
            return py.Compare(cls, [py.In()], [_name("_FMT")])
        c = self.mc.tmp("_c")
        small = py.Compare(_call("_len", _name(w)), [py.LtE()], [_const(share)])
        return py.BoolOp(py.Or(), [
            py.Compare(_walrus(c, cls), [py.Is()], [_name("int")]),
            py.BoolOp(py.And(), [py.Compare(_name(c), [py.Is()], [_name("str")]), small])])

    def e_ArrayLit(self, e: A.ArrayLit) -> py.expr:
        return py.List(self.seq(e.items), py.Load())

    def e_MapLit(self, e: A.MapLit) -> py.expr:
        values = self.seq([v for _, v in e.entries])
        return py.Dict([_const(k) for k, _ in e.entries], values)

    def e_Var(self, e: A.Var) -> py.expr:
        return _name(self.mc.res.names[(id(e), "ref")])

    def e_NsVar(self, e: A.NsVar) -> py.expr:
        """A constant is also a Python global, read as it is when the top level defines
        every constant before any code can run (and for an imported module, whose
        constants are all set). Otherwise it is ``_UNDEF`` until set, and read as
        ``g_X if g_X is not _UNDEF else _gget(_G, 'X')`` (the helper reports the error)."""
        name = constant_name(e.ns, e.name)
        self.mc.constant_refs[name] = (e.ns, e.name)
        if e.ns != "global" or self.mc.res.constants_first:
            return _name(name)
        return py.IfExp(py.Compare(_name(name), [py.IsNot()], [_name("_UNDEF")]), _name(name),
                        _call("_gget", _name("_G"), _const(e.name)))

    def e_Unary(self, e: A.Unary) -> py.expr:
        operand = self.expr(e.operand)
        if e.op == "!":
            if _known_bool(e.operand):
                return py.UnaryOp(py.Not(), operand)
            # ``_w is False or (_w is not True and _not(_w))``: no call for a boolean
            w = self.mc.tmp("_w")
            return py.BoolOp(py.Or(), [
                py.Compare(_walrus(w, operand), [py.Is()], [_const(False)]),
                py.BoolOp(py.And(), [py.Compare(_name(w), [py.IsNot()], [_const(True)]),
                                     _call("_not", _name(w))])])
        return _call("_neg" if e.op == "-" else "_pos", operand)

    def e_Binary(self, e: A.Binary) -> py.expr:
        if e.op in ("&&", "||"):
            return self.logic(e)
        if e.op == "??":
            return self.coalesce(e)
        left, right = self.seq([e.left, e.right])
        if e.op in ("in", "!in"):  # charged by the size of the container
            return self.literal_in(e, left, right) or \
                self.fast_in(e.op, left, right, isinstance(e.right, A.NsVar))
        fast = self.fast_binary(e, left, right)
        return fast if fast is not None else self.binary(e.op, left, right)

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
            found = py.BoolOp(py.And(), [_is_type(_walrus(w, left), "str"),
                                         py.Compare(_name(w), [py.In()], [right])])
            return py.UnaryOp(py.Not(), found) if negate else found
        return None

    def fast_in(self, op: str, left: py.expr, right: py.expr, frozen: bool) -> py.expr:
        """A string in a small array, a map or a string is Python's ``in`` (Python's ``==``
        is the script's for a string needle); the helper does the rest and charges work.
        ``frozen``: the container is a constant (a tuple or a FrozenMap)."""
        a, b = self.mc.tmp("_w"), self.mc.tmp("_w")
        kinds = ["tuple", "_FMAP"] if frozen else ["list", "dict", "str", "tuple", "_FMAP"]
        types = py.BinOp(_is_type(_walrus(a, left), "str"), py.BitAnd(),
                         self.class_in(_walrus(b, right), kinds))
        small = py.Compare(_call("_len", _name(b)), [py.Lt()], [_const(64)])
        fast = py.Compare(_name(a), [py.In() if op == "in" else py.NotIn()], [_name(b)])
        return py.IfExp(py.BoolOp(py.And(), [types, small]), fast,
                        self.binary(op, _name(a), _name(b)))

    def class_in(self, value: py.expr, kinds: list[str]) -> py.expr:
        """``value.__class__ is A`` or ``(_c := value.__class__) is A or _c is B ...``
        (a chain of ``is`` is faster than ``in`` a frozenset)."""
        if len(kinds) == 1:
            return _is_type(value, kinds[0])
        c = self.mc.tmp("_c")
        cls = py.Attribute(value, "__class__", py.Load())
        tests = [py.Compare(_walrus(c, cls), [py.Is()], [_name(kinds[0])])]
        tests += [py.Compare(_name(c), [py.Is()], [_name(k)]) for k in kinds[1:]]
        return py.BoolOp(py.Or(), tests)

    def known_int(self, e) -> bool:
        res = self.mc.res
        return is_int_expr(e, res.names, res.int_vars, res.literal_constants)

    def fast_binary(self, e: A.Binary, left: py.expr, right: py.expr) -> py.expr | None:
        """Inline the common int/str cases; the helper handles everything else."""
        left_int, right_int = self.known_int(e.left), self.known_int(e.right)
        if e.op in ("==", "!=") and (_literal_of(e.right, (str,)) or
                                     _literal_of(e.left, (str,))):
            # Python's == with a string is the script's for any value (NativeObject.__eq__)
            return py.Compare(left, [_PY_CMP[e.op]()], [right])
        if e.op in ("+", "-", "*", "/", "%") and _int_literal(e.right):
            return self.fast_int_arith(e.op, left, e.right.value, left_int)
        if e.op in _PY_CMP or e.op in ("+", "-"):
            return self.fast_int_pair(e.op, (left, left_int), (right, right_int))
        return None

    def int_operand(self, operand: py.expr, known: bool) -> tuple[py.expr, list]:
        """The operand to use and the type tests it needs (none for a known-int name)."""
        if known and isinstance(operand, (py.Name, py.Constant)):
            return operand, []
        flag = self.mc.param_flag(operand, "int")
        if flag is not None:
            return operand, [flag]
        w = self.mc.tmp("_w")
        return _name(w), [_is_type(_walrus(w, operand), "int")]

    def named(self, operand: py.expr) -> tuple[py.expr, py.expr]:
        """(the operand's value for later uses, the expression that evaluates it first)."""
        if isinstance(operand, (py.Name, py.Constant)):
            return operand, operand
        w = self.mc.tmp("_w")
        return _name(w), _walrus(w, operand)

    def fast_int_pair(self, op: str, left, right) -> py.expr:
        """Two ints: compare or add/subtract inline. Operands are evaluated once, in order
        (the non-short-circuit ``&``); those known to be ints are not tested."""
        if left[1] and right[1]:  # both known: no tests, each evaluated where first used
            if op in _PY_CMP:
                return py.Compare(left[0], [_PY_CMP[op]()], [right[0]])
            (a, a_first), (b, b_first) = self.named(left[0]), self.named(right[0])
            r = self.mc.tmp("_w")
            pyop = py.Add() if op == "+" else py.Sub()
            in_range = py.Compare(_const(I64_MIN), [py.LtE(), py.LtE()],
                                  [_walrus(r, py.BinOp(a_first, pyop, b_first)),
                                   _const(I64_MAX)])
            return py.IfExp(in_range, _name(r), self.binary(op, a, b))
        a, tests = self.int_operand(*left)
        b, more = self.int_operand(*right)
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
        in_range = py.Compare(_const(I64_MIN), [py.LtE(), py.LtE()],
                              [_walrus(r, py.BinOp(a, pyop, b)), _const(I64_MAX)])
        if len(tests) == 2:
            tests = [py.BinOp(tests[0], py.BitAnd(), tests[1])]
        test = py.BoolOp(py.And(), [*tests, in_range]) if tests else in_range
        return py.IfExp(test, _name(r), slow)

    def fast_int_arith(self, op: str, left: py.expr, k: int, known: bool) -> py.expr | None:
        """``x + 3`` without a helper call when x is an int and the result cannot overflow."""
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
            if (lo, hi) == (I64_MIN, I64_MAX):
                return py.BinOp(first, pyop, _const(k))
            return py.IfExp(py.Compare(_const(lo), [py.LtE(), py.LtE()], [first, _const(hi)]),
                            py.BinOp(w, pyop, _const(k)),
                            self.binary(op, w, _const(k)))
        w, tests = self.int_operand(left, known)
        bounds = [] if (lo, hi) == (I64_MIN, I64_MAX) else \
            [py.Compare(_const(lo), [py.LtE(), py.LtE()], [w, _const(hi)])]
        fast = py.BinOp(w, pyop, _const(k))
        test = tests + bounds
        if not test:
            return fast
        return py.IfExp(test[0] if len(test) == 1 else py.BoolOp(py.And(), test), fast,
                        self.binary(op, w, _const(k)))

    def logic(self, e: A.Binary) -> py.expr:
        left = self.condition(e.left)
        mark = len(self.out)
        right = self.condition(e.right)
        op = py.And() if e.op == "&&" else py.Or()
        if len(self.out) == mark:
            return py.BoolOp(op, [left, right])
        pre = self.out[mark:]
        del self.out[mark:]
        result = self.tmp()
        self.emit(_assign(result, left), e.pos)
        test = _name(result) if e.op == "&&" else py.UnaryOp(py.Not(), _name(result))
        self.emit(py.If(test, pre + _located([_assign(result, right)], e.pos), []), e.pos)
        return _name(result)

    def coalesce(self, e: A.Binary) -> py.expr:
        if isinstance(e.left, A.Index) and _literal_of(e.right, (str, int, float, bool)):
            values = self.constant_map(e.left.obj)  # ``global::MAP[k] ?? 5``: one get()
            if values is not None and all(v is not None for v in values.values()):
                return self.constant_map_get(e.left, _const(e.right.value))
        left = self.expr(e.left)
        result = self.tmp()
        self.emit(_assign(result, left), e.pos)
        right = self.nested(lambda: self.emit(_assign(result, self.expr(e.right)), e.pos))
        self.emit(py.If(py.Compare(_name(result), [py.Is()], [_const(None)]), right, []), e.pos)
        return _name(result)

    def e_Prop(self, e: A.Prop) -> py.expr:
        if self.constant_map(e.obj) is not None:
            return _dict_get(self.expr(e.obj), _const(e.name))
        return self.map_get(self.expr(e.obj), e.name, "_getprop", isinstance(e.obj, A.NsVar))

    def map_get(self, obj: py.expr, key: str, helper: str, frozen: bool) -> py.expr:
        """``obj.get(key)`` when obj is a map (a constant's FrozenMap when ``frozen``),
        else the checked helper. A parameter that is never assigned is tested once, when
        the function starts (``_k0 = v_ctx.__class__ is dict``)."""
        flag = self.mc.param_flag(obj, "dict")
        if flag is not None:
            get = _dict_get(_name(obj.id), _const(key))
            return py.IfExp(flag, get, _call(helper, _name(obj.id), _const(key)))
        w = self.mc.tmp("_w")
        get = _dict_get(_name(w), _const(key))
        return py.IfExp(_is_type(_walrus(w, obj), "_FMAP" if frozen else "dict"), get,
                        _call(helper, _name(w), _const(key)))

    def constant_map(self, e) -> dict | None:
        """The value of ``e`` if it is a literal constant map read as a plain global."""
        value = constant_of(e, self.mc.res.literal_constants)
        return value if type(value) is dict and self.mc.res.constants_first else None

    def constant_map_get(self, e: A.Index, *default: py.expr) -> py.expr:
        """``global::MAP[key]`` of a constant_map(): ``MAP.get(key[, default])`` for a
        string key; the helper reports the error for any other key."""
        obj, index = self.seq([e.obj, e.index])
        if isinstance(index, py.Constant) and type(index.value) is str:
            return _dict_get(obj, index, *default)
        i = self.mc.tmp("_w")
        get = _dict_get(obj, _name(i), *default)
        return py.IfExp(_is_type(_walrus(i, index), "str"), get, _call("_idx", obj, _name(i)))

    def e_Index(self, e: A.Index) -> py.expr:
        if self.constant_map(e.obj) is not None:
            return self.constant_map_get(e)
        if _literal_of(e.index, (str,)):
            return self.map_get(self.expr(e.obj), e.index.value, "_idx",
                                isinstance(e.obj, A.NsVar))
        obj, index = self.seq([e.obj, e.index])
        o, i = self.mc.tmp("_w"), self.mc.tmp("_w")
        # a map and a string key: get(); an array and an int in range: [i]
        frozen = isinstance(e.obj, A.NsVar)
        in_map = py.BinOp(_is_type(_walrus(o, obj), "_FMAP" if frozen else "dict"),
                          py.BitAnd(), _is_type(_walrus(i, index), "str"))
        size = _call("_len", _name(o))
        in_seq = py.BoolOp(py.And(), [
            self.class_in(_name(o), ["tuple"] if frozen else ["list", "tuple"]),
            _is_type(_name(i), "int"),
            py.Compare(py.UnaryOp(py.USub(), size), [py.LtE(), py.Lt()],
                       [_name(i), copy.deepcopy(size)])])
        get = _dict_get(_name(o), _name(i))
        item = py.Subscript(_name(o), _name(i), py.Load())
        return py.IfExp(in_map, get, py.IfExp(in_seq, item, _call("_idx", _name(o), _name(i))))

    def valued_temp(self, e) -> py.expr:
        result = self.tmp()
        self.valued(e, result)
        return _name(result)

    def e_Block(self, e: A.Block) -> py.expr:
        return self.valued_temp(e)

    def e_Switch(self, e: A.Switch) -> py.expr:
        return self.valued_temp(e)

    def e_If(self, e: A.If) -> py.expr:
        simple = self.simple_if(e)
        return simple if simple is not None else self.valued_temp(e)

    def simple_if(self, e: A.If) -> py.expr | None:
        """``if c { a } else { b }`` as a Python conditional expression, when no branch
        needs statements."""
        if e.orelse is None:
            return None
        blocks = [b for _, b in e.branches] + [e.orelse]
        if any(len(b.body) != 1 or not isinstance(b.body[0], A.ExprStmt) or
               isinstance(b.body[0].expr, (A.If, A.Switch, A.Block)) for b in blocks):
            return None
        mark = len(self.out)
        conds = [self.condition(c) for c, _ in e.branches]
        values = [self.expr(b.body[0].expr) for b in blocks]
        if len(self.out) != mark:
            del self.out[mark:]
            return None
        result = values[-1]
        for cond, value in reversed(list(zip(conds, values[:-1]))):
            result = py.IfExp(cond, value, result)
        return result

    def e_Closure(self, e: A.Closure) -> py.expr:
        name = self.mc.tmp("_c")
        inner = _Fn(self.mc, False, "closure")
        inner.emit([_assign("_t", _call("_state")), *_tick()], e.pos)
        body_stmts = inner.capture(lambda: inner.sink("return", inner.expr(e.body), e.pos))
        inner.out.extend(body_stmts)
        nonlocals = sorted(self.mc.res.nonlocals.get(id(e), ()))
        if nonlocals:
            inner.out.insert(0, _located(py.Nonlocal(nonlocals), e.pos))
        params = [py.arg(self.names(e, f"p{i}")) for i in range(len(e.params))]
        snapshots = sorted(self.mc.res.snapshots.get(id(e), ()))
        args = py.arguments([], params, None, [py.arg(n) for n in snapshots],
                            [_name(n) for n in snapshots], None, [])
        fn = py.FunctionDef(name, args, inner.out, [], None)
        self.mc.code_names[name] = "<closure>"
        self.emit(fn, e.pos)
        return _call("_closure", _name(name), _const(len(e.params)))

    def call_script(self, fn_name: str, args, is_async: bool) -> py.expr:
        self.mc.uses.add("depth")
        depth = py.BinOp(_name("_d"), py.Add(), _const(1))
        call = _call(fn_name, self.budget(), depth, *args)
        return self.wait(call) if is_async else call

    def method(self, name: str, obj: py.expr, args: list[py.expr]) -> py.expr:
        if name == "call":
            return self.call_value(obj, args)
        if name in self.mc.async_methods:
            return self.wait(_call("_ameth", self.budget(), obj, _const(name),
                                   py.Tuple(args, py.Load())))
        return self.inline_method(name, obj, args) or \
            _call("_meth", self.method_budget(name), obj, _const(name),
                  py.Tuple(args, py.Load()))

    def method_budget(self, name: str) -> py.Name:
        """The budget for the generic dispatch of method ``name``."""
        return self.walks() if name in WALKING_METHODS else self.budget()

    def call_value(self, fn: py.expr, args: list[py.expr]) -> py.Call:
        """``f.call(...)`` or ``f(...)`` of a closure (which may loop: see walks)."""
        self.mc.uses.add("walks")
        return _call("_callv", fn, py.Tuple(args, py.Load()))

    def inline_method(self, name: str, obj: py.expr, args: list[py.expr]) -> py.expr | None:
        """A few hot methods run inline when the receiver (and argument) have the expected
        Python type; the generic dispatch handles everything else, errors included."""
        if name == "push" and len(args) == 1:
            return self.inline_push(obj, args[0])
        shape = _INLINE_METHODS.get((name, len(args)))
        if shape is None:
            return None
        receiver_type, arg_type, make = shape
        w = self.mc.tmp("_w")
        tests = [py.Compare(py.Attribute(_walrus(w, obj), "__class__", py.Load()),
                            [py.In() if receiver_type.startswith("_") else py.Is()],
                            [_name(receiver_type)])]
        names = []
        for arg in args:
            if isinstance(arg, py.Constant) and type(arg.value).__name__ == arg_type:
                names.append(arg)
                continue
            a = self.mc.tmp("_w")
            names.append(_name(a))
            tests.append(_is_type(_walrus(a, arg), arg_type))
        test = tests[0] if len(tests) == 1 else py.BinOp(tests[0], py.BitAnd(), tests[1])
        if name in _SIZE_CHECKED:
            if not self.mc.max_string:
                pass
            else:  # lower()/upper() may grow a string up to 3x
                test = py.BoolOp(py.And(), [test, py.Compare(
                    _call("_len", _name(w)), [py.LtE()], [_const(self.mc.max_string // 3)])])
        slow = _call("_meth", self.method_budget(name), _name(w), _const(name),
                     py.Tuple(names, py.Load()))
        node = py.IfExp(test, make(_name(w), *names), slow)
        node.vsl_bool = name in _BOOL_METHODS  # the fast branch is a bool
        return node

    def inline_push(self, obj: py.expr, arg: py.expr) -> py.expr:
        """``a.push(x)`` on a mutable array below the size limit is ``list.append``."""
        w = self.mc.tmp("_w")
        test = py.BoolOp(py.And(), [_is_type(_walrus(w, obj), "list"),
                                    py.Compare(_call("_len", _name(w)), [py.Lt()],
                                               [_const(self.mc.max_array)])])
        fast = _call(py.Attribute(_name(w), "append", py.Load()), arg)
        slow = _call("_meth", self.budget(), _name(w), _const("push"),
                     py.Tuple([copy.deepcopy(arg)], py.Load()))
        return py.IfExp(test, fast, slow)

    def target_call(self, e, target, args: list[py.expr]) -> py.expr:
        res = self.mc.res
        if isinstance(target, ScriptFn):
            return self.call_script(script_fn_name(target.name, target.arity), args,
                                    (target.name, target.arity) in res.async_functions)
        if isinstance(target, NativeFn):
            native = self.mc.natives[(target.ns, target.name)]
            call = _call(native_name(target.ns, target.name), *args)
            return self.wait(call) if native.is_async else call
        if isinstance(target, ModuleFn):
            info = self.mc.imports[target.alias]
            return self.call_script(module_fn_name(target.alias, target.name, target.arity),
                                    args, (target.name, target.arity) in info.async_functions)
        if isinstance(target, BuiltinMethod):
            return self.method(target.name, args[0], args[1:])
        assert isinstance(target, ValueCall)
        return self.call_value(_name(res.names[(id(e), "ref")]), args)

    def e_MethodCall(self, e: A.MethodCall) -> py.expr:
        values = self.seq([e.obj, *e.args])
        return self.target_call(e, self.mc.res.targets[id(e)], values)

    def e_Call(self, e: A.Call) -> py.expr:
        return self.target_call(e, self.mc.res.targets[id(e)], self.seq(e.args))

    def e_NsCall(self, e: A.NsCall) -> py.expr:
        return self.target_call(e, self.mc.res.targets[id(e)], self.seq(e.args))


I64_MIN, I64_MAX = -(2 ** 63), 2 ** 63 - 1
_PY_CMP = {"==": py.Eq, "!=": py.NotEq, "<": py.Lt, "<=": py.LtE, ">": py.Gt, ">=": py.GtE}


def _is_type(value: py.expr, type_name: str) -> py.expr:
    """``value.__class__ is int`` (faster than calling type(); generated, never script text)."""
    return py.Compare(py.Attribute(value, "__class__", py.Load()), [py.Is()], [_name(type_name)])


def _walrus(name: str, value: py.expr) -> py.NamedExpr:
    return py.NamedExpr(_name(name, store=True), value)


def _int_literal(e) -> bool:
    return isinstance(e, A.Literal) and type(e.value) is int


def _literal_of(e, kinds) -> bool:
    return isinstance(e, A.Literal) and type(e.value) in kinds


def _py_method(attr: str):
    return lambda w, *args: _call(py.Attribute(w, attr, py.Load()), *args)


# (method, argument count) -> (receiver type, argument type, fast expression). Generated
# only after the types are checked, so the Python attribute is the one expected.
_INLINE_METHODS = {
    ("len", 0): ("_SIZED", None, lambda w: _call("_len", w)),
    ("is_empty", 0): ("_SIZED", None,
                      lambda w: py.Compare(_call("_len", w), [py.Eq()], [_const(0)])),
    ("starts_with", 1): ("str", "str", _py_method("startswith")),
    ("ends_with", 1): ("str", "str", _py_method("endswith")),
    ("contains", 1): ("str", "str", lambda w, a: py.Compare(a, [py.In()], [w])),
    ("to_lower", 0): ("str", None, _py_method("lower")),
    ("to_upper", 0): ("str", None, _py_method("upper")),
    ("trim", 0): ("str", None, _py_method("strip")),
}


_BOOL_METHODS = frozenset({"is_empty", "starts_with", "ends_with", "contains"})
_SIZE_CHECKED = frozenset({"to_lower", "to_upper"})


def _every(tests: list[py.expr]) -> py.expr:
    """Whether every test (a bool) is true, evaluating each in order (they assign the
    parts' values): ``t1 & t2 & ...``, or for many parts the flat ``False not in (t1,
    t2, ...)``, as CPython refuses a chain of ``&`` nested a thousand deep."""
    if len(tests) > _FLAT_FROM:
        return py.Compare(_const(False), [py.NotIn()], [py.Tuple(tests, py.Load())])
    test = tests[0]
    for more in tests[1:]:
        test = py.BinOp(test, py.BitAnd(), more)
    return test


def _unblock(e):
    """``${ x }``: the expression of a one-expression block (no scope needed)."""
    if isinstance(e, A.Block) and len(e.body) == 1 and isinstance(e.body[0], A.ExprStmt):
        return e.body[0].expr
    return e


def _known_bool(e) -> bool:
    if isinstance(e, A.Literal):
        return type(e.value) is bool
    if isinstance(e, A.Binary):
        return e.op in _BOOL_OPS
    return isinstance(e, A.Unary) and e.op == "!"


def _with_lazy_budget(node: py.AST) -> py.AST:
    """A copy of ``node`` in which each read of the budget ``_t`` makes it on first use,
    ``(_t if _t is not None else (_t := _fresh()))``; subtrees without one are shared."""
    if isinstance(node, py.Name):
        if node.id != "_t":
            return node
        made = _walrus("_t", _call("_fresh"))
        lazy = py.IfExp(py.Compare(_name("_t"), [py.IsNot()], [_const(None)]), _name("_t"),
                        made)
        return _located(lazy, (node.lineno, node.col_offset + 1))
    changed = {}
    for field, value in py.iter_fields(node):
        if isinstance(value, list):
            new = [_with_lazy_budget(v) if isinstance(v, py.AST) else v for v in value]
            if any(a is not b for a, b in zip(new, value)):
                changed[field] = new
        elif isinstance(value, py.AST):
            new = _with_lazy_budget(value)
            if new is not value:
                changed[field] = new
    if not changed:
        return node
    node = copy.copy(node)
    for field, value in changed.items():
        setattr(node, field, value)
    return node


class ModuleCompiler:
    """Compiles a whole module into one Python code object."""

    def __init__(self, module: A.Module, res: Resolution, natives: dict, imports: dict,
                 async_methods: frozenset, max_call_depth: int, max_array: int = 0,
                 max_string: int = 0):
        self.module, self.res = module, res
        self.natives = natives      # (ns, name) -> Native
        self.imports = imports      # alias -> ModuleInfo
        self.async_methods = async_methods
        self.max_call_depth = max_call_depth or 10 ** 9
        self.max_array = max_array or 2 ** 63
        self.max_string = int(max_string)  # 0: unlimited
        self.counter = itertools.count()
        self.code_names: dict[str, str] = {"__top__": "<top level>"}
        self.constant_refs: dict[str, tuple[str, str]] = {}  # global name -> (ns, name)
        self.top_globals: set[str] = set()  # constants the top level defines
        self.fixed_params: set[str] = set()  # of the function being compiled
        self.param_flags: dict[tuple, str] = {}  # (parameter, type) -> local: "it is one"
        self.uses: set[str] = set()  # what the function being compiled uses (see entry)
        # (name, arity) of the functions that cannot run long: no loop, no call of a script
        # function or closure, no step whose work grows with a value (see _Fn.walks)
        self.quick: set[tuple[str, int]] = set()

    def param_flag(self, value: py.expr, kind: str) -> py.Name | None:
        """For a parameter never assigned, a local set when the function starts:
        ``_k0 = v_ctx.__class__ is dict`` (``kind``); None for any other value."""
        if not (isinstance(value, py.Name) and value.id in self.fixed_params):
            return None
        flag = self.param_flags.get((value.id, kind))
        if flag is None:
            flag = self.param_flags[(value.id, kind)] = self.tmp("_k")
        return _name(flag)

    def tmp(self, prefix: str = "_r") -> str:
        return f"{prefix}{next(self.counter)}"

    def function(self, name: str, params: list[str], body: A.Block, is_async: bool,
                 kind: str, pos: A.Loc) -> py.stmt:
        fn = _Fn(self, is_async, kind)
        guard = py.If(py.Compare(_name("_d"), [py.Gt()], [_const(self.max_call_depth)]),
                      [py.Expr(_call("_too_deep", _name("_d")))], [])
        prologue = [guard, *_tick()]
        assert len(prologue) == _PROLOGUE
        fn.emit(prologue, pos)
        self.uses = set()  # of the body: "tick", "budget" and "depth" (see entry)
        # parameters never assigned (by the function or its closures): see map_get
        self.fixed_params = {p for p in params if len(self.res.sources.get(p, ())) == 1}
        self.param_flags = {}
        fn.body(list(body.body), "return", body.pos)
        flags = [_assign(flag, _is_type(_name(p), kind))
                 for (p, kind), flag in self.param_flags.items()]
        fn.out[_PROLOGUE:_PROLOGUE] = _located(flags, pos)
        self.fixed_params, self.param_flags = set(), {}
        if kind == "top" and self.top_globals:
            fn.out.insert(0, _located(py.Global(sorted(self.top_globals)), pos))
        args = [py.arg("_t"), py.arg("_d")] + [py.arg(p) for p in params]
        cls = py.AsyncFunctionDef if is_async else py.FunctionDef
        return _located(cls(name, py.arguments([], args, None, [], [], None, []), fn.out, [],
                            None), pos)

    def entry(self, fdef: py.FunctionDef, name: str, param: str) -> py.FunctionDef:
        """The entry point of a one-argument function (Script.call, call_async and
        function run it): ``e_f_1(arg)`` runs the body at depth 0 and turns any error into
        a located VslError.

        A body that counts operations or calls a script function (which counts them) takes
        a budget from the engine's pool when it starts and gives it back at the end. Any
        other body runs without one, making a budget only on a slow path that needs it
        (``_t`` is then ``None`` until ``(_t if _t is not None else (_t := _fresh()))``
        sets it). ``self.uses`` says which (see _Fn.budget and _Fn.tick)."""
        body = fdef.body[_PROLOGUE:]  # shared with fdef: compile() does not change nodes
        uses, head, final = self.uses, [], []
        if "depth" in uses:
            head.append(_assign("_d", _const(0)))
        if "tick" in uses or "depth" in uses:
            head.append(_assign("_t", _call("_take")))
            final.append(py.Expr(_call("_give", _name("_t"))))
        elif "budget" in uses:
            head.append(_assign("_t", _const(None)))
            body = [_with_lazy_budget(s) for s in body]
        handler = py.ExceptHandler(_name("_BaseException"), "_err", [
            py.Raise(_call("_locate", _name("_err")), _const(None))])
        run = py.Try(body, [handler], [], final)
        args = py.arguments([], [py.arg(param)], None, [], [], None, [])
        return _located(py.FunctionDef(name, args, [*head, run], [], None),
                        (fdef.lineno, fdef.col_offset + 1))

    def compile(self) -> py.Module:
        defs = []
        closures = self.res.has_closures or any(i.uses_closures for i in self.imports.values())
        for f in self.module.functions:
            key = (f.name, len(f.params))
            name = script_fn_name(*key)
            self.code_names[name] = f.name
            params = [self.res.names[(id(f), f"p{i}")] for i in range(len(f.params))]
            fdef = self.function(name, params, f.body, key in self.res.async_functions, "fn",
                                 f.pos)
            defs.append(fdef)
            if not self.uses & {"tick", "depth", "walks"}:
                self.quick.add(key)
            if len(params) == 1 and isinstance(fdef, py.FunctionDef) and \
                    not closures:  # (closures need Engine.run's context)
                self.code_names[entry_fn_name(*key)] = f.name
                defs.append(self.entry(fdef, entry_fn_name(*key), params[0]))
        top = A.Block((1, 1), self.module.body)
        defs.append(self.function("__top__", [], top, self.res.top_async, "top", (1, 1)))
        return py.Module(defs, [])  # every node has its position (see _located)
