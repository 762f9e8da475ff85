"""Static checks that need types: the entry points a host calls, members of native
objects, and the option maps of natives. Runs after :mod:`vsl.resolve`, on its bindings.

Design. The language knows nothing of its host: a host (the mail server) describes the
functions it calls as data (:class:`EntryPoints`, with its own word for them in messages
and codes) and the linter's caller passes them in. Types
are known in four cases only, so that every finding is certain:

- the one parameter of an entry point has the host's type, and is reached "in" that
  entry; a script function whose parameter only ever receives such a parameter (directly
  or through other such functions, as the call graph shows) inherits its type and the
  entries it is reached in, so a helper called from an entry is checked as that entry;
- a variable given one value only, by a native whose Python return annotation is a
  native object class (``iprev::check`` gives an ``iprev_result``);
- a property of the entries' argument that the host types (``EntryPoints.member_types``);
- a literal (the values an entry point returns).

Members of a typed value are checked against its class (``vsl_props``, ``vsl_methods``);
members the host restricts to some entries (``EntryPoints.available``) against the
entries they are reached in. Such a member used where it is missing is an error only when
the access is certain to fail whenever it runs (:meth:`Checker.availability`): outside any
``try`` and any closure (and, in a helper, not under a condition, and reached only from
entries that lack it); otherwise a warning, or nothing when a ``try`` guards it and some
entry has it. A closure is not a ``try``: it only caps the finding at a warning, since it
may be called inside one (:class:`Guard`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Mapping, NamedTuple

from . import ast
from .methods import ANY_METHODS, method_arities
from .diagnostics import Diagnostic
from .infer import node_fields, nodes
from .resolve import NativeFn, Resolution, ScriptFn, closest, suggest
from .values import type_name


@dataclass(frozen=True)
class EntryPoints:
    """The functions a host calls with one argument, in the order it calls them."""

    names: tuple[str, ...]
    prefix: str    # every function whose name starts so must be one of them ("on_")
    param: type    # the NativeObject class of their argument
    returns: type  # the NativeObject class each must return
    available: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    # ^ member of param -> first and last index in names where it can be used
    member_types: Mapping[str, type] = field(default_factory=dict)
    # ^ property of param -> the NativeObject class it holds
    aliases: Mapping[str, str] = field(default_factory=dict)
    # ^ names other servers use for entries and members -> ours (the first hint)
    return_hint: str = ""  # how to make a value of ``returns``, for messages
    foreign_scripts: tuple[str, ...] = ()
    # ^ extensions of other hosts' scripts (".rhai"), named when a directory has none of ours
    kind: str = "entry"  # the host's word for them, in messages and codes ("stage")

    def code(self, rule: str) -> str:
        """The code of a finding about entry points: ``rule`` in the host's word
        (``"{kind}-arity"`` -> ``"stage-arity"``)."""
        return rule.format(kind=self.kind)


def _article(type_text: str) -> str:
    if type_text == "()":
        return type_text
    return ("an " if type_text[0] in "aeiou" else "a ") + type_text


class Checker:
    """Checks one resolved module; :meth:`run` returns the findings."""

    def __init__(self, module: ast.Module, res: Resolution, namespaces: dict,
                 entries: EntryPoints | None):
        self.module, self.res, self.namespaces, self.entries = module, res, namespaces, entries
        self.out: list[Diagnostic] = []
        self.fns = {(f.name, len(f.params)): f for f in module.functions}
        self.reached: dict[str, dict[int, Guard]] = {}
        # ^ python name of a param -> entries it is reached in -> the weakest guard of a way in
        self.helper_of: dict[str, str] = {}  # ... of a helper function -> its name
        self._let_types: dict[str, type | None] = {}
        self.fn_of: dict[str, tuple] = {}  # python name of a tracked param -> its function
        self._situations: dict[tuple, dict[int, Where]] = {}  # function key -> situations()

    def error(self, code: str, message: str, pos: ast.Loc) -> None:
        self.report("error", code, message, pos)

    def report(self, severity: str, code: str, message: str, pos: ast.Loc) -> None:
        self.out.append(Diagnostic(self.module.file, pos[0], pos[1], severity, code, message))

    def run(self) -> list[Diagnostic]:
        """Every finding of the module, entry points first."""
        if self.entries is not None:
            self.check_entry_names()
            self.track_entry_params()
        for node in nodes((self.module.body, self.module.functions)):
            self.check_node(node)
        if self.entries is not None:
            for fn in self.module.functions:
                if fn.name in self.entries.names and len(fn.params) == 1:
                    self.check_returns(fn)
                self.check_discarded(fn.body, used=True)
        return self.out

    # -- entry point names --------------------------------------------------
    def check_entry_names(self) -> None:
        entries = self.entries
        names, kind = entries.names, entries.kind
        for fn in self.module.functions:
            if fn.name in names:
                if len(fn.params) != 1:
                    self.error(entries.code("{kind}-arity"), f"{kind} function '{fn.name}' must "
                               f"take exactly one parameter ({entries.param.vsl_type}), not "
                               f"{len(fn.params)}", fn.pos)
            elif fn.name.startswith(entries.prefix):
                self.error(entries.code("unknown-{kind}"), f"'{fn.name}' is not a {kind} function"
                           + (self.hint(fn.name, names) or f" ({kind}s: {', '.join(names)})"),
                           fn.pos)

    def hint(self, name: str, candidates) -> str:
        """" (did you mean 'x'?)" among ``candidates``, the host's aliases first."""
        return suggest(name, candidates, self.entries.aliases if self.entries else None)

    # -- which parameters hold the entry's argument, reached in which entries --
    def _param(self, key, i: int) -> str:
        return self.res.names[(id(self.fns[key]), f"p{i}")]

    def _reassigned(self, py: str) -> bool:
        """Whether a parameter is given another value in its function (``ctx = x``)."""
        return len(self.res.sources.get(py, ())) > 1

    def _call_sites(self) -> dict[tuple, list]:
        """(function key, parameter index) -> [(calling function key | None, argument,
        the call)]."""
        sites: dict[tuple, list] = {}
        callers = [(None, self.module.body)] + [(k, f.body) for k, f in self.fns.items()]
        for caller, body in callers:
            for node in nodes(body):
                target = self.res.targets.get(id(node))
                if not isinstance(target, ScriptFn):
                    continue
                args = ((node.obj,) if isinstance(node, ast.MethodCall) else ()) + node.args
                key = (target.name, target.arity)
                for i, arg in enumerate(args):
                    sites.setdefault((key, i), []).append((caller, arg, node))
        return sites

    def _passed_param(self, caller, arg, params: dict) -> str | None:
        """The python name of ``caller``'s parameter that ``arg`` is, if one of ``params``."""
        if caller is None or not isinstance(arg, ast.Var):
            return None
        py = self.res.names.get((id(arg), "ref"))
        return py if py in params else None

    def track_entry_params(self) -> None:
        """Which parameters hold an entry's argument, in which entries, and whether every
        call chain from that entry passes through a ``try`` or a closure (:class:`Guard`)."""
        params = {self._param(k, 0): {self.entries.names.index(k[0]): Guard.NONE}
                  for k in self.fns if k[0] in self.entries.names and k[1] == 1}
        helpers = {self._param(key, i): (key[0], calls)
                   for (key, i), calls in self._call_sites().items()
                   if key[0] not in self.entries.names}
        candidates = {py: {} for py in helpers}
        changed = True
        while changed:  # drop helpers given anything else; widen the entries reached
            changed = False
            for py, (_, calls) in helpers.items():
                if py not in candidates:
                    continue
                known = {**params, **candidates}
                passed = [self._passed_param(caller, arg, known) for caller, arg, _ in calls]
                if None in passed:
                    del candidates[py]
                    changed = True
                    continue
                reached: dict[int, Guard] = {}
                for param, (caller, _, call) in zip(passed, calls):
                    guard = self.where(caller, call).guard
                    for entry, guard_before in known[param].items():
                        way_in = max(guard_before, guard)
                        reached[entry] = min(reached.get(entry, Guard.TRY), way_in)
                if reached != candidates[py]:
                    candidates[py] = reached
                    changed = True
        reached = {**params, **{py: r for py, r in candidates.items() if r}}
        self.reached = {py: r for py, r in reached.items() if not self._reassigned(py)}
        self.helper_of = {py: helpers[py][0] for py in candidates}
        self.fn_of = {self._param(key, i): key for key in self.fns for i in range(key[1])}

    def where(self, fn_key: tuple, node) -> Where:
        """How surely ``node``, in the function ``fn_key``, runs when that function does."""
        if fn_key not in self._situations:
            self._situations[fn_key] = situations(self.fns[fn_key].body)
        return self._situations[fn_key].get(id(node), Where())

    # -- types --------------------------------------------------------------
    def type_of(self, e) -> type | None:
        """The native object class ``e`` always evaluates to, when that is certain."""
        if isinstance(e, ast.Var):
            py = self.res.names.get((id(e), "ref"))
            if py in self.reached:
                return self.entries.param
            return self._let_type(py)
        if isinstance(e, ast.Prop):
            held = self.type_of(e.obj) is self.entries.param if self.entries else False
            return self.entries.member_types.get(e.name) if held else None
        target = self.res.targets.get(id(e))
        if isinstance(target, NativeFn):
            return self.namespaces[target.ns].functions[target.name].returns
        return None

    def _let_type(self, py: str | None) -> type | None:
        if py not in self._let_types:
            self._let_types[py] = None  # a variable given itself: unknown
            given = self.res.sources.get(py, ())
            if len(given) == 1 and isinstance(given[0], ast.Node):
                self._let_types[py] = self.type_of(given[0])
        return self._let_types[py]

    # -- members and options --------------------------------------------------
    def check_node(self, node) -> None:
        if isinstance(node, ast.Prop):
            self.check_member(node, node.name, "property")
        elif isinstance(node, ast.MethodCall) and \
                not isinstance(self.res.targets.get(id(node)), ScriptFn):
            self.check_member(node, node.name, "method")
            self.check_method_arity(node)
        elif isinstance(node, (ast.Call, ast.NsCall)):
            self.check_options(node)
            self.check_native_use(node)

    def check_member(self, node, name: str, kind: str) -> None:
        cls = self.type_of(node.obj)
        if cls is None:
            return
        members = cls.vsl_props if kind == "property" else cls.vsl_methods
        if name not in members and (kind == "property" or name not in ANY_METHODS):
            code = "unknown-property" if kind == "property" else "unknown-method"
            self.error(code, f"{cls.vsl_type} has no {kind} '{name}'"
                       + self.hint(name, members), node.pos)
            return
        py = self.res.names.get((id(node.obj), "ref"))
        if py in self.reached and name in self.entries.available:
            label = f"{cls.vsl_type}.{name}" + ("()" if kind == "method" else "")
            self.check_available(label, self.entries.available[name], py, node)

    def check_method_arity(self, node) -> None:
        """``s.len(1, 2)``: a method given a number of arguments no method of that name
        takes (of the receiver's type when it is known)."""
        ranges, n = method_arities(node.name, self.type_of(node.obj)), len(node.args)
        if ranges and not any(lo <= n <= hi for lo, hi in ranges):
            want = " or ".join(sorted(str(lo) if lo == hi else f"{lo} to {hi}"
                                      for lo, hi in ranges))
            self.error("arity", f"method '{node.name}' takes {want} argument(s), not {n}",
                       node.pos)

    def check_available(self, label: str, span: tuple[int, int], py: str, node) -> None:
        """A finding where ``label`` (a member of the entries' argument ``py``, used at
        ``node``) is missing in an entry ``py`` is reached in; see :meth:`availability`."""
        first, last = span
        reached = self.reached[py]
        missing = sorted((guard, entry) for entry, guard in reached.items()
                         if not first <= entry <= last)
        if not missing:
            return
        severity = self.availability(self.where(self.fn_of[py], node), py,
                                     all_missing=len(missing) == len(reached),
                                     way_in=missing[0][0])
        if severity is None:
            return
        names, entry = self.entries.names, missing[0][1]
        via = f" ({self.helper_of[py]} is called from {names[entry]})" \
            if py in self.helper_of else ""
        when = f"it is available from {names[first]} on" if entry < first else \
            f"only up to {names[last]}"
        self.report(severity, self.entries.code("{kind}-availability"),
                    f"{label} is not available in {names[entry]}{via}: {when}", node.pos)

    def availability(self, where: Where, py: str, all_missing: bool,
                     way_in: Guard) -> str | None:
        """The severity of a member used where some entry lacks it (``way_in``: the weakest
        guard on the ways in from those entries): an error only when the access fails
        whenever it runs (none of the entries reaching it has the member, no ``try`` may
        catch the failure, no closure holds it, and in a helper no condition may keep it
        from running); a warning when it may fail; None when a ``try`` guards it and it
        can succeed (a helper shared by entries, guarding the member for some of them)."""
        guard = max(where.guard, way_in)
        if guard is Guard.TRY:
            return "warning" if all_missing else None
        certain = all_missing and guard is Guard.NONE and \
            not (py in self.helper_of and where.conditional)
        return "error" if certain else "warning"

    def check_native_use(self, node) -> None:
        """A native given the entries' argument, where the member it needs is not there."""
        target = self.res.targets.get(id(node))
        if not isinstance(target, NativeFn) or not node.args or self.entries is None:
            return
        uses = self.namespaces[target.ns].functions[target.name].uses
        py = self.res.names.get((id(node.args[0]), "ref")) \
            if isinstance(node.args[0], ast.Var) else None
        if uses in self.entries.available and py in self.reached:
            full = f"{target.ns}::{target.name}" if target.ns else target.name
            self.check_available(f"{full}()", self.entries.available[uses], py, node)

    def check_options(self, node) -> None:
        target = self.res.targets.get(id(node))
        if not isinstance(target, NativeFn) or not node.args or \
                not isinstance(node.args[-1], ast.MapLit):
            return
        known = self.namespaces[target.ns].functions[target.name].options
        if not known:
            return
        full = f"{target.ns}::{target.name}" if target.ns else target.name
        for key, value in node.args[-1].entries:
            if key not in known:
                close = closest(key, known)
                hint = f"did you mean '{close}'?; " if close else ""
                self.error("unknown-option", f"{full}: unknown option '{key}' ({hint}known: "
                           f"{', '.join(known)})", value.pos)

    # -- what entry points return ---------------------------------------------
    def check_returns(self, fn: ast.FnDef) -> None:
        for value, pos, note, always in returned_values(fn):
            found = value_type(value, self.type_of)
            if found is not None and found != self.entries.returns.vsl_type:
                self.report("error" if always else "warning",
                            self.entries.code("{kind}-return"),
                            _return_message(fn.name, found, self.entries, note), pos)

    def check_discarded(self, block: ast.Block, used: bool) -> None:
        """A warning for each value of the type entry points return (a status) made where
        it is dropped: ``if bad { status::deny(...); } status::next()`` accepts. ``used``:
        whether ``block``'s value is (a function's body is returned, a loop's is not)."""
        last = len(block.body) - 1
        for i, stmt in enumerate(block.body):
            if isinstance(stmt, ast.ExprStmt):
                self._check_discarded_expr(stmt.expr, used and i == last)
            elif isinstance(stmt, (ast.While, ast.For, ast.Loop)):
                self.check_discarded(stmt.body, used=False)
            elif isinstance(stmt, ast.Try):
                self.check_discarded(stmt.body, used=False)
                self.check_discarded(stmt.handler, used=False)

    def _check_discarded_expr(self, e, used: bool) -> None:
        if isinstance(e, ast.Block):
            self.check_discarded(e, used)
        elif isinstance(e, ast.If):
            for body in (*(body for _, body in e.branches), e.orelse):
                if body is not None:
                    self.check_discarded(body, used)
        elif isinstance(e, ast.Switch):
            for arm in e.arms:
                self._check_discarded_expr(arm.body, used)
        elif not used and self.type_of(e) is self.entries.returns:
            kind = self.entries.returns.vsl_type
            self.report("warning", f"discarded-{kind}",
                        f"this {kind} is dropped: only the value a function returns counts "
                        f"(write `return ...;`, or make it the function's last expression)",
                        e.pos)


