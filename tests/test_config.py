"""server/config.py: every section and key parses; unknown keys and bad values are
ConfigErrors that name the key; no file gives the defaults."""
from __future__ import annotations

import os
import socket
from dataclasses import fields
from pathlib import Path

import pytest

from vsl.server import config as config_module
from vsl.server.config import (AUTO_WORKERS_MAX, DEFAULT_FALLBACK, AuthConfig, BounceConfig,
                               Config, ConfigError, DeliveryConfig, DnsConfig, Listener,
                               SmtpLimits, TlsConfig, auto_workers, default_hostname, from_dict,
                               load, parse_listen)
from vsl.stdlib.support.mail import HeaderLimits
from vsl.limits import Limits

FULL = """
listen = [
    "127.0.0.1:2525",
    { address = "[::1]:587", kind = "submission" },
    { address = "0.0.0.0:465", kind = "smtps" },
]

[server]
hostname = "mx.example.test"
local_domains = ["example.test", "Example.ORG"]
scripts = "policy"
queue_dir = "/var/spool/vsl"
fallback_reply = "421 4.3.0 Come back later"
workers = 3
script_threads = 2
event_loop = "asyncio"

[tls]
certificate = "certs/cert.pem"
key = "certs/key.pem"

[auth]
mechanisms = ["plain", "LOGIN"]
users_file = "users"
allow_plaintext = true
failure_limit = 3
failure_window = 60
lockout = 30
lockout_max = 120.5
throttle_entries = 100
known_addresses = 3

[limits]
message_size = 1000000
recipients = 7
connections = 50
connections_per_ip = 5
command_timeout = 30
data_timeout = 60.5
errors = 4
junk_commands = 20
header_fields = 300
header_section_size = 65536
header_field_size = 8192
received_headers = 30
idle_session = 90

[dns]
config = "cloudflare"
nameservers = ["127.0.0.1:5353", "[::1]:53"]
timeout = 2
override = ["127.0.0.1:5300"]
cache_bytes = 65536

[script_limits]
max_operations = 5000
max_time = 0.5
max_call_depth = 10
max_expr_depth = 20
max_string_size = 1000
max_array_size = 100
max_map_size = 50
max_modules = 3
max_script_size = 2000

[delivery]
enabled = false
maildir_root = "mail"
relay = "smtp://relay.example.test:587?tls=required"
retry_first = 60
retry_max = 600.0
max_age = 86400
delay_warning = 7200
concurrency = 5
destination_concurrency = 2
hostname = "out.example.test"
connect_timeout = 10
command_timeout = 60
idle_timeout = 2
poll_interval = 0.5
mx_port = 2525
credentials = "relay-credentials"
ca_file = "certs/ca.pem"
mx_address_limit = 3
mx_session_limit = 1
mx_attempt_timeout = 120
mx_host_limit = 8
journal = "state/delivered.journal"

[bounce]
learned = "state/learned-bounces.jsonl"
self_learning = false
auto_learned = "state/auto.jsonl"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vsl.toml"
    path.write_text(text)
    return path


def error_for(data: dict) -> str:
    with pytest.raises(ConfigError) as err:
        from_dict(data)
    return str(err.value)


# ---- defaults ------------------------------------------------------------------------------

@pytest.fixture
def cpus(monkeypatch, tmp_path):
    """Set the CPUs "auto" sees: ``cpus(affinity, cpu_max)`` (cpu_max None: no file)."""
    def set_cpus(affinity: int, cpu_max: str | None) -> int:
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(affinity)))
        path = tmp_path / "cpu.max"
        if cpu_max is not None:
            path.write_text(cpu_max + "\n")
        monkeypatch.setattr(config_module, "CGROUP_CPU_MAX", path)
        return auto_workers()
    return set_cpus


@pytest.mark.parametrize(("affinity", "cpu_max", "workers"), [
    (2, None, 2),                # as many as the CPUs this process may run on
    (64, None, AUTO_WORKERS_MAX),
    (6, "max 100000", 6),        # no quota
    (6, "150000 100000", 2),     # 1.5 CPUs: rounded up
    (6, "50000 100000", 1),
    (3, "800000 100000", 3),     # the affinity is the smaller
    (6, "garbled", 6),
])
def test_auto_workers_follow_the_affinity_and_the_cgroup_quota(cpus, affinity, cpu_max,
                                                              workers):
    assert cpus(affinity, cpu_max) == workers


def test_auto_is_one_worker_where_workers_cannot_share_their_counts(cpus, monkeypatch):
    monkeypatch.delattr(os, "memfd_create")
    assert cpus(4, None) == 1


@pytest.mark.parametrize("name, fqdn, chosen", [
    ("mx1.example.com", "localhost", "mx1.example.com"),
    ("mx1", "mx1.example.com", "mx1.example.com"),  # /etc/hosts: 127.0.1.1 mx1.example.com mx1
    ("vm", "localhost", "vm.localdomain"),                # /etc/hosts: 127.0.0.1 localhost, vm
    ("vm", "localhost.localdomain", "vm.localdomain"),
    ("vm", "localhost6.localdomain6", "vm.localdomain"),
    ("vm", "vm", "vm.localdomain"),                       # as Postfix's myhostname
])
def test_the_default_hostname_is_never_localhost(monkeypatch, name, fqdn, chosen):
    monkeypatch.setattr(socket, "gethostname", lambda: name)
    monkeypatch.setattr(socket, "getfqdn", lambda _name="": fqdn)
    assert default_hostname() == chosen


def test_no_file_gives_the_defaults():
    config = load(None)
    assert config == Config(hostname=config.hostname)
    assert config.hostname == default_hostname()
    assert config.domains == (config.hostname.lower(),)
    assert config.scripts is None
    assert config.queue_dir == Path("queue")
    assert config.workers == min(len(os.sched_getaffinity(0)), AUTO_WORKERS_MAX)  # per CPU
    assert config.script_threads == 4
    assert config.fallback_reply == DEFAULT_FALLBACK == \
        "451 4.3.0 Temporary local problem, try again later"
    assert config.listen == (Listener("127.0.0.1", 2525, "smtp"),)
    assert config.tls == TlsConfig() and not config.tls.enabled
    assert config.auth == AuthConfig(mechanisms=("PLAIN", "LOGIN"), users_file=None,
                                     allow_plaintext=False)
    assert config.limits == SmtpLimits(message_size=25 * 1024 * 1024, recipients=100,
                                       connections=200, connections_per_ip=20,
                                       command_timeout=300.0, data_timeout=600.0, errors=10)
    assert config.dns == DnsConfig(config="system", nameservers=(), timeout=5.0)
    assert config.script_limits == Limits()


def test_an_empty_file_gives_the_defaults(tmp_path):
    config = load(write(tmp_path, "# nothing\n"))
    assert config == Config(hostname=config.hostname)


def test_local_domains_unset_is_the_hostname_and_empty_is_none():
    assert from_dict({"server": {"hostname": "MX.example.test"}}).domains == \
        ("mx.example.test",)
    assert from_dict({"server": {"hostname": "mx.example.test", "local_domains": []}}) \
        .domains == ()


# ---- every key ------------------------------------------------------------------------------

def test_every_section_and_key_parses(tmp_path):
    config = load(write(tmp_path, FULL))
    assert config.hostname == "mx.example.test"
    assert config.local_domains == ("example.test", "Example.ORG")
    assert config.domains == ("example.test", "example.org")
    assert config.scripts == tmp_path / "policy"  # relative to the file
    assert config.queue_dir == Path("/var/spool/vsl")  # absolute stays absolute
    assert config.fallback_reply == "421 4.3.0 Come back later"
    assert config.workers == 3
    assert config.script_threads == 2
    assert config.event_loop == "asyncio"
    assert config.listen == (Listener("127.0.0.1", 2525, "smtp"),
                             Listener("::1", 587, "submission"),
                             Listener("0.0.0.0", 465, "smtps"))
    assert config.tls == TlsConfig(tmp_path / "certs/cert.pem", tmp_path / "certs/key.pem")
    assert config.auth == AuthConfig(("PLAIN", "LOGIN"), tmp_path / "users", True, 3, 60.0,
                                     30.0, 120.5, 100, 3)
    assert config.limits == SmtpLimits(1_000_000, 7, 50, 5, 30.0, 60.5, 4, 20, 300, 65536, 8192,
                                       30, 90.0)
    assert config.limits.header == HeaderLimits(300, 65536, 8192, 30)
    assert isinstance(config.limits.command_timeout, float)
    assert config.dns == DnsConfig("cloudflare", ("127.0.0.1:5353", "[::1]:53"), 2.0,
                                   ("127.0.0.1:5300",), 65536)
    assert config.script_limits == Limits(5000, 0.5, 10, 20, 1000, 100, 50, 3, 2000)
    assert config.delivery == DeliveryConfig(
        False, tmp_path / "mail", "smtp://relay.example.test:587?tls=required", 60.0, 600.0,
        86400.0, 7200.0, 5, 2, "out.example.test", 10.0, 60.0, 2.0, 0.5, 2525,
        tmp_path / "relay-credentials", tmp_path / "certs/ca.pem", 3, 1, 120.0, 8,
        tmp_path / "state/delivered.journal")
    assert config.bounce == BounceConfig(tmp_path / "state/learned-bounces.jsonl", False,
                                         tmp_path / "state/auto.jsonl")
    assert config.learned_bounces == tmp_path / "state/learned-bounces.jsonl"
    assert config.auto_learned_bounces is None  # self-learning off


def test_the_full_example_covers_every_key():
    """If a key is added to a section, FULL (and the test above) must learn it."""
    import tomllib
    data = tomllib.loads(FULL)
    for section, cls in (("tls", TlsConfig), ("auth", AuthConfig), ("limits", SmtpLimits),
                         ("dns", DnsConfig), ("script_limits", Limits),
                         ("delivery", DeliveryConfig), ("bounce", BounceConfig)):
        assert set(data[section]) == {f.name for f in fields(cls)}, section
    server_keys = {f.name for f in fields(Config)} - {"listen", "tls", "auth", "limits", "dns",
                                                      "script_limits", "delivery", "bounce",
                                                      "state", "queue", "metrics", "log",
                                                      "file", "file_digest"}  # not keys
    # ([state], [queue], [metrics], [log]: tests/test_state_config.py,
    # tests/test_config_queue.py, tests/test_config_observability.py)
    assert set(data["server"]) == server_keys


def test_str_of_a_listener():
    assert str(Listener("::1", 587, "submission")) == "submission [::1]:587"
    assert str(Listener("127.0.0.1", 25)) == "smtp 127.0.0.1:25"


@pytest.mark.parametrize("text, listener", [
    ("127.0.0.1:25", Listener("127.0.0.1", 25)),
    ("[2001:db8::1]:587", Listener("2001:db8::1", 587)),
    ("mail.example.test:2525", Listener("mail.example.test", 2525)),
    ("0.0.0.0:65535", Listener("0.0.0.0", 65535)),
])
def test_parse_listen(text, listener):
    assert parse_listen(text) == listener


@pytest.mark.parametrize("text", ["127.0.0.1", ":25", "127.0.0.1:", "127.0.0.1:0",
                                  "127.0.0.1:65536", "127.0.0.1:http", "[::1]", 25])
def test_parse_listen_refuses(text):
    with pytest.raises(ConfigError) as err:
        parse_listen(text, key="--listen")
    assert str(err.value).startswith("--listen: ")


# ---- unknown keys and sections --------------------------------------------------------------

@pytest.mark.parametrize("data, key", [
    ({"server": {"hostnme": "x"}}, "server.hostnme"),
    ({"limits": {"recipient": 5}}, "limits.recipient"),
    ({"tls": {"cert": "x"}}, "tls.cert"),
    ({"auth": {"users": "x"}}, "auth.users"),
    ({"dns": {"server": "x"}}, "dns.server"),
    ({"script_limits": {"max_ops": 1}}, "script_limits.max_ops"),
    ({"listen": [{"address": "127.0.0.1:25", "type": "smtp"}]}, "listen[0].type"),
    ({"limit": {}}, "limit"),
    ({"queue": {"dir": "x"}}, "queue.dir"),
])
def test_unknown_keys_and_sections_are_errors(data, key):
    message = error_for(data)
    assert message.startswith(f"{key}: "), message
    assert "unknown" in message


def test_unknown_key_lists_the_known_ones():
    message = error_for({"limits": {"recipient": 5}})
    assert "recipients" in message and "message_size" in message


# ---- bad values -----------------------------------------------------------------------------

BAD_VALUES = [
    # server
    ({"server": {"hostname": ""}}, "server.hostname"),
    ({"server": {"hostname": 7}}, "server.hostname"),
    ({"server": {"hostname": "[192.0.2.300]"}}, "server.hostname"),
    ({"server": {"local_domains": "example.test"}}, "server.local_domains"),
    ({"server": {"local_domains": ["ok.test", 3]}}, "server.local_domains"),
    ({"server": {"local_domains": ["ok.test", "not a domain"]}}, "server.local_domains"),
    ({"server": {"local_domains": ["[192.0.2.300]"]}}, "server.local_domains"),
    ({"server": {"scripts": True}}, "server.scripts"),
    ({"server": {"queue_dir": ""}}, "server.queue_dir"),
    ({"server": {"fallback_reply": "250 2.0.0 fine"}}, "server.fallback_reply"),
    ({"server": {"fallback_reply": "451 5.3.0 class mismatch"}}, "server.fallback_reply"),
    ({"server": {"fallback_reply": "try later"}}, "server.fallback_reply"),
    ({"server": {"workers": 0}}, "server.workers"),
    ({"server": {"workers": "2"}}, "server.workers"),
    ({"server": {"workers": 1.5}}, "server.workers"),
    ({"server": {"workers": True}}, "server.workers"),
    ({"server": {"workers": "many"}}, "server.workers"),
    ({"server": {"event_loop": "trio"}}, "server.event_loop"),
    ({"server": {"script_threads": 0}}, "server.script_threads"),
    ({"server": "mx.test"}, "server"),
    # listen
    ({"listen": "127.0.0.1:25"}, "listen"),
    ({"listen": ["127.0.0.1"]}, "listen[0]"),
    ({"listen": ["127.0.0.1:25", "nope"]}, "listen[1]"),
    ({"listen": [{"kind": "smtp"}]}, "listen[0].address"),
    ({"listen": [{"address": "127.0.0.1:25", "kind": "lmtp"}]}, "listen[0]"),
    ({"listen": [{"address": "127.0.0.1:25", "kind": 1}]}, "listen[0].kind"),
    ({"listen": [25]}, "listen[0]"),
    # tls
    ({"tls": {"certificate": 1, "key": "k"}}, "tls.certificate"),
    ({"tls": {"certificate": "c"}}, "tls"),
    ({"tls": {"key": "k"}}, "tls"),
    ({"tls": []}, "tls"),
    # auth
    ({"auth": {"mechanisms": ["PLAIN", "CRAM-MD5"]}}, "auth.mechanisms"),
    ({"auth": {"mechanisms": "PLAIN"}}, "auth.mechanisms"),
    ({"auth": {"allow_plaintext": "yes"}}, "auth.allow_plaintext"),
    ({"auth": {"allow_plaintext": 1}}, "auth.allow_plaintext"),
    ({"auth": {"users_file": ""}}, "auth.users_file"),
    ({"auth": {"known_addresses": -1}}, "auth.known_addresses"),
    # limits
    ({"limits": {"recipients": "many"}}, "limits.recipients"),
    ({"limits": {"recipients": -1}}, "limits.recipients"),
    ({"limits": {"recipients": 2.5}}, "limits.recipients"),
    ({"limits": {"recipients": True}}, "limits.recipients"),
    ({"limits": {"message_size": "25M"}}, "limits.message_size"),
    ({"limits": {"connections": -5}}, "limits.connections"),
    ({"limits": {"connections_per_ip": []}}, "limits.connections_per_ip"),
    ({"limits": {"command_timeout": "5m"}}, "limits.command_timeout"),
    ({"limits": {"command_timeout": -1}}, "limits.command_timeout"),
    # delivery
    ({"delivery": {"relay": "relay.example.test"}}, "delivery.relay"),
    ({"delivery": {"relay": "lmtp://127.0.0.1:24"}}, "delivery.relay"),
    ({"delivery": {"concurrency": 0}}, "delivery.concurrency"),
    ({"delivery": {"retry_first": 0}}, "delivery.retry_first"),
    ({"delivery": {"enabled": "no"}}, "delivery.enabled"),
    ({"delivery": {"credentials": ""}}, "delivery.credentials"),
    ({"delivery": {"mx_port": 0}}, "delivery.mx_port"),
    ({"delivery": {"mx_address_limit": 0}}, "delivery.mx_address_limit"),
    ({"delivery": {"mx_session_limit": 0}}, "delivery.mx_session_limit"),
    ({"delivery": {"mx_host_limit": 0}}, "delivery.mx_host_limit"),
    ({"delivery": {"mx_attempt_timeout": 0}}, "delivery.mx_attempt_timeout"),
    ({"limits": {"data_timeout": False}}, "limits.data_timeout"),
    ({"limits": {"errors": 1.5}}, "limits.errors"),
    ({"limits": 5}, "limits"),
    # dns
    ({"dns": {"config": "opendns"}}, "dns.config"),
    ({"dns": {"config": 1}}, "dns.config"),
    ({"dns": {"nameservers": "127.0.0.1"}}, "dns.nameservers"),
    ({"dns": {"timeout": -1}}, "dns.timeout"),
    ({"dns": {"cache_bytes": -1}}, "dns.cache_bytes"),
    ({"dns": {"timeout": "1s"}}, "dns.timeout"),
    ({"dns": {"override": "127.0.0.1"}}, "dns.override"),
    ({"dns": {"override": ["ns.example.test"]}}, "dns.override"),
    ({"dns": {"nameservers": ["127.0.0.1:99999"]}}, "dns.nameservers"),
    # script_limits
    ({"script_limits": {"max_operations": -1}}, "script_limits.max_operations"),
    ({"script_limits": {"max_time": "1s"}}, "script_limits.max_time"),
    ({"script_limits": {"max_modules": 1.5}}, "script_limits.max_modules"),
]


@pytest.mark.parametrize("data, key", BAD_VALUES, ids=[k for _, k in BAD_VALUES])
def test_bad_values_are_errors_naming_the_key(data, key):
    message = error_for(data)
    assert message.startswith(f"{key}: "), message
    assert len(message) > len(key) + 5  # says what is wrong


def test_bad_value_message_shows_the_value():
    message = error_for({"limits": {"recipients": "many"}})
    assert message.startswith("limits.recipients: ") and "'many'" in message


@pytest.mark.parametrize("key", ["recipients", "connections", "connections_per_ip", "errors",
                                 "command_timeout", "data_timeout", "header_fields",
                                 "header_section_size", "header_field_size",
                                 "received_headers"])
def test_limits_that_cannot_be_zero(key):
    """0 recipients/connections/errors would refuse everything, a 0 s timeout drops every
    client at once: the module's own example says ``must be an integer >= 1``."""
    message = error_for({"limits": {key: 0}})
    assert message.startswith(f"limits.{key}: "), message


