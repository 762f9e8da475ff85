"""The natives reference (docs/natives.md), generated from the namespaces' own declarations.

Every fact on the page comes from code, so the page cannot drift from it: a namespace's
title from its :class:`~vsl.natives.Namespace`, its introduction from its module's
docstring, and for each native the script signature (the Python signature, as
``Native.signature()`` gives it to the linter), the keys of its option map, the type it
returns and its docstring; then the methods and properties of the native object types the
namespace hands to scripts. ``make docs`` rewrites the page; tests/test_docs.py fails
when the committed page differs from what this module generates::

    python -m vsl.stdlib.support.reference > docs/natives.md
"""
from __future__ import annotations

import inspect
import re
import sys

from vsl.natives import Namespace, Native

from vsl.stdlib import default_namespaces

HEADER = """\
# Natives reference

Every native function a policy can call, namespace by namespace, with its arguments, the
keys of its option map, what it returns, and the methods and properties of the objects it
returns. This page is generated from the code by `make docs` (`python -m
vsl.stdlib.support.reference`); do not edit it by hand. How the checks behave, with examples, is
in [the natives guide](natives-guide.md).
"""

# reST roles of docstrings (":mod:`stdlib.dns`", ":class:`~x.Y`") read as plain code in Markdown,
# and so does reST's ``literal``.
_ROLE = re.compile(r":(?:mod|class|func|meth|attr|data):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def markdown(namespaces: list[Namespace]) -> str:
    """The whole reference page for ``namespaces``, in their order."""
    sections = [HEADER, _contents(namespaces)]
    sections += [_namespace_section(ns) for ns in namespaces]
    return "\n".join(sections)


def _title(ns: Namespace) -> str:
    """``dns::`` for a namespace of natives, ``ctx`` for one of object types only."""
    if not ns.name:
        return "Global functions"
    return f"`{ns.name}::`" if ns.functions else f"`{ns.name}`"


def _heading(ns: Namespace) -> str:
    return f"{_title(ns)} — {ns.doc}" if ns.name else ns.doc


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _contents(namespaces: list[Namespace]) -> str:
    lines = [f"- [{_title(ns)}](#{slug(_heading(ns))}): {ns.doc}" for ns in namespaces]
    return "\n".join(lines) + "\n"


def _namespace_section(ns: Namespace) -> str:
    parts = [f"## {_heading(ns)}\n"]
    intro = _module_doc(ns)
    if intro:
        parts.append(intro + "\n")
    parts += [_native_entry(ns, native) for native in ns.functions.values()]
    parts += [_type_entry(cls) for cls in ns.types]
    return "\n".join(parts)


def _module_doc(ns: Namespace) -> str:
    """The docstring of the module that declares ``ns`` (found through its natives or types)."""
    declared = [native.func for native in ns.functions.values()] + ns.types
    for item in declared:
        module = inspect.getmodule(item)
        if module is not None and module.__doc__:
            return _text(module.__doc__)
    return ""


def _text(docstring: str) -> str:
    """A docstring as Markdown: dedented, reST roles, literals and ``::`` markers made plain."""
    text = _LITERAL.sub(r"`\1`", _ROLE.sub(r"`\1`", inspect.cleandoc(docstring)))
    return text.replace("::\n\n", ":\n\n").strip()


def _native_entry(ns: Namespace, native: Native) -> str:
    prefix = f"{ns.name}::" if ns.name else ""
    lines = [f"### `{prefix}{native.signature()}`", ""]
    facts = []
    if native.options:
        facts.append("options: " + ", ".join(f"`{key}`" for key in native.options))
    if native.returns is not None:
        facts.append(f"returns: `{native.returns.vsl_type}`")
    if native.is_async:
        facts.append("waits on I/O, so not callable in a closure")
    if facts:
        lines += ["*" + "; ".join(facts) + "*", ""]
    lines.append(_text(inspect.getdoc(native.func) or "(undocumented)"))
    return "\n".join(lines) + "\n"


def _type_entry(cls: type) -> str:
    lines = [f"### Type `{cls.vsl_type}`", "", _text(inspect.getdoc(cls) or ""), ""]
    if cls.vsl_props:
        lines += ["Properties: " + ", ".join(f"`{p}`" for p in sorted(cls.vsl_props)), ""]
    for name, (func, low, high) in sorted(cls.vsl_methods.items()):
        lines.append(f"- `.{name}({_method_params(func, low, high)})`: "
                     + _first_paragraph(func))
    return "\n".join(lines).rstrip() + "\n"


def _method_params(func, low: int, high: int) -> str:
    """The script parameters of a NativeObject method (optional ones marked ``?``)."""
    params = list(inspect.signature(func).parameters)[1:]
    names = [p if i < low else f"{p}?" for i, p in enumerate(params[:high])]
    return ", ".join(names)


def _first_paragraph(func) -> str:
    doc = _text(inspect.getdoc(func) or "")
    return " ".join(doc.split("\n\n")[0].split())


def main() -> None:
    sys.stdout.write(markdown(default_namespaces()))


if __name__ == "__main__":
    main()
