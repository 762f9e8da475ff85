"""`vsl migrate postfix` without a Postfix: main.cf and master.cf parsing, lookup tables,
the generated policy (it lints, and loads in the server), MIGRATION.md and --strict, and
the DNS-based restrictions against vSL's own DNS server (Postfix's resolver cannot be
pointed at a test server on another port: the expected replies are Postfix's texts from
src/smtpd/smtpd_check.c, not Postfix's own answers)."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from vsl.cli import main
from vsl.server.config import DeliveryConfig, Listener, load
from vsl.server.dnsd import DnsServer
from vsl.server.migrate.maincf import (PostfixConfig, parse_main_cf, parse_master_cf,
                                       port_25_service, split_list)
from vsl.server.migrate.restrictions import is_access_action
from vsl.server.migrate.tables import TableError, inline_entries, load_table
from vsl.server.migrate.translate import relay_route, translate
from vsl.server.policy import load_policy
from vsl.stdlib import iprev as iprev_module
from vsl.stdlib import new_engine

from tests.support.servers import running
from tests.support.smtp_tools import Raw


def config_of(text: str, directory: Path | None = None) -> PostfixConfig:
    settings, problems = parse_main_cf(text)
    assert not problems
    return PostfixConfig(settings, directory)


# ---- main.cf and master.cf ------------------------------------------------------------------

def test_main_cf_lines_continuations_and_comments():
    settings, problems = parse_main_cf(
        "# comment\nmyhostname = mx.example.test\n\nsmtpd_recipient_restrictions =\n"
        "    permit_mynetworks,\n  # inside\n\treject_unauth_destination\nnot a setting\n")
    assert [(s.name, s.value, s.where) for s in settings] == [
        ("myhostname", "mx.example.test", "main.cf:2"),
        ("smtpd_recipient_restrictions", "permit_mynetworks, reject_unauth_destination",
         "main.cf:4")]
    assert problems == ["main.cf:8: not a setting"]


def test_expansion_and_defaults():
    config = config_of("myhostname = mx.example.test\nbanner = ${myhostname} $(mydomain) "
                       "${relayhost?relay:} ${relayhost:direct}\ncompatibility_level = 3.6\n")
    assert config.value("banner") == "mx.example.test example.test  direct"
    assert config.value("mydestination") == "mx.example.test, localhost.example.test, localhost"
    assert config.value("smtpd_relay_restrictions").endswith("defer_unauth_destination")
    assert config.flag("smtpd_relay_before_recipient_restrictions")
    assert config_of("x = 1").value("smtpd_relay_before_recipient_restrictions") == "no"
    assert config.where("reject_code") == "default: reject_code = 554"
    assert config.where("myhostname") == "main.cf:1: myhostname = mx.example.test"
    assert config_of("t = hash:$config_directory/x", Path("/srv/pf")).value("t") == \
        "hash:/srv/pf/x"


def test_list_words_keep_braces_whole():
    assert split_list("a, b c,,{ x = y, z }\td") == ["a", "b", "c", "{ x = y, z }", "d"]


def test_master_cf_smtpd_overrides():
    services = parse_master_cf(
        "smtp inet n - y - - smtpd\n  -o smtpd_delay_reject=no\n  -o syslog_name=x\n"
        "pickup unix n - y 60 1 pickup -o foo=bar\n")
    assert [(s.name, s.value, s.where) for s in services[0].options] == [
        ("smtpd_delay_reject", "no", "master.cf:1"), ("syslog_name", "x", "master.cf:1")]
    assert port_25_service(services) is services[0]


SERVICES_MASTER_CF = """\
smtp      inet  n - y - - smtpd
submission inet n - y - - smtpd
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
127.0.0.1:10025 inet n - n - - smtpd -o smtpd_relay_restrictions=permit_mynetworks,reject
  -o mynetworks=0.0.0.0/0
