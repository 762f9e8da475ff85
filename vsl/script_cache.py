"""A cache of compiled scripts by content hash, as CPython caches bytecode.

Design note. Loading a script parses it (Lark), resolves it, generates Python and has
CPython compile that: seconds for a large policy, paid again at every ``vsl serve``
restart or reload, ``vsl run`` and ``vsl lint``. What comes out is a function of the
script's text and file name, of this vSL (its sources, its grammar, Lark's and Python's
versions: :func:`toolchain_hash`), of the limits and of the natives' signatures and lint
checks (:func:`describe`); the cache key is a hash of all of them. An entry of the
engine's (:class:`Compiled`) holds the marshalled code and what the engine needs besides,
and the imports' :class:`ModuleInfo` it was compiled against (checked, not keyed: they
are known only once the imports are loaded); the typed AST is not kept (unpickling it
costs half a parse): a script loaded from the cache parses its text again only if
something asks for the AST's bodies (:class:`CachedModule`). The linter keeps its findings
the same way (vsl/lint.py).

A cache file is code (pickle and marshal run what they read): it lives in the private
directory of vsl/parser_cache.py (``$XDG_CACHE_HOME/vsl/scripts``, used only if it is
this user's and no one else can write to it, nor to ``$XDG_CACHE_HOME/vsl``; opened once,
every file reached through that descriptor), is written under a temporary name and
renamed, and carries a hash of its content: a damaged or truncated file is a miss. The
directory is bounded in disk blocks and in files (:data:`MAX_BYTES`, :data:`MAX_ENTRIES`;
the least recently used files go first), looked at by one put in :data:`EVICT_EVERY`
(a look lists the whole directory).
``VSL_NO_CACHE=1`` turns the cache off.
"""
from __future__ import annotations

from dataclasses import dataclass
import functools
import hashlib
from importlib.util import find_spec
import marshal
import os
from pathlib import Path
import pickle
import random
import secrets
import sys
import types

from .parser_cache import DIRECTORY_FLAGS, cache_dir, open_private

MAGIC = b"vsl-script-cache 1\n"
MAX_BYTES = 128 << 20  # of disk (blocks) for the whole directory
MAX_ENTRIES = 20_000  # files in it; eviction brings both down to 3/4
EVICT_EVERY = 64  # puts, on average, between two looks at the directory's size
_DIGEST = 32  # bytes of a sha256


def enabled() -> bool:
    """False when the environment says ``VSL_NO_CACHE`` (to anything but "" or "0")."""
    return os.environ.get("VSL_NO_CACHE", "") in ("", "0")


@functools.lru_cache(maxsize=1)
def toolchain_hash() -> str:
    """A hash of what turns a script into code or findings: the sources of the language,
    its natives, its grammar and the command line (how ``vsl lint`` makes its engine),
    Lark's version and Python's."""
    digest = hashlib.sha256(sys.version.encode())
    for package in ("vsl", "vsl.grammar", "vsl.stdlib", "vsl.cli"):
        spec = find_spec(package)
        for root in spec.submodule_search_locations if spec else ():
            for path in sorted(Path(root).rglob("*")):
                if path.suffix in (".py", ".lark"):
                    digest.update(f"\0{path.relative_to(root)}\0".encode())
                    digest.update(path.read_bytes())
    digest.update(Path(find_spec("lark").origin).read_bytes())  # its __version__
    return digest.hexdigest()


def cache_key(kind: str, *parts: str) -> str:
    """The file name of an entry of ``kind`` for ``parts`` (with :func:`toolchain_hash`)."""
    digest = hashlib.sha256(toolchain_hash().encode())
    for part in parts:
        digest.update(b"\0" + part.encode("utf-8", "surrogatepass"))
    return f"{kind}-{digest.hexdigest()[:40]}"


