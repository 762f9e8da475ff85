"""Build the typed AST (:mod:`vsl.ast`) from a Lark parse tree.

Also decodes literals (escapes, integer ranges, backtick interpolation) and
rejects what the grammar accepts but the language does not (nested ``fn``,
assignment to a non-place, oversized literals).
"""
from __future__ import annotations

from contextlib import contextmanager
import gc
import math
import re
import threading

from lark import Token, Tree

from . import ast
from .errors import Pos, VslSyntaxError
from .script_file import line_of, script_too_large
from .syntax import check_depth, parse_tree
from .values import I64_MAX, I64_MIN

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0",
            "$": "$", "`": "`"}
_ESCAPE_RE = re.compile(r"\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|\n[ \t]*|.)", re.S)
_INTERP_RE = re.compile(r"\$\{")
_RAW_INTERP_RE = re.compile(r"(?<!\\)\$\{")  # "${" not written as "\${"


def _loc(node) -> ast.Loc:
    return (node.line, node.column)


def _with_start(method):
    """Mark a rule method of :class:`_Builder` that is also given where its node starts."""
    method.with_start = True
    return method


class _Builder:
    """Builds the AST from a parse tree, bottom-up: one method per grammar rule, given the
    node's children already built (and its start, see :func:`_with_start`)."""

    def __init__(self, parser: "Parser", text: str):
        self.p = parser
        self.text = text  # the text being parsed (an interpolation is parsed on its own)

    def transform(self, tree: Tree):
        """The AST of ``tree``."""
        children = [self.transform(c) if type(c) is Tree else c for c in tree.children]
        method, with_start = _RULES[tree.data]
        return method(self, tree.meta, children) if with_start else method(self, children)

    def _err(self, msg: str, loc: ast.Loc) -> VslSyntaxError:
        return self.p.error(msg, loc)

    # -- statements ------------------------------------------------------
    @_with_start
    def start(self, meta, items):
        return list(items)

    @_with_start
    def block(self, meta, items):
        for item in items:
            if isinstance(item, ast.FnDef):
                raise self._err("functions can only be defined at the top level", item.pos)
            if isinstance(item, ast.Import):
                raise self._err("import is only allowed at the top level", item.pos)
        return ast.Block(self._meta_loc(meta), tuple(items))

    def _meta_loc(self, meta) -> ast.Loc:
        return (meta.line, meta.column) if not meta.empty else (1, 1)

    def block_stmt(self, items):
        (expr,) = items
        return ast.ExprStmt(expr.pos, expr)

    def expr_stmt(self, items):
        (expr,) = items
        return ast.ExprStmt(expr.pos, expr)

    @_with_start
    def let_stmt(self, meta, items):
        name, value = items
        return ast.Let(_loc(name), str(name), value)

    @_with_start
    def const_stmt(self, meta, items):
        name, value = items
        return ast.Let(_loc(name), str(name), value, const=True)

    def assign_op(self, items):
        return items[0]

    def assign_stmt(self, items):
        target, op, value = items
        if not isinstance(target, (ast.Var, ast.Index, ast.Prop)):
            raise self._err("cannot assign to this expression", target.pos)
        return ast.Assign(_loc(op), target, str(op), value)

    @_with_start
    def return_stmt(self, meta, items):
        return ast.Return(self._meta_loc(meta), items[0])

    @_with_start
    def break_stmt(self, meta, items):
        return ast.Break(self._meta_loc(meta))

    @_with_start
    def continue_stmt(self, meta, items):
        return ast.Continue(self._meta_loc(meta))

    @_with_start
    def throw_stmt(self, meta, items):
        return ast.Throw(self._meta_loc(meta), items[0])

    @_with_start
    def import_stmt(self, meta, items):
        path, alias = items
        return ast.Import(self._meta_loc(meta), self._string(path),
                          str(alias) if alias is not None else None)

    @_with_start
    def fn_def(self, meta, items):
        name, params, body = items
        params = params or []
        self._unique_params(params)
        return ast.FnDef(_loc(name), str(name), tuple(str(p) for p in params),
                         tuple(_loc(p) for p in params), body)

    def _unique_params(self, params) -> None:
        seen = set()
        for p in params:
            if str(p) in seen:
                raise self._err(f"duplicate parameter '{p}'", _loc(p))
            seen.add(str(p))

    def params(self, items):
        return list(items)

    @_with_start
    def while_stmt(self, meta, items):
        cond, body = items
        return ast.While(self._meta_loc(meta), cond, body)

    @_with_start
    def loop_stmt(self, meta, items):
        return ast.Loop(self._meta_loc(meta), items[0])

    @_with_start
    def for_stmt(self, meta, items):
        (var, index_var), in_tok, iterable, body = items
        if str(in_tok) != "in":
            raise self._err("expected 'in' after the loop variable", _loc(in_tok))
        return ast.For(self._meta_loc(meta), var, index_var, iterable, body)

    def for_vars(self, items):
        if len(items) == 1:
            return str(items[0]), None
        if str(items[0]) == str(items[1]):
            raise self._err(f"duplicate loop variable '{items[1]}'", _loc(items[1]))
        return str(items[0]), str(items[1])

    @_with_start
    def try_stmt(self, meta, items):
        body, name, handler = items
        return ast.Try(self._meta_loc(meta), body, str(name) if name is not None else None,
                       handler)

    # -- expressions -----------------------------------------------------
    def or_op(self, items):
        left, right = items
        return ast.Binary(left.pos, "||", left, right)

    def and_op(self, items):
        left, right = items
        return ast.Binary(left.pos, "&&", left, right)

    def coalesce_op(self, items):
        left, right = items
        return ast.Binary(left.pos, "??", left, right)

    def binop(self, items):
        left, op, right = items
        if isinstance(right, ast.Literal) and type(right.value) is int and right.value > I64_MAX:
            raise self._err("integer literal out of range for i64", right.pos)
        return ast.Binary(_loc(op), str(op), left, right)

    def in_op(self, items):
        left, op, right = items
        return ast.Binary(_loc(op), str(op), left, right)

    def range_op(self, items):
        left, op, right = items
        return ast.Binary(_loc(op), str(op), left, right)

    def unop(self, items):
        op, operand = items
        if str(op) == "-" and isinstance(operand, ast.Literal) and type(operand.value) in (
                int, float) and not isinstance(operand.value, bool):
            value = -operand.value
            if type(value) is int and value < I64_MIN:
                raise self._err("integer literal out of range", _loc(op))
            return ast.Literal(_loc(op), value)
        return ast.Unary(_loc(op), str(op), operand)

    def prop(self, items):
        obj, name = items
        return ast.Prop(_loc(name), obj, str(name))

    def method(self, items):
        obj, name, args = items
        return ast.MethodCall(_loc(name), obj, str(name), tuple(args or ()))

    @_with_start
    def index(self, meta, items):
        obj, idx = items
        return ast.Index(self._meta_loc(meta), obj, idx)

    def paren(self, items):
        """Parentheses only group; they count toward max_expr_depth."""
        return items[0]

    def args(self, items):
        return list(items)

    def int_lit(self, items):
        (tok,) = items
        text = str(tok).replace("_", "")
        try:
            if text.startswith("0x"):
                value = int(text, 16)
            elif text.startswith("0o"):
                value = int(text, 8)
            elif text.startswith("0b"):
                value = int(text, 2)
            else:
                value = int(text, 10)
        except ValueError:
            raise self._err(f"invalid number '{tok}'", _loc(tok)) from None
        negated = _after_minus(self.text, tok.start_pos)
        if value > I64_MAX + (1 if negated else 0):
            raise self._err(f"integer literal '{tok}' out of range for i64", _loc(tok))
        return ast.Literal(_loc(tok), value)

    def neg_lit(self, items):
        (tok,) = items
        lit = self.int_lit(items) if tok.type == "INT" else self.float_lit(items)
        if -lit.value < I64_MIN:
            raise self._err(f"integer literal '-{tok}' out of range for i64", _loc(tok))
        return ast.Literal(lit.pos, -lit.value)

    def float_lit(self, items):
        """A float literal; one too large for an f64 is an error, not infinity."""
        (tok,) = items
        value = float(str(tok).replace("_", ""))
        if math.isinf(value):
            raise self._err(f"float literal '{tok}' out of range for f64", _loc(tok))
        return ast.Literal(_loc(tok), value)

    def string_lit(self, items):
        (tok,) = items
        return ast.Literal(_loc(tok), self._string(tok))

    @_with_start
    def true_lit(self, meta, items):
        return ast.Literal(self._meta_loc(meta), True)

    @_with_start
    def false_lit(self, meta, items):
        return ast.Literal(self._meta_loc(meta), False)

    @_with_start
    def unit_lit(self, meta, items):
        return ast.Literal(self._meta_loc(meta), None)

    @_with_start
    def array_lit(self, meta, items):
        (args,) = items
        args = tuple(args or ())
        self.p.check_size(len(args), "array", self._meta_loc(meta))
        return ast.ArrayLit(self._meta_loc(meta), args)

    @_with_start
    def map_lit(self, meta, items):
        (entries,) = items
        entries = tuple(entries or ())
        self.p.check_size(len(entries), "map", self._meta_loc(meta))
        return ast.MapLit(self._meta_loc(meta), entries)

    def map_entries(self, items):
        seen = {}
        for key, value, loc in items:
            if key in seen:
                raise self._err(f"duplicate map key '{key}'", loc)
            seen[key] = value
        return [(k, v) for k, v, _ in items]

    def map_entry(self, items):
        key, value = items
        name = self._string(key) if key.type == "STRING" else str(key)
        return name, value, _loc(key)

    def var(self, items):
        (name,) = items
        return ast.Var(_loc(name), str(name))

    def call(self, items):
        name, args = items
        return ast.Call(_loc(name), str(name), tuple(args or ()))

    def ns_var(self, items):
        ns, name = items
        return ast.NsVar(_loc(ns), str(ns), str(name))

    def ns_call(self, items):
        ns, name, args = items
        return ast.NsCall(_loc(ns), str(ns), str(name), tuple(args or ()))

    @_with_start
    def if_expr(self, meta, items):
        orelse = items[-1] if len(items) % 2 else None
        conds = items[:-1] if len(items) % 2 else items
        branches = tuple((conds[i], conds[i + 1]) for i in range(0, len(conds), 2))
        return ast.If(self._meta_loc(meta), branches, orelse)

    @_with_start
    def switch_expr(self, meta, items):
        subject, *arms = items
        for i, arm in enumerate(arms):
            if ast.WILDCARD in arm.patterns and i != len(arms) - 1:
                raise self._err("the default arm '_' must be the last one", arm.pos)
        return ast.Switch(self._meta_loc(meta), subject, tuple(arms))

    @_with_start
    def switch_arm(self, meta, items):
        *patterns, guard, body = items
        values = []
        for pat in patterns:
            values.append(ast.WILDCARD if pat is ast.WILDCARD else pat.value)
        if ast.WILDCARD in values and len(values) > 1:
            raise self._err("'_' cannot be combined with other patterns", self._meta_loc(meta))
        return ast.Arm(self._meta_loc(meta), tuple(values), guard, body)

    def wildcard(self, items):
        return ast.WILDCARD

    @_with_start
    def closure(self, meta, items):
        if len(items) == 1:
            params, body = [], items[0]
        else:
            params, body = items
        params = params or []
        self._unique_params(params)
        return ast.Closure(self._meta_loc(meta), tuple(str(p) for p in params), body)

    @_with_start
    def template_lit(self, meta, items):
        (tok,) = items
        return self.p.template(tok)

    # -- helpers ---------------------------------------------------------
    def _string(self, tok: Token) -> str:
        body = str(tok)[1:-1]

        def unescape(m: re.Match) -> str:
            esc = m.group(1)
            if esc[0] in "xuU" and len(esc) > 1:
                try:
                    return chr(int(esc[1:], 16))
                except (ValueError, OverflowError):
                    raise self._err(f"invalid escape sequence '\\{esc}'", _loc(tok)) from None
            if esc[0] == "\n":
                return ""
            if esc in _ESCAPES:
                return _ESCAPES[esc]
            raise self._err(f"invalid escape sequence '\\{esc}'", _loc(tok))

        if _RAW_INTERP_RE.search(body):
            self.p.plain_interpolations.append(_loc(tok))
        value = _ESCAPE_RE.sub(unescape, body)
        self.p.check_size(len(value), "string", _loc(tok))
        return value