"""


def test_only_the_port_25_service_overrides_main_cf(tmp_path):
    (tmp_path / "main.cf").write_text("mydestination =\nmynetworks = 127.0.0.1/32\n"
                                      "smtpd_relay_restrictions = reject_unauth_destination\n")
    (tmp_path / "master.cf").write_text(SERVICES_MASTER_CF)
    translation = translate(tmp_path)
    assert "client_restrictions" not in translation.main_vsl
    assert 'MYNETWORKS = ["127.0.0.1/32"]' in translation.tables_vsl
    assert 'listen = ["0.0.0.0:25"]' in translation.vsl_toml
    assert "local_domains = []" in translation.vsl_toml  # none, as Postfix: a relay
    assert [item.where for item in translation.left] == ["master.cf:2", "master.cf:4"]
    assert translation.left[1].item.startswith("127.0.0.1:10025 inet")


def test_postscreen_gets_the_port_25_listener(tmp_path):
    (tmp_path / "main.cf").write_text("mydestination =\nmynetworks = 127.0.0.1/32\n"
                                      "smtpd_relay_restrictions = reject_unauth_destination\n")
    (tmp_path / "master.cf").write_text(
        "smtp inet n - y - 1 postscreen\nsmtpd pass - - y - - smtpd -o mynetworks=127.0.0.9/32\n"
        "submission inet n - y - - smtpd\n")
    translation = translate(tmp_path)
    assert 'listen = ["0.0.0.0:25"]' in translation.vsl_toml
    assert 'MYNETWORKS = ["127.0.0.9/32"]' in translation.tables_vsl
    assert [item.where for item in translation.left] == ["master.cf:1", "master.cf:3"]


# ---- tables ---------------------------------------------------------------------------------

def test_tables_from_their_source(tmp_path):
    (tmp_path / "access").write_text("# c\nUser@Example.ORG\tREJECT  go away\nexample.net OK\n"
                                     "example.net DUNNO\n")
    (tmp_path / "clients").write_text("192.0.2.0/24 REJECT\n[2001:db8::]/32 OK\nif 1.2.3.4\n")
    (tmp_path / "patterns").write_text("/^spam/ REJECT\n/Mixed/i OK\n/x/m DUNNO\n")
    access = load_table(f"hash:{tmp_path}/access", None)
    assert (access.kind, access.entries) == (
        "hash", {"user@example.org": "REJECT go away", "example.net": "OK"})
    cidr = load_table("cidr:clients", tmp_path)
    assert cidr.entries == [["192.0.2.0/24", "REJECT"], ["2001:db8::/32", "OK"]]
    assert "if/endif" in cidr.problems[0]
    patterns = load_table(f"pcre:{tmp_path}/patterns", None)
    assert patterns.entries == [["^spam", "i", "REJECT"], ["Mixed", "", "OK"]]
    assert "flags 'm'" in patterns.problems[0]
    assert inline_entries("{ a=OK, { B = REJECT no way } }") == {"a": "OK",
                                                                 "b": "REJECT no way"}
    for spec in ("ldap:/etc/x", f"hash:{tmp_path}/missing", "inline:a=b"):
        with pytest.raises(TableError):
            load_table(spec, tmp_path)


def test_networks_and_patterns_vsl_cannot_use_are_left(tmp_path):
    (tmp_path / "clients").write_text("192.0.2.0/24 OK\n192.0.2.300/24 REJECT\n")
    (tmp_path / "patterns").write_text(
        "/^a\\z/ REJECT\n/^(?<user>[^@]+)@(?<=x@)/ OK\n/a\\Kb/ DUNNO\n/(?<!\\\\)\\\\z/ OK\n"
        "/(a{1000}){1000}/ REJECT\n/\\p{Lu}+/ OK\n/(a/ OK\n")
    assert load_table("cidr:clients", tmp_path).entries == [["192.0.2.0/24", "OK"]]
    patterns = load_table("pcre:patterns", tmp_path)
    # checked as regex:: compiles them: PCRE's spellings stay, its size bounds hold
    assert [entry[0] for entry in patterns.entries] == [
        "^a\\z", "^(?<user>[^@]+)@(?<=x@)", "a\\Kb", "(?<!\\\\)\\\\z", "\\p{Lu}+"]
    assert [problem.split(" (")[0] for problem in patterns.problems] == [
        "pcre:patterns line 5: '/(a{1000}){1000}/ REJECT'", "pcre:patterns line 7: '/(a/ OK'"]
    assert "pattern too large" in patterns.problems[0]
    script = new_engine().load_source(
        "fn found(pattern, text, flags) { regex::captures(pattern, text, flags) }", "r.vsl")
    assert [script.call("found", pattern, "xa\nAB", case) is not None
            for pattern, case, _ in patterns.entries] == [False, False, True, False, True]
    (tmp_path / "main.cf").write_text(
        "mydestination =\nrelay_domains = example.test\n"
        "mynetworks = 127.0.0.0/8, [::1]/128, ::2 /etc/postfix/network_table,\n"
        "    office.example.com, !192.0.2.1, hash:/etc/postfix/nets, 10.0.0.1\n"
        "smtpd_recipient_restrictions = permit_mynetworks,\n"
        "    check_client_access cidr:clients, reject_unauth_destination\n")
    translation = translate(tmp_path)
    assert 'MYNETWORKS = ["127.0.0.0/8", "::1/128", "::2", "10.0.0.1"]' in \
        translation.tables_vsl
    assert [(item.where, item.item) for item in translation.left] == [
        ("main.cf:5: smtpd_recipient_restrictions = permit_mynetworks, check_client_access "
         "cidr:clients, reject_unauth_destination", "cidr:clients")] + [
        ("main.cf:3: mynetworks = 127.0.0.0/8, [::1]/128, ::2 /etc/postfix/network_table, "
         "office.example.com, !192.0.2.1, hash:/etc/postfix/nets, 10.0.0.1", word)
        for word in ("/etc/postfix/network_table", "office.example.com", "!192.0.2.1",
                     "hash:/etc/postfix/nets")]


@pytest.mark.parametrize("main_cf, left", [
    ("", ["default: mynetworks_style = subnet"]),
    ("mynetworks_style = class\n", ["main.cf:3: mynetworks_style = class"]),
    ("mynetworks_style = host\n", []),
    ("compatibility_level = 2\n", []),
    ("mynetworks = 127.0.0.0/8\n", [])])
def test_a_default_mynetworks_of_subnets_is_left(tmp_path, main_cf, left):
    (tmp_path / "main.cf").write_text("mydestination =\nsmtpd_relay_restrictions = "
                                      f"permit_mynetworks, reject_unauth_destination\n{main_cf}")
    assert [item.where for item in translate(tmp_path).left] == left


def test_relayhost_routes():
    assert relay_route("[smtp.example.test]:587") == "smtp://smtp.example.test:587"
    assert relay_route("relay.example.test") == "smtp://relay.example.test:25"
    assert relay_route("") is None


# ---- the translated policy ----------------------------------------------------------------

MAIN_CF = """\
myhostname = mx.example.test
mydestination = $myhostname
relay_domains = example.test
relayhost = [smarthost.example.test]:587
message_size_limit = 2048000
smtpd_recipient_limit = 50
disable_vrfy_command = yes
alias_maps = hash:/etc/aliases
smtpd_helo_required = yes
smtpd_recipient_restrictions = permit_mynetworks, check_policy_service inet:127.0.0.1:10040,
    reject_unauth_pipelining, check_recipient_access ldap:/etc/postfix/ldap.cf,
    reject_unauth_destination
