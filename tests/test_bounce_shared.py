"""The process's shared bounce classifier: one SMTP reply as delivery classifies it (and
`bounce::classify`, `vsl bounce classify`), its lazy load and its fallback."""
from __future__ import annotations

import logging
import time

import pytest

from vsl.stdlib.support.bounce.model import Classifier
from vsl.stdlib.support.bounce.shared import SharedClassifier, shipped


@pytest.mark.parametrize("reply, reason", [
    ("452 4.2.2 Mailbox full", "mailboxfull"),
    ("550 5.1.1 No such user", "userunknown"),
    ("451 4.4.1 cannot deliver to 192.0.2.1:25: Connection refused", "networkerror"),
    ("421 4.4.2 Timeout exceeded", "networkerror"),
])
def test_a_bare_reply_is_classified(reply, reason):
    found = SharedClassifier().classify_text(reply)
    assert found.reason == reason and found.confidence > 0.5
    assert found.status == reply.split()[1] and found.diagnostic == reply
    assert found.hard is reply.startswith("5")


@pytest.mark.parametrize("reply, expired", [
    ("451 4.4.1 cannot deliver to 192.0.2.1:25: Connection refused", False),
    ("451 4.4.1 connection timed out; message expired after 5 days in queue", False),
    ("550 4.4.7 QUEUE.Expired; message expired", True),
])
def test_a_reply_is_expired_only_when_its_code_says_so(reply, expired):
    """One attempt's reply does not tell that the queue lifetime ended: ``expired`` only
    for RFC 3463's X.4.7 (the network alone gave the first reply 0.51 expired)."""
    found = SharedClassifier().classify_text(reply)
    assert (found.reason == "expired") is expired and found.confidence > 0.5


@pytest.mark.parametrize("reply", ["450 mailbox unavailable", "421 Too many connections",
                                   "550 mailbox unavailable"])
def test_a_reply_without_an_enhanced_code_keeps_its_class(reply):
    found = SharedClassifier().classify_text(reply)
    assert found.status[:1] == reply[:1] and found.hard is reply.startswith("5")


def test_the_model_loads_once_lazily_and_replies_are_remembered(monkeypatch):
    loads = []
    load = Classifier.load.__func__
    monkeypatch.setattr(Classifier, "load",
                        classmethod(lambda cls, *path: loads.append(path) or load(cls, *path)))
    replies = SharedClassifier()
    assert loads == []  # nothing loaded before the first reply
    first = replies.classify_text("550 5.1.1 No such user")
    assert replies.classify_text("550 5.1.1 No such user") is first
    replies.classify_text("452 4.2.2 Mailbox full")
    assert len(loads) == 1 and shipped() is shipped()


@pytest.mark.parametrize("content", [None, b"", b"PK\x03\x04 truncated"])
def test_a_missing_or_corrupt_model_falls_back_to_the_codes_and_logs_once(tmp_path, caplog,
                                                                         content):
    path = tmp_path / "model.npz"
    if content is not None:
        path.write_bytes(content)
    replies = SharedClassifier(path)
    with caplog.at_level(logging.ERROR, "vsl.bounce"):
        unknown = replies.classify_text("550 5.1.1 No such user")
        full = replies.classify_text("452 4.2.2 Mailbox full")
    assert (unknown.reason, unknown.confidence) == ("userunknown", 0.0)
    assert (full.reason, full.confidence) == ("mailboxfull", 0.0)
    assert caplog.text.count("cannot load the model") == 1


def test_a_failing_classification_falls_back_to_the_codes(monkeypatch, caplog):
    replies = SharedClassifier()

    def broken(*args):
        raise RuntimeError("bug")
    monkeypatch.setattr(Classifier, "judge", broken)
    found = replies.classify_text("550 5.1.1 No such user")
    assert (found.reason, found.confidence) == ("userunknown", 0.0)
    assert "cannot classify" in caplog.text


def test_a_hostile_reply_stays_one_diagnostic_and_bounded():
    """A remote chooses its reply: line breaks and a fake boundary cannot add recipients or
    parts, and a huge one is classified in bounded time."""
    reply = "550 5.1.1 no such user\r\n--R\r\nFinal-Recipient: rfc822; x\r\n" + "y " * 500_000
    start = time.perf_counter()
    found = SharedClassifier().classify_text(reply)
    assert time.perf_counter() - start < 2 and found.status == "5.1.1"
    assert found.diagnostic.startswith("550 5.1.1 no such user --R Final-Recipient")
