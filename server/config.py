"""Server configuration: one TOML file (``vsl.toml``), checked key by key.

Every key has a safe default, so the server runs with no file at all. Unknown keys
and bad values are errors that name the file and the key (``vsl.toml:
limits.recipients: must be an integer >= 1, not 'many'``); every problem of a file is
reported at once, one a line, an unknown key with the nearest known one and the list.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import socket
import stat
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vsl.stdlib.support.mail import AddressError, HeaderLimits, Mailbox
from vsl.stdlib.support.urls import amqp_url_problem, redis_url_problem
from vsl.errors import ScriptError
from vsl.limits import Limits
from vsl.resolve import closest

from . import event_loop
from .observability_config import (LOG_SCHEMA, METRICS_SCHEMA, MINIMUM as _OBSERVE_MINIMUM,
                                   LogConfig, MetricsConfig, ObservabilityError,
                                   problems as observability_problems, script_metrics)

if TYPE_CHECKING:
    from vsl.stdlib.dns import DnsDefaults

LISTENER_KINDS = ("smtp", "submission", "smtps")
AUTH_MECHANISMS = ("PLAIN", "LOGIN")
AUTO_WORKERS_MAX = 8  # workers = "auto": one process per usable CPU, at most this many
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # the cgroup v2 CPU quota ("auto")
DEFAULT_FALLBACK = "451 4.3.0 Temporary local problem, try again later"

log = logging.getLogger("vsl.server")


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
    users_file: Path | None = None   # "user:hash" lines (hashlib.scrypt, see server/smtp_users.py)
    allow_plaintext: bool = False    # offer AUTH on connections without TLS
    failure_limit: int = 5           # failed logins of one client address or user name ...
    failure_window: float = 600.0    # ... within these seconds lock it out (as fail2ban's)
    lockout: float = 600.0           # seconds of the first lockout (fail2ban's bantime);
    lockout_max: float = 3600.0      # each next one lasts twice as long, up to this
    throttle_entries: int = 10000    # failure counts, lockouts, users (server/auth_throttle.py)
    known_addresses: int = 10        # per user: the last addresses it logged in from


@dataclass(frozen=True)
class SmtpLimits:
    message_size: int = 25 * 1024 * 1024
    recipients: int = 100
    connections: int = 200
    connections_per_ip: int = 20
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    errors: int = 10
    junk_commands: int = 100                 # NOOP, RSET, ... before each is an error too
    header_fields: int = 1000                # header fields of a message
    header_section_size: int = 1024 * 1024   # bytes of a message's whole header
    header_field_size: int = 102400          # bytes of one header field (Postfix's default)
    received_headers: int = 50               # Received: fields (Postfix's hopcount_limit)
    idle_session: float = 300.0              # seconds without an accepted message (or AUTH),
    #                                          then the next command ends the session

    @property
    def header(self) -> HeaderLimits:
        """The bounds on a received message's header."""
        return HeaderLimits(self.header_fields, self.header_section_size,
                            self.header_field_size, self.received_headers)


@dataclass(frozen=True)
class DnsConfig:
    config: str = "system"
    nameservers: tuple[str, ...] = ()  # for resolvers whose script names no servers
    timeout: float = 5.0
    override: tuple[str, ...] = ()     # for every resolver, whatever its script says (staging)
    cache_bytes: int = 4 * 1024 * 1024  # each resolver's cache, estimated from wire sizes

    def resolver_defaults(self) -> DnsDefaults:
        """What the server's resolvers (the scripts' and delivery's) use for what a script
        leaves out; with ``override``, those servers for every resolver."""
        from vsl.stdlib.dns import DnsDefaults

        return DnsDefaults(self.config, self.override or self.nameservers, self.timeout,
                           self.cache_bytes, forced=bool(self.override))


