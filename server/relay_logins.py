"""The relay logins file: what this server logs in as when relaying to a host that wants AUTH.

    # host:port      user                password (the rest of the line)
    smtp.provider.example:587   alice@example.org   correct horse battery staple
    [2001:db8::25]:25           relay               s3cret

Named by ``[delivery] credentials``. Lines starting with ``#`` and blank lines are
ignored; a ``host:port`` may have one login, the password trimmed. A login is sent only
over ``smtp://`` and ``smtps://`` routes with ``tls=verify``: another route to that
host:port defers (no password without a checked certificate), and MX delivery never
logs in (see server/transports/pool.py).
Keep the file readable by the server's user only: it holds passwords in clear.
"""
from __future__ import annotations

import logging
import stat
from pathlib import Path

from .config import ConfigError, parse_listen

log = logging.getLogger("vsl.delivery")


class RelayLogins:
    """The logins of a credentials file, by destination (host lower-cased, port)."""

    def __init__(self, logins: dict[tuple[str, int], tuple[str, str]] | None = None):
        self.logins = logins or {}

    @classmethod
    def load(cls, path: Path | None) -> "RelayLogins":
        """Read ``path`` (None: no credentials); a malformed line is a ConfigError."""
        if path is None:
            return cls()
        try:
            text = path.read_text(encoding="utf-8-sig")  # (a byte-order mark is skipped)
            mode = path.stat().st_mode
        except OSError as err:
            raise ConfigError(f"delivery.credentials: cannot read {path}: "
                              f"{err.strerror}") from None
        except UnicodeDecodeError as err:  # (no byte of the file in the message)
            raise ConfigError(f"delivery.credentials: {path} is not UTF-8 text "
                              f"(line {_line_of(err)})") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s holds passwords but other users can read it (chmod 600 it)", path)
        logins, first_line = {}, {}
        for number, line in enumerate(text.split("\n"), 1):
            fields = line.split(None, 2)
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 3:
                raise ConfigError(f"{path}:{number}: expected 'host:port user password'")
            where = parse_listen(fields[0], key=f"{path}:{number}")
            key = (where.host.lower(), where.port)
            if key in first_line:
                raise ConfigError(f"{path}:{number}: {fields[0]} has a login at line "
                                  f"{first_line[key]} already")
            first_line[key] = number
            logins[key] = (fields[1], fields[2].strip())
        return cls(logins)

    def get(self, host: str, port: int) -> tuple[str, str] | None:
        """(user, password) for ``host:port``, or None."""
        return self.logins.get((host.lower(), port))


def _line_of(err: UnicodeDecodeError) -> int:
    """The line of the byte that is not UTF-8."""
    return err.object[:err.start].count(b"\n") + 1
