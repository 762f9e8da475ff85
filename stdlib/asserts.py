"""``assert::`` -- checks for script tests (``tests/lang/*.vsl`` and policy tests)."""
from __future__ import annotations

import re

from vsl.errors import ScriptError
from vsl.natives import Namespace
from vsl.values import Closure, equals, preview

namespace = Namespace("assert", "Assertions for script tests")


@namespace.native
def eq(actual, expected) -> None:
    """Fail unless actual == expected (script equality)."""
    if not equals(actual, expected):
        raise ScriptError(f"assertion failed: {preview(actual)} != {preview(expected)}")


@namespace.native
def ne(actual, unexpected) -> None:
    """Fail if actual == unexpected."""
    if equals(actual, unexpected):
        raise ScriptError(f"assertion failed: {preview(actual)} == {preview(unexpected)}")


@namespace.native
def is_true(condition, message="") -> None:
    """Fail unless condition is true."""
    if condition is not True:
        raise ScriptError(f"assertion failed: {message or preview(condition) + ' is not true'}")


@namespace.native
def is_false(condition, message="") -> None:
    """Fail unless condition is false."""
    if condition is not False:
        raise ScriptError(f"assertion failed: {message or preview(condition) + ' is not false'}")


@namespace.native
def fails(fn, pattern) -> None:
    """Fail unless calling the closure raises an error whose message matches the regex."""
    if type(fn) is not Closure or type(pattern) is not str:
        raise ScriptError("assert::fails takes a closure and a regex string")
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ScriptError(f"assert::fails: invalid regex {pattern!r}: {err}") from None
    try:
        fn.call()
    except ScriptError as err:
        if not regex.search(err.message):
            raise ScriptError(f"assertion failed: error {err.message!r} does not match "
                              f"{pattern!r}") from None
        return
    raise ScriptError(f"assertion failed: no error (expected one matching {pattern!r})")
