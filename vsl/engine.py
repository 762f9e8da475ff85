"""The embedding API: :class:`Engine` loads scripts, :class:`Script` runs their functions.

    engine = Engine(limits, namespaces)             # the host's natives (none: bare language)
    script = engine.load("policy/main.vsl")
    result = script.call("check", value)            # or: await script.call_async(...)

A script is parsed, resolved and compiled once; its top level runs at load
and its constants are then frozen, so one Script serves many concurrent
calls (a mail server's sessions). Every error leaves the engine as a :class:`VslError`.

Off the event loop. A server calls its entry functions with ``call_off_loop``: a
function the compiler proved quick (no loop, no call of a script function or
closure, no step whose work grows with a value) runs on the event loop; any
other runs in a worker thread, so a script burning its max_time does not stall
the other sessions. Natives that wait on I/O never run in the worker: their
coroutines are handed back to the server's loop (_on_host), where DNS caches
and resolvers stay single-threaded as before; the worker's own event loop only
runs the script's coroutine. Network waits end a fifth of max_time before the
call's deadline (IO_DEADLINE), so a silent DNS server gives the script a
catchable error rather than a time-limit error.
"""
from __future__ import annotations

# asyncio is imported by the functions that use it: `vsl lint` imports this module and
# runs no coroutine.
from concurrent.futures import Executor
from contextvars import ContextVar, copy_context
from functools import cached_property
import inspect
from itertools import repeat
from operator import length_hint
import os
from pathlib import Path
import threading
from time import monotonic
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only
    import asyncio

from . import values
from .compile import (ModuleCompiler, entry_fn_name, module_fn_name, native_name,
                      script_fn_name)
from .errors import (Frame, InternalError, LimitError, Pos, ScriptError, ThrownError, VslError,
                     VslSyntaxError)
from .imports import check_nesting, import_target
from .limits import Limits
from .methods import call_method
from .natives import IO_DEADLINE, SCRIPT_POSITION, Native
from .ops import Ops, at_depth
from .resolve import ModuleInfo, resolve
from .script_cache import CachedModule, Compiled, ScriptCache, engine_fingerprint
from .script_file import UnreadableScript, line_of, read_script


_INF = float("inf")
_UNLIMITED = 1 << 62  # operations: "no limit" as an int, so counting stays int arithmetic
# The largest chunk of a budget: a count up to 256 is one of CPython's cached
# small ints, so a tick allocates nothing (a count of 2**62 made every tick much slower)
_CACHED_INT = 256
_LONG_GRANT = 1 << 20  # loop iterations ExecState.grant counts at once without a deadline
_STATE: ContextVar = ContextVar("vsl_exec_state")
_NO_ARG = object()  # Script.call() without arguments
_UNDEF = values.Undefined()  # a constant's global before the top level sets it
IO_RESERVE = 0.2  # the part of max_time kept after network waits end (see IO_DEADLINE)
# In a script worker thread: ``host``, the server's event loop; ``loop``, the thread's own.
_worker = threading.local()


def overran(limits: Limits) -> LimitError:
    """The error of a call that ran past ``limits.max_time``."""
    return LimitError(f"script ran longer than {limits.max_time} s (limits.max_time)")