# rule name -> (its method of _Builder, whether the method is given the node's start)
_RULES = {name: (method, getattr(method, "with_start", False))
          for name, method in vars(_Builder).items()
          if callable(method) and not name.startswith("_") and name != "transform"}


class Parser:
    """Parses one script (and the interpolations inside its backtick strings)."""

    def __init__(self, source: str, file: str, limits):
        self.source, self.file, self.limits = source, file, limits
        self.plain_interpolations: list[ast.Loc] = []  # "${" inside "..." strings

    def error(self, msg: str, loc: ast.Loc) -> VslSyntaxError:
        return VslSyntaxError(msg, Pos(self.file, *loc), line_of(self.source, loc[0]))

    def check_size(self, size: int, what: str, loc: ast.Loc) -> None:
        limit = {"string": self.limits.max_string_size, "array": self.limits.max_array_size,
                 "map": self.limits.max_map_size}[what]
        if limit and size > limit:
            raise self.error(f"{what} literal too large ({size} > {limit})", loc)

    def statements(self, text: str, origin: ast.Loc = (1, 1)) -> list:
        """The statements of ``text``, a piece of the script that starts at ``origin``."""
        tree = parse_tree(text, self.file, origin, self.source)
        check_depth(tree, self.limits.max_expr_depth, self.source, self.file)
        return _Builder(self, text).transform(tree)

    def template(self, tok: Token) -> ast.Template:
        """Split a backtick string into text and ``${ }`` blocks, each parsed as it is and
        placed where it stands in the file."""
        raw = str(tok)[1:-1]
        offset = 1
        if raw.startswith("\n") or raw.startswith("\r\n"):
            cut = raw.index("\n") + 1
            raw, offset = raw[cut:], offset + cut
        positions = _TokenPositions(tok)
        parts: list = []
        text_start = 0
        i = 0
        while True:
            m = _INTERP_RE.search(raw, i)
            if not m:
                break
            parts.append(raw[text_start:m.start()].replace("``", "`"))
            end = _interp_end(raw, m.end())
            origin = positions.at(offset + m.end())
            body = self.statements(raw[m.end():end], origin)
            parts.append(ast.Block(origin, tuple(body)))
            i = text_start = end + 1
        parts.append(raw[text_start:].replace("``", "`"))
        parts = [p for p in parts if p != ""]
        self.check_size(sum(len(p) for p in parts if isinstance(p, str)), "string", _loc(tok))
        return ast.Template(_loc(tok), tuple(parts))