class Guard(IntEnum):
    """What may keep a failing access from failing the entry, weakest first."""

    NONE = 0
    CLOSURE = 1  # a closure may be called inside a try: at most a warning
    TRY = 2      # a try body: the failure is caught


@dataclass(frozen=True)
class Where:
    """How surely a node runs when its function does."""

    caught: bool = False       # inside a try body
    conditional: bool = False  # under if/switch/loop/catch/&&/||/??, in a closure, or
    #                            after a statement that may return or throw
    in_closure: bool = False   # inside a closure (it may be called inside a try)

    @property
    def guard(self) -> Guard:
        return Guard.TRY if self.caught else Guard.CLOSURE if self.in_closure else Guard.NONE


_SHORT_CIRCUIT = ("&&", "||", "??")
_COMPARISONS = ("==", "!=", "<", "<=", ">", ">=", "in", "!in", "&&", "||")  # give a bool


def situations(body: ast.Block) -> dict[int, Where]:
    """id(node) -> :class:`Where`, for every node in a function's ``body``."""
    out: dict[int, Where] = {}
    _situate(body, Where(), out)
    return out


def _situate(node, where: Where, out: dict) -> bool:
    """Note ``where`` for ``node`` and the nodes in it; whether ``node`` holds a ``return``
    or ``throw`` outside closures (what follows it in its block may not run)."""
    if isinstance(node, (tuple, list)):
        return any([_situate(item, where, out) for item in node])  # each item, not the first
    if not isinstance(node, ast.Node):
        return False
    out[id(node)] = where
    leaves = isinstance(node, (ast.Return, ast.Throw))
    if isinstance(node, ast.Block):
        for stmt in node.body:
            leaves |= _situate(stmt, replace(where, conditional=True) if leaves else where,
                               out)
        return leaves
    for child, place in _places(node, where):
        leaves |= _situate(child, place, out)
    return leaves and not isinstance(node, ast.Closure)


