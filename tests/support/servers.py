"""Running the real vSL server (in a thread, on a loopback port) for tests."""
from __future__ import annotations

import asyncio
import os
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from vsl.server import event_loop
from vsl.server.app import Server
from vsl.server.config import Config, DeliveryConfig, Listener


@contextmanager
def running(config: Config):
    """Start a Server for ``config`` (listeners on port 0 get a free port) and yield it;
    ``server.port(kind)`` gives a bound port. Stopped on exit."""
    with in_thread(Server(config)) as server:
        server.port = lambda kind="smtp": next(a[1] for l, a in server.bound if l.kind == kind)
        yield server


@contextmanager
def in_thread(server):
    """Run ``server`` (its ``start()``, then ``serve_forever()``) in an event loop of its
    own thread; ``server.loop`` is that loop (asyncio's, or VSL_EVENT_LOOP's: "uvloop"
    runs the server tests under uvloop). Cancelled on exit."""
    loop = event_loop.loop_factory(os.environ.get("VSL_EVENT_LOOP", "asyncio"))()
    started = threading.Event()
    failure: list[BaseException] = []

    async def main():
        try:
            await server.start()
        except BaseException as err:  # noqa: BLE001 - reported to the test thread
            failure.append(err)
            started.set()
            return
        started.set()
        try:
            await server.serve_forever()
        except asyncio.CancelledError:
            pass

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    started.wait(10)
    if failure:
        raise failure[0]
    server.loop = loop
    try:
        yield server
    finally:
        for task in asyncio.all_tasks(loop):
            loop.call_soon_threadsafe(task.cancel)
        thread.join(10)
        loop.close()


def config_for(tmp_path: Path, scripts: str | None = None, **changes) -> Config:
    """A test configuration: loopback listener on a free port, spool in tmp_path, and
    (optionally) a main.vsl with the given text."""
    script_dir = None
    if scripts is not None:
        script_dir = tmp_path / "scripts"
        script_dir.mkdir(exist_ok=True)
        (script_dir / "main.vsl").write_text(scripts)
    base = Config(hostname="mx.test", local_domains=("mx.test", "example.test"),
                  scripts=script_dir, queue_dir=tmp_path / "queue",
                  listen=(Listener("127.0.0.1", 0),), delivery=DeliveryConfig(enabled=False))
    return replace(base, **changes)
