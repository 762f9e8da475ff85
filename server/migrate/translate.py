"""``vsl migrate postfix``: a Postfix configuration directory as a vSL policy directory.

    translation = translate(Path("/etc/postfix"))
    translation.write(Path("policy"))   # main.vsl, postfix.vsl, tables.vsl, vsl.toml, MIGRATION.md

Design: main.cf (with master.cf's smtpd ``-o`` overrides) is read once into a
:class:`PostfixConfig`; each restriction list becomes a function of main.vsl
(restrictions.py) and the stage functions call them where Postfix evaluates them: all at
RCPT TO with ``smtpd_delay_reject = yes`` (the default), else each at its own command.
postfix.vsl, copied beside main.vsl, holds Postfix's rules and reply texts. Every main.cf
line is either used or listed in MIGRATION.md with the reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vsl.stdlib.net import bare_network, is_network

from ..config import is_domain
from .maincf import PostfixConfig, Service, Setting, port_25_service
from .restrictions import CODES, LISTS, Left, Restrictions, literal
from .tables import TableError, load_table

LIBRARY = Path(__file__).with_name("postfix.vsl")

# Parameters this translation reads (the restriction lists' items are checked one by one).
READ = {"myhostname", "mydomain", "mydestination", "mynetworks", "relay_domains", "relayhost",
        "message_size_limit", "smtpd_recipient_limit", "smtpd_delay_reject",
        "compatibility_level", "smtpd_relay_before_recipient_restrictions",
        "smtpd_null_access_lookup_key", "smtpd_peername_lookup", "relay_recipient_maps",
        "smtpd_reject_unlisted_recipient", "inet_interfaces", "mail_name",
        "allow_untrusted_routing",
        *LISTS, *CODES.values()}
POSTFIX_OWN = {"config_directory", "queue_directory", "data_directory", "maillog_file",
               "maillog_file_prefixes", "command_directory", "daemon_directory",
               "meta_directory", "shlib_directory", "mail_owner", "setgid_group",
               "sendmail_path", "newaliases_path", "mailq_path", "manpage_directory",
               "sample_directory", "readme_directory", "html_directory", "biff",
               "smtp_host_lookup", "disable_dns_lookups", "alias_maps", "alias_database",
               "append_dot_mydomain", "recipient_delimiter", "mailbox_size_limit"}
SPECIFIC = {
    "myorigin": "only mail submitted on Postfix's host (sendmail, pickup) gets it",
    "inet_protocols": "vSL listens on the addresses of `listen` in vsl.toml, of any family",
    "smtputf8_enable": "vSL always offers SMTPUTF8",
    "smtpd_banner": "vSL's greeting text is fixed (`220 HOSTNAME ESMTP ...`); only its code "
                    "is Postfix's",
    "smtpd_data_restrictions": "vSL runs no stage at the DATA command; on_pre_queue (after the "
                               "message) would answer another command",
}
ROUTES = {"default_transport", "relay_transport", "transport_maps", "local_transport",
          "virtual_transport", "mailbox_transport", "mailbox_command"}
# smtpd_check_init: Postfix's smtpd will not start unless the relay or recipient
# restrictions name one of these.
RELAY_REQUIRED = ("reject_unauth_destination", "defer_unauth_destination", "reject", "defer",
                  "defer_if_permit", "check_relay_domains")
LISTENER_KINDS = {"smtp": ("smtp", 25), "submission": ("submission", 587),
                  "smtps": ("smtps", 465), "submissions": ("smtps", 465)}


class PostfixWouldNotStart(ValueError):
    """A configuration Postfix's smtpd refuses to run with; the message is Postfix's."""


@dataclass
class Translation:
    """What ``vsl migrate postfix`` writes, and what it left out."""

    main_vsl: str
    tables_vsl: str
    vsl_toml: str
    left: list[Left]
    differences: list[str]
    source: Path

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "main.vsl").write_text(self.main_vsl)
        (directory / "tables.vsl").write_text(self.tables_vsl)
        (directory / "postfix.vsl").write_text(LIBRARY.read_text())
        (directory / "vsl.toml").write_text(self.vsl_toml)
        (directory / "MIGRATION.md").write_text(self.migration_md())

    def migration_md(self) -> str:
        lines = [f"# Migration from {self.source}", "",
                 "Written by `vsl migrate postfix`. main.vsl translates the SMTP restrictions, "
                 "vsl.toml the listeners and limits.", ""]
        lines += ["## Not translated", ""]
        if not self.left:
            lines.append("Nothing: every line of main.cf is translated.")
        lines += [f"- `{item.where}`: `{item.item}`: {item.why}" for item in self.left]
        if self.differences:
            lines += ["", "## Translated, with a difference", ""]
            lines += [f"- {text}" for text in self.differences]
        return "\n".join(lines) + "\n"


def translate(directory: Path) -> Translation:
    """Translates the Postfix configuration in ``directory`` (main.cf, master.cf, tables)."""
    config, unreadable = PostfixConfig.load(directory)
    check_relay_restrictions(config)
    at_rcpt = config.flag("smtpd_delay_reject")
    restrictions = Restrictions(config, at_rcpt)
    left = [Left(line.partition(": ")[0], line.partition(": ")[2], "not a 'name = value' "
                 "line") for line in unreadable]
    functions = [f for f in (restrictions.function(p) for p in LISTS) if f]
    stages = stage_functions(config, at_rcpt, restrictions)
    destinations = destination_lists(config, restrictions.left)
    main = "\n\n".join([header(directory), codes_constant(config), *functions, *stages]) + "\n"
    tables = tables_module(config, restrictions, destinations)
    toml = vsl_toml(config, destinations["local"], left)
    differences = behaviour_settings(config, left)
    left += restrictions.left + other_settings(config)
    return Translation(main, tables, toml, left, differences, directory)


def check_relay_restrictions(config: PostfixConfig) -> None:
    """Postfix's start-up check against an open relay (smtpd_check_init)."""
    lists = ("smtpd_relay_restrictions", "smtpd_recipient_restrictions")
    if not any(word.lower() in RELAY_REQUIRED for name in lists for word in config.words(name)):
        raise PostfixWouldNotStart(
            f"in parameter {' or '.join(lists)}, specify at least one working instance of: "
            f"{', '.join(RELAY_REQUIRED[:-1])} or {RELAY_REQUIRED[-1]}")