class ExecState:
    """Per-call budget: operations left and the wall-clock deadline.

    Compiled code counts operations down in ``n`` and calls :meth:`slow` when a chunk is
    used up; chunks grow while operations are cheap and shrink to one when they are slow,
    so even O(n) operations cannot run far past the deadline. Without a deadline a chunk
    is the whole budget, _CACHED_INT operations at a time.

    Every call has its own state while it runs (never shared, so concurrent and nested
    calls cannot spend each other's budget). A compiled entry point whose body loops or
    calls takes one from the engine's pool and refills it, cheaper than a new one (see
    _budgets and ModuleCompiler.entry).
    """

    __slots__ = ("n", "left", "deadline", "size", "mark", "unyielded", "depth")
    FIRST, LARGEST = 16, _CACHED_INT
    # Set per engine by for_engine(): the limits, the operators and the first budget.
    limits: Limits
    ops: Ops
    first: int
    rest: float
    max_time: float
    timed: bool

    @classmethod
    def for_engine(cls, limits: Limits, ops: Ops) -> type["ExecState"]:
        """A subclass bound to one engine's limits, so that a call's set-up is cheap."""
        total = limits.max_operations or _UNLIMITED
        timed = bool(limits.max_time)
        first = min(cls.FIRST if timed else _CACHED_INT, total)
        return type("ExecState", (cls,), {
            "__slots__": (), "limits": limits, "ops": ops, "first": first,
            "rest": total - first, "max_time": limits.max_time or _INF, "timed": timed})

    def __init__(self):
        self.n, self.left, self.size = self.first, self.rest, self.FIRST
        self.unyielded = 0  # charged work of natives that waited, since the loop last turned
        self.depth = 0  # the call depth of the code calling a closure (see ops.at_depth)
        if self.timed:
            self.mark = now = monotonic()
            self.deadline = now + self.max_time
        else:
            self.mark, self.deadline = 0.0, _INF

    def slow(self) -> None:
        """Called by compiled code when the current chunk of operations is used up."""
        available = self.left + self.n  # n < 0: operations done beyond the chunk
        if self.timed:
            now = monotonic()
            if now > self.deadline:
                raise overran(self.limits)
            spent, self.mark = now - self.mark, now
            if spent > 0.01:
                self.size = 1
            elif spent < 0.001 and self.size < self.LARGEST:
                self.size *= 2
            chunk = min(self.size, available)
        else:
            chunk = min(available, _CACHED_INT)
        if available < 0:
            raise LimitError(f"too many operations (limit {self.limits.max_operations}, "
                             "limits.max_operations)")
        self.left = available - chunk
        self.n = chunk

    def grant(self) -> int:
        """Count the ticks of as many loop iterations as the chunk holds (without a
        deadline, up to _LONG_GRANT more), at once (at least one: the first tick calls
        slow() as compiled code would, so an error comes at the same iteration); how many
        were counted. The loop gives back those it did not run (compile._Fn.range_chunks
        and counted_chunks)."""
        n = self.n - 1
        if n < 0:
            self.n = n
            self.slow()
            n = self.n
        if not self.timed:  # no clock to read between chunks: take many at once
            more = min(self.left, _LONG_GRANT)
            n, self.left = n + more, self.left - more
        self.n = 0
        return n + 1

    def work(self, size: int) -> None:
        """Charge the work of one step that grows with a value's size (``size`` items or
        characters: one operation, plus one per 64), checking the clock when the chunk is
        used up. Every operation that walks or builds a value by size calls this."""
        self.n -= 1 + (size >> 6)
        if self.n < 0:
            self.slow()


def charged_text(st: ExecState, text: str, work: int) -> str:
    """``text`` once ``st.work(len(text) + work)`` is charged (inlined: a template's
    f-string, see FastPaths.charged_text)."""
    st.n -= 1 + ((len(text) + work) >> 6)
    if st.n < 0:
        st.slow()
    return text


def _gget(consts, name: str):
    try:
        return consts[name]
    except KeyError:
        raise ScriptError(f"constant '{name}' is not defined yet") from None


def _throw(value) -> ThrownError:
    message = value if type(value) is str else values.preview(value, 1000)
    return ThrownError(value, message)


def _errval(err: ScriptError):
    return err.value if isinstance(err, ThrownError) else err.message


def _in(st, a, b):
    tb = type(b)
    if tb is list or tb is tuple:
        if len(b) > 63:
            st.work(len(b))
        if type(a) is str:  # Python's == is the script's for a string needle
            return a in b
    return st.ops.in_(st, a, b)


def _not_in(st, a, b):
    return not _in(st, a, b)


def _calling_back(st, depth: int, obj, name: str, args: tuple):
    """``obj.name(*args)`` of a method that calls a closure argument (``map``...) from
    code at call depth ``depth``."""
    return at_depth(st, depth, call_method, st, obj, name, args)


