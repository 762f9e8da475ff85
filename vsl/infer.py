"""Which variables provably always hold an integer (so compiled code can skip type checks),
and which top-level constants are literals (their value is known when compiling).

The resolver records every value a variable is given; a variable is an integer
variable when each of those values is an integer expression, assuming the same of
the other integer variables (the largest such set, found by iteration).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import fields

from . import ast
from .values import I64_MAX, I64_MIN

INT = "int"        # a source that is always an integer (a range loop variable, an index)
NOT_INT = "other"  # a source of unknown type (a parameter, a caught error, ...)
ARITHMETIC = frozenset({"+", "-", "*", "/", "%", "**"})


NOT_LITERAL = object()  # literal_value() of an expression that is not made of literals


def literal_value(e):
    """The value of an expression made of literals only (arrays as tuples, maps as dicts),
    else NOT_LITERAL."""
    if isinstance(e, ast.Literal):
        return e.value
    if isinstance(e, ast.ArrayLit):
        items = tuple(literal_value(item) for item in e.items)
        return NOT_LITERAL if any(item is NOT_LITERAL for item in items) else items
    if isinstance(e, ast.MapLit):
        entries = {key: literal_value(value) for key, value in e.entries}
        return NOT_LITERAL if any(v is NOT_LITERAL for v in entries.values()) else entries
    return NOT_LITERAL


def _is_const(stmt) -> bool:
    return isinstance(stmt, ast.Let) and stmt.const


def literal_constants(module: ast.Module) -> dict:
    """Top-level constants declared once, with a literal value: name -> value."""
    decls = Counter(s.name for s in module.body if _is_const(s))
    found = {s.name: literal_value(s.value) for s in module.body
             if _is_const(s) and decls[s.name] == 1}
    return {name: value for name, value in found.items() if value is not NOT_LITERAL}


_PURE = (ast.Literal, ast.Var, ast.Unary, ast.Binary, ast.Prop, ast.Index, ast.ArrayLit,
         ast.MapLit, ast.Template)


def _runs_no_code(e) -> bool:
    """Whether evaluating ``e`` cannot run a function or read a constant."""
    if isinstance(e, (tuple, list)):
        return all(_runs_no_code(item) for item in e)
    if isinstance(e, ast.Node):
        return isinstance(e, _PURE) and all(_runs_no_code(getattr(e, f.name))
                                             for f in fields(e))
    return True  # a position, an operator, a name, a literal's value


def constants_first(module: ast.Module) -> bool:
    """Whether the top level defines every constant before any function can run: only
    imports and lets that call nothing come before its last constant. Code can then read
    ``global::X`` without checking that it is defined yet."""
    body = module.body
    last = max((i for i, s in enumerate(body) if _is_const(s)), default=-1)
    return all(isinstance(s, ast.Import) or (isinstance(s, ast.Let) and _runs_no_code(s.value))
               for s in body[:last + 1])


def constant_of(e, consts: dict):
    """The literal value of ``global::NAME`` (NOT_LITERAL for any other expression)."""
    if isinstance(e, ast.NsVar) and e.ns == "global":
        return consts.get(e.name, NOT_LITERAL)
    return NOT_LITERAL


def _all_ints(items) -> bool:
    return all(type(item) is int for item in items)


def _int_or_unit(e, names: dict, ints: set, consts: dict, calls=None) -> bool:
    """An integer, or ``()`` for a key missing from a constant map of integers."""
    if isinstance(e, (ast.Index, ast.Prop)):
        value = constant_of(e.obj, consts)
        if type(value) is dict and _all_ints(value.values()):
            return True
    return is_int_expr(e, names, ints, consts, calls)


def is_int_expr(e, names: dict, ints: set, consts: dict, calls=None) -> bool:
    """Whether ``e`` always evaluates to an integer (or fails); ``consts``: the
    literal constants; ``calls(e, is_int)``: whether a call does (see int_functions)."""
    if isinstance(e, ast.Literal):
        return type(e.value) is int
    if isinstance(e, ast.Var):
        return names.get((id(e), "ref")) in ints
    if isinstance(e, ast.NsVar):
        return type(constant_of(e, consts)) is int
    if isinstance(e, ast.Index):  # an item of a constant array of integers
        value = constant_of(e.obj, consts)
        return type(value) is tuple and _all_ints(value)
    if isinstance(e, ast.Unary):
        return e.op == "-" and is_int_expr(e.operand, names, ints, consts, calls)
    if isinstance(e, ast.Binary):
        if e.op == "??":
            return is_int_expr(e.right, names, ints, consts, calls) and \
                _int_or_unit(e.left, names, ints, consts, calls)
        return e.op in ARITHMETIC and is_int_expr(e.left, names, ints, consts, calls) and \
            is_int_expr(e.right, names, ints, consts, calls)
    if isinstance(e, ast.Call) and calls is not None:
        return calls(e, lambda arg: is_int_expr(arg, names, ints, consts, calls))
    return False


def is_i64_expr(e, names: dict, ints: set, consts: dict, i64_vars: set) -> bool:
    """Whether ``e`` always evaluates to an int within the i64 bounds (or fails): an int
    literal, a variable of ``i64_vars``, or arithmetic on int expressions (whose result
    is checked for overflow)."""
    if isinstance(e, ast.Literal):
        return type(e.value) is int and I64_MIN <= e.value <= I64_MAX
    if isinstance(e, ast.Var):
        return names.get((id(e), "ref")) in i64_vars
    if isinstance(e, ast.Binary) and e.op in ARITHMETIC or \
            isinstance(e, ast.Unary) and e.op == "-":
        return is_int_expr(e, names, ints, consts)
    return False


_ORDERS = frozenset({"<", "<=", ">", ">=", "==", "!="})
_FIELDS: dict[type, tuple[str, ...]] = {}  # node class -> the fields that may hold nodes


def node_fields(cls) -> tuple[str, ...]:
    """The fields of a node class that may hold nodes (not its position, name or op)."""
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = tuple(f.name for f in fields(cls)
                                     if f.name not in ("pos", "op", "name"))
    return found


def nodes(node, closures: bool = True):
    """Every AST node in ``node`` (a node, or a tuple or list of them; itself included),
    depth first; without what is inside closures if not ``closures`` (a ``return``
    there is the closure's own)."""
    if isinstance(node, ast.Node):
        if isinstance(node, ast.Closure) and not closures:
            return
        yield node
        for name in node_fields(type(node)):
            yield from nodes(getattr(node, name), closures)
    elif isinstance(node, (tuple, list)):
        for item in node:
            yield from nodes(item, closures)


def _scan(body: ast.Block, params: set, names: dict) -> tuple[list, bool]:
    """One walk of a function's body, closures aside: the values of its ``return``
    statements, and whether a parameter is an operand of arithmetic or a comparison
    (where an int body drops the parameter's type tests)."""
    values, used = [], False
    todo: list = list(body.body)
    while todo:
        node = todo.pop()
        cls = node.__class__
        if cls is tuple or cls is list:
            todo.extend(node)
            continue
        if not isinstance(node, ast.Node) or cls is ast.Closure:
            continue
        if cls is ast.Return:
            values.append(node.value)
        elif cls is ast.Binary and not used and (node.op in ARITHMETIC or node.op in _ORDERS):
            used = any(names.get((id(operand), "ref")) in params
                       for operand in (node.left, node.right))
        todo.extend(getattr(node, name) for name in _FIELDS.get(cls) or node_fields(cls))
    return values, used


def _tail(block: ast.Block):
    """The expressions that may be the value of a block (None: ``()``)."""
    last = block.body[-1] if block.body else None
    if isinstance(last, (ast.Return, ast.Throw, ast.Break, ast.Continue)):
        return
    if not isinstance(last, ast.ExprStmt):
        yield None
    elif isinstance(last.expr, ast.If):
        for _, branch in last.expr.branches:
            yield from _tail(branch)
        yield from _tail(last.expr.orelse) if last.expr.orelse else [None]
    elif isinstance(last.expr, ast.Block):
        yield from _tail(last.expr)
    else:
        yield last.expr


def int_functions(functions: dict, params: dict, callee, names: dict, ints: set,
                  consts: dict) -> set:
    """The keys of the functions that return an int whenever their parameters are ints
    (the largest such set, found by iteration, as int_variables), among those using a
    parameter in arithmetic or a comparison. ``functions``: key ->
    body of each candidate; ``params``: key -> its parameters' Python names;
    ``callee(call)``: the key of the script function a call runs, or None."""
    found = set(functions)

    def calls(e, is_int) -> bool:
        return callee(e) in found and all(is_int(arg) for arg in e.args)

    def all_ints(key, values) -> bool:
        known = ints | set(params[key])
        return all(value is not None and is_int_expr(value, names, known, consts, calls)
                   for value in values)

    results = {}
    for key, body in functions.items():
        tail = list(_tail(body))
        if all_ints(key, tail):  # (first: walking the body costs more)
            returned, used = _scan(body, set(params[key]), names)
            if used:  # else an int body would drop no test
                results[key] = tail + returned
    return _largest(set(results), lambda key: all_ints(key, results[key]))


def int_variables(sources: dict[str, list], names: dict, consts: dict) -> set[str]:
    """Python names of the integer variables; ``sources`` maps each name to what it is given:
    INT, NOT_INT, an expression, or ``(op, expr)`` for ``x op= expr``."""
    ints = set(sources)

    def is_int(source) -> bool:
        if source is INT:
            return True
        if source is NOT_INT or source is None:
            return False
        if isinstance(source, tuple):
            op, value = source
            return op in ARITHMETIC and is_int_expr(value, names, ints, consts)
        return is_int_expr(source, names, ints, consts)

    return _largest(ints, lambda name: all(is_int(s) for s in sources[name]))



def range_starts(module: ast.Module, names: dict) -> dict:
    """Python name of each range loop's variable -> the range's start expression (of a
    whole typed AST only: a module whose bodies are not there would seem to have none)."""
    if not isinstance(module, ast.Module):
        raise TypeError(f"range_starts needs an ast.Module, not {type(module).__name__}")
    return {names[(id(node), "var")]: node.iterable.left
            for node in nodes((module.functions, module.body))
            if isinstance(node, ast.For) and node.index_var is None and
            isinstance(node.iterable, ast.Binary) and node.iterable.op in ("..", "..=")}


def _positive_literal(e) -> bool:
    return isinstance(e, ast.Literal) and type(e.value) is int and e.value > 0


def nonneg_expr(e, names: dict, nonneg: set) -> bool:
    """Whether ``e`` is an int >= 0 whenever it evaluates (or fails): a literal, a variable
    of ``nonneg``, such ints added or multiplied, or one ``/`` or ``%`` a positive literal."""
    if isinstance(e, ast.Literal):
        return type(e.value) is int and e.value >= 0
    if isinstance(e, ast.Var):
        return names.get((id(e), "ref")) in nonneg
    if not isinstance(e, ast.Binary):
        return False
    if e.op in ("+", "*"):
        return nonneg_expr(e.left, names, nonneg) and nonneg_expr(e.right, names, nonneg)
    return e.op in ("/", "%") and _positive_literal(e.right) and \
        nonneg_expr(e.left, names, nonneg)


def nonneg_variables(sources: dict[str, list], names: dict, ints: set,
                     range_starts: dict) -> set[str]:
    """Python names of the integer variables never below 0: each value given is a
    nonneg_expr, assuming the same of the others (the largest such set, as
    int_variables). An INT source is a loop's: a range's variable (its start in
    ``range_starts``) or an index (always >= 0)."""
    found = set(ints)

    def is_nonneg(name: str, source) -> bool:
        if source is INT:
            start = range_starts.get(name)
            return start is None or nonneg_expr(start, names, found)
        if isinstance(source, tuple):  # x op= value, x >= 0
            op, value = source
            return op in ("+", "*") and nonneg_expr(value, names, found) or \
                op in ("/", "%") and _positive_literal(value)
        return source is not None and source is not NOT_INT and \
            nonneg_expr(source, names, found)

    return _largest(found, lambda name: all(is_nonneg(name, s) for s in sources[name]))


def _largest(found: set, holds) -> set:
    """``found`` shrunk in place to its largest subset whose every member ``holds`` while
    the others are assumed to (``holds`` may read ``found``; it can only turn false as
    ``found`` shrinks, so the order members are dropped in does not matter)."""
    changed = True
    while changed:
        changed = False
        for key in sorted(found):
            if not holds(key):
                found.discard(key)
                changed = True
    return found