@dataclass(frozen=True)
class DeliveryConfig:
    """``[delivery]`` in vsl.toml (times in seconds)."""

    enabled: bool = True
    maildir_root: Path | None = None   # local mail: <root>/<domain>/<local part>; None: "mail"
                                       # beside the queue directory (Config.resolved_delivery)
    relay: str | None = None           # smtp[s]:// for non-local mail no script routed
                                       # (and DSNs); None: MX
    retry_first: float = 300.0         # first retry after 5 min, doubling ...
    retry_max: float = 3600.0          # ... up to 1 h
    max_age: float = 5 * 86400.0       # then fail and bounce after 5 days
    delay_warning: float = 4 * 3600.0  # warn the sender once after 4 h of waiting; 0: never
    concurrency: int = 40              # messages being delivered at once
    destination_concurrency: int = 20  # SMTP connections to one host:port at once: half, so
                                       # a slow destination leaves half the slots to others
    hostname: str | None = None        # EHLO/LHLO name; None: server.hostname
    connect_timeout: float = 30.0
    command_timeout: float = 300.0     # each SMTP/LMTP reply, the one after DATA included
    idle_timeout: float = 5.0          # an unused SMTP connection is kept this long
    poll_interval: float = 1.0         # how often the deliver queue is looked at
    mx_port: int = 25
    credentials: Path | None = None    # logins for relays that want AUTH (server/relay_logins.py)
    ca_file: Path | None = None        # CAs trusted by tls=verify routes, besides the system's
    mx_address_limit: int = 5          # MX addresses tried in one attempt (Postfix's
                                       # smtp_mx_address_limit) ...
    mx_session_limit: int = 2          # ... and sessions opened (smtp_mx_session_limit)
    mx_attempt_timeout: float = 600.0  # one MX attempt, DNS look-ups included, then defer
    mx_host_limit: int = 10            # MX hosts without an address looked up in one
                                       # attempt (twice the address limit's default)
    journal: Path | None = None        # the delivery journal (server/journal.py); None:
                                       # delivered.journal in the queue directory


@dataclass(frozen=True)
class BounceConfig:
    """``[bounce]`` in vsl.toml: the bounce classifier."""

    learned: Path | None = None  # examples of `vsl bounce learn`; None: learned-bounces.jsonl
                                 # beside the queue directory (Config.learned_bounces)
    self_learning: bool = True  # keep examples of what the server sees (docs/bounces.md)
    auto_learned: Path | None = None  # their file; None: auto-learned-bounces.jsonl beside
                                      # the learned file (Config.auto_learned_bounces)


STATE_BACKENDS = ("sqlite", "redis")


@dataclass(frozen=True)
class StateConfig:
    """``[state]`` in vsl.toml: where limit:: and greylist:: keep their counts
    (server/state_store.py opens it)."""

    backend: str = "sqlite"        # sqlite: one machine's processes; redis: several servers
    path: Path | None = None       # sqlite: None: state.sqlite beside the queue directory
                                   # (Config.state_path)
    url: str | None = field(default=None, repr=False)  # redis: redis[s]://[user:password@]
                                   # host:port/db (not in repr: it may hold a password)
    url_file: Path | None = None   # redis: a file holding the url (its password out of
                                   # vsl.toml); give url or url_file
    timeout: float | None = None   # redis: seconds an operation may take, then temperror
                                   # (None: the store's default, 1 s)


QUEUE_BACKENDS = ("spool", "rabbitmq")
QUEUE_TYPES = ("quorum", "classic")
QUEUE_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")
QUEUE_URL_KEYS = ("url", "url_file", "url_env")
ENVIRONMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
QUEUE_URL_MISSING = ("queue.url: backend \"rabbitmq\" needs one of queue.url, "
                     "queue.url_file and queue.url_env")
AMQP_MAX_MESSAGE_SIZE = 127 * 1024 * 1024  # the broker's max_message_size (128 MiB by
#                                            default) less room for the envelope