async def _ameth(st, obj, name, args):
    result = call_method(st, obj, name, args)
    if inspect.isawaitable(result):
        result = st.ops.from_native(await _on_host(result), obj, f"{name}()")
    return result


def _native_entry(native: Native):
    """What compiled code calls for ``native``: its function (an async one hosted, see
    _on_host); for a native with ``charges``, one taking the call's budget first and
    charging the size of the work before the call."""
    func = _hosted(native.func) if native.is_async else native.func
    charges = native.charges
    if charges is None:
        return func
    if native.is_async:
        return _charged_wait(func, charges)

    def charged(st, *args):
        st.work(charges(*args))
        return func(*args)
    return charged


HANDOVER_WORK = 8192  # charged work of natives that wait, after which the loop turns


def _charged_wait(func, charges):
    """A charged native that waits: its work runs on the event loop, where a function
    that cannot run long (see ModuleCompiler.quick) calls it too; so once such calls
    have charged HANDOVER_WORK since the loop last turned (a call answered at once, from a
    cache, does not turn it), the loop is handed over: calls one after another cannot
    hold it for longer than that much work (and one call's)."""
    async def charged(st, *args):
        size = charges(*args)
        st.work(size)
        result = await func(*args)
        st.unyielded += size
        if st.unyielded >= HANDOVER_WORK:
            import asyncio
            st.unyielded = 0
            await asyncio.sleep(0)
        return result
    return charged


def _on_host(awaitable):
    """A native's coroutine, to await: as it is on the server's loop; in a script worker
    thread, run on the server's loop (with the call's network deadline) and awaited
    from the worker's loop through a future."""
    host = getattr(_worker, "host", None)
    if host is None:
        return awaitable
    import asyncio
    hosted = asyncio.run_coroutine_threadsafe(_within_io_deadline(awaitable, IO_DEADLINE.get()),
                                              host)
    return asyncio.wrap_future(hosted)


async def _within_io_deadline(awaitable, deadline: float | None):
    """Await ``awaitable`` with IO_DEADLINE set (on the server's loop, in its own task)."""
    IO_DEADLINE.set(deadline)
    return await awaitable


def _hosted(native):
    """An async native's function as the compiled code calls it (see _on_host)."""
    def call(*args):
        return _on_host(native(*args))
    return call


def _worker_loop() -> asyncio.AbstractEventLoop:
    """The event loop of this worker thread, made on first use."""
    loop = getattr(_worker, "loop", None)
    if loop is None:
        import asyncio
        loop = _worker.loop = asyncio.new_event_loop()
    return loop