def header(directory: Path) -> str:
    return (f"// Written by `vsl migrate postfix` from {directory}: Postfix's SMTP restrictions "
            "as vSL stages.\n// Each rule names the main.cf line it comes from; "
            "MIGRATION.md lists what is not translated.\n"
            'import "postfix" as postfix;\nimport "tables" as tables;')


def codes_constant(config: PostfixConfig) -> str:
    entries = []
    for key, parameter in CODES.items():
        entries.append(f"    {key}: {int(config.value(parameter))},  // {config.where(parameter)}")
    return ("// The reply codes (main.cf's *_code parameters, or Postfix's defaults).\n"
            "const CODES = #{\n" + "\n".join(entries) + "\n};")


def stage_functions(config: PostfixConfig, at_rcpt: bool,
                    restrictions: Restrictions) -> list[str]:
    """on_connect/on_helo/on_mail_from (without smtpd_delay_reject) and on_rcpt_to."""
    present = [p for p in LISTS if config.words(p)]
    recipient_lists = [p for p in LISTS if LISTS[p][1] == "recipient" and p in present]
    if not config.flag("smtpd_relay_before_recipient_restrictions"):
        recipient_lists.reverse()
    early = [p for p in present if p not in recipient_lists and LISTS[p][1] != "end_of_data"]
    stages = []
    if "smtpd_end_of_data_restrictions" in present:
        body = decide("smtpd_end_of_data_restrictions") + ["    status::next()"]
        stages.append(stage_function("on_pre_queue", body))
    if not at_rcpt:
        for parameter, stage in zip(list(LISTS)[:3], ("on_connect", "on_helo", "on_mail_from")):
            if parameter in early:
                body = decide(parameter) + ["    status::next()"]
                stages.append(stage_function(stage, body))
        early = []
    body = []
    if at_rcpt and early:
        body.append(f"    // {config.where('smtpd_delay_reject')}: the client, HELO and sender "
                    "restrictions decide at RCPT TO")
    for parameter in early:
        body += decide(parameter)
    body.append("    let permitted = false;  // by the relay or recipient restrictions")
    for parameter in recipient_lists:
        body += decide(parameter) + ['    if d == "OK" { permitted = true; }']
    body += unlisted_recipient(config, restrictions)
    body += ["    // Postfix accepts what no list refused; where no list permitted (a relay check",
             "    // left untranslated), vSL's own relay rule decides.",
             "    if permitted || postfix::auth_destination(ctx, tables::DESTINATIONS) {",
             "        return status::accept();", "    }", "    status::next()"]
    stages.append(stage_function("on_rcpt_to", body))
    return stages