@dataclass(frozen=True)
class QueueConfig:
    """``[queue]`` in vsl.toml: where accepted mail waits, the spool (``queue_dir``) or a
    RabbitMQ broker shared by receivers, workers and deliveries (docs/configuration.md)."""

    backend: str = "spool"          # "spool" | "rabbitmq"
    url: str | None = field(default=None, repr=False)  # amqp[s]://user:pass@host:port/vhost
    url_file: Path | None = None    # or a file holding it (the password out of vsl.toml)
    url_env: str | None = None      # or an environment variable's name holding it
    prefix: str = "vsl"             # [A-Za-z0-9_.-]{1,64}, before every queue name
    queue_type: str = "quorum"      # or "classic" (dead-letters at most once)
    confirm_timeout: float = 30.0   # s a publish may wait for the broker's confirm
    connect_timeout: float = 5.0    # s a connection attempt may take

    def resolved_url(self) -> str:
        """The broker's URL from ``url``, ``url_file`` (its content, stripped; a warning
        when others may read the file) or ``url_env``; a ConfigError naming the source,
        never the URL, when it is missing or not an AMQP URL."""
        if self.url is not None:
            return checked_url(self.url, "queue.url", amqp_url_problem)
        if self.url_file is not None:
            text = read_secret(self.url_file, "queue.url_file", "the broker's password")
            return checked_url(text, f"queue.url_file ({self.url_file})", amqp_url_problem)
        if self.url_env is not None:
            text = _environment_url(self.url_env)
            return checked_url(text, f"queue.url_env ({self.url_env})", amqp_url_problem)
        raise ConfigError(QUEUE_URL_MISSING)


def _environment_url(name: str) -> str:
    """The URL the environment variable ``name`` holds (``name`` is never quoted unless it
    is a variable's name: it may be a URL given by mistake)."""
    if not ENVIRONMENT_NAME.fullmatch(name):
        raise ConfigError("queue.url_env: must be the name of an environment variable "
                          "(letters, digits and '_'), not the URL itself")
    text = os.environ.get(name, "").strip()
    if not text:
        raise ConfigError(f"queue.url_env {name} is not set")
    return text


def default_hostname() -> str:
    """This machine's name when ``server.hostname`` is unset: ``gethostname()`` when it has
    a dot; else the FQDN the resolver gives it (``/etc/hosts``), unless that is a
    ``localhost`` name (containers and Debian map the host name to 127.0.0.1 after
    ``localhost``); else the name with ``.localdomain``, as Postfix's ``myhostname``."""
    name = socket.gethostname()
    if "." in name:
        return name
    fqdn = socket.getfqdn(name)
    if "." in fqdn and fqdn.split(".")[0].lower() not in ("localhost", "localhost6",
                                                           "ip6-localhost", "ip6-loopback"):
        return fqdn
    return f"{name}.localdomain"


@dataclass(frozen=True)
class Config:
    hostname: str = field(default_factory=default_hostname)
    local_domains: tuple[str, ...] | None = None  # None (unset): the hostname; (): none
    scripts: Path | None = None          # directory holding main.vsl; None: no policy script
    queue_dir: Path = Path("queue")
    fallback_reply: str = DEFAULT_FALLBACK
    workers: int = field(default_factory=lambda: auto_workers())  # processes (workers.py)
    event_loop: str = "auto"             # server/event_loop.py: "auto", "asyncio", "uvloop"
    script_threads: int = 4              # threads running stage functions that may run long
    listen: tuple[Listener, ...] = (Listener("127.0.0.1", 2525),)
    tls: TlsConfig = TlsConfig()
    auth: AuthConfig = AuthConfig()
    limits: SmtpLimits = SmtpLimits()
    dns: DnsConfig = DnsConfig()
    script_limits: Limits = Limits()
    delivery: DeliveryConfig = DeliveryConfig()
    bounce: BounceConfig = BounceConfig()
    state: StateConfig = StateConfig()
    queue: QueueConfig = QueueConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    # the file it was read from, and a digest of its bytes then (see warn_if_changed)
    file: Path | None = field(default=None, compare=False, repr=False)
    file_digest: bytes = field(default=b"", compare=False, repr=False)

    @property
    def state_path(self) -> Path:
        """The SQLite file of ``[state]``: ``path``, else state.sqlite beside the queue
        directory."""
        return self.state.path or self.queue_dir.parent / "state.sqlite"

    @property
    def learned_bounces(self) -> Path:
        """The file of learned bounces: ``[bounce] learned``, else learned-bounces.jsonl
        beside the queue directory."""
        return self.bounce.learned or self.queue_dir.parent / "learned-bounces.jsonl"

    @property
    def auto_learned_bounces(self) -> Path | None:
        """The file of self-learning (None when ``[bounce] self_learning`` is off):
        ``[bounce] auto_learned``, else auto-learned-bounces.jsonl beside the learned file."""
        if not self.bounce.self_learning:
            return None
        return self.bounce.auto_learned or \
            self.learned_bounces.with_name("auto-learned-bounces.jsonl")

    @property
    def journal_path(self) -> Path:
        """The delivery journal: ``[delivery] journal``, else delivered.journal in the
        queue directory."""
        return self.delivery.journal or self.queue_dir / "delivered.journal"

    @property
    def domains(self) -> tuple[str, ...]:
        """The domains this server accepts mail for without a policy script:
        ``server.local_domains``, the hostname when it is unset, none when it is empty (a
        relay-only server, as Postfix's empty mydestination); lower case, without a
        trailing dot; compare them by ``domain_key`` (an IDN's U-labels and A-labels are
        one domain)."""
        listed = (self.hostname,) if self.local_domains is None else self.local_domains
        return tuple(d.lower().rstrip(".") for d in listed)

    @property
    def resolved_delivery(self) -> DeliveryConfig:
        """``[delivery]`` with the default Maildir root filled in: "mail" beside the queue
        directory."""
        return replace(self.delivery, maildir_root=self.delivery.maildir_root or
                       self.queue_dir.parent / "mail")


