"""Compile a resolved module to Python code, once, at load time.

Input: the module's AST and its Resolution (vsl/resolve.py: a Python name
for every binding, a target for every call, which functions wait), the
natives, the imported modules' ModuleInfo, and three limits used at compile
time (call depth, array and string size). Output: a Python AST module that
the engine compiles and runs once with empty builtins and a globals dict of
helpers (vsl/engine.py ``_environment``); plus ``code_names`` (Python
function name -> script name, for stack traces), ``constant_refs``, and
``quick``. Generation is deterministic: the same script gives the same code.

The module holds, for each script function ``f`` of arity n, a Python
function ``f_f_n(_t, _d, params...)`` (``async def`` when it waits on I/O,
every call of it awaited), ``__top__()`` for the top level, and for each
plain function an entry point ``e_f_n(params...)``, what Script.call and the
server run: the same body (not a call of ``f_f_n``) at depth 0, taking a budget
only when the body uses one (always in a module that makes closures, which
find it in the call's context), turning any error into a located VslError
(``ModuleCompiler.entry``). A function that returns an int whenever its
arguments are ints (infer.int_functions: ``fib``) also gets ``i_f_n``, the
same body compiled with its parameters as int variables within the i64
bounds: a call whose arguments are known i64s (arithmetic, checked for
overflow, or such parameters) runs it and knows its value is an int (no type
tests on either side); any other call tests its arguments' types and bounds
to choose.

The hard decisions, and why:

- Python AST, not source text: nodes are built directly (vsl/pynodes.py), so
  no script text is ever parsed as Python; a script name is always mangled
  (``v_x``, ``f_name_1``, ``g_X``) and every generated name starts with ``_`` or
  a mangling prefix, so no Python name, attribute or import is reachable.
- Positions: every node gets the line:col of the script node it came from
  (``located``); the engine maps a traceback frame back to a script position
  from the code's own line table, so errors need no bookkeeping at run time.
- Budgets: ``_t`` is the call's ExecState. A "tick" (``_t.n -= 1; if _t.n <
  0: _t.slow()``) is charged when a function starts and at each loop
  iteration: ``_t.n`` counts down a chunk of the operation budget and
  ``slow()`` refills it, checking the operation limit and the deadline, so the
  common path is one subtraction. ``_d`` is the call depth, checked in each
  function's prologue. A loop whose body (and test) uses no budget at all
  (``_budget_free``: no call but of pure helpers, no ``_t``) counts its ticks a
  chunk at once instead (``ExecState.grant``) and gives back in a ``finally``
  what the chunk did not run: the same count, the same failing iteration and
  position, without a tick per iteration (range_chunks, counted_chunks).
  A helper whose work grows with its operands' size (``+``, ``==``, ``in``, a
  walking method, freezing a constant) is passed ``_t`` and charges that
  work itself (a template's text is charged by statements, as a tick is). What a
  function uses is recorded (``uses``): a function with no loop, no script call and no growing step is ``quick`` (the server runs it
  on the event loop), and an entry point makes its budget lazily, counting its
  templates' work in a local until then (exactly what the budget would count).
- Expressions that need statements (``if``/``switch``/block values, ``??``,
  ``&&`` with a statement on its right, closures) write them before the
  expression; ``seq`` spills earlier operands to temporaries first, so
  operands are always evaluated once, left to right, as the script reads.
- Operators call their checked helper in vsl/ops.py; the common cases run
  inline instead, through the fast paths of vsl/fastpaths.py, under one rule:
  every fast path equals its vsl/ops.py helper (see that module).
- Constants: a top-level ``const`` is frozen and stored both in ``_G`` and in
  a Python global, read directly when every constant is set before code can
  run (``constants_first``), else through a guard that reports a read before
  the definition. A literal constant's value is known here and used by the
  fast paths (``x in global::LIST``).
- Closures are nested Python functions: a captured variable the closure
  assigns is ``nonlocal``, a loop variable is passed as a default argument
  (a snapshot, see the resolver); a closure gets its budget from ``_state()``.

Checked at compile time (by the resolver, before this stage): names, call
targets and arities, waiting in a closure. Checked at run time, by the
generated tests and the helpers: types, integer overflow, sizes against the
limits, the budget, call depth and time.
"""
from __future__ import annotations

import ast as py
import copy
import itertools

from . import ast as A
from .fastpaths import I64_MAX, I64_MIN, FastPaths, every, flag_test
from .infer import int_functions, nonneg_variables, range_starts
from .methods import WALKING_METHODS
from .pynodes import (WITH_FIELDS, located, py_assign, py_call, py_const, py_dict_get,
                      py_is_type, py_name, py_walrus)
from .resolve import BuiltinMethod, ModuleFn, NativeFn, Resolution, ScriptFn, ValueCall

_BINARY_HELPERS = {"+": "_add", "-": "_sub", "*": "_mul", "/": "_div", "%": "_mod", "**": "_pow",
                   "==": "_eq", "!=": "_ne", "<": "_lt", "<=": "_le", ">": "_gt", ">=": "_ge",
                   "in": "_in", "!in": "_notin", "..": "_range", "..=": "_rangei"}
_ASSIGN_HELPERS = {"+=": "_add", "-=": "_sub", "*=": "_mul", "/=": "_div", "%=": "_mod",
                   "**=": "_pow"}
