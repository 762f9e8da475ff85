"""Server configuration: one TOML file (``vsl.toml``), checked key by key.

Every key has a safe default, so the server runs with no file at all. Unknown keys
and bad values are errors that name the key (``limits.recipients: must be an
integer >= 1, not 'many'``).
"""
from __future__ import annotations

import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from vsl.errors import ScriptError
from vsl.limits import Limits

LISTENER_KINDS = ("smtp", "submission", "smtps")
AUTH_MECHANISMS = ("PLAIN", "LOGIN")
DEFAULT_FALLBACK = "451 4.3.0 Temporary local problem, try again later"


class ConfigError(ValueError):
    """A configuration problem, naming the key."""


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    kind: str = "smtp"  # smtp (25-style), submission (587, STARTTLS), smtps (465, implicit TLS)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind} {host}:{self.port}"


@dataclass(frozen=True)
class TlsConfig:
    certificate: Path | None = None
    key: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.certificate is not None


@dataclass(frozen=True)
class AuthConfig:
    mechanisms: tuple[str, ...] = AUTH_MECHANISMS
    users_file: Path | None = None   # "user:hash" lines (hashlib.scrypt, see server/passwords.py)
    allow_plaintext: bool = False    # offer AUTH on connections without TLS


@dataclass(frozen=True)
class SmtpLimits:
    message_size: int = 25 * 1024 * 1024
    recipients: int = 100
    connections: int = 200
    connections_per_ip: int = 20
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    errors: int = 10


@dataclass(frozen=True)
class DnsConfig:
    config: str = "system"
    nameservers: tuple[str, ...] = ()
    timeout: float = 5.0


@dataclass(frozen=True)
class DeliveryConfig:
    """``[delivery]`` in vsl.toml (times in seconds)."""

    enabled: bool = True
    maildir_root: Path | None = None   # local mail: <root>/<domain>/<local part>; None: "mail"
                                       # beside the queue directory
    relay: str | None = None           # smtp[s]:// for non-local mail no script routed
                                       # (and DSNs); None: MX
    retry_first: float = 300.0         # first retry after 5 min, doubling ...
    retry_max: float = 3600.0          # ... up to 1 h
    max_age: float = 5 * 86400.0       # then fail and bounce after 5 days
    delay_warning: float = 4 * 3600.0  # warn the sender once after 4 h of waiting; 0: never
    concurrency: int = 20              # messages being delivered at once
    destination_concurrency: int = 20  # SMTP connections to one host:port at once
    hostname: str | None = None        # EHLO/LHLO name; None: server.hostname
    connect_timeout: float = 30.0
    command_timeout: float = 300.0     # each SMTP/LMTP reply, the one after DATA included
    idle_timeout: float = 5.0          # an unused SMTP connection is kept this long
    poll_interval: float = 1.0         # how often the deliver queue is looked at
    mx_port: int = 25
    credentials: Path | None = None    # logins for relays that want AUTH (server/credentials.py)
    ca_file: Path | None = None        # CAs trusted by tls=verify routes, besides the system's


@dataclass(frozen=True)
class Config:
    hostname: str = field(default_factory=socket.getfqdn)
    local_domains: tuple[str, ...] = ()  # empty: the hostname only
    scripts: Path | None = None          # directory holding main.vsl; None: no policy script
    queue_dir: Path = Path("queue")
    fallback_reply: str = DEFAULT_FALLBACK
    workers: int = 1                     # server processes (server/workers.py)
    script_threads: int = 4              # threads running stage functions that may run long
    listen: tuple[Listener, ...] = (Listener("127.0.0.1", 2525),)
    tls: TlsConfig = TlsConfig()
    auth: AuthConfig = AuthConfig()
    limits: SmtpLimits = SmtpLimits()
    dns: DnsConfig = DnsConfig()
    script_limits: Limits = Limits()
    delivery: DeliveryConfig = DeliveryConfig()

    @property
    def domains(self) -> tuple[str, ...]:
        """The domains this server accepts mail for without a policy script."""
        return tuple(d.lower() for d in (self.local_domains or (self.hostname,)))


# ---- reading ----------------------------------------------------------------

def parse_listen(text: str, kind: str = "smtp", key: str = "listen") -> Listener:
    """"host:port" or "[v6]:port" -> Listener."""
    if not isinstance(text, str):
        raise ConfigError(f"{key}: must be \"host:port\", not {text!r}")
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if not sep or not host or not (port.isascii() and port.isdigit()) or \
            not 0 < int(port) < 65536 or (":" in host and not bracketed):
        raise ConfigError(f"{key}: '{text}' is not host:port (an IPv6 address in [ ])")
    if kind not in LISTENER_KINDS:
        raise ConfigError(f"{key}: kind '{kind}' is not one of {', '.join(LISTENER_KINDS)}")
    return Listener(host, int(port), kind)