def stage_function(stage: str, body: list[str]) -> str:
    return "\n".join([f"fn {stage}(ctx) {{", '    let d = "";', *body, "}"])


def decide(parameter: str) -> list[str]:
    """The lines of a stage that run one restriction list and refuse as it says."""
    call = [f"    d = {LISTS[parameter][0]}(ctx);",
            "    if postfix::refused(d) { return status::deny(d); }"]
    if parameter == "smtpd_helo_restrictions":  # Postfix skips it before any HELO
        return ['    if (ctx.helo ?? "") != "" {', *(f"    {line}" for line in call), "    }"]
    return call


def unlisted_recipient(config: PostfixConfig, restrictions: Restrictions) -> list[str]:
    """smtpd_reject_unlisted_recipient with a relay_recipient_maps table."""
    maps = config.words("relay_recipient_maps")
    if not config.flag("smtpd_reject_unlisted_recipient") or not maps:
        return []
    try:
        expression = restrictions.unlisted_recipient()
    except TableError as err:
        restrictions.left.append(Left(config.where("relay_recipient_maps"), maps[0], str(err)))
        return []
    if expression is None:
        restrictions.left.append(Left(config.where("relay_recipient_maps"), " ".join(maps),
                                      "only one relay recipient table is translated"))
        return []
    return [f"    // {config.where('smtpd_reject_unlisted_recipient')} with "
            f"{config.where('relay_recipient_maps')}",
            f"    d = {expression};", "    if postfix::refused(d) { return status::deny(d); }"]


def destination_lists(config: PostfixConfig, left: list[Left]) -> dict:
    """mydestination (local) and relay_domains (relay, with subdomains) as domain lists;
    whether relay domains' recipients may hold routing operators (allow_untrusted_routing)."""
    return {"local": domains(config, "mydestination", left),
            "relay": domains(config, "relay_domains", left),
            "untrusted_routing": config.flag("allow_untrusted_routing")}


def domains(config: PostfixConfig, parameter: str, left: list[Left]) -> list[str]:
    result = []
    for word in config.words(parameter):
        if ":" in word:  # a table of domains: its keys
            try:
                table = load_table(word, config.directory)
            except TableError as err:
                left.append(Left(config.where(parameter), word, str(err)))
                continue
            if table.kind != "hash":
                left.append(Left(config.where(parameter), word, "only hash-like tables of "
                                 "domains are translated"))
                continue
            result += list(table.entries)
        elif word.startswith("/"):  # Postfix's /file/name pattern: the domains in that file
            left.append(Left(config.where(parameter), word, "a /file/name of domains is not "
                             "translated: list its domains instead"))
        else:
            result.append(word.lower().rstrip("."))
    return result


def tables_module(config: PostfixConfig, restrictions: Restrictions,
                  destinations: dict) -> str:
    parts = ["// Lookup tables and lists of main.cf, written by `vsl migrate postfix`.",
             f"// {config.where('mynetworks')}",
             f"const MYNETWORKS = {literal(my_networks(config, restrictions.left))};",
             f"// {config.where('mydestination')}\n// {config.where('relay_domains')}",
             f"const DESTINATIONS = {literal(destinations)};"]
    for spec, (name, table) in restrictions.tables.items():
        parts.append(f"// {spec}\nconst {name} = "
                     f"{literal({'kind': table.kind, 'entries': table.entries})};")
    return "\n".join(parts) + "\n"


def my_networks(config: PostfixConfig, left: list[Left]) -> list[str]:
    """mynetworks' addresses and networks; tables, files, host names and negations are left,
    and so is a default mynetworks that Postfix derives from the machine's subnets."""
    style = config.value("mynetworks_style")
    if "mynetworks" not in config.settings and style != "host":
        left.append(Left(config.where("mynetworks_style"), f"mynetworks_style = {style}",
                         f"Postfix's default mynetworks is then every {style} this machine "
                         "is attached to; the translation has only 127.0.0.0/8 and ::1: "
                         "set mynetworks"))
    networks = []
    for word in config.words("mynetworks"):
        network = bare_network(word)
        if is_network(network):
            networks.append(network)
        elif ":" in word and not word.startswith("["):
            left.append(Left(config.where("mynetworks"), word,
                             "tables in mynetworks are not translated"))
        else:
            left.append(Left(config.where("mynetworks"), word, "only addresses and networks "
                             "of mynetworks are translated (not files, host names or !)"))
    return networks


