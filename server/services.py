"""What an SMTP session works with, built once by the :class:`~server.app.Server` and
shared by all its sessions: the session never sees the server itself."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vsl.stdlib.support.mail import domain_key

from .admission import Admission
from .authenticator import Authenticator
from .config import Config, SmtpLimits
from .intake import Intake
from .stages import StageRunner


@dataclass(frozen=True)
class SessionSettings:
    """The configuration a session reads."""
    hostname: str
    domains: frozenset[str]  # accepted without a policy (Config.domains), as domain_key
    limits: SmtpLimits
    hostname_key: str  # the hostname as domain_key: its postmaster is always accepted

    @classmethod
    def of(cls, config: Config) -> "SessionSettings":
        return cls(config.hostname, frozenset(map(domain_key, config.domains)), config.limits,
                   domain_key(config.hostname))


@dataclass(frozen=True)
class SessionServices:
    """A session's collaborators."""
    settings: SessionSettings
    admission: Admission
    authenticator: Authenticator
    intake: Intake
    stage_runner: Callable[[], StageRunner]  # a new runner for each connection
