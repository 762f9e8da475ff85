"""Typed syntax tree of a vSL script: frozen dataclasses with positions.

``pos`` is ``(line, col)``, 1-based; the file name lives on :class:`Module`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

Loc = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Node:
    pos: Loc


# ---- expressions ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Literal(Node):
    value: object  # int | float | str | bool | None (unit)


@dataclass(frozen=True, slots=True)
class Template(Node):
    parts: tuple["Expr | str", ...]  # text segments and interpolated blocks


@dataclass(frozen=True, slots=True)
class ArrayLit(Node):
    items: tuple["Expr", ...]


@dataclass(frozen=True, slots=True)
class MapLit(Node):
    entries: tuple[tuple[str, "Expr"], ...]


@dataclass(frozen=True, slots=True)
class Var(Node):
    name: str


@dataclass(frozen=True, slots=True)
class NsVar(Node):
    ns: str
    name: str


@dataclass(frozen=True, slots=True)
class Unary(Node):
    op: str  # "-", "+", "!"
    operand: "Expr"


@dataclass(frozen=True, slots=True)
class Binary(Node):
    op: str  # + - * / % ** == != < <= > >= in !in ?? && || .. ..=
    left: "Expr"
    right: "Expr"


@dataclass(frozen=True, slots=True)
class Prop(Node):
    obj: "Expr"
    name: str


@dataclass(frozen=True, slots=True)
class Index(Node):
    obj: "Expr"
    index: "Expr"


@dataclass(frozen=True, slots=True)
class MethodCall(Node):
    obj: "Expr"
    name: str
    args: tuple["Expr", ...]


@dataclass(frozen=True, slots=True)
class Call(Node):
    name: str
    args: tuple["Expr", ...]


@dataclass(frozen=True, slots=True)
class NsCall(Node):
    ns: str
    name: str
    args: tuple["Expr", ...]


@dataclass(frozen=True, slots=True)
class Block(Node):
    body: tuple["Stmt", ...]


@dataclass(frozen=True, slots=True)
class If(Node):
    branches: tuple[tuple["Expr", Block], ...]
    orelse: Block | None


@dataclass(frozen=True, slots=True)
class Arm(Node):
    patterns: tuple[object, ...]  # literal values; WILDCARD for `_`
    guard: "Expr | None"
    body: "Expr"


@dataclass(frozen=True, slots=True)
class Switch(Node):
    subject: "Expr"
    arms: tuple[Arm, ...]


@dataclass(frozen=True, slots=True)
class Closure(Node):
    params: tuple[str, ...]
    body: "Expr"


class _Wildcard:
    def __repr__(self) -> str:
        return "_"


WILDCARD = _Wildcard()

Expr = Union[Literal, Template, ArrayLit, MapLit, Var, NsVar, Unary, Binary, Prop, Index,
             MethodCall, Call, NsCall, Block, If, Switch, Closure]


# ---- statements -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Let(Node):
    name: str
    value: "Expr | None"
    const: bool = False


@dataclass(frozen=True, slots=True)
class Assign(Node):
    target: "Var | Index | Prop"
    op: str  # "=", "+=", ...
    value: "Expr"


@dataclass(frozen=True, slots=True)
class ExprStmt(Node):
    expr: "Expr"


@dataclass(frozen=True, slots=True)
class Return(Node):
    value: "Expr | None"


@dataclass(frozen=True, slots=True)
class Break(Node):
    pass


@dataclass(frozen=True, slots=True)
class Continue(Node):
    pass


@dataclass(frozen=True, slots=True)
class Throw(Node):
    value: "Expr | None"


@dataclass(frozen=True, slots=True)
class Import(Node):
    path: str
    alias: str | None


@dataclass(frozen=True, slots=True)
class FnDef(Node):
    name: str
    params: tuple[str, ...]
    param_pos: tuple[Loc, ...]
    body: Block


@dataclass(frozen=True, slots=True)
class While(Node):
    cond: "Expr"
    body: Block


@dataclass(frozen=True, slots=True)
class Loop(Node):
    body: Block


@dataclass(frozen=True, slots=True)
class For(Node):
    var: str
    index_var: str | None
    iterable: "Expr"
    body: Block


@dataclass(frozen=True, slots=True)
class Try(Node):
    body: Block
    err_name: str | None
    handler: Block


Stmt = Union[Let, Assign, ExprStmt, Return, Break, Continue, Throw, Import, FnDef, While, Loop,
             For, Try]


@dataclass(frozen=True, slots=True)
class Module:
    """A parsed script: its top-level statements, with functions kept apart."""

    file: str
    source: str
    body: tuple[Stmt, ...]
    functions: tuple[FnDef, ...]
    imports: tuple[Import, ...]
    plain_interpolations: tuple[Loc, ...] = ()  # "${" inside "..." strings (lint warning)
