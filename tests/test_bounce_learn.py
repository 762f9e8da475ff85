"""Learned bounces (`vsl bounce learn`): custom reasons and corrections that apply at once,
persist, are re-read by a running classifier when their file changes, and are trained on."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.servers import config_for, running
from tests.support.smtp_tools import client
from vsl.cli import main
from vsl.server import config as config_module
from vsl.stdlib.support.bounce import learned, train
from vsl.stdlib.support.bounce.learned import LearnedFile
from vsl.stdlib.support.bounce.shared import SharedClassifier

GREYLISTED = ["451 4.7.1 Greylisted, please try again in 300 seconds",
              "450 4.2.0 <bob@example.org>: Recipient address rejected: Greylisted, see the "
              "help page of example.org",
              "451 4.7.1 Greylisting in action, please retry later",
              "421 4.7.0 You have been greylisted by our server; come back in 5 minutes",
              "450 4.7.1 Greylisting in effect, please come back later"]
PARAPHRASES = ["451 4.7.1 greylisted: try again after 5 minutes",
               "450 Greylisting active for your address, retry in a few minutes",
               "451 4.7.1 <x@y.example>: greylisted, retry in 60 s",
               "421 Your message was greylisted, please send it again later"]
UNRELATED = {"550 5.1.1 No such user": "userunknown",
             "452 4.2.2 Mailbox full": "mailboxfull",
             "550 5.7.1 Message rejected as spam": "spamdetected",
             "421 4.7.0 Too many connections from your IP, try again later": "toomanyconn"}
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bounces-train.jsonl"


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def learn_all(path: Path, texts, reason: str) -> None:
    for text in texts:
        learned.append(path, learned.example(text, reason))


def classifier_of(path: Path, clock=time.monotonic) -> SharedClassifier:
    found = SharedClassifier()
    found.learn_from(LearnedFile(path, clock))
    return found


@pytest.fixture
def greylisted(tmp_path) -> Path:
    path = tmp_path / "learned.jsonl"
    learn_all(path, GREYLISTED, "greylisted")
    return path


def test_five_examples_teach_a_new_reason_for_paraphrases_only(greylisted):
    bounces = classifier_of(greylisted)
    for text in PARAPHRASES:
        found = bounces.classify_text(text)
        assert found.reason == "greylisted" and 0.5 <= found.confidence <= 1, text
        assert found.status == text.split()[1] if "." in text.split()[1] else True
    for text, reason in UNRELATED.items():
        assert bounces.classify_text(text).reason == reason, text


def test_a_learned_reason_without_codes_gets_its_examples_code_or_the_default(tmp_path):
    path = tmp_path / "learned.jsonl"
    learn_all(path, ["Your message waits: the mailbox owner is travelling on holiday"],
              "travelling")
    found = classifier_of(path).classify_text("the mailbox owner is travelling on holiday")
    assert (found.reason, found.status, found.hard) == ("travelling", "5.0.0", True)
    learn_all(path, ["451 4.2.1 the mailbox owner is travelling on holiday"], "travelling")
    found = classifier_of(path).classify_text("the mailbox owner is travelling, on holiday")
    assert (found.reason, found.status, found.hard) == ("travelling", "4.2.1", False)


def test_a_correction_applies_to_the_message_and_near_copies(tmp_path):
    wrong = "554 5.7.1 <bob@example.org>: Service unavailable; client host blocked using zen"
    path = tmp_path / "learned.jsonl"
    before = classifier_of(path).classify_text(wrong).reason
    corrected = "blocked" if before != "blocked" else "rejected"
    learn_all(path, [wrong], corrected)
    bounces = classifier_of(path)
    assert bounces.classify_text(wrong).reason == corrected
    near = wrong.replace("bob@example.org", "carol@example.net").replace("zen", "zen list")
    assert bounces.classify_text(near).reason == corrected
    assert bounces.classify_text("550 5.1.1 No such user").reason == "userunknown"


def test_learned_examples_survive_a_restart(greylisted):
    first = [classifier_of(greylisted).classify_text(t).reason for t in PARAPHRASES]
    again = [classifier_of(greylisted).classify_text(t).reason for t in PARAPHRASES]
    assert first == again == ["greylisted"] * len(PARAPHRASES)


def test_a_running_classifier_takes_what_is_learned_after_the_recheck(tmp_path):
    path, clock = tmp_path / "learned.jsonl", FakeClock()
    bounces = classifier_of(path, clock)
    text = PARAPHRASES[0]
    assert bounces.classify_text(text).reason != "greylisted"  # missing file: nothing learned
    learn_all(path, GREYLISTED, "greylisted")
    clock.now += 0.5
    assert bounces.classify_text(text).reason != "greylisted"  # not looked at yet
    clock.now += 0.6
    assert bounces.classify_text(text).reason == "greylisted"
    learned.rewrite(path, [])
    clock.now += 1.1
    assert bounces.classify_text(text).reason != "greylisted"


def test_a_damaged_line_is_skipped_with_a_warning(greylisted, caplog):
    lines = greylisted.read_text().splitlines(keepends=True)
    greylisted.write_text(lines[0] + "not json\n" + '{"text": 1}\n' + "".join(lines[1:]) +
                          lines[0][:20])  # the last line cut short by a crash
    with caplog.at_level(logging.WARNING, "vsl.bounce"):
        assert len(learned.read(greylisted)) == len(GREYLISTED)
    assert f"{greylisted}:2: not a learned bounce" in caplog.text
    assert f"{greylisted}:3:" in caplog.text and f"{greylisted}:8:" in caplog.text
    learned.append(greylisted, learned.example("451 greylisted", "greylisted"))
    assert learned.read(greylisted)[-1].text == "451 greylisted"  # on a line of its own


def test_training_takes_the_learned_examples_as_classes(greylisted):
    rows = [{"text": "550 5.1.1 <bob@example.net>: no such user here",
             "reason": "userunknown"}] + train.learned_rows(str(greylisted))
    model = train.train_classifier(rows, train.Settings(synthetic=50, epochs=2))
    assert "greylisted" in model.network.labels


@pytest.mark.skipif(not SHARED_DATA.is_file(), reason="needs ../shared/data")
def test_learned_examples_leave_the_labelled_messages_alone(greylisted):
    rows = [json.loads(line) for line in SHARED_DATA.read_text().splitlines()]
    bounces = classifier_of(greylisted)
    assert all(bounces.classify_text(row["text"]).reason != "greylisted" for row in rows)


# ---- the command line ---------------------------------------------------------------

def run(*args, stdin: str | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=stdin)


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "vsl.toml"
    path.write_text('[server]\nqueue_dir = "spool"\n[bounce]\nlearned = "learned.jsonl"\n')
    return path


def test_learn_list_and_forget(config, tmp_path):
    reply = tmp_path / "reply.txt"
    reply.write_text(GREYLISTED[0])
    result = run("bounce", "learn", "--config", config, reply, "greylisted")
    assert result.exit_code == 0 and "learned: greylisted (1 example(s)" in result.output
    assert run("bounce", "learn", "--config", config, "-", "greylisted",
               stdin=GREYLISTED[1]).exit_code == 0
    listed = run("bounce", "learned", "--config", config).output.splitlines()
    assert [line.split("\t")[:2] for line in listed] == [["1", "greylisted"]] * 1 + \
        [["2", "greylisted"]]
    assert listed[0].endswith(GREYLISTED[0])
    assert run("bounce", "forget", "--config", config, 1).output == "forgot 1, 1 left\n"
    assert [e.text for e in learned.read(tmp_path / "learned.jsonl")] == [GREYLISTED[1]]


def test_the_default_learned_file_is_beside_the_queue(tmp_path):
    assert config_module.load(None).learned_bounces == Path("learned-bounces.jsonl")
    path = tmp_path / "vsl.toml"
    path.write_text('[server]\nqueue_dir = "spool/queue"\n')
    assert config_module.load(path).learned_bounces == tmp_path / "spool/learned-bounces.jsonl"


@pytest.mark.parametrize("args, error", [
    (("learn", "MISSING", "greylisted"), "MISSING: No such file or directory"),
    (("learn", "-", "Grey-listed"), "'Grey-listed' is not a reason name"),
    (("forget", "3"), "no learned bounce 3 (0 learned)"),
])
def test_commands_explain_what_is_wrong(config, args, error):
    result = run("bounce", args[0], "--config", config, *args[1:], stdin="451 greylisted")
    assert result.exit_code != 0 and error in result.output


def test_learning_while_the_server_runs_changes_what_a_script_gets(tmp_path, config):
    policy = """
fn on_rcpt_to(ctx) {
    let why = bounce::classify("451 4.7.1 greylisted: try again after 5 minutes");
    return status::deny(`550 5.7.1 ${why.reason}`);
}
"""
    served = config_for(tmp_path, policy,
                        bounce=config_module.load(config).bounce)
    with running(served) as server:
        assert _reason_given(server) != "greylisted"
        for text in GREYLISTED:
            assert run("bounce", "learn", "--config", config, "-", "greylisted",
                       stdin=text).exit_code == 0
        deadline = time.monotonic() + 5
        while _reason_given(server) != "greylisted":
            assert time.monotonic() < deadline, "not taken within 5 s"
            time.sleep(0.2)


def _reason_given(server) -> str:
    with client(server) as smtp:
        smtp.ehlo()
        smtp.mail("alice@example.org")
        return smtp.rcpt("bob@example.test")[1].decode().split()[-1]
