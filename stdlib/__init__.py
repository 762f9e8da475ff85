"""Native namespaces available to scripts; each module here declares one namespace (``auth::``
in ``authresults``), and ``support/`` holds what they share."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .dns import DnsDefaults


def default_namespaces(dns_defaults: DnsDefaults | None = None) -> list:
    """The namespaces one Engine starts with; ``dns_defaults`` (the server's [dns]) are
    that engine's alone."""
    from . import (arc, asserts, authresults, core, ctx, dkim, dmarc, dns, iprev, spf, status,
                   transport)

    return [core.namespace, status.namespace, asserts.namespace,
            dns.namespace_for(dns_defaults or dns.DnsDefaults()), iprev.namespace, spf.namespace, ctx.namespace, authresults.namespace,
            dkim.namespace, dmarc.namespace, arc.namespace, transport.namespace]
