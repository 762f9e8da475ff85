"""Which queue backend a server uses: one table, keyed by backend name. Adding a backend
is one module implementing :class:`~server.queue_backend.QueueBackend` (with an ``of(config)``
constructor) plus one line in :data:`BACKENDS`."""
from __future__ import annotations

from .config import Config
from .queue import Spool
from .queue_backend import QueueBackend

BACKENDS = {"spool": Spool}
DEFAULT_BACKEND = "spool"


def open_queue(config: Config, backend: str | None = None) -> QueueBackend:
    """The mail queue ``config`` describes, opened by ``backend`` (by default, the
    :data:`DEFAULT_BACKEND` of the moment)."""
    return BACKENDS[backend or DEFAULT_BACKEND].of(config)
