"""Postfix restriction lists as vSL functions.

Design: each ``smtpd_*_restrictions`` list becomes one function of main.vsl that returns a
decision, as Postfix's ``generic_checks`` does: ``""`` (no restriction decided), ``"OK"``
(the list permits; the next list still runs) or the reply of a refusal. Each restriction
is one or two lines calling postfix.vsl, under a comment naming the main.cf line it comes
from. A restriction this module cannot translate is left out of the function and
recorded with the line and the reason (MIGRATION.md lists them), never dropped silently.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .maincf import PostfixConfig
from .tables import Table, TableError, load_table

CODES = {  # main.vsl's CODES key -> the main.cf parameter
    "reject": "reject_code", "defer": "defer_code",
    "relay_domains_reject": "relay_domains_reject_code",
    "access_map_reject": "access_map_reject_code",
    "access_map_defer": "access_map_defer_code",
    "maps_rbl_reject": "maps_rbl_reject_code",
    "unknown_address": "unknown_address_reject_code",
    "unknown_client": "unknown_client_reject_code",
    "unknown_hostname": "unknown_hostname_reject_code",
    "non_fqdn": "non_fqdn_reject_code", "invalid_hostname": "invalid_hostname_reject_code",
    "unknown_relay_recipient": "unknown_relay_recipient_reject_code",
}

# The restriction lists: parameter -> (function, how its refusals name what they refuse).
LISTS = {
    "smtpd_client_restrictions": ("client_restrictions", "client"),
    "smtpd_helo_restrictions": ("helo_restrictions", "helo"),
    "smtpd_sender_restrictions": ("sender_restrictions", "sender"),
    "smtpd_relay_restrictions": ("relay_restrictions", "recipient"),
    "smtpd_recipient_restrictions": ("recipient_restrictions", "recipient"),
    "smtpd_end_of_data_restrictions": ("end_of_data_restrictions", "end_of_data"),
}
# The command from which each restriction's data exists; before it Postfix skips the
# restriction (reject_unauth_destination in smtpd_client_restrictions without
# smtpd_delay_reject, for example). Stages: connect 0, HELO 1, MAIL 2, RCPT 3, message 4.
HELO, MAIL, RCPT = 1, 2, 3
NEEDS = {
    **dict.fromkeys(("reject_non_fqdn_helo_hostname", "reject_invalid_helo_hostname",
                     "reject_unknown_helo_hostname", "reject_rhsbl_helo",
                     "check_helo_access"), HELO),
    **dict.fromkeys(("reject_non_fqdn_sender", "reject_unknown_sender_domain",
                     "reject_rhsbl_sender", "check_sender_access"), MAIL),
    **dict.fromkeys(("reject_unauth_destination", "defer_unauth_destination",
                     "permit_auth_destination", "reject_non_fqdn_recipient",
                     "reject_unknown_recipient_domain", "reject_rhsbl_recipient",
                     "check_recipient_access", "reject_unlisted_recipient"), RCPT),
}
STAGE_OF = {"client": 0, "helo": HELO, "sender": MAIL, "recipient": RCPT, "end_of_data": 4}
COMMAND = {HELO: "HELO", MAIL: "MAIL FROM", RCPT: "RCPT TO"}
ALIASES = {"reject_non_fqdn_hostname": "reject_non_fqdn_helo_hostname",
           "reject_invalid_hostname": "reject_invalid_helo_hostname",
           "reject_unknown_hostname": "reject_unknown_helo_hostname",
           "reject_unknown_client": "reject_unknown_client_hostname"}
WITH_ARGUMENT = {"check_client_access", "check_helo_access", "check_sender_access",
                 "check_recipient_access", "check_policy_service", "reject_rbl_client",
                 "reject_rhsbl_client", "reject_rhsbl_sender", "reject_rhsbl_helo",
                 "reject_rhsbl_recipient", "check_reverse_client_hostname_access",
                 "check_client_a_access", "check_client_mx_access", "check_client_ns_access",
                 "check_sender_mx_access", "check_sender_ns_access", "check_sender_a_access",
                 "check_recipient_mx_access", "check_recipient_ns_access",
                 "check_recipient_a_access", "check_helo_mx_access", "check_helo_ns_access",
                 "check_helo_a_access", "check_sasl_access", "check_ccert_access",
                 "reject_dnsbl_client"}
END_OF_DATA_WHY = ("after the message (on_pre_queue) vSL's scripts see the recipients, not "
                   "one current recipient")
TABLE_ACTIONS = ("OK", "RELAY", "DUNNO", "REJECT", "DEFER")
ALL_DIGITS = re.compile(r"[0-9]+")
REPLY_CODE = re.compile(r"[45][0-9][0-9]")


def literal(value) -> str:
    """A vSL literal for a string, number, list or dict."""
    if isinstance(value, dict):
        return "#{ " + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(literal(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


class NotTranslated(ValueError):
    """A restriction this translation cannot express; the message says why."""


@dataclass
class Left:
    """A main.cf item left untranslated: where, what and why."""

    where: str
    item: str
    why: str


@dataclass
class Restrictions:
    """Translates restriction lists, collecting the tables they read and what is left."""

    config: PostfixConfig
    at_rcpt: bool  # smtpd_delay_reject: every list runs at RCPT TO
    tables: dict[str, tuple[str, Table]] = field(default_factory=dict)  # spec -> (name, table)
    left: list[Left] = field(default_factory=list)

    @property
    def client_name(self) -> str:
        if self.config.flag("smtpd_peername_lookup"):
            return "postfix::client_name(ctx)"
        return '"unknown"'

    def who(self, kind: str) -> str:
        if kind == "client":
            return f"postfix::client(ctx, {self.client_name})"
        return f"postfix::{kind}(ctx)"

    def function(self, parameter: str) -> str | None:
        """The vSL function for one list, or None when the list is empty."""
        words = self.config.words(parameter)
        if not words:
            return None
        name, kind = LISTS[parameter]
        where = self.config.where(parameter)
        lines = [f"// {where}", f"fn {name}(ctx) {{", '    let d = "";']
        for restriction, argument in pairs(words):
            code = self.restriction(restriction, argument, kind, where)
            if code is None:
                continue
            item = f"{restriction} {argument}" if argument else restriction
            lines += [f"    // {item}", *(f"    {line}" for line in code)]
            if restriction in ("permit", "reject", "defer"):
                break  # Postfix ignores what follows them
        lines += ["    d", "}"]
        return "\n".join(lines)

    def restriction(self, name: str, argument: str, kind: str,
                    where: str) -> list[str] | None:
        """The lines of one restriction, or None (recorded as left) when untranslated."""
        name = ALIASES.get(name, name)
        needs = NEEDS.get(name, 0)
        if kind == "end_of_data" and needs == RCPT:
            self.left.append(Left(where, name, END_OF_DATA_WHY))
            return None
        if not self.at_rcpt and STAGE_OF[kind] < needs:
            return [f"// (Postfix skips it before {COMMAND[needs]})"]
        try:
            expression = self.expression(name, argument, kind, where)
        except (TableError, NotTranslated) as err:
            self.left.append(Left(where, f"{name} {argument}", str(err)))
            return None
        if expression is None:
            item = f"{name} {argument}".strip()
            self.left.append(Left(where, item, "this restriction is not translated"))
            return None
        if expression.startswith("return ") or expression.startswith("if "):
            return [expression]
        return [f"d = {expression};", "if d != \"\" { return d; }"]

    def expression(self, name: str, argument: str, kind: str, where: str) -> str | None:
        codes = "global::CODES"
        simple = {
            "permit": 'return "OK";',
            "reject": f"return postfix::reject({codes}, {self.who(kind)});",
            "defer": f"return postfix::defer({codes}, {self.who(kind)});",
            "permit_mynetworks":
                'if postfix::in_networks(ctx.client_ip, tables::MYNETWORKS) { return "OK"; }',
            "permit_sasl_authenticated": 'if ctx.is_authenticated() { return "OK"; }',
            "permit_auth_destination":
                'if postfix::auth_destination(ctx, tables::DESTINATIONS) { return "OK"; }',
            "reject_unauth_destination": "postfix::unauth_destination(global::CODES."
                                         "relay_domains_reject, \"5.7.1\", ctx, "
                                         "tables::DESTINATIONS)",
            "defer_unauth_destination": "postfix::unauth_destination(global::CODES."
                                        "relay_domains_reject - 100, \"4.7.1\", ctx, "
                                        "tables::DESTINATIONS)",
            "reject_non_fqdn_helo_hostname": f"postfix::non_fqdn_helo({codes}, ctx)",
            "reject_invalid_helo_hostname": f"postfix::invalid_helo({codes}, ctx)",
            "reject_unknown_helo_hostname": f"postfix::unknown_helo({codes}, ctx)",
            "reject_non_fqdn_sender":
                f"postfix::non_fqdn_address({codes}, postfix::sender(ctx))",
            "reject_non_fqdn_recipient":
                f"postfix::non_fqdn_address({codes}, postfix::recipient(ctx))",
            "reject_unknown_sender_domain":
                f"postfix::unknown_domain({codes}, postfix::sender(ctx))",
            "reject_unknown_recipient_domain":
                f"postfix::unknown_domain({codes}, postfix::recipient(ctx))",
            "reject_unknown_client_hostname": f"postfix::unknown_client({codes}, ctx)",
            "reject_unknown_reverse_client_hostname":
                f"postfix::unknown_reverse_client({codes}, ctx)",
            "reject_unauth_pipelining": f"postfix::unauth_pipelining(ctx, {self.who(kind)})",
        }
        if name in simple:
            return simple[name]
        if name.startswith("check_") and name.endswith("_access") and argument:
            return self.access(name, argument, where)
        if name.startswith(("reject_rbl_", "reject_rhsbl_")) and "[" in argument:
            raise NotTranslated("only a DNSBL reply filter of one address (zone=127.0.0.2) "
                                "is translated")
        if name == "reject_rbl_client":
            zone, _, filter_ = argument.partition("=")
            return f"postfix::rbl_client({codes}, ctx, {literal(zone)}, {literal(filter_)})"
        if name.startswith("reject_rhsbl_"):
            return self.rhsbl(name, argument)
        if name == "reject_unlisted_recipient":
            return self.unlisted_recipient()
        if name == "check_policy_service":
            return self.policy_service(argument, kind)
        return None

    def policy_service(self, argument: str, kind: str) -> str:
        """policy::ask at ``inet:host:port`` or ``unix:/path`` (also in the ``{ server,
        timeout=..., default_action=... }`` form; a relative unix: path is in
        queue_directory), its action read as an access table's."""
        server, settings = policy_argument(argument)
        unknown = set(settings) - {"timeout", "default_action"}
        if unknown or not server.startswith(("inet:", "unix:")):
            raise NotTranslated("only inet:host:port or unix:/path, with timeout= and "
                                "default_action=, is translated")
        if server.startswith("unix:") and not server.startswith("unix:/"):
            server = f"unix:{self.config.value('queue_directory')}/{server[5:]}"
        timeout = settings.get("timeout", self.config.value("smtpd_policy_service_timeout"))
        default = settings.get("default_action",
                               self.config.value("smtpd_policy_service_default_action"))
        options = {"timeout": seconds(timeout), "default_action": default}
        return (f"postfix::policy_service(global::CODES, ctx, {literal(server)}, "
                f"{literal(options)}, {self.who(kind)})")

    def access(self, name: str, argument: str, where: str) -> str | None:
        calls = {
            "check_client_access": "postfix::client_access({c}, {t}, ctx, " + self.client_name
                                   + ")",
            "check_helo_access": "postfix::helo_access({c}, {t}, ctx)",
            "check_sender_access": "postfix::sender_access({c}, {t}, ctx, "
                                   + literal(self.config.value("smtpd_null_access_lookup_key"))
                                   + ")",
            "check_recipient_access": "postfix::recipient_access({c}, {t}, ctx)",
        }
        if name not in calls:
            return None
        table = self.table(argument, where, check_actions=True)
        return calls[name].format(c="global::CODES", t=f"tables::{table}")

    def rhsbl(self, name: str, argument: str) -> str | None:
        zone, _, filter_ = argument.partition("=")
        subjects = {
            "reject_rhsbl_client": (self.client_name, "Client host"),
            "reject_rhsbl_sender": ("postfix::domain_of(postfix::sender(ctx).name)",
                                    "Sender address"),
            "reject_rhsbl_helo": ('ctx.helo ?? ""', "Helo command"),
            "reject_rhsbl_recipient": ("postfix::domain_of(postfix::recipient(ctx).name)",
                                       "Recipient address"),
        }
        if name not in subjects:
            return None
        domain, kind = subjects[name]
        return (f"postfix::rhsbl(global::CODES, {domain}, {literal(zone)}, "
                f"{literal(filter_)}, {literal(kind)})")

    def unlisted_recipient(self) -> str | None:
        maps = self.config.words("relay_recipient_maps")
        if len(maps) != 1:
            return None
        table = self.table(maps[0], self.config.where("relay_recipient_maps"),
                           check_actions=False)
        return (f"postfix::unlisted_recipient(global::CODES, ctx, tables::DESTINATIONS, "
                f"tables::{table})")

    def table(self, spec: str, where: str, check_actions: bool) -> str:
        """The tables.vsl constant for ``spec`` (read once); ``where``: the line naming it."""
        if spec not in self.tables:
            table = load_table(spec, self.config.directory)
            name = constant_name(spec, {n for n, _ in self.tables.values()})
            self.tables[spec] = (name, table)
            for problem in table.problems:
                self.left.append(Left(where, spec, problem))
            if check_actions:
                for value in table.values():
                    if not is_access_action(value):
                        self.left.append(Left(spec, value, "this access action is not "
                                              "translated: the entry decides nothing in vSL"))
        return self.tables[spec][0]


