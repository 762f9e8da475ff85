"""An envelope address as Postfix hands it to a front end (``vsl policyd``, ``vsl milter``).

Postfix accepts ``MAIL FROM:<root>`` and ``RCPT TO:<postmaster>`` (no domain) and later
qualifies such an address with ``$myorigin`` (``append_at_myorigin``, ``$myhostname`` by
default). The front ends do the same with ``ctx.server_name`` before any stage runs, so
an unqualified address is checked by the scripts like any other, never skipped.
"""
from __future__ import annotations

from vsl.stdlib.support.mail import Mailbox


def qualified(address: str, origin: str) -> Mailbox:
    """``address`` as a mailbox; one without ``@`` gets ``@origin`` (``postmaster`` in
    lower case). Raises AddressError when it is still not an address."""
    inner = address[1:-1] if address.startswith("<") and address.endswith(">") else address
    if inner.lower() == "postmaster":
        return Mailbox("postmaster", origin)
    if inner and "@" not in inner:
        return Mailbox.parse(f"{inner}@{origin}")
    return Mailbox.parse(address)