# ---- reading ----------------------------------------------------------------

def parse_listen(text: str, kind: str = "smtp", key: str = "listen") -> Listener:
    """"host:port" or "[v6]:port" -> Listener."""
    if not isinstance(text, str):
        raise ConfigError(f"{key}: must be \"host:port\", not {text!r}")
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if not sep or not host or not (port.isascii() and port.isdigit()) or \
            (":" in host and not bracketed):
        raise ConfigError(f"{key}: '{text}' is not host:port (an IPv6 address in [ ])")
    if not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: '{text}': port {int(port)} is out of range (1-65535)")
    if kind not in LISTENER_KINDS:
        raise ConfigError(f"{key}: kind '{kind}' is not one of {', '.join(LISTENER_KINDS)}")
    return Listener(host, int(port), kind)


def load(path: str | Path | None) -> Config:
    """Read a config file (None: the embedded defaults); every problem of the file is
    one line of the ConfigError, starting with the file's name."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 ({err.reason} at byte {err.start})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from None
    try:
        config = from_dict(data, base=path.parent)
    except ConfigError as err:
        raise ConfigError("\n".join(f"{path}: {line}" for line in str(err).splitlines())) \
            from None
    return replace(config, file=path, file_digest=hashlib.sha256(raw).digest())


def warn_if_changed(config: Config) -> None:
    """At SIGHUP, which reloads the scripts only: a warning when the file ``config`` was
    read from says something else now (``postfix reload`` would read main.cf again; the
    listeners, workers and queue of a running server cannot change)."""
    if config.file is None:
        return
    try:
        changed = hashlib.sha256(config.file.read_bytes()).digest() != config.file_digest
    except OSError:
        changed = True
    if changed:
        log.warning("%s changed since vsl serve started: SIGHUP reloads the scripts only; "
                    "restart vsl serve to apply it", config.file)


class _Problems:
    """Collects the ConfigErrors of a whole file instead of stopping at the first."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    @contextmanager
    def check(self):
        """A block whose ConfigError is noted, and the file's checking goes on after it."""
        try:
            yield
        except ConfigError as err:
            self.messages.append(str(err))

    def raise_any(self) -> None:
        """One ConfigError with every problem noted so far, one a line (if any)."""
        if self.messages:
            raise ConfigError("\n".join(self.messages))