def load(path: str | Path | None) -> Config:
    """Read a config file (None: the embedded defaults)."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from None
    return from_dict(data, base=path.parent)


def from_dict(data: dict, base: Path = Path(".")) -> Config:
    """Build a Config from parsed TOML; relative paths are relative to ``base``."""
    data = dict(data)
    server = _table(data.pop("server", {}), "server")
    kwargs: dict = {}
    for key, value in server.items():
        if key == "hostname":
            kwargs[key] = _string(value, "server.hostname")
        elif key == "local_domains":
            kwargs[key] = tuple(_string(v, "server.local_domains") for v in
                                _array(value, "server.local_domains"))
        elif key in ("scripts", "queue_dir"):
            kwargs[key] = base / _string(value, f"server.{key}")
        elif key == "fallback_reply":
            kwargs[key] = _reply(value, "server.fallback_reply")
        elif key in ("workers", "script_threads"):
            kwargs[key] = _convert(value, "int", f"server.{key}", base)
        else:
            raise ConfigError(f"server.{key}: unknown key")
    if "listen" in data:
        kwargs["listen"] = tuple(_listener(item, i) for i, item in
                                 enumerate(_array(data.pop("listen"), "listen")))
    sections = {"tls": (TlsConfig, {"certificate": "path", "key": "path"}),
                "auth": (AuthConfig, {"mechanisms": "mechanisms", "users_file": "path",
                                      "allow_plaintext": bool}),
                "limits": (SmtpLimits, {f.name: f.type for f in fields(SmtpLimits)}),
                "dns": (DnsConfig, {"config": str, "nameservers": "strings", "timeout": "float"}),
                "script_limits": (Limits, {f.name: f.type for f in fields(Limits)}),
                "delivery": (DeliveryConfig, _DELIVERY_SCHEMA)}
    for name, (cls, schema) in sections.items():
        if name in data:
            kwargs[name] = cls(**_section(_table(data.pop(name), name), name, schema, base))
    for key in data:
        raise ConfigError(f"{key}: unknown section")
    config = Config(**kwargs)
    _check(config)
    return config


def _check(config: Config) -> None:
    if any(l.kind == "smtps" for l in config.listen) and not config.tls.enabled:
        raise ConfigError("listen: an smtps listener needs tls.certificate and tls.key")
    if config.tls.enabled != (config.tls.key is not None):
        raise ConfigError("tls: certificate and key go together")
    if config.dns.config not in ("system", "google", "cloudflare", "quad9", "google_tls",
                                 "cloudflare_tls", "quad9_tls"):
        raise ConfigError(f"dns.config: unknown resolver config '{config.dns.config}'")


def _listener(item, i: int) -> Listener:
    key = f"listen[{i}]"
    if isinstance(item, str):
        return parse_listen(item, key=key)
    table = _table(item, key)
    unknown = set(table) - {"address", "kind"}
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key")
    if "address" not in table:
        raise ConfigError(f"{key}.address: required")
    return parse_listen(table["address"], _string(table.get("kind", "smtp"), f"{key}.kind"), key)


def _section(table: dict, name: str, schema: dict, base: Path) -> dict:
    out = {}
    for key, value in table.items():
        full = f"{name}.{key}"
        kind = schema.get(key)
        if kind is None:
            raise ConfigError(f"{full}: unknown key (known: {', '.join(schema)})")
        out[key] = _convert(value, kind, full, base)
    return out


def _convert(value, kind, key: str, base: Path):
    if kind == "path":
        return base / _string(value, key)
    if kind == "strings":
        return tuple(_string(v, key) for v in _array(value, key))
    if kind == "mechanisms":
        mechs = tuple(_string(v, key).upper() for v in _array(value, key))
        for mech in mechs:
            if mech not in AUTH_MECHANISMS:
                raise ConfigError(f"{key}: '{mech}' is not one of {', '.join(AUTH_MECHANISMS)}")
        return mechs
    if kind in (bool, "bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, not {value!r}")
        return value
    if kind in (int, "int"):
        low = _MINIMUM.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{key}: must be an integer >= {low}, not {value!r}")
        return value
    if kind in (float, "float"):
        positive = key in _POSITIVE
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or \
                (positive and value == 0):
            raise ConfigError(f"{key}: must be a number {'> 0' if positive else '>= 0'}, "
                              f"not {value!r}")
        return float(value)
    if kind in (str, "str"):
        return _string(value, key)
    if kind == "route":
        from stdlib.transport import parse_route

        try:
            parse_route(_string(value, key), ("smtp", "smtps"))
        except ScriptError as err:
            raise ConfigError(f"{key}: {err.message}") from None
        return value
    raise AssertionError(f"schema kind {kind!r}")  # pragma: no cover - schema typo


_DELIVERY_SCHEMA = {"enabled": bool, "maildir_root": "path", "relay": "route",
                    "retry_first": "float", "retry_max": "float", "max_age": "float",
                    "delay_warning": "float",
                    "concurrency": "int", "destination_concurrency": "int", "hostname": str,
                    "connect_timeout": "float", "command_timeout": "float",
                    "idle_timeout": "float", "poll_interval": "float", "mx_port": "int",
                    "credentials": "path", "ca_file": "path"}


# Limits where 0 would lock everyone out or mean nothing (message_size 0 is "no limit",
# and 0 means "unlimited" for the script limits, as in Rhai).
_MINIMUM = {"server.workers": 1, "server.script_threads": 1,
            **{f"limits.{k}": 1 for k in ("recipients", "connections", "connections_per_ip",
                                           "errors")},
            **{f"delivery.{k}": 1 for k in ("concurrency", "destination_concurrency",
                                            "mx_port")}}
_POSITIVE = {"limits.command_timeout", "limits.data_timeout", "dns.timeout",
             *(f"delivery.{k}" for k in ("retry_first", "retry_max", "max_age",
                                         "connect_timeout", "command_timeout",
                                         "idle_timeout", "poll_interval"))}


def _table(value, key: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: must be a table")
    return value


def _array(value, key: str) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be an array")
    return value


def _string(value, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty string, not {value!r}")
    return value


def _reply(value, key: str) -> str:
    from stdlib.status import reply_problem

    problem = reply_problem(value, "45")
    if problem:
        raise ConfigError(f"{key}: {problem}")
    return value