_BOOL_OPS = {"==", "!=", "<", "<=", ">", ">=", "in", "!in", "&&", "||"}
# Helpers whose work can grow with their operands' size: they are passed the budget.
_CHARGED = {"+", "==", "!=", "in", "!in", "+="}
# the methods that call a closure argument (vsl/methods.py): see _Fn.method
_CALLING_BACK = frozenset({"filter", "map", "any", "all", "reduce"})


def script_fn_name(name: str, arity: int) -> str:
    return f"f_{name}_{arity}"


def native_name(ns: str, name: str) -> str:
    """The Python global of a native; the length of ``ns`` keeps it injective."""
    return f"n_{len(ns)}_{ns}_{name}"


def constant_name(ns: str, name: str) -> str:
    """The Python global holding a constant: ``global::X`` or ``alias::X``."""
    return f"g_{name}" if ns == "global" else f"mg_{len(ns)}_{ns}_{name}"


def entry_fn_name(name: str, arity: int) -> str:
    """The entry point of a plain script function (see ModuleCompiler.entry)."""
    return f"e_{name}_{arity}"


def int_fn_name(name: str, arity: int) -> str:
    """The second body of a function that returns an int for int arguments, compiled
    knowing its parameters are ints (see ModuleCompiler.int_call)."""
    return f"i_{name}_{arity}"


_PROLOGUE = 3  # statements: the depth guard and the operation count


def module_fn_name(alias: str, name: str, arity: int) -> str:
    """The Python global of ``alias::name`` (injective, as constant_name)."""
    return f"m_{len(alias)}_{alias}_{name}_{arity}"


def _tick(cost: py.expr | None = None) -> list[py.stmt]:
    """``_t.n -= 1; if _t.n < 0: _t.slow()`` -- counts one operation (or ``cost``)."""
    counter = py.Attribute(py_name("_t"), "n", py.Store())
    return [py.AugAssign(counter, py.Sub(), cost or py_const(1)),
            py.If(py.Compare(py.Attribute(py_name("_t"), "n", py.Load()), [py.Lt()], [py_const(0)]),
                  [py.Expr(py_call(py.Attribute(py_name("_t"), "slow", py.Load())))], [])]



