"""Learned bounces (`vsl bounce learn`): custom reasons and corrections that apply at once,
persist, are re-read by a running classifier when their file changes, and are trained on."""
from __future__ import annotations

import json
import logging
import re
import smtplib
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.crash import VSL, stop_process
from tests.support.mailsink import free_port
from tests.support.servers import config_for, in_thread
from tests.support.smtp_tools import wait_for
from tests.test_milter import MtaClient
from tests.test_policyd import encode as policy_request, request
from vsl.cli import main
from vsl.server import config as config_module
from vsl.server.milter.server import MilterServer
from vsl.server.policyd.service import PolicyService
from vsl.stdlib.support.bounce import learned, train
from vsl.stdlib.support.bounce.message import as_bounce
from vsl.stdlib.support.bounce.shared import SharedClassifier, shipped

GREYLISTED = ["451 4.7.1 Greylisted, please try again in 300 seconds",
              "450 4.2.0 <bob@example.org>: Recipient address rejected: Greylisted, see the "
              "help page of example.org",
              "451 4.7.1 Greylisting in action, please retry later",
              "421 4.7.0 You have been greylisted by our server; come back in 5 minutes",
              "450 4.7.1 Greylisting in effect, please come back later"]
DAILY_QUOTA = ["550 5.2.2 The recipient has reached its quota of messages for the day",
               "452 4.2.2 Daily message quota of this mailbox reached, try tomorrow",
               "550 5.7.1 Recipient exceeded its daily limit of received messages",
               "452 Too many messages for this recipient today: daily limit reached",
               "451 4.2.2 Daily maximum of incoming messages reached for this recipient"]
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
    found.learn_from(path, clock=clock)
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
        assert found.status.startswith("4.") and not found.hard  # its own or its examples'
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


def test_classifying_threads_see_a_whole_memory_while_the_file_changes(tmp_path):
    path, clock = tmp_path / "learned.jsonl", FakeClock()
    bounces, seen, errors, done = classifier_of(path, clock), set(), [], threading.Event()

    def classify_until_done():
        try:
            for _ in range(5000):
                seen.add(bounces.classify(as_bounce(PARAPHRASES[0])).reason)
                if done.is_set():
                    return
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
    threads = [threading.Thread(target=classify_until_done) for _ in range(4)]
    for thread in threads:
        thread.start()
    for text in GREYLISTED:
        learn_all(path, [text], "greylisted")
        clock.now += 1.1
    assert wait_for(lambda: "greylisted" in seen or errors, 5)
    done.set()
    for thread in threads:
        thread.join()
    network = SharedClassifier().classify_text(PARAPHRASES[0]).reason
    assert not errors and seen <= {network, "greylisted"}

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
             "reason": "userunknown"}] + train.learned_rows([str(greylisted)])[0]
    model = train.train_classifier(rows, train.Settings(synthetic=50, epochs=2))
    assert "greylisted" in model.labels


def test_a_second_custom_reason_takes_its_own_paraphrases(greylisted):
    learn_all(greylisted, DAILY_QUOTA, "dailyquota")
    bounces = classifier_of(greylisted)
    for text in ("452 4.2.2 This mailbox reached its daily limit of incoming messages",
                 "550 Daily quota of received mail reached for this user",
                 "451 the recipient got too many messages today, daily maximum reached"):
        assert bounces.classify_text(text).reason == "dailyquota", text
    assert bounces.classify_text(PARAPHRASES[0]).reason == "greylisted"


@pytest.mark.skipif(not SHARED_DATA.is_file(), reason="needs ../shared/data")
def test_learned_examples_leave_the_labelled_messages_alone(greylisted):
    """Ten custom examples change the shipped model's answer on none of the labelled file's
    messages (what THRESHOLD in memory.py was chosen by)."""
    learn_all(greylisted, DAILY_QUOTA, "dailyquota")
    texts = [json.loads(line)["text"] for line in SHARED_DATA.read_text().splitlines()]
    plain, learning = SharedClassifier(), classifier_of(greylisted)
    assert [learning.classify_text(t).reason for t in texts] == \
        [plain.classify_text(t).reason for t in texts]


def test_an_unreadable_learned_file_is_logged_and_the_network_decides(tmp_path, caplog):
    path = tmp_path / "learned.jsonl"
    path.mkdir()  # reading it fails
    with caplog.at_level(logging.ERROR, "vsl.bounce"):
        found = classifier_of(path).classify_text("550 5.1.1 No such user")
    assert found.reason == "userunknown"
    assert f"cannot use the learned bounces of {path}" in caplog.text

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
    assert [line.split("\t")[:3] for line in listed] == [["1", "operator", "greylisted"],
                                                          ["2", "operator", "greylisted"]]
    assert listed[0].endswith(GREYLISTED[0])
    assert (tmp_path / "learned.jsonl").stat().st_mode & 0o077 == 0  # bounces name people
    assert run("bounce", "forget", "--config", config, 1).output == "forgot 1, 1 left\n"
    assert [e.text for e in learned.read(tmp_path / "learned.jsonl")] == [GREYLISTED[1]]


