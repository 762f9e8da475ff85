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


def py_is_type(value: py.expr, type_name: str) -> py.expr:
    """``value.__class__ is int`` (faster than calling type(); generated, never script text)."""
    return py.Compare(py.Attribute(value, "__class__", py.Load()), [py.Is()], [py_name(type_name)])


def py_walrus(name: str, value: py.expr) -> py.NamedExpr:
    return py.NamedExpr(py_name(name, store=True), value)
