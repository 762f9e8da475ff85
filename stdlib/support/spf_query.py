"""pyspf, adapted to ``spf::check``: its query with RFC 7208 §5.5's rule for ``ptr``, and
its DNS entry point answering from the running check's table (:class:`..spf._Check`).

A module of its own, imported when a check first runs: pyspf imports dnspython's resolver
(~50 ms), which ``vsl lint`` would pay for the declarations of ``spf::`` alone.
"""
from __future__ import annotations

import contextvars

import spf as pyspf

class Query(pyspf.query):
    """pyspf's query, with RFC 7208 §5.5's rule for the ptr mechanism: a DNS error on the
    PTR look-up is no match, and a name whose address look-up fails is skipped (pyspf
    gives temperror for both). ``max_names``: the PTR names it checks (set by the caller)."""

    max_names: int

    def validated_ptrs(self):
        try:
            names = self.dns_ptr(self.i)[:self.max_names]
        except pyspf.TempError:
            return []
        return [name for name in names if self._confirms(name)]

    def _confirms(self, name: str) -> bool:
        try:
            return self.cidrmatch(self.dns_a(name, self.A), self.cidrmax)
        except pyspf.TempError:
            return False


ACTIVE = contextvars.ContextVar("spf_check")  # the running check (spf._Check)
_network_lookup = pyspf.DNSLookup


def _lookup(name, qtype, strict=True, timeout=None):
    """pyspf's DNS entry point: inside check_host, the check's answers; elsewhere, pyspf's."""
    check = ACTIVE.get(None)
    if check is None:
        return _network_lookup(name, qtype, strict, timeout)
    return check.lookup(name, qtype)


pyspf.DNSLookup = _lookup
