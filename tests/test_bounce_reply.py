"""Classifying one SMTP reply with the shipped bounce model, as delivery does."""
from __future__ import annotations

import logging
import time

import pytest

from vsl.stdlib.support.bounce.model import Classifier
from vsl.stdlib.support.bounce.reply import ReplyClassifier, classify_reply, shipped


@pytest.mark.parametrize("reply, action, reason", [
    ("452 4.2.2 Mailbox full", "delayed", "mailboxfull"),
    ("550 5.1.1 No such user", "failed", "userunknown"),
    ("451 4.4.1 cannot deliver to 192.0.2.1:25: Connection refused", "delayed",
     "networkerror"),
])
def test_a_bare_reply_is_classified(reply, action, reason):
    found = classify_reply(Classifier.load(), reply, action)
    assert found.reason == reason and found.confidence > 0.5
    assert found.status == reply.split()[1] and found.diagnostic == reply
    assert found.hard is (action == "failed")


def test_the_model_loads_once_lazily_and_replies_are_remembered(monkeypatch):
    loads = []
    load = Classifier.load.__func__
    monkeypatch.setattr(Classifier, "load",
                        classmethod(lambda cls, *path: loads.append(path) or load(cls, *path)))
    replies = ReplyClassifier()
    assert loads == []  # nothing loaded before the first reply
    first = replies.classify("550 5.1.1 No such user")
    assert replies.classify("550 5.1.1 No such user") is first
    replies.classify("452 4.2.2 Mailbox full", "delayed")
    assert len(loads) == 1 and shipped() is shipped()


@pytest.mark.parametrize("content", [None, b"", b"PK\x03\x04 truncated"])
def test_a_missing_or_corrupt_model_gives_no_reason_and_logs_once(tmp_path, caplog, content):
    path = tmp_path / "model.npz"
    if content is not None:
        path.write_bytes(content)
    replies = ReplyClassifier(path)
    with caplog.at_level(logging.ERROR, "vsl.bounce"):
        assert replies.classify("550 5.1.1 No such user") is None
        assert replies.classify("452 4.2.2 Mailbox full", "delayed") is None
    assert caplog.text.count("cannot load the model") == 1


def test_a_failing_classification_gives_no_reason(monkeypatch, caplog):
    replies = ReplyClassifier()

    def broken(*args):
        raise RuntimeError("bug")
    monkeypatch.setattr(Classifier, "classify", broken)
    assert replies.classify("550 5.1.1 No such user") is None
    assert "cannot classify the reply" in caplog.text


def test_a_hostile_reply_stays_one_diagnostic_and_bounded():
    """A remote chooses its reply: line breaks and a fake boundary cannot add recipients or
    parts, and a huge one is classified in bounded time."""
    reply = "550 5.1.1 no such user\r\n--R\r\nFinal-Recipient: rfc822; x\r\n" + "y " * 500_000
    start = time.perf_counter()
    found = classify_reply(Classifier.load(), reply)
    assert time.perf_counter() - start < 2 and found.status == "5.1.1"
    assert found.diagnostic.startswith("550 5.1.1 no such user --R Final-Recipient")
