"""SMTP AUTH for the sessions: which mechanisms are offered, the users file's verdict on a
password, and the throttle of password guessing shared by every connection."""
from __future__ import annotations

import asyncio

from .auth_throttle import AuthThrottle
from .config import AUTH_MECHANISMS, AuthConfig
from .smtp_users import SmtpUsers
from .throttle_service import RemoteThrottle
from .policy import Policy


class Authenticator:
    """What AUTH is offered and how a login is checked: the users file (``auth.users_file``,
    if any) and the policy's ``on_auth`` are the two things that can check credentials."""

    def __init__(self, config: AuthConfig, policy: Policy,
                 throttle: RemoteThrottle | None = None):
        """``throttle``: the one every worker shares (None: this process's own)."""
        self.config, self.policy = config, policy
        self.smtp_users = SmtpUsers(config.users_file) if config.users_file else None
        self.throttle = throttle or AuthThrottle(config)

    def offered(self) -> bool:
        """AUTH is offered when something can check credentials."""
        script = self.policy.script
        return bool(self.config.mechanisms) and (
            self.smtp_users is not None or (script is not None and script.has("on_auth")))

    def excluded_mechanisms(self) -> list[str]:
        """The mechanisms a new session does not offer."""
        offered = self.offered()
        return [m for m in AUTH_MECHANISMS if m not in self.config.mechanisms or not offered]

    def requires_tls(self, implicit_tls: bool) -> bool:
        """Whether AUTH waits for STARTTLS (not on an smtps listener, already encrypted)."""
        return not (self.config.allow_plaintext or implicit_tls)

    async def check_password(self, user: str, password: str) -> bool:
        """The users file's verdict (scrypt runs off the event loop)."""
        if self.smtp_users is None:
            return False
        return await asyncio.get_running_loop().run_in_executor(
            None, self.smtp_users.check, user, password)
