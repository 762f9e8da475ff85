"""The URLs of the servers vsl.toml names, checked and shown without their secrets (the
server's configuration reads these without importing a client library): Redis for
``[state]``, RabbitMQ (AMQP) for ``[queue]``.

A password may sit before the host (``user:password@``) or, in a Redis URL, in the
query (``?password=``, which redis-py reads too): :func:`redacted` masks the first and
drops the whole query, so neither reaches a message or a log line. A problem is worded
without quoting the URL, for the same reason."""
from __future__ import annotations

from urllib.parse import SplitResult, parse_qsl, urlsplit, urlunsplit

REDIS_SCHEMES = ("redis", "rediss")
REDIS_QUERY_KEYS = ("db", "username", "password")  # what a [state] url's query may set
AMQP_SCHEMES = ("amqp", "amqps")
AMQP_TLS_KEYS = ("cafile", "capath", "keyfile", "certfile", "no_verify_ssl")  # amqps only
AMQP_QUERY_KEYS = ("heartbeat", "name", *AMQP_TLS_KEYS)  # what aiormq reads of a [queue] url


def redacted(url: str) -> str:
    """``url`` without its password (``redis://user:***@host``) and with its query, if
    any, as ``?***``: for messages and logs."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    return urlunsplit(parts._replace(query="***" if parts.query else "", fragment=""))


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL the state store takes, or None."""
    try:
        parts, query = _split(url, REDIS_SCHEMES, "redis://host:port/db")
    except ValueError as err:
        return str(err)
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        return "has a database that is not a number (redis://host:port/0)"
    if problem := _query_keys_problem(query, REDIS_QUERY_KEYS):
        return problem
    if "db" in query and not query["db"].isdigit():
        return "has a database that is not a number (?db=0)"
    return None


def amqp_url_problem(url: str) -> str | None:
    """Why ``url`` is not an AMQP URL the queue takes (amqp[s]://user:password@host:port/
    vhost, the vhost percent-encoded: ``/%2F`` is the vhost "/"), or None."""
    try:
        parts, query = _split(url, AMQP_SCHEMES, "amqp://user:password@host:port/vhost")
    except ValueError as err:
        return str(err)
    if parts.port == 0:
        return "has port 0"
    if "/" in parts.path[1:]:
        return "has a vhost with a '/' in it (write it as %2F: amqp://host/%2F is the vhost \"/\")"
    return _query_keys_problem(query, AMQP_QUERY_KEYS) or _amqp_query_problem(parts, query)


def _split(url: str, schemes: tuple[str, ...], form: str) -> tuple[SplitResult, dict[str, str]]:
    """The URL's parts and query; a ValueError saying what is wrong with its form, scheme
    or host."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"is not a URL ({form})") from None
    if parts.scheme not in schemes:
        raise ValueError(f"must start with {' or '.join(s + '://' for s in schemes)}")
    if not parts.hostname:
        raise ValueError("has no host")
    return parts, dict(query)


def _query_keys_problem(query: dict[str, str], known: tuple[str, ...]) -> str | None:
    if set(query) - set(known):  # (not named: it might be a secret)
        return f"has a query key it does not take (only {', '.join(known)})"
    return None


def _amqp_query_problem(parts: SplitResult, query: dict[str, str]) -> str | None:
    heartbeat = query.get("heartbeat", "0")
    if not (heartbeat.isascii() and heartbeat.isdigit() and int(heartbeat) < 65536):
        return "has a heartbeat that is not a number of seconds 0-65535 (?heartbeat=60)"
    if query.get("no_verify_ssl", "0") not in ("0", "1"):
        return "has a no_verify_ssl that is not 0 or 1"
    if parts.scheme != "amqps" and set(query) & set(AMQP_TLS_KEYS):
        return f"sets {', '.join(AMQP_TLS_KEYS)} only for amqps://"
    return None