class _TokenPositions:
    """Line and column of offsets into a token's text, asked for in increasing order: each
    is counted from the one before, so the token is walked once however many are asked."""

    def __init__(self, tok: Token):
        self.text, self.offset, self.line, self.column = str(tok), 0, tok.line, tok.column

    def at(self, offset: int) -> ast.Loc:
        """The line and column of ``str(tok)[offset]``."""
        newlines = self.text.count("\n", self.offset, offset)
        if newlines:
            self.line += newlines
            self.column = offset - self.text.rfind("\n", self.offset, offset)
        else:
            self.column += offset - self.offset
        self.offset = offset
        return self.line, self.column


def _after_minus(text: str, start: int) -> bool:
    """Whether ``text[start]`` follows a '-' (blanks between). Looks back only over the
    blanks: slicing the text before each literal made loading quadratic."""
    i = start - 1
    while i >= 0 and text[i].isspace():
        i -= 1
    return i >= 0 and text[i] == "-"


def _interp_end(raw: str, start: int) -> int:
    """Index of the '}' closing an interpolation opened just before ``start``."""
    depth, i = 1, start
    while i < len(raw):
        ch = raw[i]
        if ch == '"':
            i += 1
            while raw[i] != '"':
                i += 2 if raw[i] == "\\" else 1
        elif ch == "`":
            i = raw.index("`", i + 1)
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise AssertionError("the grammar guarantees a closing brace")


