"""Builders of Python AST nodes, shared by the compiler and its fast paths.

Each builder returns a node without a position; ``located`` gives a finished
subtree the script position it came from (a generated node must have one).
"""
from __future__ import annotations

import ast as py

from . import ast as A


def py_name(id_: str, store: bool = False) -> py.Name:
    return py.Name(id_, py.Store() if store else py.Load())


def py_call(fn: str | py.expr, *args: py.expr) -> py.Call:
    func = py_name(fn) if isinstance(fn, str) else fn
    return py.Call(func, list(args), [])


def py_dict_get(obj: py.expr, *args: py.expr) -> py.Call:
    """``obj.get(*args)``: generated only where ``obj`` is known to be a dict."""
    return py_call(py.Attribute(obj, "get", py.Load()), *args)


def py_const(v) -> py.Constant:
    return py.Constant(v)


def py_assign(target: str, value: py.expr) -> py.Assign:
    return py.Assign([py_name(target, store=True)], value)


def located(nodes, pos: A.Loc):
    """Give every node without a position the script position ``pos``. A node that has
    one was located with everything below it, so the walk stops there: each node is
    visited about once however deep the code nests."""
    line, col = pos
    todo = list(nodes) if isinstance(nodes, list) else [nodes]
    for node in todo:
        if node.__class__ in _POSITIONED and getattr(node, "lineno", None) is None:
            node.lineno = node.end_lineno = line
            node.col_offset, node.end_col_offset = col - 1, col
    while todo:
        node = todo.pop()
        for field in node._fields:
            value = getattr(node, field, None)
            for child in value if value.__class__ is list else (value,):
                kind = child.__class__
                if kind in _POSITIONED:
                    if getattr(child, "lineno", None) is not None:
                        continue  # located, with everything below it
                    child.lineno = child.end_lineno = line
                    child.col_offset, child.end_col_offset = col - 1, col
                elif kind not in _HOLDERS:
                    continue  # not a node, or Load, Add, ...: nothing below
                todo.append(child)
    return nodes


_NODE_CLASSES = [c for c in vars(py).values() if isinstance(c, type) and issubclass(c, py.AST)]
# the node classes with fields (not Load, Add, ...); those with a position (Pass too); and
# those without one but with nodes below (arguments, comprehension)
WITH_FIELDS = frozenset(c for c in _NODE_CLASSES if c._fields)
_POSITIONED = frozenset(c for c in _NODE_CLASSES if "lineno" in c._attributes)
_HOLDERS = WITH_FIELDS - _POSITIONED


def py_is_type(value: py.expr, type_name: str) -> py.expr:
    """``value.__class__ is int`` (faster than calling type(); generated, never script text)."""
    return py.Compare(py.Attribute(value, "__class__", py.Load()), [py.Is()], [py_name(type_name)])


def py_walrus(name: str, value: py.expr) -> py.NamedExpr:
    return py.NamedExpr(py_name(name, store=True), value)
