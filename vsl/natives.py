"""Registration of native (Python) functions as script namespaces.

A :class:`Namespace` groups natives called as ``ns::name(...)``; the
namespace named ``""`` holds global functions such as ``log(...)``. The
signature of each native comes from its Python signature, so the linter and
the compiler can check names and arity without running anything; its return
annotation, when it is a native object class, tells the linter the type of
the result, ``options`` the keys of the option map it takes last, ``uses``
the member of its first argument that it needs, and ``charges`` the size of the work a
call does (charged to the script's budget like a step of script code of that size).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from contextvars import ContextVar
from dataclasses import dataclass, field
from time import monotonic
from typing import Callable

from .errors import Pos

# The monotonic time by which a native's network wait must end in the script call in
# progress (set by the engine for calls that wait on I/O); None: no limit.
IO_DEADLINE: ContextVar[float | None] = ContextVar("vsl_io_deadline", default=None)


# The global of compiled script code that gives one of its frames' script position (set
# by the engine): how caller_position() tells script frames from Python ones.
SCRIPT_POSITION = "_script_position"


def caller_position() -> Pos | None:
    """Where the script called the native in progress: the ``file:line:col`` of the
    innermost script frame on the stack (None outside any script). It walks the stack:
    for rare paths (status::deny records where a refusal was decided)."""
    frame = sys._getframe(1)
    while frame is not None:
        position = frame.f_globals.get(SCRIPT_POSITION)
        if position is not None:
            return position(frame)
        frame = frame.f_back
    return None


def io_time_left() -> float | None:
    """Seconds a native may still wait on the network in the script call in progress
    (None: as long as it likes). The engine ends network waits a fifth of max_time
    before the call's deadline, so the script can still handle the failure."""
    deadline = IO_DEADLINE.get()
    return None if deadline is None else deadline - monotonic()


@dataclass(frozen=True)
class Native:
    """One native function with the signature scripts see."""

    name: str
    func: Callable
    params: tuple[str, ...]
    min_args: int
    max_args: int | None  # None: variadic
    doc: str
    is_async: bool
    check: Callable | None = None  # lint hook: check(literal_args) -> error message | None
    # ^ literal_args: each argument's value if a literal (map and array literals as dicts and
    # tuples of theirs), else resolve.DYNAMIC
    returns: type | None = None  # the NativeObject class it returns, when it always does
    options: tuple[str, ...] = ()  # the keys its last argument, an option map, may have
    uses: str | None = None  # the member of its first argument it needs (lint: where it is)
    charges: Callable | None = None
    # ^ charges(*args) -> the size of the work a call does (bytes read, items walked): the
    # engine charges it as ExecState.work(size) before the call

    def signature(self) -> str:
        names = [p if i < self.min_args else f"{p}?" for i, p in enumerate(self.params)]
        if self.max_args is None:
            names.append("...")
        return f"{self.name}({', '.join(names)})"

    def accepts(self, n: int) -> bool:
        return self.min_args <= n and (self.max_args is None or n <= self.max_args)


@dataclass
class Namespace:
    """A named group of natives, plus the native object types they return."""

    name: str
    doc: str = ""
    functions: dict[str, Native] = field(default_factory=dict)
    types: list[type] = field(default_factory=list)

    def native(self, fn: Callable | None = None, *, name: str | None = None,
               check: Callable | None = None, options=(), uses: str | None = None,
               charges: Callable | None = None):
        """Decorator registering ``fn`` as ``namespace::name``; ``options``: the keys of
        the option map it takes as its last argument; ``uses``: the member of its first
        argument it needs, so that the linter can tell where it works (``"body"``);
        ``charges``: a function of the same arguments giving the size of the work the
        call does, charged to the script's operations (for natives whose work grows with
        their input: every limit holds for real work)."""

        def register(fn: Callable) -> Callable:
            params = list(inspect.signature(fn).parameters.values())
            positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                          p.POSITIONAL_OR_KEYWORD)]
            variadic = any(p.kind is p.VAR_POSITIONAL for p in params)
            required = sum(1 for p in positional if p.default is p.empty)
            native = Native(
                name=name or fn.__name__.rstrip("_"), func=fn,
                params=tuple(p.name for p in positional), min_args=required,
                max_args=None if variadic else len(positional),
                doc=(inspect.getdoc(fn) or "").split("\n")[0],
                is_async=inspect.iscoroutinefunction(fn), check=check,
                returns=_native_class(fn), options=tuple(options), uses=uses,
                charges=charges)
            self.functions[native.name] = native
            return fn

        return register(fn) if fn is not None else register

    def binding(self, name: str, **values) -> Namespace:
        """A copy of this namespace whose native ``name`` gets ``values`` as keyword
        arguments besides the script's: what one engine's copy holds (its DNS defaults,
        its state store), so that engines in one process do not share them."""
        native = self.functions[name]
        bound = functools.update_wrapper(functools.partial(native.func, **values),
                                         native.func)  # its name, module and docs stay
        functions = {**self.functions, name: dataclasses.replace(native, func=bound)}
        return dataclasses.replace(self, functions=functions, types=list(self.types))

    def register_type(self, cls: type) -> type:
        """Declare a NativeObject class this namespace hands to scripts."""
        self.types.append(cls)
        return cls


def _native_class(fn: Callable) -> type | None:
    """The NativeObject class ``fn`` is annotated to return (``-> IprevResult``, a class of
    its module), else None (no annotation, or another one such as ``X | None``)."""
    from .values import NativeObject

    annotation = inspect.signature(fn).return_annotation
    if isinstance(annotation, str):  # from __future__ import annotations: a name of the
        annotation = inspect.unwrap(fn).__globals__.get(annotation)  # undecorated fn's module
    return annotation if isinstance(annotation, type) and \
        issubclass(annotation, NativeObject) else None