mynetworks = 127.0.0.0/8
"""


@pytest.fixture
def postfix_dir(tmp_path):
    directory = tmp_path / "postfix"
    directory.mkdir()
    (directory / "main.cf").write_text(MAIN_CF)
    (directory / "master.cf").write_text("127.0.0.1:2525 inet n - n - - smtpd\n"
                                         "submission inet n - n - - smtpd\n")
    return directory


def test_translation_writes_a_policy_that_lints_and_loads(postfix_dir, tmp_path):
    out = tmp_path / "out"
    translate(postfix_dir).write(out)
    assert load_policy(new_engine(), out) is not None
    main_vsl = (out / "main.vsl").read_text()
    assert "// main.cf:10: smtpd_recipient_restrictions = permit_mynetworks" in main_vsl
    assert "// reject_unauth_destination" in main_vsl
    config = load(out / "vsl.toml")
    assert [str(l) for l in config.listen] == ["smtp 127.0.0.1:2525", "smtp 0.0.0.0:587"]
    assert (config.hostname, config.local_domains) == ("mx.example.test", ("mx.example.test",))
    assert (config.limits.message_size, config.limits.recipients) == (2048000, 50)
    assert config.delivery.relay == "smtp://smarthost.example.test:587"


def test_a_destination_that_is_no_domain_name_is_left_out_of_vsl_toml(postfix_dir, tmp_path):
    """vsl.toml lists domain names only (else it would not load); a table key such as
    ``.example.test`` stays in tables.vsl's DESTINATIONS and is listed as left, and so is
    a /file/name of domains (not translated)."""
    (postfix_dir / "main.cf").write_text(MAIN_CF.replace(
        "mydestination = $myhostname",
        "mydestination = $myhostname, inline:{ .sub.example.test=x, bücher.test=x }, "
        "/etc/postfix/local_domains"))
    translation = translate(postfix_dir)
    translation.write(tmp_path / "out")
    config = load(tmp_path / "out" / "vsl.toml")
    assert config.local_domains == ("mx.example.test", "bücher.test")
    assert '".sub.example.test"' in translation.tables_vsl
    assert sorted((item.where.split(":")[1], item.item) for item in translation.left
                  if item.why.startswith(("not a domain", "a /file/name"))) == \
        [("2", ".sub.example.test"), ("2", "/etc/postfix/local_domains")]


def test_migration_md_lists_every_line_left(postfix_dir, tmp_path):
    translation = translate(postfix_dir)
    left = {(item.where.partition(":")[0] + ":" + item.where.partition(":")[2].split(":")[0],
             item.item) for item in translation.left}
    assert ("main.cf:10", "check_recipient_access ldap:/etc/postfix/ldap.cf") in left
    assert ("main.cf:7", "disable_vrfy_command = yes") in left
    assert ("main.cf:8", "alias_maps = hash:/etc/aliases") in left
    assert ("main.cf:2", "local_recipient_maps = the system's users and aliases (Postfix's "
            "default)") in left
    assert len(translation.left) == 4
    translation.write(tmp_path / "out")
    text = (tmp_path / "out" / "MIGRATION.md").read_text()
    assert "offers no ETRN" in text  # vSL's protocol: translated, with a difference


def test_command_and_strict(postfix_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["migrate", "postfix", "--config-dir", str(postfix_dir),
                                  "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "4 item(s) not translated" in result.output
    result = runner.invoke(main, ["migrate", "postfix", "--config-dir", str(postfix_dir),
                                  "--out", str(tmp_path / "b"), "--strict"])
    assert result.exit_code == 3
    (postfix_dir / "main.cf").write_text("myhostname = mx.example.test\nmydestination =\n"
                                         "compatibility_level = 2\n")
    (postfix_dir / "master.cf").unlink()
    result = runner.invoke(main, ["migrate", "postfix", "--config-dir", str(postfix_dir),
                                  "--out", str(tmp_path / "c"), "--strict"])
    assert result.exit_code == 0, result.output


def test_no_relay_check_is_refused_as_postfix_refuses_to_start(tmp_path):
    (tmp_path / "main.cf").write_text("myhostname = mx.example.test\n"
                                      "mydestination = $myhostname\n")
    result = CliRunner().invoke(main, ["migrate", "postfix", "--config-dir", str(tmp_path),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert ("Postfix would not start: in parameter smtpd_relay_restrictions or "
            "smtpd_recipient_restrictions, specify at least one working instance of: "
            "reject_unauth_destination, defer_unauth_destination, reject, defer, "
            "defer_if_permit or check_relay_domains") in result.output
    assert not (tmp_path / "out").exists()


def test_an_untranslated_relay_check_leaves_vsl_relay_rule(tmp_path):
    """A recipient no list permitted gets status::next(): vSL's no-open-relay rule."""
    (tmp_path / "main.cf").write_text(
        "myhostname = mx.example.test\nmydestination = $myhostname\nmynetworks = 127.0.0.1\n"
        "relay_domains = relayed.test\n"
        "smtpd_recipient_restrictions = permit_mynetworks, check_relay_domains\n")
    assert rcpt_replies(tmp_path, [("127.0.0.2", "a@elsewhere.test"),
                                   ("127.0.0.2", "a@relayed.test"),
                                   ("127.0.0.2", "a@mx.example.test"),
                                   ("127.0.0.1", "a@elsewhere.test")]) == [554, 250, 250, 250]