def test_a_learned_message_is_listed_by_its_diagnostic(config, tmp_path):
    message = tmp_path / "bounce.eml"
    message.write_text("From: MAILER-DAEMON@example.org\nSubject: Undelivered\n"
                       "Content-Type: multipart/report; report-type=delivery-status; "
                       "boundary=B\n\n--B\nContent-Type: text/plain\n\nSorry.\n\n--B\n"
                       "Content-Type: message/delivery-status\n\nReporting-MTA: dns; "
                       "mx.example.org\n\nFinal-Recipient: rfc822; bob@example.org\n"
                       "Action: delayed\nStatus: 4.7.1\nDiagnostic-Code: smtp; 451 4.7.1 "
                       "Greylisted, come back later\n\n--B--\n")
    assert run("bounce", "learn", "--config", config, message, "greylisted").exit_code == 0
    listed = run("bounce", "learned", "--config", config).output
    assert listed.startswith("1\toperator\tgreylisted\t") and \
        listed.endswith("\t451 4.7.1 Greylisted, come back later\n")

def test_classify_and_train_take_the_configured_learned_file(config, tmp_path, monkeypatch):
    learn_all(tmp_path / "learned.jsonl", GREYLISTED, "greylisted")
    result = run("bounce", "classify", "--config", config, "-", stdin=PARAPHRASES[0])
    assert result.output.startswith("-\tgreylisted\t")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"text": "550 5.1.1 no such user", "reason": "userunknown"}))
    given = []
    monkeypatch.setattr(train, "run", lambda *args, learned, auto: given.append((learned, auto)))
    assert run("bounce", "train", "--config", config, data, "--out", "m.npz").exit_code == 0
    assert run("bounce", "train", "--config", config, data, "--out", "m.npz",
               "--with-auto").exit_code == 0
    operator = [str(tmp_path / "learned.jsonl")]
    assert given == [(operator, []),  # the operator's examples alone, unless asked
                     (operator, [str(tmp_path / "auto-learned-bounces.jsonl")])]
    assert run("bounce", "train", data, "--out", "m.npz", "--with-auto").exit_code == 2


def test_the_default_learned_file_is_beside_the_queue(tmp_path):
    assert config_module.load(None).learned_bounces == Path("learned-bounces.jsonl")
    path = tmp_path / "vsl.toml"
    path.write_text('[server]\nqueue_dir = "spool/queue"\n')
    assert config_module.load(path).learned_bounces == tmp_path / "spool/learned-bounces.jsonl"


@pytest.mark.parametrize("args, error", [
    (("learn", "MISSING", "greylisted"), "MISSING: No such file or directory"),
    (("learn", "-", "Grey-listed"), "'Grey-listed' is not a reason name"),
    (("forget", "3"), "no learned bounce 3 (see vsl bounce learned)"),
])
def test_commands_explain_what_is_wrong(config, args, error):
    result = run("bounce", args[0], "--config", config, *args[1:], stdin="451 greylisted")
    assert result.exit_code != 0 and error in result.output


POLICY = """
fn on_rcpt_to(ctx) {
    let why = bounce::classify("451 4.7.1 greylisted: try again after 5 minutes");
    return status::deny(`550 5.7.1 ${why.reason}`);
}
"""


@pytest.mark.skipif(not VSL.exists(), reason="the vsl command is not installed here")
def test_learning_while_vsl_serve_runs_changes_what_a_script_gets(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "main.vsl").write_text(POLICY)
    config = tmp_path / "vsl.toml"
    config.write_text(f'listen = ["127.0.0.1:{free_port()}"]\n[server]\nhostname = "mx.test"\n'
                      'scripts = "scripts"\nqueue_dir = "queue"\n')
    proc = subprocess.Popen([str(VSL), "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert port, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert reason_given(int(port.group(1))) != "greylisted"
        for text in GREYLISTED:
            assert run("bounce", "learn", "--config", config, "-", "greylisted",
                       stdin=text).exit_code == 0
        assert (tmp_path / "learned-bounces.jsonl").is_file()  # beside the queue
        assert wait_for(lambda: reason_given(int(port.group(1))) == "greylisted", 5, 0.2)
    finally:
        stop_process(proc)
        proc.stdout.close()
        proc.stderr.close()



def test_scripts_run_by_policyd_and_milter_take_the_learned_examples(tmp_path):
    """`vsl policyd` and `vsl milter` read the learned file as `vsl serve` does."""
    learn_all(tmp_path / "learned-bounces.jsonl", GREYLISTED, "greylisted")  # beside the queue
    config = config_for(tmp_path, POLICY)
    with in_thread(PolicyService(config, ("127.0.0.1", 0))) as policyd:
        with socket.create_connection(policyd.address, timeout=10) as link:
            link.sendall(policy_request(request(recipient="bob@mx.test")))
            assert link.makefile("rb").readline() == b"action=550 5.7.1 greylisted\n"
    shipped().learn_from(None)  # what the milter gives is its own doing
    with in_thread(MilterServer(config, f"inet:127.0.0.1:{free_port()}")) as milter:
        mta = MtaClient(int(milter.address.rpartition(":")[2]))
        try:
            assert mta.session().envelope("alice@client.example", "bob@mx.test") == [
                b"c", b"y550 5.7.1 greylisted\x00"]
        finally:
            mta.close()


def reason_given(port: int) -> str:
    """The reason the policy's bounce::classify gave, from its reply to RCPT TO."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="c.test", timeout=5) as smtp:
        smtp.ehlo()
        smtp.mail("alice@example.org")
        return smtp.rcpt("bob@mx.test")[1].decode().split()[-1]