class _Fn(FastPaths):
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
        self.out.extend(located(stmts, pos))

    def tmp(self) -> str:
        return self.mc.tmp()

    def budget(self) -> py.Name:
        """The call's budget ``_t`` (an entry point makes it only when used: see entry)."""
        self.mc.uses.add("budget")
        return py_name("_t")

    def tick(self) -> list[py.stmt]:
        self.mc.uses.add("tick")
        return _tick()

    def charge(self, cost: py.expr) -> list[py.stmt]:
        """Statements counting ``cost`` operations as a tick counts one; an entry point
        without a budget counts them in its ``_room`` instead (see _owed_charge)."""
        charge = _tick(cost)
        charge[0].vsl_cost = cost
        return charge

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
            return py_call(helper, *args)
        number = any(isinstance(a, py.Constant) and type(a.value) in (int, float) for a in args)
        return py_call(helper, self.budget() if number else self.walks(), *args)

    def int_binary(self, op: str, *args: py.expr) -> py.Call:
        """The helper of ``op`` for operands known to be ints, reached only to report an
        overflow: an int's work does not grow, so a charged helper gets no budget."""
        helper = _BINARY_HELPERS[op]
        return py_call(helper, py_const(None), *args) if op in _CHARGED else \
            py_call(helper, *args)

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
            self.sink(sink, py_const(None), pos)
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
            self.emit(py_assign(sink, value), pos)

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
            self.sink(sink, py_const(None), s.pos)

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
            other = self.nested(lambda: self.sink(sink, py_const(None), pos))
        else:
            other = []
        self.emit(py.If(test, then, other), cond.pos)

    def switch(self, e: A.Switch, sink) -> None:
        subject, done = self.tmp(), self.tmp()
        self.emit([py_assign(subject, self.expr(e.subject)), py_assign(done, py_const(False))],
                  e.pos)
        has_default = False
        for arm in e.arms:
            tests = [py.UnaryOp(py.Not(), py_name(done))]
            if A.WILDCARD in arm.patterns:
                has_default = has_default or arm.guard is None
            else:
                matches = [py_call("_eqv", py_name(subject), py_const(p)) for p in arm.patterns]
                tests.append(matches[0] if len(matches) == 1 else py.BoolOp(py.Or(), matches))

            def arm_body(arm=arm):
                def taken():
                    self.emit(py_assign(done, py_const(True)), arm.pos)
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
            self.emit(py.If(py.UnaryOp(py.Not(), py_name(done)),
                            self.nested(lambda: self.sink(sink, py_const(None), e.pos)), []), e.pos)

    def stmt(self, s) -> None:
        getattr(self, "s_" + type(s).__name__)(s)

    def s_ExprStmt(self, s: A.ExprStmt) -> None:
        if isinstance(s.expr, (A.If, A.Switch, A.Block)):
            self.valued(s.expr, None)
        else:
            self.sink(None, self.expr(s.expr), s.pos)

    def s_Let(self, s: A.Let) -> None:
        target = self.names(s, "name")
        value = self.expr(s.value) if s.value is not None else py_const(None)
        if s.const:  # freezing walks the value (a literal is frozen as it is)
            self.mc.frozen_vars.add(target)
            budget = self.budget() if isinstance(value, py.Constant) else self.walks()
            value = py_call("_freeze", value, budget)
        self.emit(py_assign(target, value), s.pos)
        if s.const and self.kind == "top" and self.depth == 0:
            store = py.Subscript(py_name("_G"), py_const(s.name), py.Store())
            name = constant_name("global", s.name)
            self.mc.top_globals.add(name)
            self.emit(py.Assign([store, py_name(name, store=True)], py_name(target)), s.pos)

    def s_Assign(self, s: A.Assign) -> None:
        t = s.target
        if isinstance(t, A.Var):
            name = self.mc.res.names[(id(t), "ref")]
            if s.op == "=":
                value = self.expr(s.value)
            else:  # x op= v  is  x = x op v
                value = self.expr(A.Binary(s.pos, s.op[:-1], t, s.value))
            self.emit(py_assign(name, value), s.pos)
            return
        if isinstance(t, A.Index):
            obj, key, value = self.seq([t.obj, t.index, s.value])
            getter, setter = "_idx", "_setidx"
        else:
            obj, value = self.seq([t.obj, s.value])
            key = py_const(t.name)
            getter, setter = "_getprop", "_setprop"
        if s.op == "=":
            self.emit(self.set_item(obj, key, value, setter), s.pos)
            return
        obj_t, key_t = self.tmp(), self.tmp()
        self.emit([py_assign(obj_t, obj), py_assign(key_t, key)], s.pos)
        obj, key = py_name(obj_t), py_name(key_t)
        value = self.binary(s.op, py_call(getter, obj, key), value)
        self.emit(py.Expr(py_call(setter, obj, key, value)), s.pos)

    def s_Return(self, s: A.Return) -> None:
        value = self.expr(s.value) if s.value is not None else py_const(None)
        self.emit(py.Return(value), s.pos)

    def s_Throw(self, s: A.Throw) -> None:
        value = self.expr(s.value) if s.value is not None else py_const(None)
        self.emit(py.Raise(py_call("_throw", value), None), s.pos)

    def s_Break(self, s) -> None:
        self.emit(py.Break(), s.pos)

    def s_Continue(self, s) -> None:
        self.emit(py.Continue(), s.pos)

    def s_Import(self, s) -> None:
        """Imports are loaded when the script is compiled; nothing runs here."""

    def s_While(self, s: A.While) -> None:
        pre = self.capture(lambda: setattr(self, "_cond", self.condition(s.cond)))
        cond = self._cond
        body = self.nested(lambda: self.block(s.body, None))
        tick = located(self.tick(), s.pos)
        if not pre and _chunkable([py.Expr(cond), *body]):
            self.counted_chunks(body, s.pos, cond, self.condition(s.cond))
        elif not pre:
            self.emit(py.While(cond, tick + body, []), s.pos)
        else:  # the tick comes before the condition's statements
            stop = located([py.If(py.UnaryOp(py.Not(), cond), [py.Break()], [])], s.cond.pos)
            self.emit(py.While(py_const(True), tick + pre + stop + body, []), s.pos)

    def s_Loop(self, s: A.Loop) -> None:
        body = self.nested(lambda: self.block(s.body, None))
        if _chunkable(body):
            self.counted_chunks(body, s.pos)
        else:
            self.emit(py.While(py_const(True), located(self.tick(), s.pos) + body, []), s.pos)

    def counted_chunks(self, body: list[py.stmt], pos: A.Loc, cond: py.expr | None = None,
                       again: py.expr | None = None) -> None:
        """``while cond`` (or ``loop``) whose body and condition use no budget and whose
        body has no ``continue`` (see _chunkable): the iterations run in chunks, their
        ticks counted a chunk at once (ExecState.grant), the condition tested first and
        then at the end of each iteration (``again``: the same, compiled again), and
        what the chunk did not run given back (what is left of the chunk's iterator,
        a ``repeat``, whose items are not ints to make)::

            if cond:
                while True:
                    _i = repeat(None, _t.grant())
                    try:
                        for _ in _i:
                            body
                            if not again: break
                        else: continue
                    finally: _t.n += length_hint(_i)
                    break
        """
        self.mc.uses.add("tick")
        i = self.tmp()
        grant = py_call(py.Attribute(self.budget(), "grant", py.Load()))
        if again is not None:
            body = body + [py.If(py.UnaryOp(py.Not(), again), [py.Break()], [])]
        run = py.For(py_name(self.tmp(), store=True), py_name(i), body, [py.Continue()])
        give_back = py.AugAssign(py.Attribute(py_name("_t"), "n", py.Store()), py.Add(),
                                 py_call("_unrun", py_name(i)))
        loop = py.While(py_const(True), [
            py_assign(i, py_call("_repeat", py_const(None), grant)),
            py.Try([run], [], [], [give_back]), py.Break()], [])
        self.emit(loop if cond is None else py.If(cond, [loop], []), pos)

    def s_For(self, s: A.For) -> None:
        it = s.iterable
        over_range = isinstance(it, A.Binary) and it.op in ("..", "..=")
        source = self.expr(it) if over_range else py_call("_iter", self.expr(it))
        var = self.names(s, "var")
        if s.index_var is None:
            target: py.expr = py_name(var, store=True)
        else:
            source = py_call("_enumerate", source)
            target = py.Tuple([py_name(self.names(s, "index"), store=True),
                               py_name(var, store=True)], py.Store())
        body = self.nested(lambda: self.block(s.body, None))
        if over_range and s.index_var is None and self.unchanging(py_name(var)) and \
                _budget_free(body):
            self.range_chunks(var, source, body, s.pos)
        else:
            self.emit(py.For(target, source, located(self.tick(), s.pos) + body, []), s.pos)

    def range_chunks(self, var: str, source: py.expr, body: list[py.stmt],
                     pos: A.Loc) -> None:
        """``for var in a..b`` whose body uses no budget (see _budget_free): the range runs
        in chunks, each iteration's tick counted for a whole chunk at once (ExecState.grant)
        and what the chunk did not run (it ended, or a ``break``, ``return`` or error
        left it) given back, so the count is
        the one of a tick per iteration (``var`` is not assigned in the body: its value
        tells how many iterations started)::

            _r = range(a, b)
            while _r:
                _k = _t.grant(); _s = _r[0] - 1
                try:
                    for var in _r[:_k]: body
                    else: _r = _r[_k:]; continue
                finally: _t.n += _k - (var - _s)
                break
        """
        self.mc.uses.add("tick")
        r, k, s = self.tmp(), self.tmp(), self.tmp()
        t = self.budget()
        grant = py_call(py.Attribute(t, "grant", py.Load()))
        first = py.BinOp(py.Subscript(py_name(r), py_const(0), py.Load()), py.Sub(), py_const(1))
        chunk = py.Subscript(py_name(r), py.Slice(None, py_name(k), None), py.Load())
        rest = py.Subscript(py_name(r), py.Slice(py_name(k), None, None), py.Load())
        run = py.For(py_name(var, store=True), chunk, body,
                     [py_assign(r, rest), py.Continue()])
        unrun = py.BinOp(py_name(k), py.Sub(), py.BinOp(py_name(var), py.Sub(), py_name(s)))
        give_back = py.AugAssign(py.Attribute(py_name("_t"), "n", py.Store()), py.Add(), unrun)
        self.emit([py_assign(r, source), py.While(py_name(r), [
            py_assign(k, grant), py_assign(s, first),
            py.Try([run], [], [], [give_back]), py.Break()], [])], pos)

    def s_Try(self, s: A.Try) -> None:
        body = self.nested(lambda: self.block(s.body, None))

        def handler():
            if s.err_name is not None:
                self.emit(py_assign(self.names(s, "err"), py_call("_errval", py_name("_e"))),
                          s.handler.pos)
            self.block(s.handler, None)

        handler_suite = self.nested(handler)
        self.emit(py.Try(body, [py.ExceptHandler(py_name("_Catch"), "_e", handler_suite)], [], []),
                  s.pos)

    # -- expressions -----------------------------------------------------
    def expr(self, e) -> py.expr:
        node = getattr(self, "e_" + type(e).__name__)(e)
        return located(node, e.pos)

    def seq(self, exprs) -> list[py.expr]:
        """Compile expressions left to right, spilling earlier ones to temporaries
        when a later one needs statements (keeps evaluation order)."""
        results: list[py.expr] = []
        for e in exprs:
            mark = len(self.out)
            value = self.expr(e)
            if len(self.out) > mark:
                for i, prev in enumerate(results):
                    if not self.unchanging(prev):
                        name = self.tmp()
                        self.out.insert(mark, located(py_assign(name, prev), e.pos))
                        mark += 1
                        results[i] = py_name(name)
            results.append(value)
        return results

    def unchanging(self, value: py.expr) -> bool:
        """Whether ``value`` reads the same after any statement of the expression it is in:
        a constant, or a variable bound once and never assigned (its let, parameter or
        loop runs again only in another statement)."""
        return isinstance(value, py.Constant) or \
            isinstance(value, py.Name) and len(self.mc.res.sources.get(value.id, ())) == 1

    def condition(self, e) -> py.expr:
        value = self.expr(e)
        if _known_bool(e):
            return value
        return located(self.truth(value), e.pos)

    def e_Literal(self, e: A.Literal) -> py.expr:
        return py_const(e.value)

    def e_ArrayLit(self, e: A.ArrayLit) -> py.expr:
        return py.List(self.seq(e.items), py.Load())

    def e_MapLit(self, e: A.MapLit) -> py.expr:
        values = self.seq([v for _, v in e.entries])
        return py.Dict([py_const(k) for k, _ in e.entries], values)

    def e_Var(self, e: A.Var) -> py.expr:
        return py_name(self.mc.res.names[(id(e), "ref")])

    def e_NsVar(self, e: A.NsVar) -> py.expr:
        """A constant is also a Python global, read as it is when the top level defines
        every constant before any code can run (and for an imported module, whose
        constants are all set). Otherwise it is ``_UNDEF`` until set, and read as
        ``g_X if g_X is not _UNDEF else _gget(_G, 'X')`` (the helper reports the error)."""
        name = constant_name(e.ns, e.name)
        self.mc.constant_refs[name] = (e.ns, e.name)
        if e.ns != "global" or self.mc.res.constants_first:
            return py_name(name)
        return py.IfExp(py.Compare(py_name(name), [py.IsNot()], [py_name("_UNDEF")]), py_name(name),
                        py_call("_gget", py_name("_G"), py_const(e.name)))

    def e_Unary(self, e: A.Unary) -> py.expr:
        operand = self.expr(e.operand)
        if e.op == "!":
            if _known_bool(e.operand):
                return py.UnaryOp(py.Not(), operand)
            return self.negation(operand)
        return py_call("_neg" if e.op == "-" else "_pos", operand)

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
        self.emit(py_assign(result, left), e.pos)
        test = py_name(result) if e.op == "&&" else py.UnaryOp(py.Not(), py_name(result))
        self.emit(py.If(test, pre + located([py_assign(result, right)], e.pos), []), e.pos)
        return py_name(result)

    def coalesce(self, e: A.Binary) -> py.expr:
        fast = self.constant_map_default(e)
        if fast is not None:
            return fast
        left = self.expr(e.left)
        result = self.tmp()
        self.emit(py_assign(result, left), e.pos)
        right = self.nested(lambda: self.emit(py_assign(result, self.expr(e.right)), e.pos))
        self.emit(py.If(py.Compare(py_name(result), [py.Is()], [py_const(None)]), right, []), e.pos)
        return py_name(result)

    def e_Prop(self, e: A.Prop) -> py.expr:
        if self.constant_map(e.obj) is not None:
            return py_dict_get(self.expr(e.obj), py_const(e.name))
        return self.map_get(self.expr(e.obj), e.name, "_getprop", isinstance(e.obj, A.NsVar))

    def valued_temp(self, e) -> py.expr:
        result = self.tmp()
        self.valued(e, result)
        return py_name(result)

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
        depth = py.BinOp(py.Attribute(py_name("_t"), "depth", py.Load()), py.Add(), py_const(1))
        inner.emit([py_assign("_t", py_call("_state")), py_assign("_d", depth),
                    self.mc.depth_guard(), *_tick()], e.pos)
        body_stmts = inner.capture(lambda: inner.sink("return", inner.expr(e.body), e.pos))
        inner.out.extend(body_stmts)
        nonlocals = sorted(self.mc.res.nonlocals.get(id(e), ()))
        if nonlocals:
            inner.out.insert(0, located(py.Nonlocal(nonlocals), e.pos))
        params = [py.arg(self.names(e, f"p{i}")) for i in range(len(e.params))]
        snapshots = sorted(self.mc.res.snapshots.get(id(e), ()))
        args = py.arguments([], params, None, [py.arg(n) for n in snapshots],
                            [py_name(n) for n in snapshots], None, [])
        fn = py.FunctionDef(name, args, inner.out, [], None)
        self.mc.code_names[name] = "<closure>"
        self.emit(fn, e.pos)
        return py_call("_closure", py_name(name), py_const(len(e.params)))

    def int_fn_call(self, e: A.Call, target: ScriptFn, args: list[py.expr]) -> py.expr:
        """A call of a function with an int body (ModuleCompiler.int_fns): that body where
        the arguments are known i64s, else the one their types and sizes choose::

            i_f_n(_t, _d + 1, _a, _b) if ((_a := a).__class__ is int and MIN <= _a <= MAX)
            & ... else f_f_n(_t, _d + 1, _a, _b)
        """
        int_body, body = int_fn_name(target.name, target.arity), \
            script_fn_name(target.name, target.arity)
        unknown = [not self.known_i64(arg) for arg in e.args]
        if not any(unknown):
            return self.call_script(int_body, args, False)
        named = [self.named(arg) if test else (arg, arg) for arg, test in zip(args, unknown)]
        test = _every_i64([pair for pair, tested in zip(named, unknown) if tested])
        values = [value for value, _ in named]
        return py.IfExp(test, self.call_script(int_body, values, False),
                        self.call_script(body, values, False))

    def call_script(self, fn_name: str, args, is_async: bool) -> py.expr:
        self.mc.uses.add("depth")
        depth = py.BinOp(py_name("_d"), py.Add(), py_const(1))
        call = py_call(fn_name, self.budget(), depth, *args)
        return self.wait(call) if is_async else call

    def method(self, name: str, obj: py.expr, args: list[py.expr]) -> py.expr:
        if name == "call":
            return self.call_value(obj, args)
        if name in self.mc.async_methods:
            return self.wait(py_call("_ameth", self.budget(), obj, py_const(name),
                                   py.Tuple(args, py.Load())))
        if name in _CALLING_BACK:  # its closures run one level below this code
            self.mc.uses.add("depth")
            return py_call("_cmeth", self.budget(), py_name("_d"), obj, py_const(name),
                           py.Tuple(args, py.Load()))
        return self.inline_method(name, obj, args) or \
            py_call("_meth", self.method_budget(name), obj, py_const(name),
                  py.Tuple(args, py.Load()))

    def method_budget(self, name: str) -> py.Name:
        """The budget for the generic dispatch of method ``name``."""
        return self.walks() if name in WALKING_METHODS else self.budget()

    def call_value(self, fn: py.expr, args: list[py.expr]) -> py.Call:
        """``f.call(...)`` or ``f(...)`` of a closure (which may loop: see walks)."""
        self.mc.uses.update(("walks", "depth"))
        return py_call("_callv", self.budget(), py_name("_d"), fn, py.Tuple(args, py.Load()))

    def target_call(self, e, target, args: list[py.expr]) -> py.expr:
        res = self.mc.res
        if isinstance(target, ScriptFn):
            if (target.name, target.arity) in self.mc.int_fns:
                return self.int_fn_call(e, target, args)
            return self.call_script(script_fn_name(target.name, target.arity), args,
                                    (target.name, target.arity) in res.async_functions)
        if isinstance(target, NativeFn):
            native = self.mc.natives[(target.ns, target.name)]
            if native.charges is not None:  # the budget first (see Engine._environment);
                # a native that waits does its work on the event loop wherever its caller
                # runs (see Engine's _on_host) and hands the loop over as its charges
                # add up (_charged_wait), so only one that computes makes its caller
                # run long
                args = [self.budget() if native.is_async else self.walks(), *args]
            call = py_call(native_name(target.ns, target.name), *args)
            return self.wait(call) if native.is_async else call
        if isinstance(target, ModuleFn):
            info = self.mc.imports[target.alias]
            return self.call_script(module_fn_name(target.alias, target.name, target.arity),
                                    args, (target.name, target.arity) in info.async_functions)
        if isinstance(target, BuiltinMethod):
            return self.method(target.name, args[0], args[1:])
        assert isinstance(target, ValueCall)
        return self.call_value(py_name(res.names[(id(e), "ref")]), args)

    def e_MethodCall(self, e: A.MethodCall) -> py.expr:
        values = self.seq([e.obj, *e.args])
        return self.target_call(e, self.mc.res.targets[id(e)], values)

    def e_Call(self, e: A.Call) -> py.expr:
        return self.target_call(e, self.mc.res.targets[id(e)], self.seq(e.args))

    def e_NsCall(self, e: A.NsCall) -> py.expr:
        return self.target_call(e, self.mc.res.targets[id(e)], self.seq(e.args))



