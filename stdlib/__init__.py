"""Native namespaces available to scripts; each module declares one namespace.

The language (:mod:`vsl.engine`) knows none of them: :func:`new_engine` builds an
engine with the default set registered, which is what a mail server runs.
"""
from __future__ import annotations

from vsl.engine import Engine
from vsl.limits import Limits


def default_namespaces() -> list:
    """The namespaces every engine of :func:`new_engine` starts with."""
    from . import arc, asserts, auth, core, ctx, dkim, dmarc, dns, iprev, spf, status, transport

    return [core.namespace, status.namespace, asserts.namespace, dns.namespace,
            iprev.namespace, spf.namespace, ctx.namespace, auth.namespace,
            dkim.namespace, dmarc.namespace, arc.namespace, transport.namespace]


def new_engine(limits: Limits | None = None) -> Engine:
    """An engine with ``limits`` and the default namespaces registered."""
    return Engine(limits, namespaces=default_namespaces())
