"""Which queue backend a server uses: one table, keyed by backend name. Adding a backend
is one module implementing :class:`~server.queue_backend.QueueBackend` (with an ``of(config)``
constructor) plus one line in :data:`BACKENDS`."""
from __future__ import annotations

import importlib

from .config import Config
from .queue_backend import QueueBackend

# backend name -> "module:class" (imported only when chosen: aio-pika loads for rabbitmq only)
BACKENDS = {"spool": "vsl.server.queue:Spool", "rabbitmq": "vsl.server.queue_amqp:AmqpQueue"}


def open_queue(config: Config, backend: str | None = None) -> QueueBackend:
    """The mail queue ``config`` describes (``[queue] backend``), or the one ``backend``
    names."""
    module, _, name = BACKENDS[backend or config.queue.backend].partition(":")
    return getattr(importlib.import_module(module), name).of(config)
