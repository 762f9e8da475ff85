"""Postfix's configuration as ``main.cf`` and ``master.cf`` write it: parameters, where each
line is, and their values with ``$name`` expanded over Postfix's defaults.

Postfix syntax: ``name = value``; a line starting with whitespace continues the one before;
``#`` starts a comment line. ``$name``, ``${name}`` and ``$(name)`` expand (as late as
``postconf`` does), and ``${name?text}`` / ``${name:text}`` give ``text`` when ``name`` is
set / empty. A master.cf service's ``-o name=value`` options override ``main.cf`` for
that service alone: the translation takes those of the port-25 SMTP server only
(:func:`port_25_service`), never another service's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..config import default_hostname

# `postconf -d` at compatibility_level 3.6, for the parameters the translation reads.
DEFAULTS = {
    "compatibility_level": "0",
    "mail_name": "Postfix",
    "myhostname": "",  # vsl serve's default_hostname() (see PostfixConfig.raw)
    "mydomain": "",    # myhostname without its first label
    "myorigin": "$myhostname",
    "mydestination": "$myhostname, localhost.$mydomain, localhost",
    "mynetworks": "127.0.0.0/8 [::1]/128",
    "relay_domains": "",
    "relayhost": "",
    "relay_recipient_maps": "",
    "allow_untrusted_routing": "no",
    "inet_interfaces": "all",
    "message_size_limit": "10240000",
    "smtpd_recipient_limit": "1000",
    "smtpd_helo_required": "no",
    "smtpd_delay_reject": "yes",
    "strict_rfc821_envelopes": "no",
    "disable_vrfy_command": "no",
    "smtpd_peername_lookup": "yes",
    "smtpd_null_access_lookup_key": "<>",
    "smtpd_reject_unlisted_recipient": "yes",
    "smtpd_reject_unlisted_sender": "no",
    "smtpd_banner": "$myhostname ESMTP $mail_name",
    "smtpd_client_restrictions": "",
    "smtpd_helo_restrictions": "",
    "smtpd_sender_restrictions": "",
    "smtpd_recipient_restrictions": "",
    "smtpd_data_restrictions": "",
    "smtpd_end_of_data_restrictions": "",
    "reject_code": "554",
    "defer_code": "450",
    "relay_domains_reject_code": "554",
    "access_map_reject_code": "554",
    "access_map_defer_code": "450",
    "maps_rbl_reject_code": "554",
    "unknown_address_reject_code": "450",
    "unknown_client_reject_code": "450",
    "unknown_hostname_reject_code": "450",
    "non_fqdn_reject_code": "504",
    "invalid_hostname_reject_code": "501",
    "unknown_relay_recipient_reject_code": "550",
    "default_rbl_reply": "$rbl_code Service unavailable; $rbl_class [$rbl_what] blocked "
                         "using $rbl_domain${rbl_reason?; $rbl_reason}",
    "rbl_reply_maps": "",
    "queue_directory": "/var/spool/postfix",  # where unix:private/... sockets are
    "smtpd_policy_service_timeout": "100s",
    "smtpd_policy_service_default_action": "451 4.3.5 Server configuration problem",
}


def compat_defaults(level: str) -> dict[str, str]:
    """The defaults that depend on ``compatibility_level`` (Postfix 3.6's rules)."""
    numbers = tuple(int(n) for n in re.findall(r"\d+", level)[:2]) or (0,)
    return {
        "smtpd_relay_restrictions": "" if numbers < (1,) else
        "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination",
        "smtpd_relay_before_recipient_restrictions": "no" if numbers < (3, 6) else "yes",
        "relay_domains": "$mydestination" if numbers < (2,) else "",
        "mynetworks_style": "subnet" if numbers < (2,) else "host",
    }


@dataclass(frozen=True)
class Setting:
    """One parameter as a configuration file sets it."""

    name: str
    value: str
    where: str  # "main.cf:12", "master.cf:3"

    @property
    def line(self) -> str:
        return f"{self.where}: {self.name} = {self.value}"


def logical_lines(text: str) -> list[tuple[int, str]]:
    """The lines of a Postfix file with continuations joined, comments and blank lines
    dropped: (number of the first line, text)."""
    lines: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace() and lines:
            lines[-1] = (lines[-1][0], f"{lines[-1][1]} {raw.strip()}")
        else:
            lines.append((number, raw.strip()))
    return lines


def parse_main_cf(text: str, name: str = "main.cf") -> tuple[list[Setting], list[str]]:
    """The settings of a main.cf, and the lines that are not ``name = value``."""
    settings, problems = [], []
    for number, line in logical_lines(text):
        key, equals, value = line.partition("=")
        if not equals or not re.fullmatch(r"[A-Za-z0-9_.-]+", key.strip()):
            problems.append(f"{name}:{number}: {line}")
            continue
        settings.append(Setting(key.strip(), value.strip(), f"{name}:{number}"))
    return settings, problems


@dataclass(frozen=True)
class Service:
    """One master.cf service: ``name type ... command`` and its ``-o`` overrides."""

    name: str     # "smtp", "submission", "127.0.0.1:2525"
    type: str     # "inet", "pass", "unix", ...
    command: str  # "smtpd", "postscreen", ...
    options: tuple[Setting, ...]
    where: str    # "master.cf:3"
    text: str     # the line: "smtp inet n - y - - smtpd -o ..."

    @property
    def is_smtpd(self) -> bool:
        return self.command == "smtpd" and self.type in ("inet", "pass")

    @property
    def port(self) -> str:
        return self.name.rpartition(":")[2]

    @property
    def overrides(self) -> set[tuple[str, str]]:
        return {(s.name, s.value) for s in self.options}


def parse_master_cf(text: str) -> list[Service]:
    """The services of a master.cf with their ``-o name=value`` options."""
    services = []
    for number, line in logical_lines(text):
        fields = line.split()
        if len(fields) < 8:
            continue
        options = fields[8:]
        overrides = tuple(Setting(*option.partition("=")[::2], f"master.cf:{number}")
                          for flag, option in zip(options, options[1:])
                          if flag == "-o" and "=" in option)
        services.append(Service(fields[0], fields[1], fields[7], overrides,
                                f"master.cf:{number}", line))
    return services


def port_25_service(services: list[Service]) -> Service | None:
    """The smtpd service whose settings the translation takes: the ``smtpd pass`` service
    behind a port-25 postscreen, else the port-25 ``inet smtpd`` service, else the first
    ``inet smtpd`` service."""
    smtpd = [s for s in services if s.is_smtpd]
    if any(s.command == "postscreen" and s.port in ("smtp", "25") for s in services):
        passed = [s for s in smtpd if s.type == "pass"]
        if passed:
            return passed[0]
    inet = [s for s in smtpd if s.type == "inet"]
    return next((s for s in inet if s.port in ("smtp", "25")), inet[0] if inet else None)


class PostfixConfig:
    """The parameters of one configuration directory, set or default."""

    def __init__(self, settings: list[Setting], directory: Path | None = None,
                 services: list[Service] | None = None):
        self.settings = {s.name: s for s in settings}
        self.directory = directory
        self.services = services or []  # master.cf's, when there is one
        self.used: set[str] = set()

    @classmethod
    def load(cls, directory: Path) -> tuple["PostfixConfig", list[str]]:
        """main.cf of ``directory`` with the port-25 smtpd service's overrides of master.cf;
        also the main.cf lines it cannot read."""
        settings, problems = parse_main_cf((directory / "main.cf").read_text(errors="replace"))
        master = directory / "master.cf"
        services = parse_master_cf(master.read_text(errors="replace")) if master.is_file() \
            else []
        smtpd = port_25_service(services)
        if smtpd is not None:
            settings += smtpd.options
        return cls(settings, directory, services), problems

    def raw(self, name: str) -> str:
        """The value as written (or Postfix's default), before expansion; marks it used."""
        self.used.add(name)
        if name in self.settings:
            return self.settings[name].value
        level = self.settings.get("compatibility_level")
        compat = compat_defaults(level.value if level else "0")
        if name in compat:
            return compat[name]
        if name == "config_directory" and self.directory is not None:
            return str(self.directory)  # as `postfix -c DIRECTORY` sets it
        if name == "myhostname":
            return default_hostname()
        if name == "mydomain":
            host = self.value("myhostname")
            return host.partition(".")[2] or "localdomain"
        return DEFAULTS.get(name, "")

    def value(self, name: str, depth: int = 0) -> str:
        """The value with ``$name`` references expanded."""
        return self.expand(self.raw(name), depth)

    def expand(self, text: str, depth: int = 0) -> str:
        if depth > 20:
            raise ValueError(f"$name references nest too deep in '{text}'")
        return _REFERENCE.sub(lambda m: self._reference(m, depth), text)

    def _reference(self, match: re.Match, depth: int) -> str:
        name = match.group("plain") or match.group("braced") or match.group("paren")
        value = self.value(name, depth + 1)
        operator, text = match.group("op"), match.group("text")
        if operator == "?":
            return self.expand(text, depth + 1) if value else ""
        if operator == ":":
            return "" if value else self.expand(text, depth + 1)
        return value

    def words(self, name: str) -> list[str]:
        """A list-valued parameter: its words, split at commas and whitespace."""
        return split_list(self.value(name))

    def flag(self, name: str) -> bool:
        return self.value(name).strip().lower() == "yes"

    def where(self, name: str) -> str:
        """'main.cf:12: name = value' for a set parameter, 'default: name = value' else."""
        if name in self.settings:
            return self.settings[name].line
        return f"default: {name} = {self.raw(name)}"


_REFERENCE = re.compile(r"\$(?:(?P<plain>[A-Za-z0-9_]+)|\((?P<paren>[A-Za-z0-9_]+)\)"
                        r"|\{(?P<braced>[A-Za-z0-9_]+)(?:(?P<op>[?:])(?P<text>[^}]*))?\})")


def split_list(text: str) -> list[str]:
    """Postfix's list syntax: words at commas or whitespace, ``{ ... }`` kept whole."""
    words, depth, word = [], 0, ""
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        if depth == 0 and (char == "," or char.isspace()):
            if word:
                words.append(word)
            word = ""
        else:
            word += char
    if word:
        words.append(word)
    return words