# The helpers compiled code calls that run no script code and use no budget unless given
# one (see _budget_free), and the methods of Python's str, list and dict that fast paths
# call once the types are checked.
_BUDGET_FREE_CALLS = frozenset({
    "_add", "_sub", "_mul", "_div", "_mod", "_pow", "_eq", "_ne", "_lt", "_le", "_gt", "_ge",
    "_eqv", "_range", "_rangei", "_neg", "_pos", "_not", "_cond", "_idx", "_setidx",
    "_getprop", "_setprop", "_len", "_throw", "_errval", "_too_long", "_gget"})
_BUDGET_FREE_METHODS = frozenset({"append", "get", "startswith", "endswith", "lower", "upper",
                                  "strip", "split"})


def _every_i64(named: list[tuple[py.expr, py.expr]]) -> py.expr:
    """Whether every value is an int within the i64 bounds, each evaluated in order
    (FastPaths.named: its later uses, the expression evaluating it first): ``((_a :=
    a).__class__ is int and MIN <= _a <= MAX) & ...``."""
    return every([py.BoolOp(py.And(), [py_is_type(first, "int"), py.Compare(
        py_const(I64_MIN), [py.LtE(), py.LtE()], [value, py_const(I64_MAX)])])
        for value, first in named])


def _budget_free(stmts: list[py.stmt]) -> bool:
    """Whether compiled statements never touch the budget: no ``_t``, no call but of the
    helpers and methods above (a script function, a closure, a native or a generic method
    may count operations), no nested function, no waiting."""
    for stmt in stmts:
        for node in py.walk(stmt):
            cls = node.__class__
            if cls is py.Name and node.id == "_t" or cls in (
                    py.FunctionDef, py.AsyncFunctionDef, py.Lambda, py.Await):
                return False
            if cls is py.Call and not (
                    node.func.__class__ is py.Name and node.func.id in _BUDGET_FREE_CALLS or
                    node.func.__class__ is py.Attribute and
                    node.func.attr in _BUDGET_FREE_METHODS):
                return False
    return True


