"""Static resolution of a parsed module: scopes, calls and diagnostics.

The resolver walks the AST of one module once, after parsing and before
compiling (vsl/compile.py). Its inputs are the module, the native namespaces,
the ModuleInfo of each imported module and the names of the methods that wait
on I/O; its output is a Resolution, keyed by ``id()`` of AST nodes, so the
compiler must be given the very nodes that were resolved (never a copy). The
resolution with no error establishes what the compiler then trusts without
checking again:

- every variable reference, declaration and parameter has a Python name
  (``names[(id(node), slot)]``), unique in the module (vsl/names.py:
  ``v_x``, then ``v1_x`` for the next binding of ``x``);
- every call has a target (``targets[id(node)]``) whose arity is right;
- each function is known to wait on I/O or not (``async_functions``).

All names are bound statically. The hard decisions, and why:

- Scopes are lexical blocks. ``let`` makes a new binding once its value is
  evaluated (``let x = x + 1`` reads the outer ``x``); a second ``let x`` in
  the same block is a new binding, not an assignment, so each binding keeps
  one Python name and its type facts stay true. A script function sees only
  its parameters and its own variables: top-level variables are not visible
  in it, and top-level constants are read as ``global::NAME`` (so a function
  never depends on the order in which the top level runs).
- Functions are called by name and arity, ``f/1`` and ``f/2`` being distinct;
  all of a module's functions are known before any body is walked, so a call
  may precede the definition. A call ``f(x)`` tries, in order: a variable
  holding a closure, a script function, a native of the default namespace,
  a method called as a function. ``x.f(y)`` is the script function ``f/2`` when
  there is one (a warning says it hides the method), else the method.
- Closures capture variables by reference (a captured variable the closure
  assigns becomes a Python ``nonlocal``), except a variable declared inside a
  loop body: a closure takes a snapshot of it, so the closures made in
  different iterations each see their own iteration's value. A closure is a
  plain function: it may not call anything that waits on I/O.
- Waiting is decided here, not at run time: a function waits when it calls an
  async native, method or module function, or a function that waits (a fixed
  point over the call graph); the compiler makes exactly those ``async def``.
- Constants: the resolver also records facts the compiler's fast paths rely on
  (vsl/infer.py): top-level constants whose value is a literal
  (``literal_constants``), whether every constant is defined before any code
  can run (``constants_first``: then a read is a plain global), and the
  variables that always hold an int (``int_vars``, from every value each
  variable is ever given).

Errors (undefined names, wrong arity, assignment to a constant, ``break``
outside a loop, waiting in a closure, ...) stop the load; warnings (unused
variable, unreachable code, ...) are for the linter. Everything else (types,
overflow, sizes, the budget) is checked at run time by the compiled code.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from . import ast
from .diagnostics import Diagnostic
from .infer import INT, NOT_INT, constants_first, int_variables, literal_constants
from .methods import METHOD_NAMES
from .names import local_name


@dataclass(frozen=True)
class ModuleInfo:
    """What an imported module offers to the importing script."""

    functions: frozenset  # of (name, arity)
    async_functions: frozenset
    constants: frozenset
    uses_closures: bool = False  # it or a module it imports makes closures


# Call targets recorded per call node.
@dataclass(frozen=True)
class ScriptFn:
    name: str
    arity: int


@dataclass(frozen=True)
class NativeFn:
    ns: str
    name: str


@dataclass(frozen=True)
class ModuleFn:
    alias: str
    name: str
    arity: int


@dataclass(frozen=True)
class BuiltinMethod:
    name: str


@dataclass(frozen=True)
class ValueCall:
    pass


@dataclass
class _Binding:
    py: str
    const: bool
    pos: ast.Loc
    name: str
    kind: str  # "let" | "param" | "loop" | "catch"
    used: bool = False
    in_loop: bool = False  # declared inside a loop body: a fresh binding per iteration


@dataclass
class _FnScope:
    """One Python function being resolved: a script fn, the top level or a closure."""

    name: str
    scopes: list = field(default_factory=list)
    parent: "_FnScope | None" = None
    loops: int = 0
    waits: bool = False
    calls: set = field(default_factory=set)
    nonlocals: set = field(default_factory=set)
    snapshots: set = field(default_factory=set)


@dataclass
class Resolution:
    """Everything the compiler needs to know beyond the AST."""

    names: dict = field(default_factory=dict)      # (id(node), slot) -> python name
    targets: dict = field(default_factory=dict)    # id(call node) -> target
    nonlocals: dict = field(default_factory=dict)  # id(closure) -> set of python names
    snapshots: dict = field(default_factory=dict)  # id(closure) -> loop bindings captured
    async_functions: set = field(default_factory=set)  # (name, arity)
    top_async: bool = False
    has_closures: bool = False
    sources: dict = field(default_factory=dict)    # python name -> values it is given
    int_vars: set = field(default_factory=set)     # python names that always hold an int
    constants: set = field(default_factory=set)    # top-level const names
    literal_constants: dict = field(default_factory=dict)  # ... with a known value
    constants_first: bool = False  # ... all defined before any function runs
    diagnostics: list = field(default_factory=list)

    @property
    def errors(self) -> list:
        return [d for d in self.diagnostics if d.severity == "error"]


def closest(name: str, candidates, aliases=None) -> str | None:
    """The candidate ``name`` most likely stands for: its alias if that is a candidate
    (another server's name for ours), else the closest spelling, else None. Every "did you
    mean" hint comes from here, with candidates of the same kind as ``name`` only."""
    alias = aliases.get(name) if aliases else None
    if alias in candidates:
        return alias
    close = difflib.get_close_matches(name, [c for c in candidates if c != name], n=1,
                                      cutoff=0.7)
    return close[0] if close else None


def suggest(name: str, candidates, aliases=None) -> str:
    """" (did you mean 'x'?)" for :func:`closest`, or ""."""
    close = closest(name, candidates, aliases)
    return f" (did you mean '{close}'?)" if close else ""


class Resolver:
    """Walks a module once; see the module docstring."""

    def __init__(self, module: ast.Module, namespaces: dict, imports: dict[str, ModuleInfo],
                 async_methods: frozenset, native_methods: frozenset):
        self.module = module
        self.namespaces = namespaces
        self.imports = imports
        self.async_methods = async_methods
        self.method_names = METHOD_NAMES | native_methods
        self.out = Resolution()
        self.fns = {(f.name, len(f.params)): f for f in module.functions}
        self.fn_names: dict[str, set] = {}
        for name, arity in self.fns:
            self.fn_names.setdefault(name, set()).add(arity)
        self.counter: dict[str, int] = {}
        self.fn: _FnScope | None = None
        self.graph: dict = {}  # (name, arity) | "<top>" -> _FnScope

    # -- reporting -------------------------------------------------------
    def report(self, severity: str, code: str, message: str, pos: ast.Loc) -> None:
        self.out.diagnostics.append(
            Diagnostic(self.module.file, pos[0], pos[1], severity, code, message))

    def error(self, code: str, message: str, pos: ast.Loc) -> None:
        self.report("error", code, message, pos)

    def warn(self, code: str, message: str, pos: ast.Loc) -> None:
        self.report("warning", code, message, pos)

    # -- scopes ----------------------------------------------------------
    def py_name(self, name: str) -> str:
        n = self.counter.get(name, 0)
        self.counter[name] = n + 1
        return local_name(name, n)

    def declare(self, node, slot: str, name: str, pos: ast.Loc, kind: str,
                const: bool = False) -> None:
        b = _Binding(self.py_name(name), const, pos, name, kind, in_loop=self.fn.loops > 0)
        self.out.sources[b.py] = [NOT_INT] if kind in ("param", "catch") else []
        old = self.fn.scopes[-1].get(name)
        if old is not None:
            self.check_used(old)
        self.fn.scopes[-1][name] = b
        self.out.names[(id(node), slot)] = b.py

    def push(self) -> None:
        self.fn.scopes.append({})

    def pop(self) -> None:
        for b in self.fn.scopes.pop().values():
            self.check_used(b)

    def check_used(self, b: _Binding) -> None:
        if not b.used and b.kind == "let" and not b.name.startswith("_"):
            self.warn("unused-variable", f"variable '{b.name}' is never used", b.pos)

    def lookup(self, name: str) -> tuple[_Binding | None, bool]:
        """Find a variable; the flag tells whether it is captured from an outer function.

        A closure that captures a variable declared inside a loop body takes a snapshot
        of it, so closures made in different iterations see their own iteration's value.
        """
        fn, crossed = self.fn, []
        while fn is not None:
            for scope in reversed(fn.scopes):
                if name in scope:
                    b = scope[name]
                    if b.in_loop:
                        for closure in crossed:
                            closure.snapshots.add(b.py)
                    return b, bool(crossed)
            if not fn.name.startswith("<closure"):
                break
            crossed.append(fn)
            fn = fn.parent
        return None, False

    def enter_fn(self, name: str, key) -> _FnScope:
        scope = _FnScope(name, [{}], parent=self.fn)
        self.graph[key] = scope
        self.fn = scope
        return scope

    # -- entry point -----------------------------------------------------
    def resolve(self) -> Resolution:
        for stmt in self.module.body:
            if isinstance(stmt, ast.Let) and stmt.const:
                self.out.constants.add(stmt.name)
        for fn in self.module.functions:
            self.check_shadows(fn)
            self.enter_fn(fn.name, (fn.name, len(fn.params)))
            for i, (p, pos) in enumerate(zip(fn.params, fn.param_pos)):
                self.declare(fn, f"p{i}", p, pos, "param")
            self.block_body(fn.body.body)
            self.pop()
            self.fn = None
        for pos in self.module.plain_interpolations:
            self.warn("interpolation-in-string", "'${' in a \"...\" string is not interpolated; "
                      "use a backtick string `...${x}...`", pos)
        self.enter_fn("<top>", "<top>")
        self.block_body(self.module.body)
        self.pop()
        self.fn = None
        self.propagate_async()
        self.out.literal_constants = literal_constants(self.module)
        self.out.constants_first = constants_first(self.module)
        self.out.int_vars = int_variables(self.out.sources, self.out.names,
                                          self.out.literal_constants)
        return self.out

    def check_shadows(self, fn: ast.FnDef) -> None:
        if fn.name in METHOD_NAMES and fn.params:
            self.warn("shadows-method", f"function '{fn.name}' replaces the built-in method "
                      f"'{fn.name}' for every x.{fn.name}() call in this script", fn.pos)

    def propagate_async(self) -> None:
        waiting = {k for k, s in self.graph.items() if s.waits}
        changed = True
        while changed:
            changed = False
            for key, scope in self.graph.items():
                if key not in waiting and scope.calls & waiting:
                    waiting.add(key)
                    changed = True
        self.out.async_functions = {k for k in waiting if k != "<top>"}
        self.out.top_async = "<top>" in waiting

    def mark_waits(self, pos: ast.Loc, what: str) -> None:
        fn = self.fn
        if fn.name.startswith("<closure"):
            self.error("wait-in-closure", f"{what} waits for I/O and cannot be called inside a "
                       "closure; call it in the function body", pos)
            return
        fn.waits = True

    # -- statements ------------------------------------------------------
    def block_body(self, stmts) -> None:
        ended = reported = None
        for stmt in stmts:
            if ended and not reported:
                self.warn("unreachable", f"unreachable code after '{ended}'", stmt.pos)
                reported = True
            self.stmt(stmt)
            if ended is None and isinstance(stmt, (ast.Return, ast.Throw, ast.Break,
                                                   ast.Continue)):
                ended = type(stmt).__name__.lower()

    def block(self, block: ast.Block) -> None:
        self.push()
        self.block_body(block.body)
        self.pop()

    def stmt(self, s) -> None:
        method = getattr(self, "s_" + type(s).__name__)
        method(s)

    def s_Let(self, s: ast.Let) -> None:
        if s.value is not None:
            self.expr(s.value)
        self.declare(s, "name", s.name, s.pos, "let", s.const)
        self.out.sources[self.out.names[(id(s), "name")]].append(s.value)
        if s.const and self.fn.name == "<top>" and len(self.fn.scopes) == 1:
            self.fn.scopes[-1][s.name].used = True  # readable as global::NAME

    def s_Assign(self, s: ast.Assign) -> None:
        self.expr(s.value)
        root = s.target
        while isinstance(root, (ast.Index, ast.Prop)):
            if isinstance(root, ast.Index):
                self.expr(root.index)
            root = root.obj
        if not isinstance(root, ast.Var):
            self.expr(root)
            return
        b, captured = self.lookup(root.name)
        if b is None:
            self.undefined(root)
            return
        self.out.names[(id(root), "ref")] = b.py
        if b.const:
            self.error("assign-const", f"cannot assign to constant '{root.name}'", s.pos)
        if s.target is root:
            self.out.sources[b.py].append(s.value if s.op == "=" else (s.op[:-1], s.value))
        if s.target is not root or s.op != "=":
            b.used = True
        if captured and s.target is root:
            self.mark_nonlocal(b.py)

    def mark_nonlocal(self, py: str) -> None:
        self.fn.nonlocals.add(py)

    def s_ExprStmt(self, s: ast.ExprStmt) -> None:
        self.expr(s.expr)

    def s_Return(self, s: ast.Return) -> None:
        if s.value is not None:
            self.expr(s.value)

    def s_Throw(self, s: ast.Throw) -> None:
        if s.value is not None:
            self.expr(s.value)

    def s_Break(self, s) -> None:
        if self.fn.loops == 0:
            self.error("break-outside-loop", "'break' outside of a loop", s.pos)

    def s_Continue(self, s) -> None:
        if self.fn.loops == 0:
            self.error("continue-outside-loop", "'continue' outside of a loop", s.pos)

    def s_Import(self, s: ast.Import) -> None:
        if s.alias is not None and s.alias in self.namespaces:
            self.error("import-alias", f"import alias '{s.alias}' hides the native namespace "
                       f"'{s.alias}::'", s.pos)

    def loop_body(self, body: ast.Block, declare=None) -> None:
        self.fn.loops += 1
        self.push()
        if declare:
            declare()
        self.block_body(body.body)
        self.pop()
        self.fn.loops -= 1

    def s_While(self, s: ast.While) -> None:
        self.expr(s.cond)
        self.loop_body(s.body)

    def s_Loop(self, s: ast.Loop) -> None:
        self.loop_body(s.body)

    def s_For(self, s: ast.For) -> None:
        self.expr(s.iterable)

        over_range = isinstance(s.iterable, ast.Binary) and s.iterable.op in ("..", "..=")

        def declare():
            self.declare(s, "var", s.var, s.pos, "loop")
            var = self.out.names[(id(s), "var")]
            self.out.sources[var].append(INT if over_range and s.index_var is None else NOT_INT)
            if s.index_var is not None:
                self.declare(s, "index", s.index_var, s.pos, "loop")
                self.out.sources[self.out.names[(id(s), "index")]].append(INT)

        self.loop_body(s.body, declare)

    def s_Try(self, s: ast.Try) -> None:
        self.block(s.body)
        self.push()
        if s.err_name is not None:
            self.declare(s, "err", s.err_name, s.handler.pos, "catch")
        self.block_body(s.handler.body)
        self.pop()

    # -- expressions -----------------------------------------------------
    def expr(self, e) -> None:
        getattr(self, "e_" + type(e).__name__)(e)

    def exprs(self, items) -> None:
        for e in items:
            self.expr(e)

    def e_Literal(self, e: ast.Literal) -> None:
        """Literals need no resolution."""

    def e_Template(self, e: ast.Template) -> None:
        for part in e.parts:
            if isinstance(part, ast.Block):
                self.block(part)

    def e_ArrayLit(self, e: ast.ArrayLit) -> None:
        self.exprs(e.items)

    def e_MapLit(self, e: ast.MapLit) -> None:
        self.exprs(v for _, v in e.entries)

    def undefined(self, e: ast.Var) -> None:
        visible = set()
        fn = self.fn
        while fn is not None:
            for scope in fn.scopes:
                visible |= set(scope)
            fn = fn.parent if fn.name.startswith("<closure") else None
        hint = suggest(e.name, visible)
        if not hint and e.name in self.out.constants and self.fn.name != "<top>":
            hint = f" (top-level constants are read as global::{e.name} inside functions)"
        self.error("undefined-variable", f"undefined variable '{e.name}'{hint}", e.pos)

    def e_Var(self, e: ast.Var) -> None:
        b, _ = self.lookup(e.name)
        if b is None:
            self.undefined(e)
            return
        b.used = True
        self.out.names[(id(e), "ref")] = b.py

    def e_NsVar(self, e: ast.NsVar) -> None:
        if e.ns == "global":
            if e.name not in self.out.constants:
                self.error("unknown-global", f"no top-level constant '{e.name}'"
                           + suggest(e.name, self.out.constants), e.pos)
        elif e.ns in self.imports:
            if e.name not in self.imports[e.ns].constants:
                self.error("unknown-name", f"module '{e.ns}' has no constant '{e.name}'"
                           + suggest(e.name, self.imports[e.ns].constants), e.pos)
        else:
            self.unknown_namespace(e.ns, e.pos)

    def unknown_namespace(self, ns: str, pos: ast.Loc) -> None:
        names = [n for n in self.namespaces if n] + list(self.imports) + ["global"]
        self.error("unknown-namespace", f"unknown namespace '{ns}::'" + suggest(ns, names), pos)

    def e_Unary(self, e: ast.Unary) -> None:
        self.expr(e.operand)

    def e_Binary(self, e: ast.Binary) -> None:
        self.expr(e.left)
        self.expr(e.right)

    def e_Prop(self, e: ast.Prop) -> None:
        self.expr(e.obj)

    def e_Index(self, e: ast.Index) -> None:
        self.expr(e.obj)
        self.expr(e.index)

    def e_Block(self, e: ast.Block) -> None:
        self.block(e)

    def e_If(self, e: ast.If) -> None:
        for cond, body in e.branches:
            self.expr(cond)
            self.block(body)
        if e.orelse is not None:
            self.block(e.orelse)

    def e_Switch(self, e: ast.Switch) -> None:
        self.expr(e.subject)
        for arm in e.arms:
            if arm.guard is not None:
                self.expr(arm.guard)
            self.expr(arm.body)

    def e_Closure(self, e: ast.Closure) -> None:
        self.out.has_closures = True
        outer = self.fn
        scope = _FnScope(f"<closure {id(e)}>", [{}], parent=outer)
        self.fn = scope
        for i, p in enumerate(e.params):
            self.declare(e, f"p{i}", p, e.pos, "param")
        self.expr(e.body)
        self.pop()
        self.fn = outer
        outer.calls |= scope.calls
        self.out.nonlocals[id(e)] = scope.nonlocals
        self.out.snapshots[id(e)] = scope.snapshots - scope.nonlocals
        # A nonlocal of a nested closure that is not ours is also captured by us.
        if outer.name.startswith("<closure"):
            own = {b.py for s in outer.scopes for b in s.values()}
            outer.nonlocals |= scope.nonlocals - own

    def e_MethodCall(self, e: ast.MethodCall) -> None:
        self.expr(e.obj)
        self.exprs(e.args)
        key = (e.name, len(e.args) + 1)
        if key in self.fns:
            self.out.targets[id(e)] = ScriptFn(*key)
            self.fn.calls.add(key)
            return
        if e.name not in self.method_names and e.name != "call":
            self.error("unknown-method", f"unknown method '{e.name}'"
                       + suggest(e.name, self.method_names | set(self.fn_names)), e.pos)
        self.out.targets[id(e)] = BuiltinMethod(e.name)
        if e.name in self.async_methods:
            self.mark_waits(e.pos, f"method '{e.name}'")

    def e_Call(self, e: ast.Call) -> None:
        self.exprs(e.args)
        n = len(e.args)
        b, _ = self.lookup(e.name)
        if b is not None:
            b.used = True
            self.out.names[(id(e), "ref")] = b.py
            self.out.targets[id(e)] = ValueCall()
            return
        if (e.name, n) in self.fns:
            self.out.targets[id(e)] = ScriptFn(e.name, n)
            self.fn.calls.add((e.name, n))
            return
        if e.name in self.fn_names:
            arities = " or ".join(str(a) for a in sorted(self.fn_names[e.name]))
            self.error("arity", f"function '{e.name}' takes {arities} argument(s), not {n}",
                       e.pos)
            return
        native = self.namespaces.get("", None)
        if native is not None and e.name in native.functions:
            self.native_call(native.functions[e.name], "", e)
            return
        if e.name in self.method_names and n == 0:
            self.error("unknown-function", f"'{e.name}' is a method: call it as "
                       f"value.{e.name}() or {e.name}(value)", e.pos)
            return
        if e.name in self.method_names:
            self.out.targets[id(e)] = BuiltinMethod(e.name)
            if e.name in self.async_methods:
                self.mark_waits(e.pos, f"'{e.name}'")
            return
        candidates = set(self.fn_names) | set(native.functions if native else ()) | \
            self.method_names
        self.error("unknown-function", f"unknown function '{e.name}'"
                   + suggest(e.name, candidates), e.pos)

    def native_call(self, native, ns: str, e) -> None:
        n = len(e.args)
        full = f"{ns}::{native.name}" if ns else native.name
        if not native.accepts(n):
            self.error("arity", f"'{full}' takes {_arity_text(native)} argument(s), not {n} "
                       f"({ns + '::' if ns else ''}{native.signature()})", e.pos)
            return
        self.out.targets[id(e)] = NativeFn(ns, native.name)
        if native.is_async:
            self.mark_waits(e.pos, f"'{full}'")
        if native.check is not None:
            values = [_lint_value(a) for a in e.args]
            message = native.check(values)
            if message:
                self.error("native-argument", f"{full}: {message}",
                           _problem_pos(e, values, message))

    def e_NsCall(self, e: ast.NsCall) -> None:
        self.exprs(e.args)
        n = len(e.args)
        if e.ns in self.imports:
            info = self.imports[e.ns]
            if (e.name, n) in info.functions:
                self.out.targets[id(e)] = ModuleFn(e.ns, e.name, n)
                if (e.name, n) in info.async_functions:
                    self.mark_waits(e.pos, f"'{e.ns}::{e.name}'")
                return
            names = {f for f, _ in info.functions}
            if e.name in names:
                self.error("arity", f"'{e.ns}::{e.name}' does not take {n} argument(s)", e.pos)
            else:
                self.error("unknown-function", f"module '{e.ns}' has no function '{e.name}'"
                           + suggest(e.name, names), e.pos)
            return
        ns = self.namespaces.get(e.ns) if e.ns else None
        if ns is None:
            self.unknown_namespace(e.ns, e.pos)
            return
        native = ns.functions.get(e.name)
        if native is None:
            self.error("unknown-function", f"unknown function '{e.ns}::{e.name}'"
                       + suggest(e.name, ns.functions), e.pos)
            return
        self.native_call(native, e.ns, e)


class _Dynamic:
    """Stands for an argument whose value is not a literal (for native lint checks)."""

    def __repr__(self) -> str:
        return "<dynamic>"


_DYNAMIC = _Dynamic()
DYNAMIC = _DYNAMIC


class ArgumentProblem(str):
    """A lint hook's message that says where the problem is: ``at`` = the argument's
    index, then the keys of map literals inside it (``(1, "reason")``: the value of
    ``reason`` in the second argument, a map)."""

    at: tuple = ()

    def __new__(cls, message: str, *at):
        problem = super().__new__(cls, message)
        problem.at = at
        return problem


def _problem_pos(call, values: list, message: str):
    """Where a lint hook's ``message`` points: the node its ``at`` names (as far as the
    literals go), else the first argument the hook could see, else the call."""
    at = getattr(message, "at", ())
    if at and at[0] < len(call.args):
        node = call.args[at[0]]
        for key in at[1:]:
            if not isinstance(node, ast.MapLit):
                break
            node = dict(node.entries).get(key, node)
        return node.pos
    return next((a.pos for a, v in zip(call.args, values) if v is not _DYNAMIC), call.pos)


def _lint_value(node):
    """What a native's lint hook sees of an argument: a literal's value, a map or array
    literal as a dict or tuple of what it sees of their items, else DYNAMIC."""
    if isinstance(node, ast.Literal):
        return node.value
    if isinstance(node, ast.MapLit):
        return {key: _lint_value(value) for key, value in node.entries}
    if isinstance(node, ast.ArrayLit):
        return tuple(_lint_value(item) for item in node.items)
    return _DYNAMIC


def _arity_text(native) -> str:
    if native.max_args is None:
        return f"at least {native.min_args}"
    if native.min_args == native.max_args:
        return str(native.min_args)
    return f"{native.min_args} to {native.max_args}"


def resolve(module: ast.Module, namespaces: dict, imports: dict[str, ModuleInfo] | None = None,
            async_methods: frozenset = frozenset(),
            native_methods: frozenset = frozenset()) -> Resolution:
    """Resolve a module; see :class:`Resolution`."""
    return Resolver(module, namespaces, imports or {}, async_methods, native_methods).resolve()