def from_dict(data: dict, base: Path = Path(".")) -> Config:
    """Build a Config from parsed TOML; relative paths are relative to ``base``.
    The ConfigError names every problem, one a line."""
    data, problems, kwargs = dict(data), _Problems(), {}
    with problems.check():
        server = _table(data.pop("server", {}), "server")
        kwargs.update(_section(server, "server", _SERVER_SCHEMA, base, problems))
    if "listen" in data:
        kwargs["listen"] = _listeners(data.pop("listen"), problems)
    for name, (cls, schema) in _SECTIONS.items():
        if name in data:
            with problems.check():
                table = _table(data.pop(name), name)
                kwargs[name] = cls(**_section(table, name, schema, base, problems))
    for key, value in data.items():
        problems.messages.append(_unknown_top_level(key, value))
    # a section in error stays at its defaults, so that the others' conflicts are reported
    # too; not its own (they would repeat its error in other words)
    config, failed = Config(**kwargs), {_section_of(m) for m in problems.messages}
    problems.messages.extend(m for m in _conflicts(config) if _section_of(m) not in failed)
    problems.raise_any()
    return config


def _section_of(message: str) -> str:
    """The section (or top-level key) a problem names first: "queue" of "queue.url: ..."."""
    return re.split(r"[.:]", message, maxsplit=1)[0]


DNS_CONFIGS = ("system", "google", "cloudflare", "quad9", "google_tls", "cloudflare_tls",
               "quad9_tls")


def _conflicts(config: Config) -> Iterator[str]:
    """Messages for values that do not go together."""
    if any(l.kind == "smtps" for l in config.listen) and not config.tls.enabled:
        yield "listen: an smtps listener needs tls.certificate and tls.key"
    if config.tls.enabled != (config.tls.key is not None):
        yield "tls: certificate and key go together"
    if config.auth.lockout_max < config.auth.lockout:
        yield "auth.lockout_max: must be >= auth.lockout"
    if config.dns.config not in DNS_CONFIGS:
        near = closest(config.dns.config, DNS_CONFIGS)
        hint = f"did you mean '{near}'? " if near else ""
        yield (f"dns.config: unknown resolver config '{config.dns.config}' ({hint}one of "
               f"{', '.join(DNS_CONFIGS)})")
    yield from _state_conflicts(config.state)
    yield from _queue_conflicts(config)
    yield from _bounce_conflicts(config)
    if config.metrics.listen:
        try:
            parse_listen(config.metrics.listen, key="metrics.listen")
        except ConfigError as err:
            yield str(err)
    yield from observability_problems(config.metrics, config.log)


def _bounce_conflicts(config: Config) -> Iterator[str]:
    """The operator's learned bounces and self-learning's must be two files (not one by a
    symbolic or a hard link)."""
    auto = config.auto_learned_bounces
    if auto is not None and _one_file(auto, config.learned_bounces):
        yield (f"bounce.auto_learned: {auto} is also bounce.learned's file: self-learning "
               "would rewrite the operator's examples; give it a file of its own")