def _chunkable(stmts: list[py.stmt]) -> bool:
    """Whether a loop's compiled body (and condition) may run by counted_chunks: it
    uses no budget and has no ``continue`` (which would skip the condition at the end
    of the iteration; a budget-free body holds no inner loop, whose would be its own)."""
    return _budget_free(stmts) and not any(
        node.__class__ is py.Continue for stmt in stmts for node in py.walk(stmt))


def _known_bool(e) -> bool:
    if isinstance(e, A.Literal):
        return type(e.value) is bool
    if isinstance(e, A.Binary):
        return e.op in _BOOL_OPS
    return isinstance(e, A.Unary) and e.op == "!"


def _with_lazy_budget(node: py.AST) -> py.AST:
    """A copy of ``node`` in which each read of the budget ``_t`` makes it on first use,
    ``(_t if _t is not None else (_t := _fresh(_room)))``, and each charge of a template's
    text counts down ``_room`` while there is no budget (see _owed_text); subtrees without
    either are shared."""
    if node.__class__ is py.Name:
        if node.id != "_t":
            return node
        made = py_walrus("_t", py_call("_fresh", py_name("_room")))
        lazy = py.IfExp(py.Compare(py_name("_t"), [py.IsNot()], [py_const(None)]), py_name("_t"),
                        made)
        return located(lazy, (node.lineno, node.col_offset + 1))
    if node.__class__ is py.Call and node.func.__class__ is py.Name and node.func.id == "_text":
        return _owed_text(node, _with_lazy_budget(node.args[1]))
    changed = {}
    for field in node._fields:
        value = getattr(node, field, None)
        if value.__class__ is list:
            new = _lazy_items(value)
            if any(a is not b for a, b in zip(new, value)):
                changed[field] = new
        elif value.__class__ in WITH_FIELDS:
            new = _with_lazy_budget(value)
            if new is not value:
                changed[field] = new
    if not changed:
        return node
    node = copy.copy(node)
    for field, value in changed.items():
        setattr(node, field, value)
    return node