class Store:
    """A directory of cache entries: any picklable value under a key. The directory is
    opened once; every read, write, rename and removal goes through that descriptor, so
    swapping the directory for another after it was checked changes nothing."""

    def __init__(self, directory: Path, fd: int | None = None):
        self.directory = directory  # (for messages and tests: never used to reach a file)
        self.fd = fd if fd is not None else os.open(directory, DIRECTORY_FLAGS)

    def __del__(self):
        os.close(self.fd)

    @classmethod
    def default(cls) -> Store | None:
        """The user's private store, or None (turned off, or a directory on the way that
        is not private: vsl/parser_cache.py)."""
        if not enabled():
            return None
        parent = open_private(cache_dir())
        if parent is None:
            return None
        try:
            fd = open_private(Path("scripts"), parent)
        finally:
            os.close(parent)
        return cls(cache_dir() / "scripts", fd) if fd is not None else None

    def get(self, key: str):
        """The value stored under ``key``; None if there is none or it is damaged."""
        try:
            fd = os.open(key, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError:
            return None
        try:
            with open(fd, "rb") as file:
                data = file.read()
                os.utime(file.fileno())  # used: eviction removes the least recently used
        except OSError:
            return None
        head, payload = data[:len(MAGIC) + _DIGEST], data[len(MAGIC) + _DIGEST:]
        if head != MAGIC + hashlib.sha256(payload).digest():
            return None
        try:
            return pickle.loads(payload)  # noqa: S301 - our own file, in a private directory
        except Exception:  # noqa: BLE001 - whatever an unreadable entry raises: a miss
            return None

    def put(self, key: str, value) -> None:
        """Store ``value`` under ``key`` (atomically: readers see the old file or the new);
        a failure to write only means no cache. One put in :data:`EVICT_EVERY` (at random)
        sees whether the directory is over its bounds."""
        try:
            payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError):
            return  # something in it cannot be kept
        temporary = f".tmp-{secrets.token_hex(8)}"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=self.fd)
        except OSError:
            return
        try:
            with open(fd, "wb") as file:
                file.write(MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(temporary, key, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except OSError:
            self.remove(temporary)
            return
        if random.randrange(EVICT_EVERY) == 0:
            self.evict()

    def remove(self, name: str) -> bool:
        """Remove an entry; whether it was removed (another process may have been first)."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except OSError:
            return False
        return True

    def evict(self, max_bytes: int = MAX_BYTES, max_entries: int = MAX_ENTRIES) -> None:
        """If the entries take more than ``max_bytes`` of disk or are more than
        ``max_entries``, remove the least recently used until both are at 3/4 of that."""
        try:
            listing = list(os.scandir(self.fd))
        except OSError:
            return
        entries = []
        for entry in listing:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            entries.append((info.st_mtime_ns, info.st_blocks * 512, entry.name))
        total, count = sum(size for _, size, _ in entries), len(entries)
        if total <= max_bytes and count <= max_entries:
            return
        for _, size, name in sorted(entries):
            if total <= max_bytes * 3 // 4 and count <= max_entries * 3 // 4:
                break
            if self.remove(name):
                total, count = total - size, count - 1


class Unknown(Exception):
    """A value :func:`describe` cannot describe the same way in every process."""


def describe(value, depth: int = 0) -> str:
    """A text that is the same in every process for equal ``value`` (functions by name and
    what their closures and partial arguments hold), or :class:`Unknown`."""
    if depth > 24:
        raise Unknown
    deeper = functools.partial(describe, depth=depth + 1)
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return f"[{', '.join(map(deeper, value))}]"
    if isinstance(value, (set, frozenset)):
        return f"{{{', '.join(sorted(map(deeper, value)))}}}"
    if isinstance(value, dict):
        return f"{{{', '.join(sorted(f'{deeper(k)}: {deeper(v)}' for k, v in value.items()))}}}"
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, functools.partial):
        return f"partial({deeper(value.func)}, {deeper(value.args)}, {deeper(value.keywords)})"
    if isinstance(value, types.FunctionType):
        try:
            cells = [cell.cell_contents for cell in value.__closure__ or ()]
        except ValueError:  # an empty cell
            raise Unknown from None
        return (f"{value.__module__}.{value.__qualname__}({deeper(cells)}, "
                f"{deeper(value.__defaults__)})")
    if hasattr(value, "__dict__"):
        return f"{describe(type(value))}{deeper(vars(value))}"
    text = repr(value)
    if " at 0x" in text:
        raise Unknown
    return text


def engine_fingerprint(engine) -> str | None:
    """What of ``engine`` changes how a script compiles: its limits, its natives'
    signatures and lint checks, its native objects' methods; None if it cannot be told
    (a lint check holding something :func:`describe` does not know): no caching then."""
    natives = [(ns.name, [(n.name, n.params, n.min_args, n.max_args, n.is_async, n.options,
                           n.uses, n.returns, n.check, n.charges is not None)
                          for n in ns.functions.values()], ns.types)
               for ns in engine.namespaces.values()]
    try:
        return describe((repr(engine.limits), natives, engine.native_methods,
                         engine.async_methods))
    except Unknown:
        return None


@dataclass(frozen=True)
class FunctionStub:
    """A function of a :class:`CachedModule`: its signature; its body parsed when asked."""

    name: str
    params: tuple[str, ...]
    pos: tuple[int, int]
    owner: CachedModule

    @property
    def body(self):
        return next(f.body for f in self.owner.parsed().functions
                    if f.name == self.name and f.params == self.params)


class CachedModule:
    """The :class:`vsl.ast.Module` of a script loaded from the cache: its file, source,
    imports and functions' signatures at once, the rest parsed from the source when first
    asked for (a stage's wrong return, ``vsl run`` locating an error)."""

    def __init__(self, file: str, source: str, limits, imports: tuple, functions: tuple):
        self.file, self.source, self.limits, self.imports = file, source, limits, imports
        self.functions = tuple(FunctionStub(*f, self) for f in functions)
        self._parsed = None

    def parsed(self):
        """The whole typed AST."""
        if self._parsed is None:
            from .build import parse  # (Lark: only now)
            self._parsed = parse(self.source, self.file, self.limits)
        return self._parsed

    @property
    def body(self):
        return self.parsed().body

    @property
    def plain_interpolations(self):
        return self.parsed().plain_interpolations


@dataclass(frozen=True)
class Compiled:
    """A script once resolved and compiled: what the engine needs to run it."""

    module: object  # vsl.ast.Module, or a CachedModule
    infos: dict  # alias -> ModuleInfo of each import it was compiled against
    code: types.CodeType
    code_names: dict
    constant_refs: dict
    quick: frozenset
    async_functions: frozenset
    has_closures: bool
    top_async: bool

    def entry(self) -> tuple:
        """What the cache keeps: the code marshalled, the module's signatures."""
        functions = tuple((f.name, f.params, f.pos) for f in self.module.functions)
        return (self.module.imports, functions, self.infos, marshal.dumps(self.code),
                self.code_names, self.constant_refs, self.quick, self.async_functions,
                self.has_closures, self.top_async)

    @classmethod
    def from_entry(cls, entry: tuple, file: str, source: str, limits) -> Compiled:
        imports, functions, infos, code, *rest = entry
        return cls(CachedModule(file, source, limits, imports, functions), infos,
                   marshal.loads(code), *rest)  # noqa: S302 - see the design note


class ScriptCache:
    """The engine's side of the cache: compiled scripts by source, file and engine."""

    def __init__(self, store: Store):
        self.store = store

    @classmethod
    def default(cls) -> ScriptCache | None:
        store = Store.default()
        return cls(store) if store is not None else None

    def key(self, engine, source: str, file: str) -> str | None:
        fingerprint = engine.fingerprint
        return None if fingerprint is None else cache_key("load", fingerprint, file, source)

    def get(self, key: str | None, source: str, file: str, limits) -> Compiled | None:
        entry = self.store.get(key) if key is not None else None
        try:
            return Compiled.from_entry(entry, file, source, limits) if entry else None
        except (ValueError, TypeError, EOFError):  # an entry of another shape
            return None

    def put(self, key: str | None, compiled: Compiled) -> None:
        if key is not None:
            self.store.put(key, compiled.entry())

    def drop(self, key: str) -> None:
        """Forget the entry under ``key`` (it failed to load)."""
        self.store.remove(key)