def _one_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file: the same real path, or, both existing, one inode."""
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def _state_conflicts(state: StateConfig) -> Iterator[str]:
    if state.backend not in STATE_BACKENDS:
        yield f"state.backend: unknown backend '{state.backend}' (use sqlite or redis)"
    redis_keys = [key for key in ("url", "url_file", "timeout")
                  if getattr(state, key) is not None]
    if state.backend == "redis":
        if "url" not in redis_keys and "url_file" not in redis_keys:
            yield "state.url: backend \"redis\" needs one of state.url and state.url_file"
        if "url" in redis_keys and "url_file" in redis_keys:
            yield "state.url_file: give only one of state.url and state.url_file"
        if state.path is not None:
            yield "state.path: only for backend = \"sqlite\""
    if state.backend == "sqlite":
        yield from (f"state.{key}: only for backend = \"redis\"" for key in redis_keys)


def _queue_conflicts(config: Config) -> Iterator[str]:
    queue = config.queue
    if queue.backend not in QUEUE_BACKENDS:
        yield f"queue.backend: unknown backend '{queue.backend}' (use spool or rabbitmq)"
    if queue.backend == "spool":
        yield from (f"queue.{f.name}: only for backend = \"rabbitmq\"" for f in fields(queue)
                    if f.name != "backend" and getattr(queue, f.name) != f.default)
    if queue.backend == "rabbitmq":
        yield from _broker_settings(queue)
        yield from _broker_url(queue)
        yield from _broker_message_size(config.limits.message_size)


def _broker_settings(queue: QueueConfig) -> Iterator[str]:
    if not QUEUE_PREFIX.fullmatch(queue.prefix):
        yield (f"queue.prefix: '{queue.prefix}' must be 1 to 64 letters, digits, '_', '.' "
               "or '-'")
    if queue.queue_type not in QUEUE_TYPES:
        yield f"queue.queue_type: unknown type '{queue.queue_type}' (use quorum or classic)"
    for key in ("confirm_timeout", "connect_timeout"):
        if not math.isfinite(getattr(queue, key)):
            yield f"queue.{key}: must be a finite number > 0, not {getattr(queue, key)!r}"


def _broker_url(queue: QueueConfig) -> Iterator[str]:
    """The problem of the broker's URL, resolved at once so that a missing secret stops
    the start, not the first message."""
    given = [key for key in QUEUE_URL_KEYS if getattr(queue, key) is not None]
    if len(given) > 1:
        yield (f"queue.{given[1]}: give only one of queue.url, queue.url_file and "
               "queue.url_env")
    else:
        try:
            queue.resolved_url()
        except ConfigError as err:
            yield str(err)


def _broker_message_size(size: int) -> Iterator[str]:
    """The message size limit a broker carries: 1 to AMQP_MAX_MESSAGE_SIZE bytes."""
    if size == 0:
        yield ("limits.message_size: 0 (no limit) cannot go with queue.backend = "
               "\"rabbitmq\": the broker refuses messages over its max_message_size "
               f"(128 MiB); give at most {AMQP_MAX_MESSAGE_SIZE} (127 MiB)")
    elif size > AMQP_MAX_MESSAGE_SIZE:
        yield (f"limits.message_size: must be at most {AMQP_MAX_MESSAGE_SIZE} (127 MiB) "
               "with queue.backend = \"rabbitmq\": the broker refuses messages over its "
               f"max_message_size (128 MiB, the envelope included), not {size}")


def _listeners(value, problems: _Problems) -> tuple[Listener, ...]:
    listeners = []
    with problems.check():
        for i, item in enumerate(_array(value, "listen")):
            with problems.check():
                listeners.append(_listener(item, i))
    return tuple(listeners)


def _listener(item, i: int) -> Listener:
    key = f"listen[{i}]"
    if isinstance(item, str):
        return parse_listen(item, key=key)
    table = _table(item, key)
    unknown = sorted(set(table) - {"address", "kind"})
    if unknown:
        raise _unknown_key(key, unknown[0], ("address", "kind"))
    if "address" not in table:
        raise ConfigError(f"{key}.address: required")
    return parse_listen(table["address"], _string(table.get("kind", "smtp"), f"{key}.kind"), key)


def _section(table: dict, name: str, schema: dict, base: Path, problems: _Problems) -> dict:
    """The section's values by key; each bad key is a problem of its own."""
    out = {}
    for key, value in table.items():
        with problems.check():
            if key not in schema:
                raise _unknown_key(name, key, schema)
            out[key] = _convert(value, schema[key], f"{name}.{key}", base)
    return out


def _unknown_key(section: str, key: str, known) -> ConfigError:
    """section.key is not a key: the nearest one, and every one."""
    near = closest(key, known)
    hint = f", did you mean {section}.{near}?" if near else ""
    if key in _SECTION_NAMES:  # TOML put it in the table above it
        hint = f": '{key}' goes above the first [section] of the file"
    return ConfigError(f"{section}.{key}: unknown key{hint} (known: {', '.join(known)})")


def _unknown_top_level(key: str, value) -> str:
    """A top-level name that is no section: the section holding such a key, or the
    nearest section."""
    owners = [f"{name}.{key}" for name, schema in _schemas() if key in schema]
    near = owners or [name for name in [closest(key, _SECTION_NAMES)] if name]
    hint = f", did you mean {' or '.join(near)}?" if near else ""
    what = "section" if isinstance(value, dict) else "key"
    return f"{key}: unknown {what}{hint} (known: {', '.join(_SECTION_NAMES)})"


