"""The SMTP AUTH users file, who may log in to this server: one ``user:hash`` line per
account, hashed with scrypt.

    alice:scrypt$16384$8$1$<salt hex>$<hash hex>

``vsl passwd USER`` prints such a line. Lines starting with ``#`` and blank lines
are ignored. Verification never raises on bad input, and a check costs one scrypt run
whether the user exists or not (an unknown user is checked against a dummy hash), so
its time tells nothing about which users exist.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

N, R, P = 2 ** 14, 8, 1


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The stored form of a password."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    return f"scrypt${N}${R}${P}${salt.hex()}${digest.hex()}"


def verify(password: str, stored: str) -> bool:
    """Whether ``password`` matches a stored hash (False for any malformed entry)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or int(n) > 2 ** 20 or int(r) > 32 or int(p) > 16:
            return False
        actual = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n),
                                r=int(r), p=int(p), dklen=len(bytes.fromhex(digest)))
        return hmac.compare_digest(actual, bytes.fromhex(digest))
    except (ValueError, TypeError, MemoryError):
        return False


class SmtpUsers:
    """The accounts of a users file, read once (and again on reload)."""

    def __init__(self, path: Path):
        self.path = path
        self.users: dict[str, str] = {}
        self._dummy = hash_password(os.urandom(16).hex())  # checked for unknown users
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, stored = line.partition(":")
            if not sep or not user or not stored.startswith("scrypt$"):
                raise ValueError(f"{path}:{number}: expected 'user:scrypt$...'")
            self.users[user] = stored

    def check(self, user: str, password: str) -> bool:
        """Whether the user exists and the password is right (one scrypt run either way)."""
        stored = self.users.get(user)
        matches = verify(password, stored or self._dummy)
        return matches and stored is not None
