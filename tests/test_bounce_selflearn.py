"""Self-learning (`[bounce] self_learning`): the rules an automatic example must pass
(agreement of the network, the code and the wording), its bounds, near-duplicates,
poisoning attempts, several processes at once, what the examples then change, the command
line and a real server whose delivery learns from a refusal."""
from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import smtplib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.support.mailsink import MESSAGE
from tests.support.servers import config_for, running
from tests.support.smtp_tools import wait_for
from tests.test_delivery import SENDER, with_delivery
from vsl.cli import main
from vsl.server import config as config_module
from vsl.stdlib.support.bounce import learned, memory, selflearn, train
from vsl.stdlib.support.bounce.message import as_bounce
from vsl.stdlib.support.bounce.model import Classification, Classifier
from vsl.stdlib.support.bounce.shared import SharedClassifier, shipped

WORDING = "Recipient not listed in the directory of this organisation"
CODED = f"550 5.1.1 <bob@example.org>: {WORDING}"  # the shipped network: userunknown, sure
CODELESS = f"550 {WORDING}"  # the shipped network alone: not userunknown
LABELS = ["userunknown", "mailboxfull", "rejected"]


def judged(reason: str, confidence: float = 0.95) -> Classification:
    return Classification(reason, confidence, True, "", "")


def judge_giving(probabilities: list[float]):
    """A stand-in for ``Classifier.judge`` that finds ``probabilities`` in any wording."""
    return lambda bounce: (None, np.array(probabilities))


PLAUSIBLE_USERUNKNOWN = judge_giving([0.5, 0.3, 0.2])


def test_masking_hides_addresses_and_ids_and_the_key_ignores_digits():
    assert selflearn.masked("550 5.1.1 <bob@example.org>: unknown (queue 4F3A9C21B0)") == \
        "550 5.1.1 <<address>>: unknown (queue <id>)"
    assert selflearn.key("550 5.1.1 <bob@example.org>  Unknown") == \
        selflearn.key("551 5.1.10 <alice@example.net> unknown")


def test_an_example_is_kept_when_network_code_and_wording_agree():
    found = selflearn.lesson(as_bounce(CODED), judged("userunknown"), LABELS,
                             PLAUSIBLE_USERUNKNOWN)
    assert (found.reason, found.text) == ("userunknown", f"550 5.1.1 <<address>>: {WORDING}")


@pytest.mark.parametrize("text, verdict, wording", [
    (CODED, judged("userunknown", 0.8), PLAUSIBLE_USERUNKNOWN),  # the network is unsure
    (CODED, judged("mailboxfull"), judge_giving([0.3, 0.5, 0.2])),  # the code says otherwise
    (f"550 5.7.1 {WORDING}", judged("rejected"), judge_giving([0.2, 0.3, 0.5])),  # not specific
    (CODELESS, judged("userunknown"), PLAUSIBLE_USERUNKNOWN),  # no code
    (CODED, judged("custom"), PLAUSIBLE_USERUNKNOWN),  # a reason the network does not know
    (CODED, judged("userunknown"), judge_giving([0.1, 0.8, 0.1])),  # the wording says otherwise
])
def test_an_example_without_agreement_is_not_kept(text, verdict, wording):
    assert selflearn.lesson(as_bounce(text), verdict, LABELS, wording) is None


def example(text: str, reason: str = "userunknown") -> learned.Example:
    return learned.example(text, reason)


def test_bounds_keep_the_newest_without_near_duplicates(monkeypatch):
    monkeypatch.setattr(selflearn, "PER_REASON", 2)
    monkeypatch.setattr(selflearn, "TOTAL", 3)
    examples = [example("550 a 1"), example("550 b"), example("550 a 2"), example("550 c"),
                example("452 full", "mailboxfull"), example("452 fuller", "mailboxfull")]
    assert [e.text for e in selflearn.bounded(examples)] == ["550 c", "452 full", "452 fuller"]
    assert [e.text for e in selflearn.bounded(examples[:3])] == ["550 b", "550 a 2"]


def test_adding_skips_near_duplicates_and_keeps_the_file_private(tmp_path):
    path = tmp_path / "auto.jsonl"
    assert selflearn.add(path, example("550 5.1.1 <a@x.org> unknown"))
    assert not selflearn.add(path, example("550 5.1.1 <b@y.org> Unknown"))
    assert [e.text for e in learned.read(path)] == ["550 5.1.1 <a@x.org> unknown"]
    for made in (path, tmp_path / "auto.jsonl.lock"):
        assert made.stat().st_mode & 0o077 == 0  # bounces name people