def _convert(value, kind, key: str, base: Path):
    if kind == "path":
        return base / _string(value, key)
    if kind == "strings":
        return tuple(_string(v, key) for v in _array(value, key))
    if kind == "domain":
        return _domain(_string(value, key), key)
    if kind == "domains":
        return tuple(_domain(_string(v, key), key) for v in _array(value, key))
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
    if kind == "reply":
        return _reply(value, key)
    if kind == "workers":
        return parse_workers(value, key)
    if kind == "event_loop":
        if value not in event_loop.CHOICES:
            raise ConfigError(f"{key}: must be one of {', '.join(event_loop.CHOICES)}, "
                              f"not {value!r}")
        return value
    if kind == "nameservers":
        return tuple(nameserver(_string(v, key), key) for v in _array(value, key))
    if kind == "redis_url":
        return checked_url(_string(value, key), key, redis_url_problem)
    if kind == "script_metrics":
        try:
            return script_metrics(value, key)
        except ObservabilityError as err:
            raise ConfigError(str(err)) from None
    if kind == "route":
        from vsl.stdlib.transport import RELAY_KINDS, parse_route

        try:
            parse_route(_string(value, key), RELAY_KINDS)
        except ScriptError as err:
            raise ConfigError(f"{key}: {err.message}") from None
        return value
    raise AssertionError(f"schema kind {kind!r}")  # pragma: no cover - schema typo


_SERVER_SCHEMA = {"hostname": "domain", "local_domains": "domains", "scripts": "path",
                  "queue_dir": "path", "fallback_reply": "reply", "workers": "workers",
                  "script_threads": "int", "event_loop": "event_loop"}
_DELIVERY_SCHEMA = {"enabled": bool, "maildir_root": "path", "journal": "path",
                    "relay": "route",
                    "retry_first": "float", "retry_max": "float", "max_age": "float",
                    "delay_warning": "float",
                    "concurrency": "int", "destination_concurrency": "int", "hostname": str,
                    "connect_timeout": "float", "command_timeout": "float",
                    "idle_timeout": "float", "poll_interval": "float", "mx_port": "int",
                    "mx_address_limit": "int", "mx_session_limit": "int",
                    "mx_host_limit": "int", "mx_attempt_timeout": "float",
                    "credentials": "path", "ca_file": "path"}

_SECTIONS = {"tls": (TlsConfig, {"certificate": "path", "key": "path"}),
             "auth": (AuthConfig, {"mechanisms": "mechanisms", "users_file": "path",
                                   "allow_plaintext": bool, "failure_limit": "int",
                                   "failure_window": "float", "lockout": "float",
                                   "lockout_max": "float", "throttle_entries": "int",
                                   "known_addresses": "int"}),
             "limits": (SmtpLimits, {f.name: f.type for f in fields(SmtpLimits)}),
             "dns": (DnsConfig, {"config": str, "nameservers": "nameservers",
                                 "timeout": "float", "override": "nameservers",
                                 "cache_bytes": "int"}),
             "script_limits": (Limits, {f.name: f.type for f in fields(Limits)}),
             "delivery": (DeliveryConfig, _DELIVERY_SCHEMA),
             "bounce": (BounceConfig, {"learned": "path", "self_learning": bool,
                                       "auto_learned": "path"}),
             "state": (StateConfig, {"backend": str, "path": "path", "url": "redis_url",
                                     "url_file": "path", "timeout": "float"}),
             "queue": (QueueConfig, {"backend": str, "url": str, "url_file": "path",
                                     "url_env": str, "prefix": str, "queue_type": str,
                                     "confirm_timeout": "float",
                                     "connect_timeout": "float"}),
             "metrics": (MetricsConfig, METRICS_SCHEMA),
             "log": (LogConfig, LOG_SCHEMA)}
_SECTION_NAMES = ("server", "listen", *_SECTIONS)


def _schemas() -> Iterator[tuple[str, dict]]:
    """(section, schema) for every section of keys."""
    yield "server", _SERVER_SCHEMA
    for name, (_, schema) in _SECTIONS.items():
        yield name, schema


