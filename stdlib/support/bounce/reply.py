"""Classifying one SMTP reply (a bare diagnostic, not a whole bounce message), for the
replies vSL's own delivery receives.

Design: the network learned from DSNs, so a reply is read as the one-recipient RFC 3464
report it would be reported in (``Action``, ``Diagnostic-Code``) and goes through the same
parser and features as any bounce. ``ReplyClassifier`` is what a long-running process
holds: it loads the model on first use only (once, under a lock, usable from worker
threads), remembers the last replies it classified (a remote server repeats its replies),
and never raises: a missing or corrupt model is logged once and every reply then has no
classification.
"""
from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path

from .model import SHIPPED, Classification, Classifier

log = logging.getLogger("vsl.bounce")

REMEMBERED = 1024  # distinct (reply, action) pairs kept by a ReplyClassifier


def classify_reply(classifier: Classifier, reply: str, action: str = "failed") -> Classification:
    """Why a reply (e.g. ``452 4.2.2 Mailbox full``) refused a recipient; ``action`` is
    the RFC 3464 action it led to: ``failed`` or ``delayed``."""
    return classifier.classify(_as_report(reply, action))


def _as_report(reply: str, action: str) -> str:
    diagnostic = " ".join(reply.split())
    return ("Content-Type: multipart/report; report-type=delivery-status; boundary=R\n\n"
            "--R\nContent-Type: message/delivery-status\n\n"
            f"Final-Recipient: rfc822; recipient\nAction: {action}\n"
            f"Diagnostic-Code: smtp; {diagnostic}\n--R--\n")


class ReplyClassifier:
    """The shipped (or given) model, loaded lazily; ``classify`` never raises."""

    def __init__(self, path: str | Path = SHIPPED):
        self.path = path
        self._lock = threading.Lock()
        self._classifier: Classifier | None = None
        self._unusable = False
        self.classify = functools.lru_cache(maxsize=REMEMBERED)(self._classify)

    def _classify(self, reply: str, action: str = "failed") -> Classification | None:
        """The reply's classification, or None when the model cannot be used."""
        classifier = self._loaded()
        if classifier is None:
            return None
        try:
            return classify_reply(classifier, reply, action)
        except Exception:  # noqa: BLE001 - a classification must never break its caller
            log.exception("bounce: cannot classify the reply %r", reply[:200])
            return None

    def _loaded(self) -> Classifier | None:
        with self._lock:
            if self._classifier is None and not self._unusable:
                try:
                    self._classifier = Classifier.load(self.path)
                except Exception as err:  # noqa: BLE001 - missing, truncated, not a model
                    self._unusable = True
                    log.error("bounce: cannot load the model %s (%s); replies are not "
                              "classified", self.path, err)
            return self._classifier


@functools.cache
def shipped() -> ReplyClassifier:
    """The process's one classifier of the shipped model (loaded on its first use)."""
    return ReplyClassifier()
