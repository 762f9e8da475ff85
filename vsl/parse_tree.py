"""Lean parse-tree building for Lark's LALR parser: the same trees, a third of the work.

Design note. Lark builds each node through a chain of wrappers (child filter, single-child
inlining, ``propagate_positions``), and the position wrapper does the most: for every
reduction, the many that only pass an inlined ``?rule`` child through included, it looks
for the first and the last child with a position and copies seven attributes. Loading a
5,000-line policy makes 700,000 reductions. The builder needs only where a node starts, so
:func:`install` replaces the parser's callbacks, rule by rule, with closures that do the
same filtering and inlining and give each new node a :class:`Start`: the line and column
of its first child that has one (a token, or a node that has a start, whose start object
it then shares), as Lark's ``propagate_positions`` does. A node inlined by ``?rule`` keeps
its own start, which is its parent's too: no ``?`` alternative of the grammar drops a
token before its one child (tests/test_parse_tree.py checks the trees against Lark's own).
"""
from __future__ import annotations

from lark import Lark, Token, Tree


class Start:
    """Where a node starts (the part of Lark's ``Meta`` that vsl reads)."""

    __slots__ = ("line", "column", "empty")

    def __init__(self, line: int, column: int):
        self.line, self.column, self.empty = line, column, False


_NO_START = Start(1, 1)
_NO_START.empty = True  # a node without tokens (an empty body): Lark's empty Meta


def _start_of(children: list) -> Start:
    """Where the first child that has a position starts."""
    for child in children:
        if type(child) is Tree:
            start = child._meta  # set by each callback (Lark's ``meta`` would make one)
            if not start.empty:
                return start
        elif isinstance(child, Token):
            return Start(child.line, child.column)
    return _NO_START


def _child_plan(rule, placeholders: bool) -> list[tuple[int, bool, int]]:
    """For each child the node keeps: its index among the matched symbols, whether it is an
    ``_rule`` whose children are spliced in, and how many ``None`` placeholders (for
    ``[item]`` left out) come before it. Lark's ``maybe_create_child_filter``."""
    empty = rule.options.empty_indices if placeholders else ()
    nones_before = [0] * (len(rule.expansion) + 1)
    if empty:
        nones_before = [len(ones) for ones in "".join(str(int(b)) for b in empty).split("0")]
    plan, nones = [], 0
    for i, sym in enumerate(rule.expansion):
        nones += nones_before[i]
        if rule.options.keep_all_tokens or not (sym.is_term and sym.filter_out):
            plan.append((i, not sym.is_term and sym.name.startswith("_"), nones))
            nones = 0
    plan.append((-1, False, nones + nones_before[-1]))  # placeholders after the last child
    return plan


def _callback(rule, placeholders: bool):
    """The callback that makes the node of ``rule`` from the values its symbols matched."""
    name = rule.alias or rule.options.template_source or rule.origin.name
    inline = rule.options.expand1 and not rule.alias  # ``?rule``: one child is the node
    plan = _child_plan(rule, placeholders)
    keeps_all = len(plan) - 1 == len(rule.expansion) and not any(
        splice or nones for _, splice, nones in plan)
    if keeps_all and inline and len(rule.expansion) == 1:
        return pass_through
    if keeps_all:
        def build(children):
            if inline and len(children) == 1:
                return children[0]
            return Tree(name, children, _start_of(children))
        return build

    def build_filtered(children):
        kept = []
        for i, splice, nones in plan:
            if nones:
                kept += [None] * nones
            if i < 0:
                break
            if splice and not kept:  # a left-recursive list grows in place, as in Lark
                kept = children[i].children
            elif splice:
                kept += children[i].children
            else:
                kept.append(children[i])
        if inline and len(kept) == 1:
            return kept[0]
        return Tree(name, kept, _start_of(children))
    return build_filtered


def pass_through(children):
    """The callback of ``?a: b``: the one child is the node."""
    return children[0]


def install(parser: Lark) -> None:
    """Make the LALR ``parser`` build its trees with the lean callbacks (whether or not it
    was built with ``propagate_positions``: they replace Lark's every one)."""
    callbacks = parser.parser.parser.parser.callbacks
    placeholders = parser.options.maybe_placeholders
    for rule in parser.rules:
        callbacks[rule] = _callback(rule, placeholders)
