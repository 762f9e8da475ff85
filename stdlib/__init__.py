"""Native namespaces available to scripts; each module declares one namespace."""
from __future__ import annotations


def default_namespaces() -> list:
    """The namespaces every Engine starts with."""
    from . import arc, asserts, auth, core, ctx, dkim, dmarc, dns, iprev, spf, status, transport

    return [core.namespace, status.namespace, asserts.namespace, dns.namespace,
            iprev.namespace, spf.namespace, ctx.namespace, auth.namespace,
            dkim.namespace, dmarc.namespace, arc.namespace, transport.namespace]
