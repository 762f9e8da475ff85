"""The process's bounce classifier: what the ``bounce::`` natives, ``vsl bounce classify`` and
delivery (every 4xx/5xx reply it gets) all ask, so one text gets one answer everywhere.

Design: a weights file is loaded on first use only (once, under a lock, from any thread) and
shared. When it is missing or unreadable the error is logged once (which file, what is wrong,
how to fix it) and the status codes decide (:mod:`.codes`, confidence 0); a classification
never raises. numpy and the network are imported only when something is classified.

A text is read by :func:`.message.as_bounce`: a whole message when it starts with a header
block, anything else (``452 4.2.2 Mailbox full``, a reply delivery got) is read as the one-recipient
RFC 3464 report it would be reported in: the network learned from such reports, and its
``Action`` (failed or delayed) is a feature. Replies repeat, so the last ones are remembered.

Learned bounces (``vsl bounce learn``: :mod:`.learned`, :mod:`.memory`) are asked before the
network once :meth:`SharedClassifier.learn_from` named their file (``vsl serve`` does, at
start-up); when the file changes, its new examples apply and the remembered answers are
forgotten.
"""
from __future__ import annotations

import functools
import logging
import threading
import zipfile
from pathlib import Path

from . import SHIPPED
from .learned import LearnedFile
from .message import Bounce, as_bounce

log = logging.getLogger("vsl.bounce")

REMEMBERED = 1024  # distinct (reply, action) pairs a classifier keeps
REMEMBERED_SIZE = 1000  # characters: longer texts (whole messages) are never kept
# What np.load and Classifier.load raise on a missing, truncated or foreign file.
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


class SharedClassifier:
    """The classifier of one weights file, loaded on first use (see the module docstring)."""

    def __init__(self, path: str | Path = SHIPPED):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._loaded = False
        self._classifier = None
        self._remembered = functools.lru_cache(maxsize=REMEMBERED)(self._classify_text)
        self._learned: LearnedFile | None = None

    def learn_from(self, learned: str | Path | LearnedFile | None) -> None:
        """Ask the examples of this learned file (a path, or a ``LearnedFile`` with its own
        clock; None: none) before the network, from the next classification on."""
        if learned is not None and not isinstance(learned, LearnedFile):
            learned = LearnedFile(learned)
        self._learned = learned
        self._remembered.cache_clear()

    def classify_text(self, text: str):
        """The ``Classification`` of a message or a reply line (short ones remembered, with
        the learned file's generation: an answer given before it changed is not reused)."""
        if len(text) > REMEMBERED_SIZE:
            return self._classify_text(text)
        return self._remembered(text, self._learned_generation())

    def _classify_text(self, text: str, generation: int = 0):
        """(``generation`` only keys the remembered answers.)"""
        return self.classify(as_bounce(text))

    def classify(self, bounce: Bounce):
        """The ``Classification`` of a parsed bounce: by the learned examples when it is
        like one, else by the network, or by its codes when the network cannot be used."""
        learned = self._learned_match(bounce)
        if learned is not None:
            return learned
        classifier = self.get()
        if classifier is not None:
            try:
                return classifier.classify_bounce(bounce)
            except Exception:  # noqa: BLE001 - a classification must never break its caller
                log.exception("bounce classifier: cannot classify %r",
                              bounce.first.diagnostic[:200])
        from .codes import classify_by_codes

        return classify_by_codes(bounce)

    def _learned_match(self, bounce: Bounce):
        """The ``Classification`` the learned examples give ``bounce``, or None."""
        learned = self._learned
        if learned is None:
            return None
        memory = learned.memory()
        if memory is None:
            return None
        try:
            return memory.match(bounce)
        except Exception:  # noqa: BLE001 - a classification must never break its caller
            log.exception("bounce classifier: cannot compare %r with the learned bounces of %s",
                          bounce.first.diagnostic[:200], learned.path)
            return None

    def _learned_generation(self) -> int:
        """The learned file's generation, after a look at it when one is due (0: none)."""
        learned = self._learned
        if learned is None:
            return 0
        learned.memory()
        return learned.generation

    def get(self):
        """The loaded ``Classifier``, or None after logging once why it could not load."""
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._classifier = self._load()
                    self._loaded = True
        return self._classifier

    def _load(self):
        from .model import Classifier

        try:
            return Classifier.load(self.path)
        except UNREADABLE as err:
            log.error("bounce classifier: cannot load the model %s (%s: %s); classifying "
                      "by status codes only. Reinstall vsl-mta, or write the file with "
                      "`vsl bounce train DATA.jsonl --out %s`",
                      self.path, type(err).__name__, err, self.path)
            return None


@functools.cache
def shipped() -> SharedClassifier:
    """The process's one classifier of the shipped model (loaded on its first use)."""
    return SharedClassifier()