@contextmanager
def gc_paused():
    """Run the block with the cyclic garbage collector off. Parsing and compiling make
    millions of young objects that it would walk again and again (for a 5,000-line
    script, more than half of the time to load); it collects them once back on.
    Only on the main thread (the load at start): the collector is the whole process's,
    and a reload runs in a worker thread while sessions go on."""
    if not gc.isenabled() or threading.current_thread() is not threading.main_thread():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def parse(source: str, file: str, limits) -> ast.Module:
    """Parse a whole script into an :class:`ast.Module`."""
    parser = Parser(source, file, limits)
    if limits.max_script_size and len(source) > limits.max_script_size:
        raise script_too_large(f"{len(source)} characters > limit {limits.max_script_size}",
                               file, source)
    with gc_paused():
        body = parser.statements(source)
    functions, seen = [], {}
    for stmt in body:
        if isinstance(stmt, ast.FnDef):
            key = (stmt.name, len(stmt.params))
            if key in seen:
                raise parser.error(
                    f"function '{stmt.name}' with {len(stmt.params)} parameter(s) is already "
                    f"defined at line {seen[key]}", stmt.pos)
            seen[key] = stmt.pos[0]
            functions.append(stmt)
    statements = tuple(s for s in body if not isinstance(s, ast.FnDef))
    imports = tuple(s for s in statements if isinstance(s, ast.Import))
    return ast.Module(file, source, statements, tuple(functions), imports,
                      tuple(parser.plain_interpolations))