def is_access_action(action: str) -> bool:
    """Whether postfix.vsl's ``action`` reads ``action`` (one space after its command, as
    tables.normalize_action writes it), by access(5)'s rule: OK, RELAY, DUNNO, REJECT or
    DEFER in any case (text may follow), all digits (permits), or a 4xx/5xx code and text."""
    command, _, text = action.partition(" ")
    return (command.upper() in TABLE_ACTIONS or ALL_DIGITS.fullmatch(action) is not None
            or (REPLY_CODE.fullmatch(command) is not None and text != ""))


def pairs(words: list[str]) -> list[tuple[str, str]]:
    """(restriction, argument) for each restriction of a list."""
    result, index = [], 0
    while index < len(words):
        name = words[index].lower()
        takes = name in WITH_ARGUMENT and index + 1 < len(words)
        result.append((name, words[index + 1] if takes else ""))
        index += 2 if takes else 1
    return result


def policy_argument(argument: str) -> tuple[str, dict[str, str]]:
    """``inet:host:port``, or ``{ inet:host:port, name=value, ... }``: the server and the
    settings."""
    if not argument.startswith("{"):
        return argument, {}
    words = [w.strip() for w in argument.strip("{} ").split(",") if w.strip()]
    settings = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    if not words or len(settings) != len(words) - 1:
        raise NotTranslated("a { ... } policy service names its server first, then "
                            "name=value settings")
    return words[0], {k.strip(): v.strip() for k, v in settings.items()}


def seconds(value: str) -> int:
    """A Postfix time value (``100s``, ``2m``, ``1h``, ``30``: seconds) in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    number, unit = (value[:-1], value[-1]) if value[-1:].isalpha() else (value, "s")
    if not number.isdigit() or unit not in units:
        raise NotTranslated(f"'{value}' is not a Postfix time value")
    return int(number) * units[unit]


def constant_name(spec: str, taken: set[str]) -> str:
    """An upper-case constant name for a table, from its file name."""
    kind, _, where = spec.partition(":")
    stem = "INLINE" if kind == "inline" else Path(where).name
    base = "".join(c if c.isalnum() else "_" for c in stem).upper().strip("_") or "TABLE"
    if base[0].isdigit():
        base = f"T_{base}"
    name, number = base, 2
    while name in taken or name in ("MYNETWORKS", "DESTINATIONS"):
        name, number = f"{base}_{number}", number + 1
    return name
