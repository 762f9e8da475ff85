"""``auth::`` -- Authentication-Results (RFC 8601) and Received-SPF (RFC 7208 §9.1) headers.

    ctx.store(iprev_res);                  // at any stage before
    auth::add_header(ctx, #{ auth_serv_id: "mydomain.tld" });   // at on_pre_queue

The header lists every result stored in ``ctx`` (iprev, SPF for HELO and MAIL FROM,
DKIM, DMARC, ARC), in the order they were stored; each SPF result also gets
its own Received-SPF trace header. Headers are built with authres.
"""
from __future__ import annotations

import re

import authres

from vsl.errors import ScriptError
from vsl.natives import Namespace

from .ctx import Context
from .support.options import Options

namespace = Namespace("auth", "Authentication-Results headers")

_SERV_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")


def _serv_id(opts: dict, where: str) -> str:
    serv_id = opts["auth_serv_id"]
    if not _SERV_ID.fullmatch(serv_id):
        raise ScriptError(f"{where}: auth_serv_id '{serv_id}' is not a host name")
    return serv_id


def results_header(ctx: Context, serv_id: str) -> str:
    """The Authentication-Results value for what ``ctx`` has stored."""
    results = [r.auth_result() for r in ctx.stored().values() if hasattr(r, "auth_result")]
    if not results:
        return f"{serv_id}; none"
    header = authres.AuthenticationResultsHeader(authserv_id=serv_id, results=results)
    return str(header).split(": ", 1)[1]


def _context(ctx, where: str) -> Context:
    if not isinstance(ctx, Context):
        raise ScriptError(f"{where} takes ctx as its first argument")
    return ctx


_OPTIONS = Options({"auth_serv_id": str})


@namespace.native(options=_OPTIONS.keys)
def create_header(ctx, config):
    """create_header(ctx, #{ auth_serv_id }): the Authentication-Results value (not added)."""
    where = "auth::create_header"
    opts = _OPTIONS.parse(config, where)
    return results_header(_context(ctx, where), _serv_id(opts, where))


@namespace.native(options=_OPTIONS.keys, uses="set_header")
def add_header(ctx, config):
    """add_header(ctx, #{ auth_serv_id }): prepend Authentication-Results and Received-SPF."""
    where = "auth::add_header"
    opts = _OPTIONS.parse(config, where)
    ctx = _context(ctx, where)
    serv_id = _serv_id(opts, where)
    value = results_header(ctx, serv_id)
    for result in reversed([r for r in ctx.stored().values() if hasattr(r, "received_spf")]):
        ctx.prepend_header("Received-SPF", result.received_spf(serv_id))
    ctx.prepend_header("Authentication-Results", value)