@pytest.mark.parametrize("key", ["failure_limit", "failure_window", "lockout", "lockout_max",
                                 "throttle_entries"])
def test_auth_throttle_values_that_cannot_be_zero(key):
    message = error_for({"auth": {key: 0}})
    assert message.startswith(f"auth.{key}: "), message


def test_a_lockout_cannot_grow_past_a_smaller_maximum():
    assert error_for({"auth": {"lockout": 60, "lockout_max": 30}}) == \
        "auth.lockout_max: must be >= auth.lockout"


def test_smtps_listener_needs_tls():
    message = error_for({"listen": [{"address": "127.0.0.1:465", "kind": "smtps"}]})
    assert message.startswith("listen: ") and "tls" in message
    config = from_dict({"listen": [{"address": "127.0.0.1:465", "kind": "smtps"}],
                        "tls": {"certificate": "c.pem", "key": "k.pem"}})
    assert config.listen[0].kind == "smtps"


def test_submission_and_smtp_listeners_need_no_tls():
    config = from_dict({"listen": [{"address": "127.0.0.1:587", "kind": "submission"},
                                   "127.0.0.1:25"]})
    assert [l.kind for l in config.listen] == ["submission", "smtp"]


# ---- files ----------------------------------------------------------------------------------

def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path / "nope.toml")
    assert "nope.toml" in str(err.value) and "cannot read" in str(err.value)