def _lazy_items(items: list) -> list:
    """_with_lazy_budget of a node's list of items (statements, expressions, names), where
    the two statements of a charge (_Fn.charge) become one, its _owed_charge."""
    out, skip = [], False
    for item in items:
        if skip:
            skip = False
        elif hasattr(item, "vsl_cost"):
            out.append(_owed_charge(item))
            skip = True  # its check of the budget
        else:
            out.append(_with_lazy_budget(item) if item.__class__ in WITH_FIELDS else item)
    return out


def _owed_charge(charge: py.AugAssign) -> py.stmt:
    """A charge (_Fn.charge) in a body without a budget yet, as _owed_text counts one::

        if _t is None:
            _room -= cost
            if _room < 0: _t = _fresh(_room)
        else:
            _t.n -= cost
            if _t.n < 0: _t.slow()
    """
    room = py.AugAssign(py_name("_room", store=True), py.Sub(), charge.vsl_cost)
    over = py.If(py.Compare(py_name("_room"), [py.Lt()], [py_const(0)]),
                 [py_assign("_t", py_call("_fresh", py_name("_room")))], [])
    owed = py.If(py.Compare(py_name("_t"), [py.Is()], [py_const(None)]), [room, over],
                 _tick(charge.vsl_cost))
    return located(owed, (charge.lineno, charge.col_offset + 1))


