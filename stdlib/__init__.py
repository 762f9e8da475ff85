"""Native namespaces available to scripts; each module declares one namespace."""
from __future__ import annotations


def default_namespaces() -> list:
    """The namespaces every Engine starts with."""
    from . import asserts, core, dns, iprev, status

    return [core.namespace, status.namespace, asserts.namespace, dns.namespace,
            iprev.namespace]