def test_every_problem_of_the_file_is_reported_at_once(tmp_path):
    """A key's own problem does not hide another section's conflicts (they were reported
    only once the first was mended), nor repeat it in other words."""
    path = tmp_path / "vsl.toml"
    path.write_text('[limits]\nrecipients = 0\n[dns]\nconfig = "googel"\n'
                    '[state]\nbackend = "redsi"\n[queue]\nbackend = "rabbitmq"\nurl = 5\n')
    with pytest.raises(ConfigError) as err:
        load(path)
    assert [line.split(": ", 2)[1] for line in str(err.value).splitlines()] == [
        "limits.recipients", "queue.url", "dns.config", "state.backend"]
    assert "(did you mean 'google'? one of system, google," in str(err.value)


def test_a_file_not_in_utf_8_is_an_error(tmp_path):
    path = tmp_path / "vsl.toml"
    path.write_bytes(b'[server]\nhostname = "caf\xe9.test"\n')  # Latin-1
    with pytest.raises(ConfigError, match=r"vsl.toml: not UTF-8 \(invalid continuation byte "
                                          r"at byte 24\)"):
        load(path)


def test_invalid_toml_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, "[limits\nrecipients = 3\n"))
    assert "vsl.toml" in str(err.value)


def test_a_file_error_names_the_file_and_the_key(tmp_path):
    path = write(tmp_path, '[limits]\nrecipients = "many"\n')
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}: limits.recipients: ")


