"""``vsl lint``: static checks of script files, without running them.

Reports syntax errors (a missing ``;`` at the end of the line that lacks it),
everything :mod:`vsl.resolve` finds (undefined names, unknown functions with
"did you mean", arity, assignment to constants, unreachable code, unused
variables, suspicious strings and arguments a native rejects) and what :mod:`vsl.checks`
finds with types (entry points given by the caller, members, option maps).
Imports are resolved statically from their files. Findings print like rustc
or ruff: the source line with a caret, then a summary.
"""
from __future__ import annotations

from functools import cached_property
import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .diagnostics import Diagnostic
from .errors import LimitError, VslError
from .imports import check_nesting, import_target
from .script_cache import Store, Unknown, cache_key, describe
from .script_file import UnreadableScript, read_script

if TYPE_CHECKING:
    from .checks import EntryPoints
    from .engine import Engine
    from .limits import Limits
    from .resolve import ModuleInfo


class Linter:
    """Lints files with one engine's namespaces and limits, and the entry points the
    caller's host calls (none: the language's checks only). The findings of a file whose
    text, imports, engine and entry points are unchanged come from the engine's cache
    (see vsl/script_cache.py), without parsing."""

    def __init__(self, engine: Engine, entries: EntryPoints | None = None):
        self.engine, self.entries = engine, entries
        self._start(engine.limits, engine.cache and engine.cache.store)

    def _start(self, limits: Limits, store: Store | None) -> None:
        self.limits, self.store = limits, store
        self.sources: dict[str, str] = {}  # file -> its text, to show lines in findings
        self.namespaces_called: set[str] = set()  # of the natives the linted files call
        self._infos: dict[Path, ModuleInfo | None] = {}
        self._deps: dict[Path, dict] = {}  # the imports read for each module's info
        self._digests: dict[Path, str | None] = {}  # of each module's text, read once a run

    @classmethod
    def deferred(cls, make_engine: Callable[[], Engine],
                 make_entries: Callable[[], EntryPoints], limits: Limits,
                 context: str) -> Linter:
        """A linter whose engine and entry points are made only for a file that is not in
        the cache (importing the natives takes longer than linting); ``context`` says all
        that makes them what they are, besides the sources of vSL (it is part of the keys)."""
        linter = cls.__new__(cls)
        linter._start(limits, Store.default())
        linter._make = (make_engine, make_entries)
        linter._context = f"{context}\0{limits!r}"
        return linter

    @cached_property
    def engine(self) -> Engine:  # (a deferred linter's)
        return self._make[0]()

    @cached_property
    def entries(self) -> EntryPoints:  # (a deferred linter's)
        return self._make[1]()

    @cached_property
    def _context(self) -> str:
        """What the keys of the cache say of the engine and the entry points ("": they
        cannot be told, no cache)."""
        engine = self.engine.fingerprint
        try:
            return "" if engine is None else engine + describe(self.entries)
        except Unknown:
            return ""

    def lint_file(self, path: Path) -> list[Diagnostic]:
        """All findings for one file (a file that cannot be read is one finding)."""
        try:
            source = read_script(path, self.limits.max_script_size)
        except UnreadableScript as err:
            return [Diagnostic(str(path), 1, 1, "error", "io", f"cannot read: {err.message}")]
        except LimitError as err:
            return [Diagnostic(str(path), 1, 1, "error", "limit", err.message)]
        return self.lint_source(source, str(path), path.parent)

    def lint_source(self, source: str, file: str, script_dir: Path | None) -> list[Diagnostic]:
        self.sources[file] = source
        key = self._cache_key(source, file, script_dir)
        cached = self.store.get(key) if key else None
        if cached is not None and self._unchanged(cached[2]):
            findings, called, _ = cached
        else:
            findings, called, deps = self._lint(source, file, script_dir)
            if key:
                self.store.put(key, (findings, called, deps))
        self.namespaces_called.update(called)
        return findings

    def _unchanged(self, imports: dict) -> bool:
        """Whether each import of a cached lint still resolves to the same file (or fails
        the same way) and that file's text is the same."""
        for (root, rel), (target, digest) in imports.items():
            if _target_of(Path(root), rel) != target:
                return False
            if target is not None and digest != _NOT_READ and \
                    self._digest_of(Path(target)) != digest:
                return False
        return True

    def _digest_of(self, target: Path) -> str | None:
        """The digest of an imported file's text, read once a run (the one
        :meth:`_import_info` read, if it did)."""
        if target not in self._digests:
            self._digests[target] = _digest_of(target, self.limits.max_script_size)
        return self._digests[target]

    def _cache_key(self, source: str, file: str, script_dir: Path | None) -> str | None:
        if self.store is None:
            return None
        where = str(script_dir.resolve()) if script_dir is not None else ""
        return cache_key("lint", self._context, file, where, source) if self._context \
            else None

    def _lint(self, source: str, file: str, script_dir: Path | None):
        """The findings, the namespaces of the natives called and the imports read
        (:meth:`_import_info`) of a file's lint."""
        from .build import parse  # (Lark and the checks: only for text not in the cache)
        from .checks import check
        from .resolve import NativeFn, resolve

        try:
            module = parse(source, file, self.engine.limits)
        except VslError as err:
            pos = err.pos
            return [_syntax_finding(source, file, pos.line if pos else 1, pos.col if pos else 1,
                                    err.message)], set(), {}
        findings: list[Diagnostic] = []
        imports, deps = {}, {}
        for imp in module.imports:
            info, problem, read = self._import_info(imp.path, script_dir,
                                                    [Path(file).resolve()])
            deps.update(read)
            if problem:
                findings.append(Diagnostic(file, *imp.pos, "error", "import", problem))
            elif imp.alias is not None:
                imports[imp.alias] = info
        res = resolve(module, self.engine.namespaces, imports, self.engine.async_methods,
                      self.engine.native_methods)
        called = {target.ns for target in res.targets.values() if isinstance(target, NativeFn)}
        typed = check(module, res, self.engine.namespaces, self.entries)
        known = {(d.line, d.col, d.code) for d in typed}  # a typed finding says it better
        findings += [d for d in res.diagnostics if (d.line, d.col, d.code) not in known]
        findings += typed
        return sorted(findings, key=lambda d: (d.line, d.col)), called, deps

    def _import_info(self, rel: str, script_dir: Path | None, chain: list[Path]):
        """The info of an imported module, or the problem; and the imports read for it:
        (script directory, name) -> (the file it resolved to, None: it did not; the file's
        digest, None: unreadable, _NOT_READ: whatever it holds)."""
        from .build import parse
        from .resolve import ModuleInfo, resolve

        if script_dir is None:
            return None, "import needs a script directory", {}
        root = script_dir.resolve()
        try:
            target = import_target(root, rel)
        except VslError as err:
            return None, err.message, {(str(root), rel): (None, None)}
        read = {(str(root), rel): (str(target), _NOT_READ)}
        try:
            check_nesting(len(chain) - 1)
        except VslError as err:
            return None, err.message, read
        if target in chain:
            return None, f"import cycle through '{target.name}'", read
        if target in self._infos:
            info = self._infos[target]
            read[str(root), rel] = (str(target), self._digests[target])
            return info, None if info else f"module '{rel}' has errors", \
                {**read, **self._deps[target]}
        source, digest, error = _read_import(target, self.limits.max_script_size)
        read[str(root), rel] = (str(target), digest)
        self._digests[target] = digest
        if isinstance(error, UnreadableScript):
            return None, f"cannot import '{rel}': {error.message}", read
        if error is not None:
            return None, f"module '{rel}' does not parse: {error.message}", read
        try:
            module = parse(source, str(target), self.engine.limits)
        except VslError as err:
            return None, f"module '{rel}' does not parse: {err.message}", read
        imports = {}
        for imp in module.imports:
            info, problem, more = self._import_info(imp.path, root, chain + [target])
            read.update(more)
            if problem:
                return None, problem, read
            if imp.alias is not None:
                imports[imp.alias] = info
        res = resolve(module, self.engine.namespaces, imports, self.engine.async_methods,
                      self.engine.native_methods)
        info = ModuleInfo(frozenset((f.name, len(f.params)) for f in module.functions),
                          frozenset(res.async_functions), frozenset(res.constants))
        self._infos[target], self._deps[target] = info, read
        return info, None, read