class Script:
    """A loaded, compiled script: call its functions with :meth:`call`."""

    def __init__(self, engine: "Engine", file: str, env: dict, compiled: Compiled,
                 top_value, imports: dict):
        self.engine = engine
        self.top_value = top_value  # the value of the top level's last statement
        self.file = file
        self._env = env
        self.constants = env["_G"]
        self.module = module = compiled.module
        self.functions = {(f.name, len(f.params)): env[script_fn_name(f.name, len(f.params))]
                          for f in module.functions}
        self.async_functions = compiled.async_functions
        # Closures read the call's budget from a context variable, set only when needed.
        self.uses_closures = compiled.has_closures or any(
            s.uses_closures for s in imports.values())
        # The entry points of the plain functions (not waiting on I/O), which take their own
        # budget (see ModuleCompiler.entry): they run without Engine.run
        self._entries = {key: env[entry_fn_name(*key)] for key in self.functions
                         if entry_fn_name(*key) in env}
        # ... those of one argument by name: the host's usual call (a stage's), looked up
        # without building a key
        self._unary = {name: fn for (name, arity), fn in self._entries.items() if arity == 1}
        # Functions that cannot run long (see ModuleCompiler.quick): call_off_loop runs
        # them on the event loop. A closure can loop: no function of such a script is.
        self.quick = frozenset() if self.uses_closures else compiled.quick

    def info(self) -> ModuleInfo:
        return ModuleInfo(frozenset(self.functions), self.async_functions,
                          frozenset(self.constants), self.uses_closures)

    def has(self, name: str, arity: int = 1) -> bool:
        """Whether the script defines ``name`` with ``arity`` parameters."""
        return (name, arity) in self.functions

    def _fn(self, name: str, arity: int):
        fn = self.functions.get((name, arity))
        if fn is None:
            raise VslError(f"{self.file}: no function '{name}' with {arity} parameter(s)")
        return fn

    def call(self, name: str, arg=_NO_ARG, *more):
        """Run a script function to completion (from synchronous code): ``call(name, *args)``.

        A plain function runs its compiled entry point (see ModuleCompiler.entry)."""
        if not more and arg is not _NO_ARG:  # the host's usual call: no key, no tuple
            fn = self._unary.get(name)
            if fn is not None:
                return fn(arg)
        args = _args(arg, more)
        fn = self._entries.get((name, len(args)))
        return fn(*args) if fn is not None else self._call(name, args)

    def function(self, name: str, arity: int = 1):
        """The script function ``name`` with ``arity`` parameters as a Python callable of
        that many arguments, for a host that looks it up once and calls it often
        (``check = script.function("check"); check(value)``). A plain function is its
        compiled entry point, with nothing in between. A missing function is a VslError
        here; a call with another number of arguments is a TypeError, as for any Python
        function."""
        self._fn(name, arity)  # (it exists)
        entry = self._entries.get((name, arity))
        if entry is not None:
            return entry

        def call(*args):
            if len(args) != arity:
                raise TypeError(f"{name}() takes {arity} argument(s), not {len(args)}")
            return self._call(name, args)
        return call

    def _call(self, name: str, args: tuple):
        return self.engine.run(self._fn(name, len(args)), args,
                               (name, len(args)) in self.async_functions, self.uses_closures)

    async def call_off_loop(self, executor: Executor, name: str, arg):
        """``await call_async(name, arg)`` without stalling the event loop: a function that
        cannot run long runs here; any other in a thread of ``executor`` (its natives'
        I/O still runs on this loop: see _on_host)."""
        if (name, 1) in self.quick:
            return await self.call_async(name, arg)
        import asyncio
        host = asyncio.get_running_loop()
        return await host.run_in_executor(executor, copy_context().run,  # the caller's context vars
                                          self._call_in_worker, host, name, arg)

    def _call_in_worker(self, host: asyncio.AbstractEventLoop, name: str, arg):
        """Run ``name(arg)`` in a worker thread of call_off_loop."""
        _worker.host = host
        try:
            if (name, 1) not in self.async_functions:
                return self.call(name, arg)
            return _worker_loop().run_until_complete(self.call_async(name, arg))
        finally:
            _worker.host = None

    async def call_async(self, name: str, arg=_NO_ARG, *more):
        """Run a script function inside an event loop (natives may wait on I/O):
        ``await call_async(name, *args)``. A plain function runs without suspending: its
        budget is back in the pool before any other task runs."""
        if not more and arg is not _NO_ARG:  # as in call()
            fn = self._unary.get(name)
            if fn is not None:
                return fn(arg)
        args = _args(arg, more)
        if (name, len(args)) in self._entries:
            return self.call(name, *args)
        return await self.engine.run_async(self._fn(name, len(args)), args,
                                           (name, len(args)) in self.async_functions,
                                           self.uses_closures)


def _budgets(State: type[ExecState]):
    """``take()``, ``give(state)`` and ``fresh()`` for the compiled entry points: a refilled
    budget from a pool (``list.pop`` is atomic: a budget is never shared by two calls),
    its return, and a new one. A budget from take() has already counted the call's own
    operation; ``fresh(room)`` is one whose first chunk has ``room`` operations left (an
    entry point counts down ``_ROOM``, the first chunk less the call's own operation, in a
    local until it needs a budget: see ModuleCompiler.entry), checked if below 0."""
    pool: list[ExecState] = []
    pop, give = pool.pop, pool.append
    entry_n, rest, first_size = State.first - 1, State.rest, ExecState.FIRST
    timed, max_time = State.timed, State.max_time

    def take() -> ExecState:
        try:
            st = pop()
        except IndexError:
            st = State()
        if timed:
            st.n, st.left, st.size = entry_n, rest, first_size
            st.mark = now = monotonic()
            st.deadline = now + max_time
        else:  # slow() never changes mark, size or deadline then
            st.n, st.left = entry_n, rest
        return st

    def fresh(room: int) -> ExecState:
        st = State()
        st.n = room
        if room < 0:
            st.slow()
        return st

    return take, give, fresh


