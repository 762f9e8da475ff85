"""The event loop of the long-running servers (``vsl serve`` and its workers, ``vsl
policyd``, ``vsl milter``): uvloop where it is installed and ``[server] event_loop``
allows it, else asyncio's own.

uvloop (libuv under asyncio's API) serves the same code faster: a loaded server spends
most of its CPU in the event loop and stream plumbing, not in the scripts (issue 19).
``"auto"`` takes uvloop when it can be imported and asyncio otherwise; ``"uvloop"``
insists (a missing uvloop is an error); ``"asyncio"`` never uses it.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

CHOICES = ("auto", "asyncio", "uvloop")

log = logging.getLogger("vsl.server")
T = TypeVar("T")


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new event loop for ``choice`` (one of CHOICES); ImportError when
    ``choice`` is "uvloop" and uvloop is not installed."""
    if choice not in CHOICES:
        raise ValueError(f"event loop {choice!r}: must be one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def loop_name(factory: Callable[[], asyncio.AbstractEventLoop]) -> str:
    """"uvloop" or "asyncio": the loops ``factory`` makes."""
    return "asyncio" if factory is asyncio.new_event_loop else "uvloop"


def run(main: Coroutine[Any, Any, T], choice: str = "auto", announce: bool = True,
        stop_on_sigterm: bool = False) -> T | None:
    """``asyncio.run(main)`` on the event loop ``choice`` gives, logged when ``announce``
    (the workers' parent logs it for all of them). With ``stop_on_sigterm``, SIGTERM
    cancels ``main`` as Ctrl-C does, so a server stops cleanly (its ``finally`` runs), and
    ``run`` returns None."""
    factory = loop_factory(choice)
    if announce:
        log.info("event loop: %s", loop_name(factory))
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_until_sigterm(main) if stop_on_sigterm else main)


async def _until_sigterm(main: Coroutine[Any, Any, T]) -> T | None:
    """``main``, cancelled by SIGTERM (systemd's stop); the handler before is put back."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    terminated = False

    def terminate() -> None:  # once: a second SIGTERM (systemd sends one to every process
        nonlocal terminated   # of the unit, and the parent another) must not cut the stop
        if not terminated:
            terminated = True
            task.cancel()

    before = signal.getsignal(signal.SIGTERM)
    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await main
    except asyncio.CancelledError:
        if not terminated:
            raise
        return None
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, before)