_NOT_READ = "not read"  # an import's text that does not change its findings (not a digest)


def _digest(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


def _target_of(root: Path, rel: str) -> str | None:
    """The file ``import rel`` resolves to from ``root`` now (None: it does not)."""
    try:
        return str(import_target(root, rel))
    except VslError:
        return None


def _read_import(path: Path, limit: int):
    """(text, digest, error) of the script file ``path``: its digest is None when it
    cannot be read, "" when it is longer than ``limit`` (never a digest of a text)."""
    try:
        source = read_script(path, limit)
    except UnreadableScript as err:
        return None, None, err
    except LimitError as err:
        return None, "", err
    return source, _digest(source), None


def _digest_of(path: Path, limit: int) -> str | None:
    """The digest of the script file ``path`` as :meth:`Linter._lint` read it."""
    return _read_import(path, limit)[1]


_MISSING_SEMICOLON = re.compile(r"^unexpected (.+?), expected ';'")
_CONDITION = re.compile(r"\b(?:if|while)\b[^{};]*$")  # in a condition: no block began since


def _syntax_finding(source: str, file: str, line: int, col: int, message: str) -> Diagnostic:
    """A syntax error; one that wants a ';' before the first token of a line points at the
    end of the previous line of code instead ("add `;` here")."""
    lines = source.split("\n")
    preceding = _code_before(lines, line, col)
    missing = _MISSING_SEMICOLON.match(message)
    if missing and missing.group(1) == "'else'":
        return Diagnostic(file, line, col, "error", "syntax", "unexpected 'else': " + (
            "remove the ';' before it (an `else` follows the '}' of its `if` block)"
            if re.search(r"\}\s*;$", preceding) else "an `else` follows the '}' of an `if` "
            "block: is a '}' missing before it?"))
    if message.startswith("unexpected '=', expected '{'") and _CONDITION.search(preceding):
        message += " (did you mean '=='? '=' assigns, '==' compares)"  # if x = 1 {
    if missing and 0 < line <= len(lines) and not lines[line - 1][:col - 1].strip():
        for before in range(line - 1, 0, -1):
            code = _without_comment(lines[before - 1]).rstrip()
            if code:
                return Diagnostic(file, before, len(code) + 1, "error", "syntax",
                                  f"missing ';' (add `;` here: the next line starts with "
                                  f"{missing.group(1)})")
    return Diagnostic(file, line, col, "error", "syntax", message)


def _code_before(lines: list[str], line: int, col: int) -> str:
    """The code before ``line``:``col``, comments and trailing white space left out."""
    if not 0 < line <= len(lines):
        return ""
    code = [_without_comment(text) for text in lines[:line - 1]]
    return "\n".join([*code, _without_comment(lines[line - 1])[:col - 1]]).rstrip()


def _without_comment(line: str) -> str:
    """``line`` without a trailing ``// comment`` (not one inside a string)."""
    cut = line.find("//")
    while cut >= 0 and line[:cut].count('"') % 2:
        cut = line.find("//", cut + 2)
    return line if cut < 0 else line[:cut]


def script_files(paths) -> list[Path]:
    """Expand files and directories (recursively, ``*.vsl``) into a sorted file list."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.rglob("*.vsl")) if p.is_dir() else [p])
    return files


def foreign_note(directory: Path, extensions) -> str:
    """" (N .EXT file(s): ...)" for a directory holding other servers' scripts (their
    ``extensions``, given by the host: ``EntryPoints.foreign_scripts``), else ""."""
    counts = [(ext, sum(1 for _ in directory.rglob(f"*{ext}"))) for ext in extensions]
    found = [f"{n} {ext} file(s)" for ext, n in counts if n]
    return f" ({', '.join(found)}: vSL scripts end in .vsl)" if found else ""


def no_script_findings(dirs, foreign: tuple[str, ...] = ()) -> list[Diagnostic]:
    """A finding for each of ``dirs``, directories already found to hold no ``.vsl`` file
    (:func:`empty_dirs`): a warning, or an error when it holds other servers' scripts
    (``foreign`` extensions: they would silently go unchecked)."""
    return [Diagnostic(str(p), 0, 0, "error" if note else "warning", "no-scripts",
                       f"no .vsl file here{note}")
            for p in dirs for note in [foreign_note(p, foreign)]]


def empty_dirs(paths) -> list[Path]:
    """The directories among ``paths`` that hold no ``.vsl`` file."""
    return [p for p in map(Path, paths) if p.is_dir() and not any(p.rglob("*.vsl"))]


def format_concise(findings: list[Diagnostic]) -> str:
    """One line a finding: ``path:line:col: severity: message [code]``."""
    return "\n".join(str(d) for d in findings)


def format_full(findings: list[Diagnostic], sources: dict[str, str]) -> str:
    """Each finding with its source line and a caret under the column, like rustc (a file
    that could not be read has no line to show)."""
    blocks = []
    for d in findings:
        lines = sources[d.file].split("\n") if d.file in sources else []
        block = [str(d)]
        if 0 < d.line <= len(lines):
            text = lines[d.line - 1].expandtabs(1)
            block += [f"  {text}", "  " + " " * (d.col - 1) + "^"]
        blocks.append("\n".join(block))
    return "\n\n".join(blocks)


def summary(findings: list[Diagnostic], files: int) -> str:
    """``2 errors, 1 warning in 3 files``."""
    def count(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    errors = sum(d.severity == "error" for d in findings)
    return (f"{count(errors, 'error')}, {count(len(findings) - errors, 'warning')} "
            f"in {count(files, 'file')}")


def format_json(findings: list[Diagnostic]) -> str:
    return json.dumps([{"file": d.file, "line": d.line, "col": d.col, "severity": d.severity,
                        "code": d.code, "message": d.message} for d in findings], indent=2)