def _places(node: ast.Node, where: Where) -> list[tuple]:
    """(child, its :class:`Where`) for each child of ``node`` (not a Block) at ``where``."""
    later = replace(where, conditional=True)  # what may not run
    if isinstance(node, ast.Try):
        return [(node.body, replace(where, caught=True)), (node.handler, later)]
    if isinstance(node, ast.Closure):
        return [(node.body, replace(later, in_closure=True))]
    if isinstance(node, ast.If):
        tests = [(test, later if i else where) for i, (test, _) in enumerate(node.branches)]
        return tests + [(body, later) for _, body in node.branches] + [(node.orelse, later)]
    if isinstance(node, ast.Switch):
        return [(node.subject, where), (node.arms, later)]
    if isinstance(node, ast.Binary) and node.op in _SHORT_CIRCUIT:
        return [(node.left, where), (node.right, later)]
    if isinstance(node, (ast.While, ast.For)):
        first = node.cond if isinstance(node, ast.While) else node.iterable
        return [(first, where), (node.body, later)]
    if isinstance(node, ast.Loop):
        return [(node.body, later)]
    return [(getattr(node, name), where) for name in node_fields(type(node))]


def _return_message(name: str, found: str, entries: EntryPoints, note: str = "") -> str:
    hint = f" (use {entries.return_hint})" if entries.return_hint else ""
    why = f": {note}" if note else ""
    return f"{name} returns {_article(found)}, not {_article(entries.returns.vsl_type)}" \
        f"{why}{hint}"


