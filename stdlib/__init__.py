"""Native namespaces available to scripts; each module here declares one namespace (``auth::``
in ``authresults``), and ``support/`` holds what they share.

The language (:mod:`vsl.engine`) knows none of them: :func:`new_engine` builds an
engine with the default set registered, which is what a mail server runs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from vsl.engine import Engine
from vsl.limits import Limits

if TYPE_CHECKING:
    from .dns import DnsDefaults
    from .metrics import Declaration
    from .support.state import StateStore


def default_namespaces(dns_defaults: DnsDefaults | None = None,
                       state: StateStore | None = None,
                       script_metrics: tuple[Declaration, ...] | None = None) -> list:
    """The namespaces one engine starts with; ``dns_defaults`` (the server's [dns]) are
    that engine's alone, and so is ``state``, where ``limit::`` and ``greylist::`` keep
    their counts (the server's [state]; None: in this process's memory), and so are
    ``script_metrics``, the counters ``metrics::`` may move (the server's
    [metrics.script.*]; None: undeclared, names unchecked and nothing counted)."""
    from . import (arc, asserts, authresults, bounce, core, ctx, dkim, dmarc, dns, dnsbl,
                   greylist, iprev, limit, metrics, net, policy, regex, spf, status,
                   transport)
    from .support.state import MemoryStore

    state = MemoryStore() if state is None else state

    return [core.namespace, status.namespace, asserts.namespace,
            dns.namespace_for(dns_defaults or dns.DnsDefaults()), iprev.namespace,
            spf.namespace, ctx.namespace, authresults.namespace, dkim.namespace,
            dmarc.namespace, arc.namespace, transport.namespace, bounce.namespace,
            net.namespace, regex.namespace, policy.namespace, dnsbl.namespace,
            greylist.namespace_for(state), limit.namespace_for(state),
            metrics.namespace_for(script_metrics)]


def new_engine(limits: Limits | None = None, dns_defaults: DnsDefaults | None = None,
               state: StateStore | None = None,
               script_metrics: tuple[Declaration, ...] | None = None,
               use_cache: bool = False) -> Engine:
    """An engine with ``limits`` and the default namespaces registered (``dns_defaults``:
    what its ``dns::resolver()`` fills in; ``state``: where its limits and greylisting
    keep their counts; ``script_metrics``: the counters its ``metrics::`` moves;
    ``use_cache``: see :class:`Engine`)."""
    return Engine(limits, namespaces=default_namespaces(dns_defaults, state,
                                                        script_metrics), use_cache=use_cache)
