"""Which variables provably always hold an integer (so compiled code can skip type checks).

The resolver records every value a variable is given; a variable is an integer
variable when each of those values is an integer expression, assuming the same of
the other integer variables (the largest such set, found by iteration).
"""
from __future__ import annotations

from . import ast

INT = "int"        # a source that is always an integer (a range loop variable, an index)
NOT_INT = "other"  # a source of unknown type (a parameter, a caught error, ...)
ARITHMETIC = frozenset({"+", "-", "*", "/", "%", "**"})


def is_int_expr(e, names: dict, ints: set) -> bool:
    """Whether ``e`` always evaluates to an integer (or fails)."""
    if isinstance(e, ast.Literal):
        return type(e.value) is int
    if isinstance(e, ast.Var):
        return names.get((id(e), "ref")) in ints
    if isinstance(e, ast.Unary):
        return e.op == "-" and is_int_expr(e.operand, names, ints)
    if isinstance(e, ast.Binary):
        return e.op in ARITHMETIC and is_int_expr(e.left, names, ints) and \
            is_int_expr(e.right, names, ints)
    return False


def int_variables(sources: dict[str, list], names: dict) -> set[str]:
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
            return op in ARITHMETIC and is_int_expr(value, names, ints)
        return is_int_expr(source, names, ints)

    changed = True
    while changed:
        changed = False
        for name, given in sources.items():
            if name in ints and not all(is_int(s) for s in given):
                ints.discard(name)
                changed = True
    return ints