class Ending(NamedTuple):
    """A value a function can return: ``value`` None for ``()``, by ``return;`` or by
    running off its end, which ``note`` then explains; ``always`` is False where that
    end is reached only on some inputs (an `if` without `else`)."""

    value: object
    pos: tuple
    note: str = ""
    always: bool = True


def returned_values(fn: ast.FnDef) -> list[Ending]:
    """Every value ``fn`` can return (see Ending)."""
    found = [Ending(s.value, s.pos) for s in nodes(fn.body, closures=False)
             if isinstance(s, ast.Return)]
    return found + list(_tails(fn.body, fn.pos))


def _tails(block: ast.Block, pos):
    """An Ending for each way control reaches the end of ``block`` with its value: its
    last expression (through if/switch), or None (``()``) where it ends without one.
    ``pos``: where ``block`` starts."""
    if not block.body:
        yield Ending(None, pos, "an empty body gives ()")
        return
    last = block.body[-1]
    if isinstance(last, (ast.Return, ast.Throw, ast.Loop)) or _endless(last):
        return  # no end to reach (a loop's `break` is not followed)
    if isinstance(last, ast.Try):
        if any(True for _ in (*_tails(last.body, last.pos), *_tails(last.handler, last.pos))):
            yield Ending(None, last.pos, "a `try` statement gives ()")
        return
    if not isinstance(last, ast.ExprStmt):
        yield Ending(None, last.pos, "a body ending in a statement gives ()")
        return
    e = last.expr
    if isinstance(e, ast.Block):
        yield from _tails(e, e.pos)
    elif isinstance(e, ast.If):
        for _, body in e.branches:
            yield from _tails(body, body.pos)
        if e.orelse is not None:
            yield from _tails(e.orelse, e.orelse.pos)
        else:
            yield Ending(None, e.pos, "an `if` without `else` gives () when no branch is "
                         "taken", always=False)
    elif isinstance(e, ast.Switch):
        for arm in e.arms:
            if isinstance(arm.body, ast.Block):
                yield from _tails(arm.body, arm.body.pos)
            else:
                yield Ending(arm.body, arm.body.pos)
        if not _exhaustive(e):
            yield Ending(None, e.pos, "a `switch` without a `_` arm gives () when no arm "
                         "matches", always=False)
    else:
        yield Ending(e, e.pos)