@pytest.mark.parametrize("allow, expected", [("no", 554), ("yes", 250)])
def test_routing_operators_need_allow_untrusted_routing(tmp_path, allow, expected):
    (tmp_path / "main.cf").write_text(
        f"mydestination = mx.example.test\nrelay_domains = relayed.test\n"
        f"allow_untrusted_routing = {allow}\n"
        "smtpd_recipient_restrictions = permit_auth_destination, reject\n")
    assert rcpt_replies(tmp_path, [("127.0.0.2", "v%evil.test@relayed.test"),
                                   ("127.0.0.2", "evil.test!v@relayed.test"),
                                   ("127.0.0.2", "v%evil.test@mx.example.test"),
                                   ("127.0.0.2", "v@relayed.test")]) == \
        [expected, expected, 554, 250]


def test_unauth_pipelining_refuses_commands_sent_ahead_after_helo(tmp_path):
    """reject_unauth_pipelining: Postfix's 503 5.5.0 once a client pipelined without EHLO;
    the same commands one at a time, or pipelined after EHLO, pass."""
    (tmp_path / "main.cf").write_text(
        "compatibility_level = 3.6\nmydestination = mx.example.test\n"
        "smtpd_recipient_restrictions = reject_unauth_pipelining, permit_auth_destination, "
        "reject\n")
    translate(tmp_path).write(tmp_path / "policy")
    config = replace(load(tmp_path / "policy" / "vsl.toml"), listen=(Listener("127.0.0.1", 0),),
                     queue_dir=tmp_path / "queue", delivery=DeliveryConfig(enabled=False))
    with running(config) as server:
        with Raw(server.port()) as smtp:
            smtp.send("HELO client.test\r\nMAIL FROM:<a@client.test>\r\n"
                      "RCPT TO:<b@mx.example.test>\r\n")
            replies = [smtp.reply() for _ in range(3)]
        with Raw(server.port()) as smtp:
            smtp.send("EHLO client.test\r\n")
            assert smtp.reply()[0] == 250
            smtp.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.example.test>\r\n")
            allowed = [smtp.reply()[0] for _ in range(2)]
    assert [code for code, _ in replies] == [250, 250, 503]
    assert replies[2][1].decode().endswith(
        "5.5.0 <b@mx.example.test>: Recipient address rejected: "
        "Improper use of SMTP command pipelining")
    assert allowed == [250, 250]


