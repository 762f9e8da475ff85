"""One engine's copy of a namespace whose natives take a keyword-only argument from the
host (the state store of ``limit::``): the values are bound into copies of the natives,
never kept in a module global, so engines in one process do not share them."""
from __future__ import annotations

import dataclasses
import functools
import inspect

from vsl.natives import Namespace


def bound_namespace(namespace: Namespace, **values) -> Namespace:
    """A copy of ``namespace`` whose natives get ``values`` as keyword arguments, each
    native only those of its keyword-only parameters (its name, docs and signature, as
    scripts see them, stay the same)."""
    functions = {}
    for name, native in namespace.functions.items():
        wanted = {key: value for key, value in values.items()
                  if _keyword_only(native.func, key)}
        if wanted:
            func = functools.update_wrapper(functools.partial(native.func, **wanted),
                                            native.func)
            native = dataclasses.replace(native, func=func)
        functions[name] = native
    return dataclasses.replace(namespace, functions=functions, types=list(namespace.types))


def _keyword_only(func, name: str) -> bool:
    parameter = inspect.signature(func).parameters.get(name)
    return parameter is not None and parameter.kind is parameter.KEYWORD_ONLY