def test_a_flood_of_examples_stays_within_the_bounds(tmp_path, monkeypatch):
    monkeypatch.setattr(selflearn, "PER_REASON", 5)
    path = tmp_path / "auto.jsonl"
    for number in range(30):
        selflearn.add(path, example(f"550 5.1.1 unknown user variant {'x' * number}"))
    kept = learned.read(path)
    assert len(kept) == 5 and kept[-1].text.endswith("x" * 29)  # the newest


def test_compaction_drops_duplicates_and_what_exceeds_the_bounds(tmp_path, monkeypatch):
    path = tmp_path / "auto.jsonl"
    for text in ("550 a 1", "550 a 2", "550 b", "550 c"):  # appended by hand, unchecked
        learned.append(path, example(text))
    monkeypatch.setattr(selflearn, "PER_REASON", 2)
    assert selflearn.compact(path) == 2
    assert [e.text for e in learned.read(path)] == ["550 b", "550 c"]
    assert selflearn.compact(path) == 0


def _add_many(path: str, reason: str) -> None:
    for number in range(25):
        selflearn.add(path, example(f"550 5.1.1 {reason} {'y' * number}", reason))


def test_two_processes_adding_at_once_lose_and_damage_nothing(tmp_path):
    path = str(tmp_path / "auto.jsonl")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_add_many, args=(path, reason))
               for reason in ("userunknown", "mailboxfull")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    lines = Path(path).read_text().splitlines()
    assert len(lines) == len(learned.read(path)) == 50


def test_forgetting_an_automatic_example(tmp_path):
    path = tmp_path / "auto.jsonl"
    for text in ("550 a", "550 b"):
        selflearn.add(path, example(text))
    selflearn.forget(path, learned.read(path)[:1])
    assert [e.text for e in learned.read(path)] == ["550 b"]


# ---- with the shipped network ------------------------------------------------------------

def learning(tmp_path, operator: Path | None = None, on_learned=None) -> SharedClassifier:
    """A classifier learning into tmp_path/auto.jsonl, looking at its files every time."""
    found = SharedClassifier()
    found.learn_from(operator, tmp_path / "auto.jsonl", clock=itertools.count().__next__,
                     on_learned=on_learned)
    return found


def test_a_wording_seen_with_its_code_is_recognised_without_it(tmp_path):
    counted = []
    bounces = learning(tmp_path, on_learned=counted.append)  # the server counts a metric
    assert bounces.classify_text(CODELESS).reason != "userunknown"
    bounces.classify_text(CODED)  # a script's bounce::classify teaches nothing
    assert not (tmp_path / "auto.jsonl").exists()
    assert bounces.classify_text(CODED, learn=True).reason == "userunknown"
    assert [e.reason for e in learned.read(tmp_path / "auto.jsonl")] == ["userunknown"]
    found = bounces.classify_text(CODELESS)
    assert found.reason == "userunknown" and found.confidence >= memory.NEIGHBOUR_THRESHOLD
    assert (found.status, found.hard) == ("5.1.1", True)  # the reason's, not the network's
    assert bounces.self_learned == 1 and counted == ["userunknown"]


@pytest.mark.parametrize("attempt", [
    f"452 4.2.2 {WORDING}",  # a code that contradicts its wording
    f"550 5.7.1 {WORDING}",  # a code that names no one reason
    f"550 {WORDING}",  # no code
])
def test_poisoning_attempts_teach_nothing(tmp_path, attempt):
    bounces = learning(tmp_path)
    bounces.classify_text(attempt, learn=True)
    assert not learned.read(tmp_path / "auto.jsonl")
    assert bounces.classify_text(CODELESS).reason != "mailboxfull"


def test_operator_examples_win_and_are_not_learned_from(tmp_path):
    operator = tmp_path / "learned.jsonl"
    for text in (CODELESS, CODED, f"550 5.1.1 {WORDING} here"):
        learned.append(operator, learned.example(text, "notlisted"))
    bounces = learning(tmp_path, operator)
    assert bounces.classify_text(CODED, learn=True).reason == "notlisted"
    assert not learned.read(tmp_path / "auto.jsonl")
    selflearn.add(tmp_path / "auto.jsonl", learned.example(CODED, "userunknown"))
    assert bounces.classify_text(CODELESS).reason == "notlisted"


def test_without_a_self_learning_file_nothing_is_learned(tmp_path):
    bounces = SharedClassifier()
    bounces.learn_from(None)
    bounces.classify_text(CODED, learn=True)
    assert bounces.self_learned == 0 and not list(tmp_path.iterdir())