def rcpt_replies(directory: Path, cases: list[tuple[str, str]]) -> list[int]:
    """The RCPT TO reply codes of the translation of ``directory`` (client, recipient)."""
    translate(directory).write(directory / "policy")
    config = replace(load(directory / "policy" / "vsl.toml"), listen=(Listener("127.0.0.1", 0),),
                     queue_dir=directory / "queue", delivery=DeliveryConfig(enabled=False))
    codes = []
    with running(config) as server:
        for client, recipient in cases:
            with Raw(server.port(), source=client) as smtp:
                assert smtp.cmd("EHLO client.test")[0] == 250
                assert smtp.cmd("MAIL FROM:<a@client.test>")[0] == 250
                codes.append(smtp.cmd(f"RCPT TO:<{recipient}>")[0])
    return codes


# ---- natives the translation uses ---------------------------------------------------------

def test_net_and_regex_natives():
    script = new_engine().load_source("""
fn net(ip, network) { net::in_network(ip, network) }
fn re(pattern, text, flags) { regex::captures(pattern, text, flags) }
""", "n.vsl")
    assert script.call("net", "192.0.2.7", "192.0.2.0/24") is True
    assert script.call("net", "::ffff:192.0.2.7", "[192.0.2.0]/24") is True
    assert script.call("net", "2001:db8::1", "192.0.2.0/24") is False
    assert script.call("net", "not-an-ip", "192.0.2.0/24") is False
    assert script.call("re", "^(a+)(b)?@", "AAA@x", "i") == ["AAA@", "AAA", ""]
    assert script.call("re", "^b", "abc", "") is None


# ---- DNS-based restrictions, through vSL's DNS server ---------------------------------------