def vsl_toml(config: PostfixConfig, local_domains: list[str], left: list[Left]) -> str:
    """Listeners, hostname, local domains, limits and relay host."""
    size = int(config.value("message_size_limit"))
    listed = list(dict.fromkeys(local_domains))
    left += [Left(config.where("mydestination"), name, "not a domain name "
                  "(server.local_domains lists domain names)")
             for name in listed if not is_domain(name)]
    lines = ["# Written by `vsl migrate postfix` (see MIGRATION.md).",
             f"listen = {literal(listeners(config, left))}", "",
             "[server]", f"hostname = {literal(config.value('myhostname'))}",
             f"local_domains = {literal([name for name in listed if is_domain(name)])}",
             'scripts = "."', "",
             "[limits]", f"message_size = {size}  # {config.where('message_size_limit')}",
             f"recipients = {int(config.value('smtpd_recipient_limit'))}  "
             f"# {config.where('smtpd_recipient_limit')}"]
    relay = relay_route(config.value("relayhost"))
    if relay:
        lines += ["", "[delivery]", f"relay = {literal(relay)}  # {config.where('relayhost')}"]
    return "\n".join(lines) + "\n"


def listeners(config: PostfixConfig, left: list[Left]) -> list[str]:
    """master.cf's SMTP sockets on inet_interfaces, as "host:port": the port-25 smtpd
    service's (a postscreen's, for its ``smtpd pass`` service) and those of the other inet
    smtpd services with the same ``-o`` overrides (one policy serves every listener); the
    services left out are listed with their lines."""
    hosts = [{"all": "0.0.0.0", "loopback-only": "127.0.0.1"}.get(word, word)
             for word in config.words("inet_interfaces")] or ["0.0.0.0"]
    result = []
    for service in served_services(config, left):
        host, colon, port = service.rpartition(":")
        if not colon:
            port = str(LISTENER_KINDS.get(service, ("smtp", 25))[1])
            result += [f"{h}:{port}" for h in hosts]
        else:
            result.append(f"{host}:{port}" if host else f"{hosts[0]}:{port}")
    return result


def served_services(config: PostfixConfig, left: list[Left]) -> list[str]:
    """The names of the master.cf services vSL listens for (``smtp`` without master.cf)."""
    if not config.services:
        return ["smtp"]
    translated = port_25_service(config.services)
    names = []
    for service in config.services:
        if service.type != "inet" or service.command not in ("smtpd", "postscreen"):
            continue
        if service.command == "postscreen":
            if translated is not None and translated.type == "pass":
                names.append(service.name)
                left.append(Left(service.where, service.text, "postscreen's own checks are "
                                 "not translated: its socket gets the policy of the `smtpd "
                                 "pass` service"))
        elif service.overrides == translated.overrides:
            names.append(service.name)
        else:
            left.append(Left(service.where, service.text, other_service_reason(translated)))
    return names


def other_service_reason(translated: Service) -> str:
    return (f"its `-o` overrides differ from those of the SMTP service translated "
            f"(`{translated.where}`), and the translation is one policy for every listener: "
            "it gets no listener (write its policy with ctx.server_port, or a second "
            "translation)")


def relay_route(relayhost: str) -> str | None:
    """relayhost ("[host]:port", "host") as a vSL relay route."""
    if not relayhost:
        return None
    match = re.fullmatch(r"\[?([^\]]+?)\]?(?::(\d+))?", relayhost.strip())
    host, port = match.group(1), match.group(2) or "25"
    return f"smtp://{host}:{port}"