def test_retraining_takes_the_operators_examples_before_the_automatic_ones(tmp_path):
    operator, auto = tmp_path / "learned.jsonl", tmp_path / "auto.jsonl"
    learned.append(operator, learned.example(CODED, "notlisted"))
    selflearn.add(auto, learned.example(CODED.replace("bob", "eve"), "userunknown"))
    selflearn.add(auto, learned.example("452 4.2.2 Mailbox full", "mailboxfull"))
    assert [r["reason"] for r in train.learned_rows([str(operator), str(auto)])] == \
        ["notlisted", "mailboxfull"]


# ---- the memory's feature weights in the model file ---------------------------------------

def test_the_feature_weights_are_stored_with_the_model_and_read_back(tmp_path):
    rows = [{"text": CODED, "reason": "userunknown"},
            {"text": "452 4.2.2 Mailbox full", "reason": "mailboxfull"}]
    model = train.train_classifier(rows, train.Settings(synthetic=20, epochs=1, members=1))
    assert np.array_equal(model.rarity, memory.background_rarity())
    model.save(tmp_path / "m.npz")
    assert np.array_equal(SharedClassifier(tmp_path / "m.npz").rarity(), model.rarity)
    model.rarity = None  # a model file written before they were stored
    model.save(tmp_path / "old.npz")
    assert Classifier.load(tmp_path / "old.npz").rarity is None
    assert SharedClassifier(tmp_path / "old.npz").rarity() is memory.background_rarity()


# ---- configuration and command line ------------------------------------------------------

def test_the_self_learning_file_is_beside_the_learned_one_unless_switched_off(tmp_path):
    path = tmp_path / "vsl.toml"
    path.write_text('[server]\nqueue_dir = "spool/queue"\n')
    assert config_module.load(path).auto_learned_bounces == \
        tmp_path / "spool/auto-learned-bounces.jsonl"
    path.write_text('[bounce]\nauto_learned = "a.jsonl"\n')
    assert config_module.load(path).auto_learned_bounces == tmp_path / "a.jsonl"
    path.write_text('[bounce]\nself_learning = false\n')
    assert config_module.load(path).auto_learned_bounces is None


def test_learned_lists_automatic_examples_apart_and_forget_takes_them(tmp_path):
    config = tmp_path / "vsl.toml"
    config.write_text('[server]\nqueue_dir = "spool"\n[bounce]\nlearned = "learned.jsonl"\n')
    learned.append(tmp_path / "learned.jsonl", learned.example("451 greylisted", "greylisted"))
    selflearn.add(tmp_path / "auto-learned-bounces.jsonl", learned.example(CODED, "userunknown"))
    listed = CliRunner().invoke(main, ["bounce", "learned", "--config", str(config)]).output
    assert [line.split("\t")[:3] for line in listed.splitlines()] == \
        [["1", "operator", "greylisted"], ["2", "auto", "userunknown"]]
    result = CliRunner().invoke(main, ["bounce", "forget", "--config", str(config), "2"])
    assert result.output == "forgot 1, 1 left\n"
    assert not learned.read(tmp_path / "auto-learned-bounces.jsonl")
    assert len(learned.read(tmp_path / "learned.jsonl")) == 1


# ---- a real server -----------------------------------------------------------------------

SENDING = """
fn on_rcpt_to(ctx) {
    transport::forward(ctx, "smtp://127.0.0.1:PORT?tls=none");
    status::next()
}
"""


def test_a_refusal_delivery_gets_teaches_the_running_server(tmp_path):
    """The receiving server refuses with a code and a wording of its own; once the sending
    server's delivery got that refusal, the wording alone gets the reason."""
    refusing = f'fn on_rcpt_to(ctx) {{ status::deny("550 5.1.1 <x@example.test>: {WORDING}") }}\n'
    (tmp_path / "rx").mkdir()
    with running(config_for(tmp_path / "rx", refusing)) as receiver:
        script = SENDING.replace("PORT", str(receiver.port()))
        with running(with_delivery(config_for(tmp_path, script))) as server:
            assert shipped().classify_text(CODELESS).reason != "userunknown"
            with smtplib.SMTP("127.0.0.1", server.port(), timeout=10) as smtp:
                smtp.sendmail(SENDER, ["x@example.test"], MESSAGE)
            assert wait_for(lambda: not asyncio.run(server.spool.list()))
            auto = tmp_path / "auto-learned-bounces.jsonl"  # beside the queue's default
            assert [e.reason for e in learned.read(auto)] == ["userunknown"]
            assert wait_for(lambda: shipped().classify_text(CODELESS).reason == "userunknown",
                            5, 0.2)