def _args(arg, more: tuple) -> tuple:
    """The arguments of ``call(name, arg, *more)`` as one tuple."""
    return () if arg is _NO_ARG else (arg, *more)


async def _within_deadline(coro, state: ExecState):
    """Await a script coroutine, ending it with a LimitError at the call's deadline; the
    natives' network waits end IO_RESERVE of max_time before it.

    The coroutine takes its first step here, in the caller's task: a call whose natives
    answer at once (a cached look-up, an in-memory count) never suspends, and needs no
    timer. Only one that suspends is resumed under ``asyncio.timeout`` (see _resumed): the
    deadline can only pass while it waits, since its own steps count against max_time."""
    if state.deadline == _INF:
        return await coro
    token = IO_DEADLINE.set(state.deadline - state.max_time * IO_RESERVE)
    try:
        try:
            waiting_on = coro.send(None)
        except StopIteration as done:
            if monotonic() > state.deadline:  # a native's work after the last check
                raise overran(state.limits) from None
            return done.value
        import asyncio
        async with asyncio.timeout(max(state.deadline - monotonic(), 0)):
            return await _resumed(coro, waiting_on)
    except TimeoutError:
        if monotonic() < state.deadline:
            raise  # a native's own timeout, not ours
        raise overran(state.limits) from None
    finally:
        IO_DEADLINE.reset(token)


@types.coroutine
def _resumed(coro, waiting_on):
    """The rest of ``coro``, which suspended on ``waiting_on`` in its first step: what
    ``await coro`` would do from there (PEP 380's ``yield from``), for _within_deadline."""
    while True:
        try:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as err:  # noqa: BLE001 - the task's cancellation, passed on
                waiting_on = coro.throw(err)
            else:
                waiting_on = coro.send(sent)
        except StopIteration as done:
            return done.value


class _Call:
    """One call of Engine.run or run_async: ``with _Call(engine, closures) as state`` gives
    a fresh budget (in _STATE too when the code may run closures), and every exception
    leaves as a located VslError. A class: cheaper than a generator's context manager.
    (Script.call inlines the same for its fast path.)"""

    __slots__ = ("engine", "closures", "token")

    def __init__(self, engine: "Engine", closures: bool):
        self.engine, self.closures = engine, closures

    def __enter__(self) -> ExecState:
        state = self.engine.State()
        self.token = _STATE.set(state) if self.closures else None
        return state

    def __exit__(self, kind, err, traceback) -> None:
        if self.token is not None:
            _STATE.reset(self.token)
        if err is not None:
            raise self.engine.locate(err) from None


def _run_sync(make_coro):
    """Run the coroutine ``make_coro()`` makes in a new event loop (none may be running)."""
    import asyncio
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    raise VslError("this function waits on I/O: use call_async() inside an event loop")


def _parsed(source: str, file: str, limits: Limits):
    """The typed AST of ``source``; the parser (Lark) is imported only now: a script
    loaded from the cache needs none."""
    from .build import parse
    return parse(source, file, limits)


class _Load:
    """State of one engine.load(): module cache, cycle detection, module count."""

    def __init__(self, root: Path | None):
        self.root = root
        self.loading: list[str] = []
        self.modules: dict[str, Script] = {}