def _owed_text(charge: py.Call, text: py.expr) -> py.expr:
    """The charge ``_text(_t, text, work)`` of a template (engine.charged_text) in a body
    without a budget yet: the same count taken from the local ``_room`` (what a fresh
    budget's first chunk would have left), a budget made only when it goes below 0, where
    ``_fresh`` checks the limit as ``_text`` would, at the same position::

        _text(_t, _tx, work) if (_tx := text) is None or _t is not None
        else _tx if (_room := _room - 1 - ((_len(_tx) + work) >> 6)) >= 0
        else (_t := _fresh(_room)) and _tx      # a budget is always true
    """
    work = charge.args[2]
    cost = py.BinOp(py_const(1), py.Add(), py.BinOp(
        py.BinOp(py_call("_len", py_name("_tx")), py.Add(), work), py.RShift(), py_const(6)))
    counted = py_walrus("_room", py.BinOp(py_name("_room"), py.Sub(), cost))
    over = py.BoolOp(py.And(), [py_walrus("_t", py_call("_fresh", py_name("_room"))),
                                py_name("_tx")])
    owed = py.IfExp(py.Compare(counted, [py.GtE()], [py_const(0)]), py_name("_tx"), over)
    has_budget = py.BoolOp(py.Or(), [
        py.Compare(py_walrus("_tx", text), [py.Is()], [py_const(None)]),
        py.Compare(py_name("_t"), [py.IsNot()], [py_const(None)])])
    charged = py_call("_text", py_name("_t"), py_name("_tx"), work)
    return located(py.IfExp(has_budget, charged, owed), (charge.lineno, charge.col_offset + 1))


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
        self.nonneg_vars = nonneg_variables(res.sources, res.names, res.int_vars,
                                            range_starts(module, res.names))
        self.int_fns = self.int_results()
        self.i64_vars: set[str] = set()  # the parameters of the int body being compiled
        self.frozen_vars: set[str] = set()  # constants' variables (their let comes first)
        # (name, arity) of the functions that cannot run long: no loop, no call of a script
        # function or closure, no step whose work grows with a value (see _Fn.walks)
        self.quick: set[tuple[str, int]] = set()

    def params(self, f: A.FnDef) -> list[str]:
        return [self.res.names[(id(f), f"p{i}")] for i in range(len(f.params))]

    def int_results(self) -> set[tuple[str, int]]:
        """The functions that return an int whenever their arguments are ints (infer.
        int_functions), among those of a module without closures that do not wait and
        never assign a parameter: each gets a second body, its parameters known ints."""
        res = self.res
        if res.has_closures:
            return set()
        candidates = {(f.name, len(f.params)): f for f in self.module.functions
                      if f.params and (f.name, len(f.params)) not in res.async_functions}
        params = {key: self.params(f) for key, f in candidates.items()}
        plain = {key for key, names in params.items()
                 if all(len(res.sources.get(p, ())) == 1 for p in names)}
        return int_functions({key: candidates[key].body for key in plain}, params,
                             self.script_callee, res.names, res.int_vars,
                             res.literal_constants)

    def script_callee(self, call: A.Call) -> tuple[str, int] | None:
        """The (name, arity) of the function of this module that ``call`` runs, or None."""
        target = self.res.targets.get(id(call))
        return (target.name, target.arity) if isinstance(target, ScriptFn) else None

    def int_call(self, call: A.Call, is_int) -> bool:
        """Whether ``call`` runs a function of int_fns with arguments that ``is_int``: its
        value is an int, and its int body runs it."""
        return self.script_callee(call) in self.int_fns and all(map(is_int, call.args))

    def param_flag(self, value: py.expr, kind: str) -> py.Name | None:
        """For a parameter never assigned, a local set when the function starts:
        ``_k0 = v_ctx.__class__ is dict`` (``kind``: see fastpaths.flag_test); None for
        any other value."""
        if not (isinstance(value, py.Name) and value.id in self.fixed_params):
            return None
        flag = self.param_flags.get((value.id, kind))
        if flag is None:
            flag = self.param_flags[(value.id, kind)] = self.tmp("_k")
        return py_name(flag)

    def tmp(self, prefix: str = "_r") -> str:
        return f"{prefix}{next(self.counter)}"

    def depth_guard(self) -> py.If:
        """``if _d > max_call_depth: _too_deep(_d)``, first in a function or closure."""
        return py.If(py.Compare(py_name("_d"), [py.Gt()], [py_const(self.max_call_depth)]),
                     [py.Expr(py_call("_too_deep", py_name("_d")))], [])

    def function(self, name: str, params: list[str], body: A.Block, is_async: bool,
                 kind: str, pos: A.Loc) -> py.stmt:
        fn = _Fn(self, is_async, kind)
        prologue = [self.depth_guard(), *_tick()]
        assert len(prologue) == _PROLOGUE
        fn.emit(prologue, pos)
        self.uses = set()  # of the body: "tick", "budget" and "depth" (see entry)
        # parameters never assigned (by the function or its closures): see map_get
        self.fixed_params = {p for p in params if len(self.res.sources.get(p, ())) == 1}
        self.param_flags = {}
        fn.body(list(body.body), "return", body.pos)
        flags = [py_assign(flag, flag_test(p, kind))
                 for (p, kind), flag in self.param_flags.items()]
        fn.out[_PROLOGUE:_PROLOGUE] = located(flags, pos)
        self.fixed_params, self.param_flags = set(), {}
        if kind == "top" and self.top_globals:
            fn.out.insert(0, located(py.Global(sorted(self.top_globals)), pos))
        args = [py.arg("_t"), py.arg("_d")] + [py.arg(p) for p in params]
        cls = py.AsyncFunctionDef if is_async else py.FunctionDef
        return located(cls(name, py.arguments([], args, None, [], [], None, []), fn.out, [],
                            None), pos)

    def int_body(self, f: A.FnDef, params: list[str]) -> py.stmt:
        """The body of ``f`` (of int_fns) for int arguments: its parameters are int
        variables there, so their type tests go, and so do those of its int calls'
        results. The same operations, positions and errors as its first body."""
        name = int_fn_name(f.name, len(f.params))
        self.code_names[name] = f.name
        ints = self.res.int_vars
        self.res.int_vars, self.i64_vars = ints | set(params), set(params)
        try:
            return self.function(name, params, f.body, False, "fn", f.pos)
        finally:
            self.res.int_vars, self.i64_vars = ints, set()

    def entry(self, fdef: py.FunctionDef, name: str, params: list[str],
              closures: bool) -> py.FunctionDef:
        """The entry point of a plain (not waiting) function of any arity (Script.call and
        function run it): ``e_f_n(args...)`` runs the body at depth 0 and turns any error
        into a located VslError, as Engine.run does.

        A body that counts operations or calls a script function (which counts them), or
        any body of a module making closures, takes a budget from the engine's pool when
        it starts and gives it back at the end; with closures the budget is also the
        call's context (``_enter``/``_leave``, where a closure's ``_state()`` finds it).
        Any other body runs without one, making a budget only on a slow path that needs it
        (``_t`` is then ``None`` until ``(_t if _t is not None else (_t := _fresh(_room)))``
        sets it), its templates' charges counted down in the local ``_room`` meanwhile
        (see _owed_text). ``self.uses`` says which (see _Fn.budget and _Fn.tick)."""
        body = fdef.body[_PROLOGUE:]  # shared with fdef: compile() does not change nodes
        uses, head, final = self.uses, [], []
        if "depth" in uses:
            head.append(py_assign("_d", py_const(0)))
        if closures or "tick" in uses or "depth" in uses:
            head.append(py_assign("_t", py_call("_take")))
            final.append(py.Expr(py_call("_give", py_name("_t"))))
            if closures:
                head.append(py_assign("_token", py_call("_enter", py_name("_t"))))
                final.insert(0, py.Expr(py_call("_leave", py_name("_token"))))
        elif "budget" in uses:
            head += [py_assign("_t", py_const(None)), py_assign("_room", py_name("_ROOM"))]
            body = [_with_lazy_budget(s) for s in body]
        handler = py.ExceptHandler(py_name("_BaseException"), "_err", [
            py.Raise(py_call("_locate", py_name("_err")), py_const(None))])
        run = py.Try(body, [handler], [], final)
        args = py.arguments([], [py.arg(p) for p in params], None, [], [], None, [])
        return located(py.FunctionDef(name, args, [*head, run], [], None),
                        (fdef.lineno, fdef.col_offset + 1))

    def compile(self) -> py.Module:
        defs = []
        closures = self.res.has_closures or any(i.uses_closures for i in self.imports.values())
        for f in self.module.functions:
            key = (f.name, len(f.params))
            name = script_fn_name(*key)
            self.code_names[name] = f.name
            params = self.params(f)
            fdef = self.function(name, params, f.body, key in self.res.async_functions, "fn",
                                 f.pos)
            defs.append(fdef)
            if not self.uses & {"tick", "depth", "walks"}:
                self.quick.add(key)
            if isinstance(fdef, py.FunctionDef):
                self.code_names[entry_fn_name(*key)] = f.name
                defs.append(self.entry(fdef, entry_fn_name(*key), params, closures))
            if key in self.int_fns:
                defs.append(self.int_body(f, params))
        top = A.Block((1, 1), self.module.body)
        defs.append(self.function("__top__", [], top, self.res.top_async, "top", (1, 1)))
        return py.Module(defs, [])  # every node has its position (see located)
