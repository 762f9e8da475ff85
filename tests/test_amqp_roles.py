"""The roles over a real broker: a receiver, a post-queue worker and delivery as three
servers sharing one RabbitMQ prefix, and one server running all three through it."""
from __future__ import annotations

import uuid
from dataclasses import replace

from vsl.server.config import QueueConfig
from tests.support.smtp_tools import wait_for
from tests.test_roles import (ALL_ROLES, DELIVERY, RECEIVER, SIGNED, WORKER, maildir,
                              roles_config, send, servers)


def amqp(config, rabbitmq):
    """``config`` with its queue on the test broker, under a prefix of its own."""
    return replace(config, queue=QueueConfig(backend="rabbitmq", url=rabbitmq.url,
                                             prefix=f"t{uuid.uuid4().hex[:8]}"))


def test_three_roles_over_rabbitmq(tmp_path, rabbitmq, sink):
    config = amqp(roles_config(tmp_path, sink), rabbitmq)
    with servers(config, RECEIVER, WORKER, DELIVERY) as port:
        send(port, "fwd@example.test", "bob@example.test")
        assert wait_for(lambda: sink.messages and maildir(config, "bob"), timeout=20)
        send(port, "deny@example.test")
    (forwarded,) = sink.messages
    assert forwarded.data.startswith(SIGNED)


def test_all_roles_over_rabbitmq(tmp_path, rabbitmq, sink):
    config = amqp(roles_config(tmp_path, sink), rabbitmq)
    with servers(config, ALL_ROLES) as port:
        for i in range(3):
            send(port, "bob@example.test")
            assert wait_for(lambda: len(maildir(config, "bob")) == i + 1, timeout=20)