# Limits where 0 would lock everyone out or mean nothing (message_size 0 is "no limit",
# and 0 means "unlimited" for the script limits, as in Rhai).
_MINIMUM = {"server.script_threads": 1, "auth.failure_limit": 1,
            "auth.throttle_entries": 1,
            **{f"limits.{k}": 1 for k in ("recipients", "connections", "connections_per_ip",
                                           "errors", "header_fields", "header_section_size",
                                           "header_field_size", "received_headers")},
            **{f"delivery.{k}": 1 for k in ("concurrency", "destination_concurrency",
                                            "mx_port", "mx_address_limit",
                                            "mx_session_limit", "mx_host_limit")},
            **_OBSERVE_MINIMUM}
_POSITIVE = {"limits.command_timeout", "limits.data_timeout", "limits.idle_session",
             "dns.timeout", "state.timeout", "queue.confirm_timeout",
             "queue.connect_timeout",
             "auth.failure_window", "auth.lockout", "auth.lockout_max",
             *(f"delivery.{k}" for k in ("retry_first", "retry_max", "max_age",
                                         "connect_timeout", "command_timeout",
                                         "idle_timeout", "poll_interval",
                                         "mx_attempt_timeout"))}


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


def is_domain(value: str) -> bool:
    """Whether ``value`` is a domain name (U-labels allowed, a trailing dot too) or an
    address literal: what ``server.local_domains`` lists."""
    try:
        Mailbox.parse("postmaster@" + value.removesuffix("."))
    except AddressError:
        return False
    return True


def _domain(value: str, key: str) -> str:
    if not is_domain(value):
        raise ConfigError(f"{key}: {value!r} is not a domain name")
    return value


def auto_workers() -> int:
    """``workers = "auto"`` (the default): one server process per CPU this process may
    use (its affinity, within its cgroup's CPU quota), at most AUTO_WORKERS_MAX; 1 where
    workers cannot share their state (no ``memfd_create`` or ``SOCK_SEQPACKET``)."""
    if not (hasattr(os, "memfd_create") and hasattr(socket, "SOCK_SEQPACKET")):
        return 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
    return max(1, min(usable, cgroup_cpus() or usable, AUTO_WORKERS_MAX))


def cgroup_cpus() -> int | None:
    """The CPUs the cgroup v2 quota of this process allows (``cpu.max``: quota over
    period, rounded up); None without a quota ("max") or without the file."""
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
        return math.ceil(int(quota) / int(period))
    except (OSError, ValueError, ZeroDivisionError):  # absent, "max", or unreadable
        return None


def parse_workers(value, key: str) -> int:
    """``[server] workers`` (or ``--workers``): a number >= 1, or "auto" (one process per
    usable CPU, at most AUTO_WORKERS_MAX)."""
    if value == "auto":
        return auto_workers()
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key}: must be \"auto\" or an integer >= 1, not {value!r}")
    return value


def nameserver(text: str, key: str) -> str:
    """A nameserver as dns::resolver() takes it: "ip", "ip:port" or "[v6]:port"."""
    from vsl.stdlib.dns import parse_nameserver

    try:
        parse_nameserver(text)
    except ScriptError as err:
        raise ConfigError(f"{key}: {err.message}") from None
    return text


def checked_url(text: str, key: str, problem_of: Callable[[str], str | None]) -> str:
    """``text`` if ``problem_of`` finds no problem with it, else a ConfigError naming the
    key and the problem (never the URL: it may hold a password)."""
    problem = problem_of(text)
    if problem:
        raise ConfigError(f"{key}: {problem}")
    return text


def read_secret(path: Path, key: str, secret: str) -> str:
    """The stripped text of the file ``key`` names; a ConfigError when it cannot be read,
    a warning when its group or others may read it (it holds ``secret``)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{key}: cannot read {path}: "
                          f"{getattr(err, 'strerror', None) or err}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: %s can be read by others than its owner (it may hold %s): "
                    "chmod 600 it", key, path, secret)
    return text


def _reply(value, key: str) -> str:
    from vsl.stdlib.status import reply_problem

    problem = reply_problem(value, "45")
    if problem:
        raise ConfigError(f"{key}: {problem}")
    return value
