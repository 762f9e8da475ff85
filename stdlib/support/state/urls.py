"""Redis URLs as ``[state] url`` gives them: checked, and shown without their secrets
(the server's configuration reads these without importing the Redis client).

A password may sit before the host (``user:password@``) or in the query
(``?password=``, which redis-py reads too): :func:`redacted` masks the first and drops
the whole query, so neither reaches a message or a log line."""
from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

SCHEMES = ("redis", "rediss")
QUERY_KEYS = ("db", "username", "password")  # what a [state] url's query may set


def redacted(url: str) -> str:
    """``url`` without its password (``redis://user:***@host``) and with its query, if
    any, as ``?***``: for messages and logs."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    return urlunsplit(parts._replace(query="***" if parts.query else "", fragment=""))


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL the state store takes, or None (the URL is not quoted:
    it may hold a password)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        return "is not a URL (redis://host:port/db)"
    if parts.scheme not in SCHEMES:
        return f"must start with {' or '.join(s + '://' for s in SCHEMES)}"
    if not parts.hostname:
        return "has no host"
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        return "has a database that is not a number (redis://host:port/0)"
    return _query_problem(dict(query))


def _query_problem(query: dict[str, str]) -> str | None:
    if set(query) - set(QUERY_KEYS):  # (not named: it might be a secret)
        return f"has a query key it does not take (only {', '.join(QUERY_KEYS)})"
    if "db" in query and not query["db"].isdigit():
        return "has a database that is not a number (?db=0)"
    return None
