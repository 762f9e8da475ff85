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
forgotten. With a self-learning file too (``[bounce] self_learning``), a classification of
a reply from a recipient domain's server (``source``: delivery's, the only one that gives
it; learned under its registrable domain, ``selflearn.scope``) asked with ``learn=True``
may add an automatic example of that source (:mod:`.selflearn`), and that source's
automatic examples may tip the network's answer about its later replies
(:class:`.memory.Neighbours`); a classification without a source
(``bounce::classify``, ``bounce::parse``, ``vsl bounce classify``) is never tipped. Nothing
self-learning does (learning, comparing, the ``on_learned`` callback) can make a
classification fail.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
import zipfile
import zlib
from pathlib import Path

from . import SHIPPED, selflearn
from .learned import LearnedFile
from .message import Bounce, as_bounce

log = logging.getLogger("vsl.bounce")

REMEMBERED = 1024  # distinct (reply, action) pairs a classifier keeps
REMEMBERED_SIZE = 1000  # characters: longer texts (whole messages) are never kept
# What np.load and Classifier.load raise on a missing, truncated, damaged or foreign file.
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


class SharedClassifier:
    """The classifier of one weights file, loaded on first use (see the module docstring)."""

    def __init__(self, path: str | Path = SHIPPED):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._loaded = False
        self._classifier = None
        self._remembered = functools.lru_cache(maxsize=REMEMBERED)(self._classify_text)
        self._learned: LearnedFile | None = None
        self._auto: LearnedFile | None = None
        self._learner: selflearn.Learner | None = None
        self._on_learned = None

    def learn_from(self, learned: str | Path | None, auto: str | Path | None = None,
                   clock=time.monotonic, on_learned=None) -> None:
        """Ask the examples of the ``learned`` file (None: none) before the network; with
        ``auto``, the self-learning file (None: self-learning off), learn from the
        classifications asked with a source and ``learn=True`` (``on_learned(reason)``
        told of each example kept) and ask its examples after the network. Both files are
        looked at again when ``clock`` passed a second."""
        self._learned = learned and LearnedFile(learned, self._memory, clock)
        self._auto = auto and LearnedFile(auto, self._neighbours, clock)
        self._learner = auto and selflearn.Learner(auto, clock)
        self._on_learned = on_learned
        self._remembered.cache_clear()

    def classify_text(self, text: str, source: str = "", learn: bool = False):
        """The ``Classification`` of a message or a reply line (short ones remembered, with
        the learned files' generations: an answer given before one changed is not reused);
        ``source``: the recipient domain whose server replied ``text``, ``learn``: whether
        self-learning may keep it (see the module docstring)."""
        if len(text) > REMEMBERED_SIZE:
            return self._classify_text(text, source, learn)
        return self._remembered(text, source, learn, self._generations())

    def _classify_text(self, text: str, source: str, learn: bool, generations: tuple = ()):
        """(``generations`` only keys the remembered answers.)"""
        return self.classify(as_bounce(text), source, learn)

    def classify(self, bounce: Bounce, source: str = "", learn: bool = False):
        """The ``Classification`` of a parsed bounce: by the learned examples when it is
        like one, else by the network (tipped by a near automatic example of ``source``),
        or by its codes when the network cannot be used. ``source``, ``learn``: as for
        ``classify_text``."""
        operator = self._learned and self._learned.memory()  # read once: one memory asked
        found = _asked(operator, self._learned, bounce, lambda memory: memory.match(bounce))
        if found is not None:
            return found
        classifier = self.get()
        if classifier is None:
            return _by_codes(bounce)
        try:
            judged, probabilities = classifier.judge(bounce)
        except Exception:  # noqa: BLE001 - a classification must never break its caller
            log.exception("bounce classifier: cannot classify %r", bounce.first.diagnostic[:200])
            return _by_codes(bounce)
        if not source or self._auto is None:
            return judged
        excluded = operator.keys if operator is not None else frozenset()
        neighbours = self._auto.memory()  # read once: the memory both _learn and _tipped ask
        source = selflearn.scope(source)
        if learn:
            self._learn(bounce, judged, classifier, source, excluded, neighbours)
        return self._tipped(bounce, judged, probabilities, classifier, source, excluded,
                            neighbours)

    def _learn(self, bounce: Bounce, judged, classifier, source: str, excluded,
               neighbours) -> None:
        """Keep what ``judged`` teaches, when it teaches something new (never raises);
        ``neighbours``: the self-learning file's memory this classification read."""
        try:
            known = excluded if neighbours is None else excluded | neighbours.keys_of(source)
            lesson = selflearn.lesson(bounce, judged, classifier.labels, classifier.judge,
                                      source, known)
            if lesson is None or not self._learner.add(lesson):
                return
            log.info("bounce classifier: learned %s for %s from %r", lesson.reason, source,
                     lesson.text[:200])
            if self._on_learned is not None:
                self._on_learned(lesson.reason)
        except Exception:  # noqa: BLE001 - a classification must never break its caller
            log.exception("bounce classifier: cannot learn into %s", self._auto.path)

    def _tipped(self, bounce: Bounce, judged, probabilities, classifier, source: str,
                excluded, neighbours):
        """``judged``, or, for a text without a specific code of its own that is no
        operator's example, the reason of a near automatic example of ``source`` the
        network finds plausible (``selflearn.PLAUSIBLE``), with the lesser of the cosine
        and the network's probability as its confidence; ``neighbours``: as for ``_learn``."""
        if selflearn.specific(bounce.first.status) or judged.confidence > 1 - selflearn.PLAUSIBLE:
            return judged  # (so sure of its reason that it finds no other plausible)
        if excluded and selflearn.diagnostic_key(bounce) in excluded:
            return judged
        near = _asked(neighbours, self._auto, bounce,
                      lambda memory: memory.nearest(bounce, source, excluded))
        if near is None or near[0] == judged.reason or near[0] not in classifier.labels:
            return judged
        reason, cosine = near
        probability = float(probabilities[classifier.labels.index(reason)])
        if probability < selflearn.PLAUSIBLE:
            return judged
        try:
            return classifier.named(bounce, reason, min(cosine, probability))
        except Exception:  # noqa: BLE001 - a classification must never break its caller
            log.exception("bounce classifier: cannot name %s for %r", reason,
                          bounce.first.diagnostic[:200])
            return judged

    def _generations(self) -> tuple:
        """The learned files' generations, after a look at them when one is due."""
        return tuple(_generation(watched) for watched in (self._learned, self._auto))

    def _memory(self, examples):
        from .memory import Memory

        return Memory(examples, self.rarity())

    def _neighbours(self, examples):
        from .memory import Neighbours

        return Neighbours(selflearn.usable(examples), self.rarity(),
                          self._auto and self._auto.last)

    def rarity(self):
        """The feature weights learned examples are compared by: the model file's when it
        has them for the memory's feature slots (``features.BUCKETS``: a model trained with
        another number has not), else counted on the synthetic bounces (about a second,
        once a process)."""
        from .features import BUCKETS
        from .memory import background_rarity

        classifier = self.get()
        if classifier is not None and classifier.rarity is not None and \
                len(classifier.rarity) == BUCKETS:
            return classifier.rarity

        return background_rarity()

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


def _asked(memory, watched: LearnedFile | None, bounce: Bounce, question):
    """What ``question`` of ``memory``, the memory read of the learned file ``watched``
    (named in the log line), answers about ``bounce`` (None: no file, nothing learned, no
    answer, or it failed: logged)."""
    if memory is None:
        return None
    try:
        return question(memory)
    except Exception:  # noqa: BLE001 - a classification must never break its caller
        log.exception("bounce classifier: cannot compare %r with the learned bounces of %s",
                      bounce.first.diagnostic[:200], watched.path)
        return None


def _by_codes(bounce: Bounce):
    """The status codes' classification (confidence 0)."""
    from .codes import classify_by_codes

    return classify_by_codes(bounce)


def _generation(watched: LearnedFile | None) -> int:
    if watched is None:
        return 0
    watched.memory()
    return watched.generation


@functools.cache
def shipped() -> SharedClassifier:
    """The process's one classifier of the shipped model (loaded on its first use)."""
    return SharedClassifier()
