"""Native namespaces available to scripts; each module declares one namespace."""
from __future__ import annotations


def default_namespaces() -> list:
    """The namespaces every Engine starts with."""
    from . import asserts, auth, core, ctx, dns, iprev, spf, status

    return [core.namespace, status.namespace, asserts.namespace, dns.namespace,
            iprev.namespace, spf.namespace, ctx.namespace, auth.namespace]