def test_every_error_is_reported(tmp_path):
    path = write(tmp_path, '[server]\nhostname = ""\nworkers = 0\n[limits]\nrecipients = "many"\n'
                           'errors = 0\n[bogus]\n')
    with pytest.raises(ConfigError) as err:
        load(path)
    lines = str(err.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "server.hostname", "server.workers", "limits.recipients", "limits.errors", "bogus"]
    assert all(line.startswith(f"{path}: ") for line in lines)


@pytest.mark.parametrize("data, hint", [
    ({"hostname": "mx.test"}, "did you mean server.hostname or delivery.hostname?"),
    ({"recipients": 5}, "did you mean limits.recipients?"),
    ({"server": {"hostnam": "x"}}, "did you mean server.hostname?"),
    ({"server": {"max": 1}}, "known: hostname, local_domains, scripts, queue_dir"),
    ({"limits": {"recipient": 5}}, "did you mean limits.recipients?"),
    ({"limit": {}}, "did you mean limits?"),
    ({"spool": {}}, "known: server, listen, tls, auth, limits, dns, script_limits, delivery"),
    ({"listen": [{"adress": "127.0.0.1:25"}]}, "did you mean listen[0].address?"),
    ({"listen": [{"port": 25, "address": "127.0.0.1:25"}]}, "known: address, kind"),
    ({"server": {"listen": ["127.0.0.1:25"]}}, "'listen' goes above the first [section]"),
])
def test_unknown_keys_suggest_the_nearest_and_list_the_known(data, hint):
    assert hint in error_for(data)


