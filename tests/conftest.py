"""Shared pytest fixtures."""

import asyncio
import threading
import uuid
from pathlib import Path

import pytest

from vsl.server.dnsd import DnsServer
from vsl.stdlib.support.bounce.shared import shipped
from tests.support import mailsink

ZONES = Path(__file__).parent / "zones"


@pytest.fixture(scope="session", autouse=True)
def private_cache_home(tmp_path_factory):
    """The run's own ``$XDG_CACHE_HOME`` (the compiled-script and grammar caches), for it
    and the processes it starts: the tests leave the developer's cache alone (the tests of
    the caches set their own)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache-home")))
        yield


@pytest.fixture(autouse=True)
def shipped_classifier_forgets():
    """After each test, the process's bounce classifier forgets the learned and self-learning
    files a server or a command of the test gave it (they live in its tmp_path)."""
    yield
    shipped().learn_from(None)


@pytest.fixture(scope="session")
def dns_server():
    """A real DNS server on 127.0.0.1 serving every tests/zones/*.zone file."""
    with DnsServer(sorted(ZONES.glob("*.zone"))) as server:
        yield server


@pytest.fixture
def server(dns_server):
    """The session DNS server; faults and the query log are cleared before and after."""
    dns_server.reset()
    yield dns_server
    dns_server.reset()


@pytest.fixture(scope="session")
def rabbitmq():
    """A private RabbitMQ node shared by the session (tests/support/rabbitmq.py): a boot
    costs seconds, so tests share it, each with its own queue prefix. A test that stops or
    kills the broker takes ``private_rabbitmq`` instead."""
    from tests.support.rabbitmq import PrivateRabbitMQ
    with PrivateRabbitMQ() as broker:
        yield broker


@pytest.fixture
def private_rabbitmq():
    """A RabbitMQ node of this test's own, which it may stop, kill and start again."""
    from tests.support.rabbitmq import PrivateRabbitMQ
    with PrivateRabbitMQ() as broker:
        yield broker


@pytest.fixture
def make_queue(rabbitmq, tmp_path):
    """``make(**options)``: an AmqpQueue on the session broker, on this test's own prefix
    (``make.prefix``) and journal."""
    from vsl.server.queue_amqp import AmqpQueue
    prefix = f"t{uuid.uuid4().hex[:8]}"

    def make(**options) -> AmqpQueue:
        options = dict(url=rabbitmq.url, prefix=prefix, journal=tmp_path / "journal",
                       confirm_timeout=5.0, connect_timeout=2.0) | options
        return AmqpQueue(**options)
    make.prefix = prefix
    return make


@pytest.fixture
def sink():
    """A mail sink (tests/support/mailsink.py) in an event loop of its own thread, for
    servers running in theirs."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sink = asyncio.run_coroutine_threadsafe(mailsink.Sink().start(), loop).result(10)
    yield sink
    asyncio.run_coroutine_threadsafe(sink.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
