"""Native namespaces available to scripts; each module here declares one namespace (``auth::``
in ``authresults``), and ``support/`` holds what they share."""
from __future__ import annotations


def default_namespaces() -> list:
    """The namespaces every Engine starts with."""
    from . import (arc, asserts, authresults, core, ctx, dkim, dmarc, dns, iprev, spf, status,
                   transport)

    return [core.namespace, status.namespace, asserts.namespace, dns.namespace,
            iprev.namespace, spf.namespace, ctx.namespace, authresults.namespace,
            dkim.namespace, dmarc.namespace, arc.namespace, transport.namespace]
