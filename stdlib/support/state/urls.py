"""Redis URLs as ``[state] url`` gives them: checked, and shown without their password
(the server's configuration reads these without importing the Redis client)."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

SCHEMES = ("redis", "rediss")


def redacted(url: str) -> str:
    """``url`` without its password (``redis://user:***@host``), for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL the state store takes, or None (the URL is not quoted:
    it may hold a password)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "is not a URL (redis://host:port/db)"
    if parts.scheme not in SCHEMES:
        return f"must start with {' or '.join(s + '://' for s in SCHEMES)}"
    if not parts.hostname:
        return "has no host"
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        return "has a database that is not a number (redis://host:port/0)"
    return None