class Engine:
    """Compiles and runs scripts with a set of native namespaces and limits.

    ``namespaces`` come from the host (the language knows none): without them the
    engine runs the bare language; ``vsl.stdlib.new_engine`` gives one with the
    mail server's natives. ``use_cache``: keep compiled scripts in the user's cache and
    load them from it while their text has not changed (vsl/script_cache.py), as the
    command line and the server do."""

    def __init__(self, limits: Limits | None = None, namespaces=(), use_cache: bool = False):
        self.limits = limits or Limits()
        self.ops = Ops(self.limits)
        self.State = ExecState.for_engine(self.limits, self.ops)
        self._take, self._give, self._fresh = _budgets(self.State)
        self.namespaces = {}
        self.native_methods = self.async_methods = frozenset()  # of the namespaces' types
        self._sources: dict[str, tuple[str, dict]] = {}
        self.cache = ScriptCache.default() if use_cache else None  # see vsl/script_cache.py
        for ns in namespaces:
            self.register(ns)

    def register(self, namespace) -> None:
        """Add a native namespace (replacing one with the same name)."""
        self.namespaces[namespace.name] = namespace
        self.__dict__.pop("fingerprint", None)  # (both computed again when next asked for)
        self.__dict__.pop("natives", None)
        methods = {}
        for ns in self.namespaces.values():
            for cls in ns.types:
                methods.update(cls.vsl_methods)
        self.native_methods = frozenset(methods)
        self.async_methods = frozenset(name for name, (fn, _, _) in methods.items()
                                       if inspect.iscoroutinefunction(fn))

    @cached_property
    def fingerprint(self) -> str | None:
        """What of this engine changes how a script compiles (script_cache.
        engine_fingerprint), computed once."""
        return engine_fingerprint(self)

    @cached_property
    def natives(self) -> dict[tuple[str, str], Native]:
        """The namespaces' natives by (namespace, name), computed once."""
        return {(ns.name, n.name): n for ns in self.namespaces.values()
                for n in ns.functions.values()}

    # -- loading ---------------------------------------------------------
    def load(self, path: str | os.PathLike) -> Script:
        """Load a script file; its directory is where imports are looked up."""
        path = Path(path)
        try:
            source = read_script(path, self.limits.max_script_size)
        except UnreadableScript as err:
            raise VslError(f"{path}: cannot read script: {err.message}") from None
        return self.load_source(source, str(path), path.parent)

    def load_source(self, source: str, file: str = "<script>",
                    script_dir: str | os.PathLike | None = None) -> Script:
        """Load a script from text; ``script_dir`` enables imports."""
        load = _Load(Path(script_dir).resolve() if script_dir is not None else None)
        return self._load_module(source, file, load)

    def _load_module(self, source: str, file: str, load: _Load) -> Script:
        key = self.cache.key(self, source, file) if self.cache else None
        compiled, imports = self._cached_or_fresh(key, source, file, load)
        self._sources[file] = (source, compiled.code_names)
        env = self._environment(imports)
        for name, (ns, const) in compiled.constant_refs.items():  # see e_NsVar
            env[name] = _UNDEF if ns == "global" else imports[ns].constants[const]
        exec(compiled.code, env)  # noqa: S102 - generated from the script AST, empty builtins
        value = self.run(env["__top__"], (), compiled.top_async)
        return Script(self, file, env, compiled, value, imports)

    def _cached_or_fresh(self, key: str | None, source: str, file: str, load: _Load):
        """The compiled module and its imports; an entry of the cache that fails with
        anything but a VslError is a miss (dropped, the script loaded afresh)."""
        if key is not None:
            try:
                return self._prepare(self.cache.get(key, source, file, self.limits),
                                     source, file, load, key)
            except VslError:
                raise
            except Exception:  # noqa: BLE001 - whatever a broken entry raises: a miss
                self.cache.drop(key)
        return self._prepare(None, source, file, load, key)

    def _prepare(self, compiled: Compiled | None, source: str, file: str, load: _Load,
                 key: str | None):
        """Load the imports, and compile the module unless ``compiled`` still fits them."""
        module = compiled.module if compiled else _parsed(source, file, self.limits)
        imports = {}
        for imp in module.imports:
            script = self._import(imp, module, load)
            if imp.alias is not None:
                imports[imp.alias] = script
        infos = {alias: s.info() for alias, s in imports.items()}
        if compiled is None or compiled.infos != infos:
            if isinstance(module, CachedModule):
                module = module.parsed()
            compiled = self._compile(module, infos)
            if key is not None:
                self.cache.put(key, compiled)
        return compiled, imports

    def _compile(self, module, infos: dict) -> Compiled:
        """Resolve and compile a parsed module (imported modules: ``infos``)."""
        from .build import gc_paused
        file, source = module.file, module.source
        with gc_paused():
            res = resolve(module, self.namespaces, infos, self.async_methods,
                          self.native_methods)
        if res.errors:
            first = res.errors[0]
            more = f" (and {len(res.errors) - 1} more)" if len(res.errors) > 1 else ""
            raise VslSyntaxError(first.message + more, Pos(file, first.line, first.col),
                                 line_of(source, first.line))
        compiler = ModuleCompiler(module, res, self.natives, infos, self.async_methods,
                                  self.limits.max_call_depth, self.limits.max_array_size,
                                  self.limits.max_string_size)
        try:
            with gc_paused():
                code = compile(compiler.compile(), file, "exec")
        except (SyntaxError, ValueError, TypeError, RecursionError) as err:
            raise InternalError(f"{file}: cannot compile script: {err}") from None
        return Compiled(module, infos, code, compiler.code_names, compiler.constant_refs,
                        frozenset(compiler.quick), frozenset(res.async_functions),
                        res.has_closures, res.top_async)

    def _import(self, imp, module, load: _Load) -> Script:
        where = Pos(module.file, *imp.pos)
        line = line_of(module.source, imp.pos[0])
        if load.root is None:
            raise VslError("import needs a script directory (load the script from a file)",
                           where, line)
        try:
            target = import_target(load.root, imp.path)
            check_nesting(len(load.loading))
        except VslError as err:
            raise err.located(where, line) from None
        key = str(target)
        if key in load.loading:
            chain = " -> ".join(Path(p).name for p in load.loading[load.loading.index(key):])
            raise VslError(f"import cycle: {chain} -> {target.name}", where, line)
        if key in load.modules:
            return load.modules[key]
        if self.limits.max_modules and \
                len(load.modules) + len(load.loading) >= self.limits.max_modules:
            raise LimitError(f"too many modules (limit {self.limits.max_modules}, "
                             "limits.max_modules)", where, line)
        name = os.path.relpath(target)
        load.loading.append(key)
        try:
            script = self._load_module(read_script(name, self.limits.max_script_size), name,
                                       load)
        except UnreadableScript as err:
            raise VslError(f"cannot import '{imp.path}': {err.message}", where, line) from None
        except VslError as err:  # show where the failing module was imported from
            err.stack = (Frame("<import>", where), *err.stack)
            raise
        finally:
            load.loading.pop()
        load.modules[key] = script
        return script

    def _environment(self, imports: dict) -> dict:
        ops = self.ops
        env = {
            "__builtins__": {}, "_G": {},
            "_add": ops.add, "_sub": ops.sub, "_mul": ops.mul, "_div": ops.div,
            "_mod": ops.mod, "_pow": ops.pow, "_eq": ops.eq, "_ne": ops.ne, "_lt": ops.lt,
            "_le": ops.le, "_gt": ops.gt, "_ge": ops.ge, "_in": _in, "_notin": _not_in,
            "_eqv": values.equals,
            "_range": ops.range_, "_rangei": ops.range_incl, "_neg": ops.neg, "_pos": ops.pos,
            "_not": ops.not_, "_cond": ops.cond, "_idx": ops.index, "_setidx": ops.set_index,
            "_getprop": ops.getprop, "_setprop": ops.setprop, "_tpl": ops.template,
            "_text": charged_text, "_repeat": repeat, "_unrun": length_hint,
            "_iter": ops.iterate, "_callv": ops.call_value, "_enumerate": enumerate,
            "_meth": call_method, "_cmeth": _calling_back, "_ameth": _ameth,
            "_closure": values.Closure,
            "_freeze": values.freeze, "_gget": _gget, "_throw": _throw, "_errval": _errval,
            "_Catch": ScriptError, "_UNDEF": _UNDEF, "_too_deep": self._too_deep,
            "_state": self.current_state, "_take": self._take, "_give": self._give,
            "_fresh": self._fresh, "_ROOM": self.State.first - 1,
            "_enter": _STATE.set, "_leave": _STATE.reset,
            "_locate": self.locate, "_BaseException": BaseException,
            SCRIPT_POSITION: frame_position,
            "int": int, "str": str, "dict": dict, "list": list, "_len": len,
            "_SIZED": frozenset({str, list, tuple, dict, values.FrozenMap}),
            "tuple": tuple, "_FMAP": values.FrozenMap,
            "_FMT": frozenset({str, int}), "_too_long": ops.too_large,
            "_MAX_MAP": ops.max_map,
        }
        for (ns, name), native in self.natives.items():
            env[native_name(ns, name)] = _native_entry(native)
        for alias, script in imports.items():
            for (name, arity), fn in script.functions.items():
                env[module_fn_name(alias, name, arity)] = fn
        return env

    def _too_deep(self, depth: int):
        raise LimitError(f"call depth limit exceeded ({self.limits.max_call_depth} nested "
                         "calls, limits.max_call_depth): runaway recursion?")

    # -- running -----------------------------------------------------------
    def run(self, fn, args: tuple, waits: bool, closures: bool = True):
        """Call compiled ``fn`` with a fresh budget; any error leaves as a located VslError.

        ``closures``: the code may run closures, which find the call's budget in a
        context variable (set only then: it costs a little on every call).
        """
        with _Call(self, closures) as state:
            if waits:
                return _run_sync(lambda: _within_deadline(fn(state, 0, *args), state))
            return fn(state, 0, *args)

    async def run_async(self, fn, args: tuple, waits: bool, closures: bool = True):
        """Like :meth:`run`, awaiting ``fn`` when it waits on I/O (bounded by max_time)."""
        with _Call(self, closures) as state:
            if waits:
                return await _within_deadline(fn(state, 0, *args), state)
            return fn(state, 0, *args)

    def current_state(self) -> ExecState:
        """The budget of the script call in progress (a fresh one outside any call)."""
        state = _STATE.get(None)
        return state if state is not None else self.State()

    # -- errors ----------------------------------------------------------
    def locate(self, err: BaseException) -> VslError:
        """Turn any exception raised by script code into a VslError with position and stack."""
        from asyncio import CancelledError
        if isinstance(err, (KeyboardInterrupt, SystemExit, CancelledError)):
            raise err
        if isinstance(err, VslError) and err.pos is not None:
            return err
        frames = []
        tb = err.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            known = self._sources.get(code.co_filename)
            if known is not None and code.co_name in known[1]:
                frames.append((code, tb.tb_lasti, tb.tb_lineno))
            tb = tb.tb_next
        if isinstance(err, VslError):
            located = err
        elif isinstance(err, RecursionError):
            located = LimitError("Python stack exhausted (reduce nesting or recursion)")
        elif isinstance(err, MemoryError):
            located = LimitError("out of memory")
        else:
            located = InternalError(f"internal error: {type(err).__name__}: {err}")
        if not frames:
            return located
        stack = []
        for code, lasti, lineno in frames:
            names = self._sources[code.co_filename][1]
            pos = _position(code, lasti, lineno)
            stack.append(Frame(names[code.co_name], Pos(code.co_filename, *pos)))
        top = stack[-1].pos
        source = self._sources[top.file][0]
        return located.located(top, line_of(source, top.line), tuple(stack))


def frame_position(frame) -> Pos:
    """The script position a frame of compiled script code is executing (its file is
    the script's: the compiler gives the code its name and every node its position)."""
    code = frame.f_code
    return Pos(code.co_filename, *_position(code, frame.f_lasti, frame.f_lineno))


def _position(code, lasti: int, lineno: int) -> tuple[int, int]:
    for i, (line, _, col, _) in enumerate(code.co_positions()):
        if i == lasti // 2:
            if line is not None and col is not None:
                return line, col + 1
            break
    return lineno or 1, 1
