"""The layers import one way: language (vsl/, with grammar/ as its data) < natives and
the mail model (stdlib/) < SMTP server (server/) < command line (cli/).

Every ``import`` of every module is read with :mod:`ast`, wherever it stands (inside a
function, under ``if TYPE_CHECKING``): a module may import its own layer and those below,
never one above, and always by its installed name (``vsl.server``, never ``server``).
The folders and their installed names come from pyproject.toml's package-dir.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path
import tomllib


ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
PACKAGE_DIRS: dict[str, str] = SETUPTOOLS["package-dir"]  # installed name -> folder
LAYERS = ("vsl", "vsl.stdlib", "vsl.server", "vsl.cli")  # lowest first
DATA_OF = {"vsl.grammar": "vsl"}  # a package that belongs to another's layer
BARE = {folder for name, folder in PACKAGE_DIRS.items() if name != folder}


@dataclass(frozen=True)
class Import:
    """One imported module name, where it is imported."""

    file: str  # relative to the repository root
    line: int
    importer: str
    target: str  # absolute: relative imports resolved

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.target}"


def module_name(path: Path, package: str, folder: Path) -> str:
    """The installed name of the module in ``path`` under ``folder`` (``package``)."""
    parts = path.relative_to(folder).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((package, *parts))


def modules() -> dict[str, Path]:
    """Every module of the mapped folders: installed name -> file."""
    return {module_name(path, package, ROOT / folder): path
            for package, folder in PACKAGE_DIRS.items()
            for path in sorted((ROOT / folder).rglob("*.py"))}


def imports_of(source: str, file: str, name: str, is_package: bool,
               known: set[str]) -> list[Import]:
    """Every module ``source`` (the module ``name``) imports, relative imports resolved;
    ``from P import x`` imports the module P.x when that is one of ``known``."""
    found = []
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, file)):
        if isinstance(node, ast.Import):
            found += [Import(file, node.lineno, name, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(Import(file, node.lineno, name, sub if sub in known else base))
    return found


@cache
def all_imports() -> tuple[Import, ...]:
    """Every import of every module of the mapped folders."""
    mods = modules()
    return tuple(imp for name, path in mods.items()
                 for imp in imports_of(path.read_text(), str(path.relative_to(ROOT)), name,
                                       path.name == "__init__.py", set(mods)))


def layer(module: str) -> int | None:
    """The layer of an installed module name (None: not ours, e.g. click)."""
    for package, owner in DATA_OF.items():
        if module == package or module.startswith(package + "."):
            module = owner
    matches = [i for i, top in enumerate(LAYERS) if module == top or module.startswith(top + ".")]
    return max(matches) if matches else None


def test_the_walker_sees_every_import():
    """Imports in functions and under TYPE_CHECKING count; relative ones are resolved."""
    source = ("from typing import TYPE_CHECKING\n"
              "from . import queue\n"
              "from ..stdlib import ctx\n"
              "if TYPE_CHECKING:\n"
              "    from .app import Server\n"
              "def f():\n"
              "    import vsl.cli\n")
    known = {"vsl.server.queue", "vsl.server.app", "vsl.stdlib.ctx"}
    found = imports_of(source, "server/x.py", "vsl.server.x", False, known)
    assert [(i.line, i.target) for i in found] == [
        (1, "typing"), (2, "vsl.server.queue"), (3, "vsl.stdlib.ctx"), (5, "vsl.server.app"),
        (7, "vsl.cli")]


def test_every_folder_is_found():
    found = modules()
    for package in LAYERS:
        assert package in found, f"no module {package}: is package-dir in pyproject.toml?"


def test_no_import_against_the_layer_direction():
    wrong = [f"{imp} against the layer direction"
             for imp in all_imports()
             if (layer(imp.target) or 0) > layer(imp.importer)]  # None: not ours
    assert not wrong, "\n".join(wrong)


def test_no_import_by_a_bare_folder_name():
    wrong = [f"{imp}: import it as vsl.{imp.target}"
             for imp in all_imports() if imp.target.split(".")[0] in BARE]
    assert not wrong, "\n".join(wrong)


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # module -> "open" (on the path) or "done"
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_cycle_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_no_import_circle():
    """No module imports, even inside a function or under TYPE_CHECKING, one that imports
    it back (a package's __init__ counts as the package)."""
    imports = all_imports()
    graph = {imp.importer: set() for imp in imports}
    for imp in imports:
        if imp.target in graph and imp.target != imp.importer:
            graph[imp.importer].add(imp.target)
    found = cycle(graph)
    assert found is None, "import circle: " + " -> ".join(found)


def test_every_package_folder_is_in_the_wheel():
    packages = set(SETUPTOOLS["packages"])
    missing = [name for name, path in modules().items()
               if path.name == "__init__.py" and name not in packages]
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