@pytest.mark.parametrize("data, known", [  # difflib's default cutoff guessed wrong here
    ({"delivery": {"message_size_limit": 1}}, "known: enabled, "),  # not mx_session_limit
    ({"auth": {"retries": 3}}, "unknown key (known: "),  # not throttle_entries
    ({"limits": {"client": 3}}, "unknown key (known: "),  # not recipients
    ({"user": {}}, "unknown section (known: server"),  # not server
])
def test_no_far_fetched_hint(data, known):
    """The hints are vsl's "did you mean" (vsl.resolve.closest), as in lint: no guess at all
    rather than a misleading one."""
    message = error_for(data)
    assert known in message and "did you mean" not in message


@pytest.mark.parametrize("name", ["check", "raise_any"])
def test_problem_collector_says_what_it_does(name):
    from vsl.server.config import _Problems

    assert getattr(_Problems, name).__doc__


def test_every_hint_comes_from_one_helper():
    """config, transcripts and the linter share vsl.resolve.closest (one cutoff, aliases)."""
    root = Path(__file__).resolve().parent.parent
    direct = [str(p.relative_to(root)) for d in ("vsl", "stdlib", "server")
              for p in sorted((root / d).rglob("*.py"))
              if "get_close_matches" in p.read_text() and p.name != "resolve.py"]
    assert direct == []


