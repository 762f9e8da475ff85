"""``transport::`` -- how accepted mail is delivered, per recipient or for all of them.

    fn on_rcpt_to(ctx) {                         // this recipient (ctx.rcpt)
        if ctx.rcpt.domain == "corp.example" { transport::lmtp(ctx, "lmtp://10.0.0.5:24"); }
        status::next()
    }
    fn on_post_queue(ctx) {                      // every recipient ...
        transport::forward(ctx, "smtp://relay.example:587?tls=required");
        transport::maildir(ctx, "/var/mail/abuse", "abuse@example.com");   // ... or one
        status::next()
    }

Without a recipient argument a call applies to ``ctx.rcpt`` in ``on_rcpt_to`` and to
every recipient at the other stages (``on_mail_from`` to ``on_post_queue``); the last
call for a recipient wins. A route is a string stored with each recipient in the spool
(:func:`parse_route` reads it back):
``smtp://host:port[?tls=none|opportunistic|required|verify]``, ``smtps://host:port[?tls=verify]``,
``lmtp://host:port`` or ``lmtp:///socket/path``, ``mx``, ``maildir:/dir`` and ``mbox:/file``.
``tls=verify``: TLS with a certificate valid for ``host``, else the mail waits.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

from vsl.errors import ScriptError
from vsl.natives import Namespace

from .ctx import Context

namespace = Namespace("transport", "Delivery routes")

TLS_MODES = ("none", "opportunistic", "required", "verify")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # never in a route's path (NUL included)
_REFUSED_PARTS = frozenset({"", ".", ".."})  # path parts that are refused


@dataclass(frozen=True)
class RouteKind:
    """What a route kind is, declared once for the scripts (here) and the server (whose
    transport registry, server/transports, must have a transport for each kind).

    ``form`` is how a route of the kind is written: ``name`` (the route is the kind's
    name alone: ``mx``), ``path`` (``maildir:/absolute/path``) or ``url``
    (``smtp://host[:port][?tls=...]``, with ``port`` as the default port and ``tls`` the
    values ``tls=`` may take; ``unix_socket``: ``lmtp:///socket/path`` too).

    ``relay``: an SMTP relay (what ``forward`` and ``[delivery] relay`` may name);
    ``implicit_tls``: its session starts in TLS; ``per_domain``: delivery sends one
    transaction per recipient domain (MX lookups), not one per route."""

    name: str
    form: Literal["name", "path", "url"]
    port: int = 0
    tls: tuple[str, ...] = ()
    unix_socket: bool = False
    relay: bool = False
    implicit_tls: bool = False
    per_domain: bool = False


ROUTE_KINDS = {kind.name: kind for kind in (
    RouteKind("smtp", "url", port=25, tls=TLS_MODES, relay=True),
    RouteKind("smtps", "url", port=465, tls=("verify",), relay=True, implicit_tls=True),
    RouteKind("lmtp", "url", port=24, unix_socket=True),
    RouteKind("mx", "name", per_domain=True),
    RouteKind("maildir", "path"),
    RouteKind("mbox", "path"),
)}
RELAY_KINDS = tuple(name for name, kind in ROUTE_KINDS.items() if kind.relay)


def kind_of(route: str) -> RouteKind | None:
    """The kind of a route as written (``smtp://relay:25``), None for an unknown one."""
    return ROUTE_KINDS.get(route.partition(":")[0])


@dataclass(frozen=True)
class Route:
    """Where a recipient's copy goes: ``kind`` names one of :data:`ROUTE_KINDS`."""

    kind: str
    host: str = ""
    port: int = 0
    tls: str = "opportunistic"  # smtps is always TLS: opportunistic (unchecked) or verify
    path: str = ""              # a path kind, or a URL kind over a Unix socket

    def __str__(self) -> str:
        form = ROUTE_KINDS[self.kind].form
        if form == "name":
            return self.kind
        if form == "path":
            return f"{self.kind}:{self.path}"
        if self.path:
            return f"{self.kind}://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        tls = f"?tls={self.tls}" if self.tls != "opportunistic" else ""
        return f"{self.kind}://{host}:{self.port}{tls}"


def parse_route(text: str, kinds: tuple[str, ...] | None = None) -> Route:
    """A route from its text, of one of ``kinds`` (default: every kind of
    :data:`ROUTE_KINDS`); ScriptError names what is wrong."""
    kinds = tuple(ROUTE_KINDS) if kinds is None else kinds
    if not isinstance(text, str) or not text:
        raise ScriptError("a route must be a non-empty string such as \"smtp://host:25\"")
    name, sep, rest = text.partition(":")
    kind = ROUTE_KINDS[name] if name in kinds else None
    if kind is None or (kind.form == "name") == bool(sep):
        raise ScriptError(f"'{text}' is not a route here (expected {', '.join(kinds)})")
    if kind.form == "name":
        return Route(name)
    if kind.form == "path":
        return Route(name, path=_absolute(rest, text))
    return _url_route(kind, text)


def _absolute(path: str, text: str) -> str:
    """``path`` as given. An empty part (``//``, a trailing ``/``), a '.' or '..' part or
    a control character is refused, never tidied: a path a script builds from a local
    part (``"/var/mail/" + ctx.rcpt.local_part``) names a mailbox strictly below the
    directory it names, never that directory itself (an empty local part)."""
    if not os.path.isabs(path):
        raise ScriptError(f"'{text}': the path must be absolute")
    parts = path.split("/")[1:]
    if _CONTROL.search(path) or not _REFUSED_PARTS.isdisjoint(parts):
        raise ScriptError(f"{text!r}: a path may not have empty, '.' or '..' parts or "
                          "control characters")  # !r: the control characters escaped
    return path


def _url_route(kind: RouteKind, text: str) -> Route:
    url = urlsplit(text)
    if "@" in url.netloc:  # said without the URL: it may hold a password
        raise ScriptError(f"a {kind.name}:// route takes no user or password (logins go in "
                          "the file [delivery] credentials names)")
    try:
        pairs = parse_qsl(url.query, keep_blank_values=True, strict_parsing=bool(url.query))
        query, port, host = dict(pairs), url.port, url.hostname
    except ValueError as err:
        raise ScriptError(f"'{text}' is not a valid URL: {err}") from None
    if len(query) != len(pairs):
        raise ScriptError(f"'{text}': an option is given twice")
    if kind.unix_socket and not url.netloc:
        return Route(kind.name, path=_absolute(url.path, text))
    if not host or url.path not in ("", "/") or url.fragment:
        raise ScriptError(f"'{text}': expected {kind.name}://host[:port]")
    tls = query.pop("tls", None)  # None: not given (opportunistic)
    if query or (tls is not None and tls not in kind.tls):
        choices = " or ".join(f"tls={'|'.join(other.tls)} ({other.name}://)"
                              for other in ROUTE_KINDS.values() if other.tls)
        raise ScriptError(f"'{text}': the only option is {choices}")
    return Route(kind.name, host, port or kind.port, tls or "opportunistic")


def _set(ctx, route: Route, rcpt) -> None:
    if not isinstance(ctx, Context):
        raise ScriptError("transport:: functions take ctx as their first argument")
    ctx.set_route(str(route), rcpt)


def _lint_url(kinds):
    def check(args):
        if len(args) > 1 and isinstance(args[1], str):
            try:
                parse_route(args[1], kinds)
            except ScriptError as err:
                return err.message
        return None
    return check


@namespace.native(check=_lint_url(RELAY_KINDS), uses="recipients")
def forward(ctx, url, rcpt=None) -> None:
    """forward(ctx, url [, rcpt]): relay to one SMTP server,
    ``smtp://host[:port][?tls=none|opportunistic|required|verify]`` (port 25, opportunistic
    STARTTLS) or ``smtps://host[:port][?tls=verify]`` (465, implicit TLS); a login for
    host:port comes from ``[delivery] credentials`` and needs ``tls=verify``."""
    _set(ctx, parse_route(url, RELAY_KINDS), rcpt)


@namespace.native(uses="recipients")  # a route is set from MAIL FROM to on_post_queue
def deliver(ctx, rcpt=None) -> None:
    """deliver(ctx [, rcpt]): to the recipient domain's MX hosts (or its A/AAAA)."""
    _set(ctx, Route("mx"), rcpt)


@namespace.native(uses="recipients")
def maildir(ctx, directory, rcpt=None) -> None:
    """maildir(ctx, "/abs/dir" [, rcpt]): into a Maildir (created if missing); the path
    must be absolute, without empty, ``.`` or ``..`` parts."""
    _set(ctx, parse_route(f"maildir:{_path(directory)}", ("maildir",)), rcpt)


@namespace.native(uses="recipients")
def mbox(ctx, file, rcpt=None) -> None:
    """mbox(ctx, "/abs/file" [, rcpt]): appended to an mbox file (mboxrd, under an fcntl
    lock); the path must be absolute, without empty, ``.`` or ``..`` parts."""
    _set(ctx, parse_route(f"mbox:{_path(file)}", ("mbox",)), rcpt)


@namespace.native(check=_lint_url(("lmtp",)), uses="recipients")
def lmtp(ctx, url, rcpt=None) -> None:
    """lmtp(ctx, url [, rcpt]): hand over to an LMTP server (RFC 2033),
    ``lmtp://host[:port]`` (port 24) or ``lmtp:///path/to/socket``."""
    _set(ctx, parse_route(url, ("lmtp",)), rcpt)


def _path(value) -> str:
    if not isinstance(value, str) or not value:
        raise ScriptError("the path must be a non-empty string")
    return value