DNS_MAIN_CF = """\
myhostname = mx.example.test
mydestination =
relay_domains = example.test, good.test
mynetworks = 127.0.0.1/32
smtpd_client_restrictions = reject_unknown_reverse_client_hostname,
    reject_unknown_client_hostname, reject_rbl_client rbl.test
smtpd_helo_restrictions = reject_unknown_helo_hostname
smtpd_sender_restrictions = reject_rhsbl_sender rhsbl.test, reject_unknown_sender_domain
smtpd_recipient_restrictions = reject_unknown_recipient_domain, reject_unauth_destination
"""
RECORDS = {
    "1.0.0.127.in-addr.arpa.": [("PTR", "client.good.test.")],
    "2.0.0.127.in-addr.arpa.": [("PTR", "client.good.test.")],
    "4.0.0.127.in-addr.arpa.": [("PTR", "forged.good.test.")],
    "client.good.test.": [("A", "127.0.0.1"), ("A", "127.0.0.2")],
    "forged.good.test.": [("A", "192.0.2.1")],
    "good.test.": [("MX", "10 client.good.test."), ("A", "127.0.0.1")],
    "example.test.": [("MX", "10 client.good.test.")],
    "2.0.0.127.rbl.test.": [("A", "127.0.0.2"), ("TXT", "listed for tests")],
    "spammer.good.test.rhsbl.test.": [("A", "127.0.0.2")],
    "spammer.good.test.": [("A", "127.0.0.1")],
}
# (client, HELO, sender, recipient): the RCPT TO reply Postfix gives (smtpd_check.c)
DNS_CASES = [
    ("127.0.0.1", "client.good.test", "a@good.test", "b@example.test", "250 2.1.5 Ok"),
    ("127.0.0.3", "client.good.test", "a@good.test", "b@example.test",
     "450 4.7.1 Client host rejected: cannot find your reverse hostname, [127.0.0.3]"),
    ("127.0.0.4", "client.good.test", "a@good.test", "b@example.test",
     "450 4.7.25 Client host rejected: cannot find your hostname, [127.0.0.4]"),
    ("127.0.0.2", "client.good.test", "a@good.test", "b@example.test",
     "554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using rbl.test; "
     "listed for tests"),
    ("127.0.0.1", "nowhere.test", "a@good.test", "b@example.test",
     "450 4.7.1 <nowhere.test>: Helo command rejected: Host not found"),
    ("127.0.0.1", "client.good.test", "a@spammer.good.test", "b@example.test",
     "554 5.7.1 Service unavailable; Sender address [spammer.good.test] blocked using "
     "rhsbl.test"),
    ("127.0.0.1", "client.good.test", "a@nowhere.test", "b@example.test",
     "450 4.1.8 <a@nowhere.test>: Sender address rejected: Domain not found"),
    ("127.0.0.1", "client.good.test", "a@good.test", "b@nowhere.test",
     "450 4.1.2 <b@nowhere.test>: Recipient address rejected: Domain not found"),
]


@contextmanager
def running_translation(directory: Path, tmp_path: Path):
    """The server running the translation of ``directory``, its DNS look-ups answered
    from RECORDS."""
    translate(directory).write(tmp_path / "policy")
    with DnsServer.from_records(RECORDS) as dns_server:
        config = load(tmp_path / "policy" / "vsl.toml")
        config = replace(config, listen=(Listener("127.0.0.1", 0),),
                         queue_dir=tmp_path / "queue", delivery=DeliveryConfig(enabled=False),
                         dns=replace(config.dns, override=(f"127.0.0.1:{dns_server.port}",),
                                     timeout=2.0))
        with running(config) as server:
            yield server


def test_dns_restrictions_reply_as_postfix(tmp_path):
    directory = tmp_path / "postfix"
    directory.mkdir()
    (directory / "main.cf").write_text(DNS_MAIN_CF)
    with running_translation(directory, tmp_path) as server:
        for client, helo, sender, recipient, expected in DNS_CASES:
            with Raw(server.port(), source=client) as smtp:
                assert smtp.cmd(f"EHLO {helo}")[0] == 250
                assert smtp.cmd(f"MAIL FROM:<{sender}>")[0] == 250
                code, text = smtp.cmd(f"RCPT TO:<{recipient}>")
                assert f"{code} {text.decode()}" == expected, (client, helo, sender)


