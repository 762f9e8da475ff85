"""server/event_loop.py: uvloop where installed and allowed, asyncio otherwise; and
``[server] workers = "auto"``."""
from __future__ import annotations

import asyncio
import builtins
import logging

import pytest

from vsl.server import event_loop
from vsl.server.config import AUTO_WORKERS_MAX, ConfigError, auto_workers, from_dict, parse_workers

uvloop = pytest.importorskip("uvloop")


def running_loop_type() -> type:
    async def main():
        return type(asyncio.get_running_loop())
    return main()


def test_auto_and_uvloop_run_on_uvloop():
    assert event_loop.run(running_loop_type(), "auto") is uvloop.Loop
    assert event_loop.run(running_loop_type(), "uvloop") is uvloop.Loop


def test_asyncio_runs_on_asyncios_loop():
    assert not issubclass(event_loop.run(running_loop_type(), "asyncio"), uvloop.Loop)


def test_the_loop_is_logged_once(caplog):
    with caplog.at_level(logging.INFO, "vsl.server"):
        event_loop.run(running_loop_type(), "asyncio")
        event_loop.run(running_loop_type(), "auto", announce=False)
    assert [r.getMessage() for r in caplog.records] == ["event loop: asyncio"]


@pytest.fixture
def without_uvloop(monkeypatch):
    real_import = builtins.__import__

    def refuse_uvloop(name, *args, **kwargs):
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", refuse_uvloop)


def test_auto_falls_back_to_asyncio_without_uvloop(without_uvloop):
    assert event_loop.loop_factory("auto") is asyncio.new_event_loop


def test_uvloop_insists(without_uvloop):
    with pytest.raises(ImportError):
        event_loop.loop_factory("uvloop")


def test_an_unknown_choice_is_refused():
    with pytest.raises(ValueError, match="trio"):
        event_loop.loop_factory("trio")


def test_the_configured_loop_defaults_to_auto():
    assert from_dict({}).event_loop == "auto"
    assert from_dict({"server": {"event_loop": "uvloop"}}).event_loop == "uvloop"


def test_workers_auto_is_one_per_usable_cpu_at_most_the_cap():
    expected = auto_workers()
    assert 1 <= expected <= AUTO_WORKERS_MAX
    assert parse_workers("auto", "server.workers") == expected
    assert from_dict({"server": {"workers": "auto"}}).workers == expected
    assert parse_workers(3, "--workers") == 3


@pytest.mark.parametrize("value", [0, "0", "two", 1.5, True])
def test_workers_refuses_other_values(value):
    with pytest.raises(ConfigError, match="--workers: must be \"auto\" or an integer >= 1"):
        parse_workers(value, "--workers")


def test_the_workers_option_takes_auto_or_a_number():
    import click

    from vsl.cli.serve import workers_count
    assert workers_count("auto") == parse_workers("auto", "server.workers")
    assert workers_count("2") == 2
    assert workers_count(None) is None
    with pytest.raises(click.BadParameter):
        workers_count("many")