@pytest.mark.parametrize("text", ["127.0.0.1:99999", "127.0.0.1:0", "[::1]:65536"])
def test_a_port_out_of_range_says_so(text):
    with pytest.raises(ConfigError, match=r"port \d+ is out of range \(1-65535\)"):
        parse_listen(text)


def test_relative_paths_follow_the_file(tmp_path):
    sub = tmp_path / "etc"
    sub.mkdir()
    path = sub / "vsl.toml"
    path.write_text('[server]\nscripts = "scripts"\nqueue_dir = "../spool"\n'
                    '[auth]\nusers_file = "users"\n')
    config = load(path)
    assert config.scripts == sub / "scripts"
    assert config.queue_dir == sub / "../spool"  # as the kernel resolves it (symbolic links)
    assert config.auth.users_file == sub / "users"


def test_local_mail_defaults_to_mail_beside_the_queue():
    """The server's Maildir root comes from configuration: [delivery] maildir_root, or
    "mail" beside queue_dir; the journal stays the spool's own default when unset."""
    config = Config(queue_dir=Path("/var/spool/vsl/queue"))
    assert config.resolved_delivery.maildir_root == Path("/var/spool/vsl/mail")
    assert config.resolved_delivery.journal is None
    chosen = Config(delivery=DeliveryConfig(maildir_root=Path("/srv/mail")))
    assert chosen.resolved_delivery.maildir_root == Path("/srv/mail")


