"""Shared pytest fixtures."""

from pathlib import Path

import pytest

from vsl.server.dnsd import DnsServer

ZONES = Path(__file__).parent / "zones"


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