def _endless(stmt) -> bool:
    """``while true { ... }`` with no ``break``: left only by return or throw, as ``loop``
    (a ``loop`` with a ``break`` is not followed either)."""
    return isinstance(stmt, ast.While) and isinstance(stmt.cond, ast.Literal) and \
        stmt.cond.value is True and \
        not any(isinstance(n, ast.Break) for n in nodes(stmt.body, closures=False))


def _exhaustive(switch: ast.Switch) -> bool:
    """Whether an arm matches every value: a ``_`` arm, or arms for both booleans on a
    comparison or a negation (a switch over anything else may hold a string)."""
    unguarded = {p for arm in switch.arms if arm.guard is None for p in arm.patterns
                 if p is ast.WILDCARD or isinstance(p, bool)}
    boolean = isinstance(switch.subject, ast.Unary) and switch.subject.op == "!" or \
        isinstance(switch.subject, ast.Binary) and switch.subject.op in _COMPARISONS
    return ast.WILDCARD in unguarded or boolean and {True, False} <= unguarded


def value_type(e, type_of) -> str | None:
    """The vSL type name of a returned value when it is certain (``type_of``: the native
    object class of an expression, or None)."""
    if e is None:
        return "()"
    if isinstance(e, ast.Literal):
        return type_name(e.value)
    if isinstance(e, ast.Template):
        return "string"
    if isinstance(e, (ast.ArrayLit, ast.MapLit)):
        return "array" if isinstance(e, ast.ArrayLit) else "map"
    cls = type_of(e)
    return cls.vsl_type if cls is not None else None


def wrong_return(script, entries: EntryPoints, name: str, value) -> str | None:
    """At run time: None if ``value``, returned by the entry point ``name`` of ``script``,
    is of the type entry points return; else the error, at the one return that can have
    given such a value (``main.vsl:4:9: on_x returned a string, ...``), or at the
    function when several can."""
    if isinstance(value, entries.returns):
        return None
    fn = next(f for f in script.module.functions if f.name == name and len(f.params) == 1)
    found = type_name(value)

    def native_class(e):
        native = script.engine.namespaces.get(e.ns) if isinstance(e, ast.NsCall) else None
        function = native.functions.get(e.name) if native else None
        return function.returns if function else None

    sites = [end.pos for end in returned_values(fn)
             if value_type(end.value, native_class) in (None, found)]
    line, col = sites[0] if len(sites) == 1 else fn.pos
    return f"{script.file}:{line}:{col}: " + \
        _return_message(name, found, entries).replace(" returns ", " returned ", 1)


def check(module: ast.Module, res: Resolution, namespaces: dict,
          entries: EntryPoints | None = None) -> list[Diagnostic]:
    """The findings of :class:`Checker` for one resolved module."""
    return Checker(module, res, namespaces, entries).run()