def test_vsl_serve_reports_a_config_error(tmp_path):
    """The command line shows the key-named error and exits non-zero."""
    import logging

    from click.testing import CliRunner

    from vsl.cli import main
    path = write(tmp_path, '[limits]\nrecipients = "many"\n')
    loggers = [logging.getLogger(name) for name in ("", "mail.log", "asyncio")]
    levels = [logger.level for logger in loggers]
    try:  # vsl serve configures logging for the process: put it back afterwards
        result = CliRunner().invoke(main, ["serve", "--config", str(path)])
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    assert result.exit_code != 0
    assert "limits.recipients" in result.output


def test_dns_override_reaches_a_resolver_the_script_configures(tmp_path, dns_server):
    """vSMTP scripts name their resolver (config: "google_tls"): [dns] override wins."""
    import smtplib

    from tests.support.servers import config_for, running
    policy = ('fn on_helo(ctx) {\n'
              '    let resolver = dns::resolver(#{ config: "google_tls" });\n'
              '    if resolver.lookup(ctx.helo, "A") == [] { return status::deny("550 5.7.1 who?"); }\n'
              '    status::next()\n'
              '}\n')
    override = DnsConfig(override=(f"127.0.0.1:{dns_server.port}",), timeout=2)
    with running(config_for(tmp_path, policy, dns=override)) as server:
        with smtplib.SMTP("127.0.0.1", server.port(), timeout=10) as client:
            assert client.helo("mail.example.test")[0] == 250
            assert client.helo("nothing.example.test")[0] == 550