# vSL's protocol replies are Postfix's (tests/test_replies_postfix.py) but for these.
PROTOCOL_DIFFERENCES = (
    "vSL's server, whatever main.cf says: it offers no ETRN (`500 5.5.2 Error: command not "
    "recognized`), CHUNKING (BDAT) or DSN (`RET=`, `ENVID=`, `NOTIFY=`, `ORCPT=` get `555 "
    "5.5.4 Unsupported option: ...`); VRFY gets `252 2.0.0 ADDRESS` without the recipient "
    "restrictions; a non-ASCII address without SMTPUTF8 gets `553 5.6.7 Must declare "
    "SMTPUTF8 to send unicode address` (Postfix only with `strict_smtputf8 = yes`); AUTH "
    "before a STARTTLS that AUTH requires gets `538 5.7.11 Encryption "
    "required for requested authentication mechanism` (Postfix: `503 5.5.1 Error: "
    "authentication not enabled`), an unknown mechanism `504 5.5.4 Unrecognized "
    "authentication type` (Postfix's words come from its SASL backend); a command line over 512 bytes gets `500 5.5.2 Command "
    "line too long` and a message line over 1000 bytes `500 5.5.2 Line too long (see "
    "RFC5321 4.5.3.1.6)` (Postfix cuts long lines); every 4xx/5xx reply counts toward "
    "`limits.errors` (10; Postfix's `smtpd_hard_error_limit` is 20) and the fifth unknown "
    "command closes the connection (`502 5.5.1 Too many unrecognized commands, goodbye.`).")


def behaviour_settings(config: PostfixConfig, left: list[Left]) -> list[str]:
    """smtpd_helo_required, strict_rfc821_envelopes, disable_vrfy_command, relayhost MX,
    and what vSL's server answers unlike Postfix whatever main.cf says."""
    differences = [PROTOCOL_DIFFERENCES]
    if not config.flag("smtpd_helo_required") and "smtpd_helo_required" in config.settings:
        left.append(Left(config.where("smtpd_helo_required"), "smtpd_helo_required = no",
                         "vSL always requires HELO/EHLO before MAIL FROM"))
    for name, why in (("strict_rfc821_envelopes", "vSL's address syntax is its own (aiosmtpd "
                       "with vSL's checks): it accepts what RFC 5321 allows"),
                      ("disable_vrfy_command", "vSL's answer to VRFY is fixed (Postfix's "
                       "`252 2.0.0 ADDRESS`); Postfix's `502 5.5.1 VRFY command is disabled` "
                       "cannot be configured")):
        if name in config.settings:
            left.append(Left(config.where(name), f"{name} = {config.value(name)}", why))
    local = config.value("local_recipient_maps") if "local_recipient_maps" in config.settings \
        else "the system's users and aliases (Postfix's default)"
    if config.words("mydestination") and config.flag("smtpd_reject_unlisted_recipient") and local:
        left.append(Left(config.where("mydestination"), f"local_recipient_maps = {local}",
                         "Postfix refuses unknown users of the local domains (`550 5.1.1 ... "
                         "User unknown in local recipient table`); vSL's policy accepts them: "
                         "check recipients in on_rcpt_to"))
    relayhost = config.value("relayhost")
    if relayhost and not relayhost.startswith("["):
        differences.append(f"`{config.where('relayhost')}`: Postfix looks up the MX of an "
                           "unbracketed relayhost; vSL's relay route connects to the name.")
    if config.flag("smtpd_delay_reject") is False and config.words("smtpd_client_restrictions"):
        differences.append("`smtpd_delay_reject = no` with client restrictions: Postfix "
                           "sends a refused client's reply as its greeting and `503 5.7.0 "
                           "Error: access denied for NAME[IP]` to later commands; vSL's "
                           "greeting is then 554 (or 421 for a 4xx) and it answers `503 5.5.1 "
                           "Error: bad sequence of commands`.")
    return differences


def other_settings(config: PostfixConfig) -> list[Left]:
    """The main.cf settings this translation does not read, each with the reason."""
    left = []
    done = READ | {"smtpd_helo_required", "strict_rfc821_envelopes", "disable_vrfy_command",
                   "local_recipient_maps"}
    for setting in config.settings.values():
        if setting.name in done or setting.name in config.used:
            continue
        left.append(Left(setting.where, f"{setting.name} = {setting.value}",
                         reason(setting)))
    return left


def reason(setting: Setting) -> str:
    if setting.name in SPECIFIC:
        return SPECIFIC[setting.name]
    if setting.name in POSTFIX_OWN:
        return "Postfix's own files, daemons or local delivery: vSL has its own ([server], " \
               "[delivery] in vsl.toml)"
    if setting.name in ROUTES:
        return "a delivery route: vSL routes with transport:: in on_post_queue " \
               "(docs/queue-and-delivery.md)"
    return "no vSL counterpart is translated"
