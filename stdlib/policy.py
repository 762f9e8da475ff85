"""``policy::`` -- ask an external policy service, as Postfix's ``check_policy_service``.

    let action = policy::ask(ctx, "inet:127.0.0.1:10023", #{ timeout: 10 });
    // "DUNNO", "REJECT text", "450 4.7.1 text", ... (an access(5) action)

Design: one request a call over a fresh connection, in Postfix's SMTPD policy delegation
protocol (SMTPD_POLICY_README): ``name=value`` lines and an empty line; the service
answers ``action=...`` lines and an empty line. The request carries what Postfix would
send at the current stage (``protocol_state`` from ``ctx.stage``) as far as ``ctx``
knows it (vSL's own ``vsl policyd`` reads the same attributes back, docs/policyd.md).

Trouble never fails the script: a connection refused, a timeout, a reply without
``action=``, a garbage or oversized reply answer ``default_action``, Postfix's
``smtpd_policy_service_default_action`` (``451 4.3.5 Server configuration problem``),
after one retry as Postfix's attr_clnt makes (both within ``timeout``, 10 s unless given).
A reply is read up to 4096 bytes, and the call is charged for them.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from vsl.errors import ScriptError
from vsl.natives import Namespace

from .ctx import Context, Stage
from .support.options import Options

if TYPE_CHECKING:  # for annotations only
    import asyncio

namespace = Namespace("policy", "External policy services (Postfix's policy delegation)")
log = logging.getLogger("vsl.policy")

DEFAULT_ACTION = "451 4.3.5 Server configuration problem"
MAX_REPLY = 4096  # bytes of a reply (Postfix reads one action line of a few hundred)
STATES = {Stage.CONNECT: "CONNECT", Stage.HELO: "EHLO", Stage.AUTH: "EHLO",
          Stage.MAIL_FROM: "MAIL", Stage.RCPT_TO: "RCPT", Stage.PRE_QUEUE: "END-OF-MESSAGE"}
_ASK = Options({}, {"timeout": (int, float), "default_action": str})


class PolicyError(Exception):
    """The service could not be asked, or its reply is not one."""


def request(ctx: Context) -> dict[str, str]:
    """The attributes Postfix sends at ``ctx``'s stage (what ``ctx`` does not know is
    empty, as in Postfix before the command giving it)."""
    state = STATES.get(ctx.stage)
    if state is None:
        raise ScriptError(f"policy::ask: no policy request at {ctx.stage.function}")
    recipients = len(ctx.recipients) if state == "END-OF-MESSAGE" else 0
    auth = ctx.auth or {}
    return {
        "request": "smtpd_access_policy", "protocol_state": state,
        "protocol_name": "ESMTP", "client_address": ctx.client_ip,
        "client_port": str(ctx.client_port), "client_name": "unknown",
        "reverse_client_name": "unknown", "server_address": ctx.server_ip,
        "server_port": str(ctx.server_port), "helo_name": ctx.helo or "",
        "sender": _address(ctx.sender),
        "recipient": _address(ctx.rcpt) if state == "RCPT" else "",
        "recipient_count": str(recipients), "queue_id": "",
        "instance": ctx.message_id or "", "size": "0",
        "sasl_method": auth.get("mechanism", ""), "sasl_username": auth.get("authid", ""),
        "sasl_sender": "", "encryption_protocol": "TLS" if ctx.tls else "",
        "encryption_cipher": "", "encryption_keysize": "0",
    }


def _address(mailbox) -> str:
    return "" if mailbox is None else mailbox.address


def endpoint(server: str) -> tuple[str, str, int]:
    """``inet:host:port`` (``host`` may be ``[v6]``) or ``unix:/path``, as
    (kind, host or path, port)."""
    kind, _, where = server.partition(":")
    if kind == "unix" and where:
        return kind, where, 0
    host, _, port = where.rpartition(":")
    if kind == "inet" and host and port.isdigit():
        return kind, host.strip("[]"), int(port)
    raise ScriptError(f"policy::ask: '{server}' is neither inet:host:port nor unix:/path")


def encode(attributes: dict[str, str]) -> bytes:
    """The request on the wire (a line break in a value would end its line: dropped)."""
    lines = (f"{k}={v.replace(chr(10), ' ').replace(chr(13), ' ')}\n"
             for k, v in attributes.items())
    return ("".join(lines) + "\n").encode("utf-8", "surrogateescape")


def decode(reply: bytes) -> str:
    """The ``action=`` of a reply (its attribute lines up to the empty line)."""
    try:
        text = reply.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("a reply that is not UTF-8") from None
    for line in text.split("\n\n", 1)[0].splitlines():
        name, sep, value = line.partition("=")
        if not sep:
            raise PolicyError("a reply line that is not name=value")
        if name == "action" and value.strip():
            return value.strip()
    raise PolicyError("a reply without action=")


async def exchange(target: tuple[str, str, int], attributes: dict[str, str]) -> str:
    """One request on a new connection to ``target`` (:func:`endpoint`); the reply's
    action."""
    import asyncio
    kind, where, port = target
    try:
        if kind == "unix":
            reader, writer = await asyncio.open_unix_connection(where, limit=MAX_REPLY)
        else:
            reader, writer = await asyncio.open_connection(where, port, limit=MAX_REPLY)
    except OSError as err:
        raise PolicyError(f"cannot connect: {err}") from None
    try:
        writer.write(encode(attributes))
        await writer.drain()
        return decode(await _reply(reader))
    finally:
        writer.close()


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """The reply's bytes up to its empty line, at most :data:`MAX_REPLY`."""
    import asyncio
    try:
        return await reader.readuntil(b"\n\n")
    except asyncio.LimitOverrunError:
        raise PolicyError(f"a reply longer than {MAX_REPLY} bytes") from None
    except asyncio.IncompleteReadError:
        raise PolicyError("the connection closed before the reply's end") from None
    except OSError as err:
        raise PolicyError(f"connection failed: {err}") from None


def _reply_size(ctx, server, options=None) -> int:
    """What ask charges: the most it reads."""
    return MAX_REPLY


@namespace.native(options=_ASK.keys, charges=_reply_size)
async def ask(ctx, server, options=None) -> str:
    """ask(ctx, "inet:host:port", #{ timeout, default_action }): the policy service's action."""
    import asyncio
    if not isinstance(ctx, Context) or not isinstance(server, str):
        raise ScriptError("policy::ask takes ctx and a server string")
    opts = _ASK.parse(options or {}, "policy::ask")
    timeout, default = opts.get("timeout", 10), opts.get("default_action", DEFAULT_ACTION)
    attributes = request(ctx)
    target = endpoint(server)  # a malformed server is the script's error, not the service's
    try:
        async with asyncio.timeout(timeout):
            return await _with_retry(server, target, attributes)
    except (PolicyError, TimeoutError) as err:
        log.warning("policy service %s: %s: %s", server, str(err) or "timed out", default)
    return default


async def _with_retry(server: str, target: tuple[str, str, int],
                      attributes: dict[str, str]) -> str:
    """:func:`exchange`, once more after a failure (as attr_clnt does)."""
    try:
        return await exchange(target, attributes)
    except PolicyError as err:
        log.info("policy service %s: %s: retrying", server, err)
    return await exchange(target, attributes)
