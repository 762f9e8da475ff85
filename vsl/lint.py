"""``vsl lint``: static checks of script files, without running them.

Reports syntax errors and everything :mod:`vsl.resolve` finds (undefined
names, unknown functions with "did you mean", arity, stage names, assignment
to constants, unreachable code, unused variables, suspicious strings and bad
SMTP replies). Imports are resolved statically from their files.
"""
from __future__ import annotations

import json
from pathlib import Path

from .build import parse
from .errors import VslError
from .imports import check_nesting, import_target
from .resolve import Diagnostic, ModuleInfo, resolve


class Linter:
    """Lints files with one engine's namespaces and limits."""

    def __init__(self, engine):
        self.engine = engine
        self._infos: dict[Path, ModuleInfo | None] = {}

    def lint_file(self, path: Path) -> list[Diagnostic]:
        """All findings for one file (a file that cannot be read is one finding)."""
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            return [Diagnostic(str(path), 1, 1, "error", "io", f"cannot read: {err}")]
        return self.lint_source(source, str(path), path.parent)

    def lint_source(self, source: str, file: str, script_dir: Path | None) -> list[Diagnostic]:
        try:
            module = parse(source, file, self.engine.limits)
        except VslError as err:
            pos = err.pos
            return [Diagnostic(file, pos.line if pos else 1, pos.col if pos else 1, "error",
                               "syntax", err.message)]
        findings: list[Diagnostic] = []
        imports = {}
        for imp in module.imports:
            info, problem = self._import_info(imp.path, script_dir, [Path(file).resolve()])
            if problem:
                findings.append(Diagnostic(file, *imp.pos, "error", "import", problem))
            elif imp.alias is not None:
                imports[imp.alias] = info
        res = resolve(module, self.engine.namespaces, imports, self.engine.async_methods,
                      self.engine.native_methods)
        findings.extend(res.diagnostics)
        return sorted(findings, key=lambda d: (d.line, d.col))

    def _import_info(self, rel: str, script_dir: Path | None, chain: list[Path]):
        if script_dir is None:
            return None, "import needs a script directory"
        root = script_dir.resolve()
        try:
            target = import_target(root, rel)
            check_nesting(len(chain) - 1)
        except VslError as err:
            return None, err.message
        if target in chain:
            return None, f"import cycle through '{target.name}'"
        if target in self._infos:
            info = self._infos[target]
            return info, None if info else f"module '{rel}' has errors"
        try:
            source = target.read_text(encoding="utf-8")
            module = parse(source, str(target), self.engine.limits)
        except (OSError, UnicodeDecodeError) as err:
            return None, f"cannot import '{rel}': {getattr(err, 'strerror', None) or err}"
        except VslError as err:
            return None, f"module '{rel}' does not parse: {err.message}"
        imports = {}
        for imp in module.imports:
            info, problem = self._import_info(imp.path, root, chain + [target])
            if problem:
                return None, problem
            if imp.alias is not None:
                imports[imp.alias] = info
        res = resolve(module, self.engine.namespaces, imports, self.engine.async_methods,
                      self.engine.native_methods)
        info = ModuleInfo(frozenset((f.name, len(f.params)) for f in module.functions),
                          frozenset(res.async_functions), frozenset(res.constants))
        self._infos[target] = info
        return info, None


def script_files(paths) -> list[Path]:
    """Expand files and directories (recursively, ``*.vsl``) into a sorted file list."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.rglob("*.vsl")) if p.is_dir() else [p])
    return files


def format_text(findings: list[Diagnostic]) -> str:
    return "\n".join(str(d) for d in findings)


def format_json(findings: list[Diagnostic]) -> str:
    return json.dumps([{"file": d.file, "line": d.line, "col": d.col, "severity": d.severity,
                        "code": d.code, "message": d.message} for d in findings], indent=2)