def test_the_client_name_is_looked_up_once_a_transaction(tmp_path, monkeypatch):
    """Three restrictions need the client's name (iprev) at each of two RCPT TOs: one
    look-up, as Postfix looks the name up once."""
    lookups = []
    real_iprev = iprev_module.iprev

    async def counted(resolver, ip):
        lookups.append(ip)
        return await real_iprev(resolver, ip)

    monkeypatch.setattr(iprev_module, "iprev", counted)
    directory = tmp_path / "postfix"
    directory.mkdir()
    (directory / "clients").write_text("client.good.test OK\n")
    (directory / "main.cf").write_text(
        "mydestination =\nrelay_domains = example.test\nmynetworks = 127.0.0.9/32\n"
        "smtpd_client_restrictions = reject_unknown_client_hostname,\n"
        "    reject_rhsbl_client rhsbl.test, check_client_access hash:clients\n"
        "smtpd_recipient_restrictions = reject_unauth_destination\n")
    with running_translation(directory, tmp_path) as server, \
            Raw(server.port(), source="127.0.0.1") as smtp:
        assert smtp.cmd("EHLO client.good.test")[0] == 250
        assert smtp.cmd("MAIL FROM:<a@good.test>")[0] == 250
        assert smtp.cmd("RCPT TO:<b@example.test>")[0] == 250
        assert smtp.cmd("RCPT TO:<c@example.test>")[0] == 250
    assert lookups == ["127.0.0.1"]


def test_restrictions_before_their_data_are_skipped_without_delay_reject(tmp_path):
    directory = tmp_path / "postfix"
    directory.mkdir()
    (directory / "main.cf").write_text(
        "smtpd_delay_reject = no\nmydestination =\n"
        "smtpd_client_restrictions = reject_non_fqdn_helo_hostname, reject_non_fqdn_sender\n"
        "smtpd_sender_restrictions = reject_unauth_destination, reject_non_fqdn_sender\n"
        "smtpd_end_of_data_restrictions = reject_non_fqdn_recipient, reject_non_fqdn_sender\n"
        "compatibility_level = 3.6\n")
    translation = translate(directory)
    translation.write(tmp_path / "out")
    assert load_policy(new_engine(), tmp_path / "out") is not None
    main_vsl = translation.main_vsl
    assert main_vsl.count("// (Postfix skips it before HELO)") == 1
    assert main_vsl.count("// (Postfix skips it before MAIL FROM)") == 1
    assert main_vsl.count("// (Postfix skips it before RCPT TO)") == 1
    for stage in ("on_connect", "on_mail_from", "on_pre_queue", "on_rcpt_to"):
        assert f"fn {stage}(ctx)" in main_vsl
    assert [(item.item, item.where) for item in translation.left] == [
        ("reject_non_fqdn_recipient",
         "main.cf:5: smtpd_end_of_data_restrictions = reject_non_fqdn_recipient, "
         "reject_non_fqdn_sender")]


def test_postfix_library_replies(tmp_path):
    """postfix.vsl's reply texts where the differential test has no case: DSN fixing of
    address statuses, DNSBL filters left out."""
    (tmp_path / "postfix.vsl").write_text(
        (Path(__file__).parent.parent / "server/migrate/postfix.vsl").read_text())
    (tmp_path / "main.vsl").write_text("""
import "postfix" as postfix;
const CODES = #{ access_map_reject: 554, access_map_defer: 450 };
fn act(found, name, kind) { postfix::action(global::CODES, found, #{ name: name, kind: kind }) }
""")
    script = new_engine().load(tmp_path / "main.vsl")
    assert script.call("act", "REJECT 5.1.1 no such user", "a@b.test", "Recipient address") == \
        "554 5.1.1 <a@b.test>: Recipient address rejected: no such user"
    assert script.call("act", "REJECT 5.1.1 no such user", "a@b.test", "Sender address") == \
        "554 5.1.7 <a@b.test>: Sender address rejected: no such user"
    assert script.call("act", "DEFER 4.1.2", "h.test", "Helo command") == \
        "450 4.0.0 <h.test>: Helo command rejected: Access denied"
    assert script.call("act", "451 5.7.1 later", "x", "Client host") == \
        "451 4.7.1 <x>: Client host rejected: later"
    assert script.call("act", "12345", "x", "Client host") == "OK"
    assert script.call("act", "dunno", "x", "Client host") == ""


