"""The differential test of `vsl migrate postfix`: for each main.cf of tests/migrate/ (in
increasing complexity), a private Postfix runs it, `vsl serve` runs its translation, and
the same SMTP conversations go to both. Every reply must have the same code and enhanced
code, and a refusal the same text (Postfix's texts for these restrictions are fixed).

Clients connect from 127.0.0.1 to 127.0.0.4 (Linux routes all of 127.0.0.0/8 on
loopback), so client restrictions (cidr:, mynetworks) see different addresses.
Conversations, commands and differences are counted and printed (`pytest -s`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from vsl.server.config import DeliveryConfig, Listener, load
from vsl.server.migrate.maincf import parse_main_cf
from vsl.server.migrate.translate import translate

from tests.support.postfix import PrivatePostfix
from tests.support.servers import running
from tests.support.smtp_tools import Raw

SCENARIOS = Path(__file__).parent / "migrate"
ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}\b")

# (client address, HELO name, sender, recipients)
CONVERSATIONS = [
    ("127.0.0.1", "client.example.test", "alice@example.org",
     ["bob@example.test", "carol@elsewhere.test"]),
    ("127.0.0.2", "client.example.test", "alice@example.org",
     ["bob@example.test", "dave@elsewhere.test", "someone@partner.test"]),
    ("127.0.0.2", "nodots", "alice@example.org", ["bob@example.test"]),
    ("127.0.0.2", "bad_host!", "alice@example.org", ["bob@example.test"]),
    ("127.0.0.2", "bad.example.test", "alice@example.org", ["bob@example.test"]),
    ("127.0.0.2", "worse.example.test", "alice@example.org", ["bob@example.test"]),
    ("127.0.0.2", "good.example.test", "spam@example.org", ["bob@example.test"]),
    ("127.0.0.2", "client.example.test", "spam@example.org", ["bob@example.test"]),
    ("127.0.0.2", "client.example.test", "someone@sub.example.net", ["bob@example.test"]),
    ("127.0.0.2", "client.example.test", "", ["bob@example.test", "carol@elsewhere.test"]),
    ("127.0.0.2", "client.example.test", "friend@anywhere.org",
     ["bob@example.test", "carol@elsewhere.test"]),
    ("127.0.0.2", "client.example.test", "user@localhost",
     ["blocked-joe@example.test", "held@example.test", "nobody@example.test",
      "bob@example.test"]),
    ("127.0.0.2", "client.example.test", "trouble@example.org", ["bob@example.test"]),
    ("127.0.0.2", "client.example.test", "maker@example.org", ["bob@example.test"]),
    ("127.0.0.2", "client.example.test", "alice@example.org",
     ["closed@example.test", "local@partner.test", "x@sub.partner.test", "bob@nodomain"]),
    ("127.0.0.3", "client.example.test", "alice@example.org", ["bob@example.test"]),
    ("127.0.0.4", "client.example.test", "alice@example.org",
     ["bob@example.test", "carol@elsewhere.test"]),
    ("127.0.0.1", "nodots", "spam@example.org", ["blocked-ann@example.test"]),
    ("127.0.0.2", "client.example.test", "alice@example.org",  # routing operators
     ["victim%evil.example@example.test", "evil.example!victim@example.test",
      "bob@example.test"]),
]


@dataclass
class Tally:
    conversations: int = 0
    commands: int = 0
    refusals: int = 0  # Postfix's 4xx/5xx replies among the commands
    differences: list[str] = field(default_factory=list)


def converse(port: int, client: str, helo: str, sender: str, recipients: list[str],
             number: int) -> list[tuple[str, int, str]]:
    """One conversation: (command, code, text) for each reply, the greeting first."""
    replies = []
    with Raw(port, source=client, greet=False) as smtp:
        code, text = smtp.reply()
        replies.append(("(greeting)", code, text.decode()))

        def say(command: str) -> int:
            code, text = smtp.cmd(command)
            replies.append((command, code, text.decode()))
            return code

        if code == 220 and say(f"{'EHLO' if number % 2 == 0 else 'HELO'} {helo}") == 250:
            if say(f"MAIL FROM:<{sender}>") == 250:
                accepted = [r for r in recipients if say(f"RCPT TO:<{r}>") == 250]
                if accepted and number % 3 == 0:
                    if say("DATA") == 354:
                        say("Subject: migration test\r\n\r\nhello\r\n.")
                else:
                    say("RSET")
        say("QUIT")
    return replies


def compare(scenario: str, postfix: list, vsl: list, tally: Tally) -> None:
    tally.conversations += 1
    for (command, code_p, text_p), (_, code_v, text_v) in zip(postfix, vsl):
        tally.commands += 1
        tally.refusals += code_p >= 400
        enhanced_p, enhanced_v = ENHANCED.match(text_p), ENHANCED.match(text_v)
        same = code_p == code_v and (
            command.startswith(("(greeting)", "EHLO", "HELO")) or
            (enhanced_p and enhanced_p.group()) == (enhanced_v and enhanced_v.group()))
        if same and code_p >= 400 and not command.startswith("(greeting)"):
            same = text_p == text_v
        if not same:
            tally.differences.append(f"{scenario}: {command}: Postfix {code_p} {text_p!r}, "
                                     f"vSL {code_v} {text_v!r}")
    if len(postfix) != len(vsl):
        tally.differences.append(f"{scenario}: {len(postfix)} replies from Postfix, "
                                 f"{len(vsl)} from vSL")


def scenario_tables(directory: Path) -> dict[str, tuple[str, str]]:
    """The table sources beside a scenario's main.cf: NAME.KIND files."""
    return {path.stem: (path.read_text(), path.suffix[1:])
            for path in sorted(directory.iterdir()) if path.suffix != ".cf"}


def smtpd_options(directory: Path) -> str:
    """A scenario's master.cf: the smtpd service's -o options, one a line."""
    path = directory / "master.cf"
    return " ".join(path.read_text().split()) if path.exists() else ""


TALLY = Tally()


@pytest.mark.parametrize("scenario", sorted(p.name for p in SCENARIOS.iterdir()))
def test_translation_answers_as_postfix(scenario, tmp_path):
    directory = SCENARIOS / scenario
    settings, problems = parse_main_cf((directory / "main.cf").read_text())
    assert not problems
    with PrivatePostfix({s.name: s.value for s in settings},
                        tables=scenario_tables(directory),
                        smtpd_options=smtpd_options(directory)) as postfix:
        translation = translate(postfix.etc)
        translation.write(tmp_path / "policy")
        config = replace(load(tmp_path / "policy" / "vsl.toml"),
                         listen=(Listener("127.0.0.1", 0),), queue_dir=tmp_path / "queue",
                         delivery=DeliveryConfig(enabled=False))
        tally = Tally()
        with running(config) as server:
            for number, (client, helo, sender, recipients) in enumerate(CONVERSATIONS):
                expected = converse(postfix.port, client, helo, sender, recipients, number)
                got = converse(server.port(), client, helo, sender, recipients, number)
                compare(scenario, expected, got, tally)
    TALLY.conversations += tally.conversations
    TALLY.commands += tally.commands
    TALLY.refusals += tally.refusals
    TALLY.differences += tally.differences
    print(f"\n{scenario}: {tally.conversations} conversations, {tally.commands} commands "
          f"({tally.refusals} refused), {len(tally.differences)} differ (so far in all: "
          f"{TALLY.conversations}, {TALLY.commands} ({TALLY.refusals}), "
          f"{len(TALLY.differences)})")
    assert not tally.differences, "\n".join(tally.differences)