ACTIONS = ["OK", "ok text", "RELAY", "DUNNO", "REJECT", "defer 4.7.1 later", "0", "12345",
           "450", "550 no", "450 4.7.1 later", "250 fine", "1234 text", "4AB text", "45 x",
           "\u0663\u0663", "\u00b2", "PREPEND X-A: b", "DISCARD", "HOLD", ""]


@pytest.mark.parametrize("value", ACTIONS)
def test_the_access_action_check_is_postfix_vsl_s_rule(tmp_path, caplog, value):
    """A table action the translation keeps is one postfix.vsl's action() reads, and
    one it lists as not translated is one action() reads as no decision."""
    (tmp_path / "postfix.vsl").write_text(
        (Path(__file__).parent.parent / "server/migrate/postfix.vsl").read_text())
    (tmp_path / "main.vsl").write_text("""
import "postfix" as postfix;
fn act(found) { postfix::action(#{ access_map_reject: 554, access_map_defer: 450 }, found,
                                #{ name: "x", kind: "Client host" }) }
""")
    script = new_engine().load(tmp_path / "main.vsl")
    with caplog.at_level(logging.WARNING, "vsl.script"):
        script.call("act", value)
    assert is_access_action(value) == ("is not known here" not in caplog.text)


def test_table_actions_postfix_vsl_does_not_read_are_left(tmp_path):
    (tmp_path / "access").write_text("a.test 250 fine\nb.test 1234 text\nc.test 4AB text\n"
                                     "d.test 450 4.7.1 later\ne.test 12345\n")
    (tmp_path / "main.cf").write_text(f"mydestination =\nmynetworks_style = host\n{RELAY}"
                                      "smtpd_sender_restrictions = check_sender_access "
                                      "hash:access\n")
    assert [(item.where, item.item) for item in translate(tmp_path).left] == [
        ("hash:access", value) for value in ("250 fine", "1234 text", "4AB text")]


def test_dnsbl_reply_filter_patterns_are_left(tmp_path):
    directory = tmp_path / "postfix"
    directory.mkdir()
    (directory / "main.cf").write_text(
        "mydestination =\nsmtpd_client_restrictions = reject_rbl_client zen.test=127.0.0.[2..11],"
        " reject_rbl_client bl.test=127.0.0.2\ncompatibility_level = 3.6\n")
    translation = translate(directory)
    assert [item.item for item in translation.left] == [
        "reject_rbl_client zen.test=127.0.0.[2..11]"]
    assert 'postfix::rbl_client(global::CODES, ctx, "bl.test", "127.0.0.2")' in \
        translation.main_vsl


RELAY = "smtpd_relay_restrictions = reject_unauth_destination\n"


def test_check_policy_service_asks_the_service(postfix_dir, tmp_path):
    main_vsl = translate(postfix_dir).main_vsl
    assert ('postfix::policy_service(global::CODES, ctx, "inet:127.0.0.1:10040", '
            '#{ "timeout": 100, "default_action": "451 4.3.5 Server configuration problem" }, '
            'postfix::recipient(ctx))') in main_vsl


@pytest.mark.parametrize("argument, options", [
    ("{ unix:private/policy, timeout=2m, default_action=DUNNO }",
     '"unix:/var/spool/postfix/private/policy", #{ "timeout": 120, "default_action": "DUNNO" }'),
    ("{inet:[::1]:9998,timeout=10}",
     '"inet:[::1]:9998", #{ "timeout": 10, "default_action": "451 4.3.5 Server'),
])
def test_check_policy_service_settings(postfix_dir, argument, options):
    (postfix_dir / "main.cf").write_text(
        f"smtpd_sender_restrictions = check_policy_service {argument}\n{RELAY}")
    translation = translate(postfix_dir)
    assert f"postfix::policy_service(global::CODES, ctx, {options}" in translation.main_vsl
    assert not [l for l in translation.left if "policy" in l.item]


@pytest.mark.parametrize("argument", ["{ inet:127.0.0.1:1, max_idle=10s }",
                                      "{ inet:127.0.0.1:1, timeout=soon }", "ldap:x.cf"])
def test_check_policy_service_forms_left(postfix_dir, argument):
    (postfix_dir / "main.cf").write_text(
        f"smtpd_sender_restrictions = check_policy_service {argument}\n{RELAY}")
    left = [l.item for l in translate(postfix_dir).left]
    assert f"check_policy_service {argument}" in left
