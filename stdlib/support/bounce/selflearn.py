"""Self-learning: the classifier keeps examples of the replies vSL's own delivery gets, so
that a provider's own wording, once seen with a code, is recognised when the same provider
sends it without one.

Design. Only delivery teaches (``SharedClassifier.classify(..., source=domain)``): its
replies come from the remote MX of a recipient domain it chose to connect to, while an
incoming bounce (``bounce::parse``) is written by anyone. Each example records its
``source``, the registrable domain of that recipient domain (``scope``: the Public Suffix
List's, as an A-label, so ``s1.evil.net`` and ``s2.evil.net`` are one source, ``bücher.de``
and ``xn--bcher-kva.de`` too), and is only asked about later replies of the same source: a
source's examples can neither tip another source's answers nor evict them. A reply is
written by a stranger all the same, so an example is kept only when two views agree
(co-training): the network names a reason with a confidence of at least ``CONFIDENCE``,
and the text's own enhanced status code is one of the ``SPECIFIC`` codes whose meaning in
RFC 3463 / RFC 5248 names that very reason (``codes.reason_of``).
As the network leans on that code too, a third look keeps the views apart: the network
asked about the wording alone (``uncoded``: every digit masked) must give the reason a
probability of at least ``PLAUSIBLE``, so that a code cannot teach a wording that says
something else ("452 4.2.2 no such user here" teaches nothing). That look is taken only for
a wording not already known (its ``key``).

A reason the network does not know is never learned, an answer the operator's examples gave
is never learned from, and an automatic example with the key of an operator's example is
never used (theirs always win). What is kept is the diagnostic line (cut to the parser's
``MAX_TEXT``) with its addresses and long ids masked (``masked``: linear, whole runs of
characters matched once); two texts that are the same once digits are masked too (``key``,
stored with the example) of one source are one example (another source's example of the
same wording is its own). The file (``[bounce] auto_learned``) has the format of the
operator's learned file (``learned.py``) and never holds more than ``PER_SOURCE`` examples
of one reason from one source nor ``PER_REASON`` of a reason in all: a lesson past a bound is
refused (nothing is evicted, so no source can push out another's examples, and a file at
its bounds is never rewritten). Rows without a source (written by the first version of
self-learning) are not used, not counted and not trained on (``usable``); ``vsl bounce
learned`` lists them so that the operator can forget them. Several worker processes may
learn at once: each addition reads and appends to the file under ``learned.locked``, and
checks there that no other process added the same example first. Learning is best-effort
and never waits (:class:`Learner`): the lock is asked once; a busy lock or a file that
cannot be written is logged once and learning rests until the file's directory changes or
``BACKOFF`` seconds passed.

What the examples then do (``memory.Neighbours``): a reply of the same source without a
specific code of its own whose nearest automatic example reaches a cosine of
``memory.NEIGHBOUR_THRESHOLD`` gets that example's reason, when the network gives that reason
at least ``PLAUSIBLE`` too (``shared.py``); bench/bounce_selflearn.py measured it.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import re
import time
from pathlib import Path

from . import learned
from .codes import reason_of
from .message import MAX_TEXT, Bounce, as_bounce

log = logging.getLogger("vsl.bounce")

CONFIDENCE = 0.9  # the network's least probability for an example to be kept
PLAUSIBLE = 0.2  # the least probability the network gives a reason it finds plausible
# Enhanced codes (subject.detail) whose standard meaning names one reason.
SPECIFIC = frozenset({"1.1", "1.2", "1.6", "1.8", "2.2", "2.3", "3.4", "4.7", "7.13",
                      "7.25", "7.26"})
PER_REASON = 50  # examples of a reason in all
PER_SOURCE = 10  # examples of a reason from one source
KEPT_TEXT = 1000  # characters of a diagnostic kept
BACKOFF = 60.0  # seconds learning rests after a busy lock or a file it could not write

# A run of characters that may be an address or an id (no spacing, brackets or quotes;
# an address with its angle brackets), and within it a word; both match whole runs, so the
# work is linear in the text.
_RUN = re.compile(r"<?[^\s<>()\"',;:\[\]]+>?")
_WORD = re.compile(r"[0-9A-Za-z-]+")
_HEX_ID = re.compile(r"[0-9a-fA-F-]{8,}")
_DIGIT = re.compile(r"\d")
_DIGITS = re.compile(r"\d+")


def masked(text: str) -> str:
    """``text`` (cut to ``MAX_TEXT``) without its addresses and long ids (replaced by
    ``<address>``, ``<id>``)."""
    return _RUN.sub(_masked_run, text[:MAX_TEXT])


def _masked_run(found: re.Match) -> str:
    run = found.group()
    if "@" in run.strip("<>")[1:-1]:
        return "<address>"
    return _WORD.sub(_masked_word, run) if _DIGIT.search(run) else run


def _masked_word(found: re.Match) -> str:
    word = found.group()
    if not _DIGIT.search(word):
        return word
    if _HEX_ID.fullmatch(word):
        return "<id>"
    return "-".join("<id>" if len(part) >= 8 and _DIGIT.search(part) else part
                    for part in word.split("-"))


def uncoded(text: str) -> str:
    """``text`` without its codes (every digit run is ``#``): its wording alone."""
    return _DIGITS.sub("#", text)


def key(text: str) -> str:
    """What two near-duplicates share: the masked text without digits, case or spacing."""
    return " ".join(uncoded(masked(text)).lower().split())


def kept(text: str) -> str:
    """What an example keeps of a diagnostic: masked, cut to ``KEPT_TEXT``."""
    return masked(text.strip())[:KEPT_TEXT]


def diagnostic_key(bounce: Bounce) -> str:
    """The key of what ``bounce`` says (its diagnostic, else its text), cut as an automatic
    example is, so an operator's example and an automatic one of one text have one key."""
    return key(kept(bounce.first.diagnostic or bounce.text))


@functools.cache
def _suffixes():
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def scope(domain: str) -> str:
    """The source a recipient domain's replies are learned under: its registrable domain
    (the Public Suffix List's), lowercase, as an A-label; the domain itself when it has
    none."""
    name = domain.strip().rstrip(".").lower()
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        pass  # (not a valid IDN: kept as it is written)
    return _suffixes().privatesuffix(name) or name


def usable(examples: list[learned.Example]) -> list[learned.Example]:
    """The examples that have a source (see the module docstring)."""
    return [found for found in examples if found.source]


def key_of(example: learned.Example) -> str:
    """The key of an example: the one stored with it, else computed."""
    return example.key or key(example.text)


def example_id(example: learned.Example) -> str:
    """A stable id of an automatic example: ``a`` and a short hash of its key and time."""
    said = f"{key_of(example)}\0{example.learned_at}".encode("utf-8", "surrogateescape")
    digest = hashlib.sha256(said)
    return "a" + digest.hexdigest()[:8]


def specific(status: str) -> bool:
    """Whether an enhanced status code is one of the ``SPECIFIC`` ones."""
    return status.partition(".")[2] in SPECIFIC


def lesson(bounce: Bounce, judged, labels: list[str], judge, source: str,
           known=frozenset()) -> learned.Example | None:
    """The example a network's judgement of ``bounce`` (a reply from ``source``'s server)
    teaches, or None unless the network and the text's own specific code agree, its key is
    not in ``known`` (the operator's keys and ``source``'s) and the wording alone makes the
    reason plausible; ``judge``: a bounce -> (classification, probability per label) of the
    network (see the module docstring)."""
    first = bounce.first
    if judged.confidence < CONFIDENCE or not specific(first.status) or not first.diagnostic:
        return None
    if reason_of(first.status, first.reply_code) != judged.reason:
        return None
    text = kept(first.diagnostic)
    found = key(text)
    if found in known:
        return None
    _, wording = judge(as_bounce(uncoded(first.diagnostic)))
    if wording[labels.index(judged.reason)] < PLAUSIBLE:
        return None
    return learned.example(text, judged.reason, source, found)


def add(path: str | Path, example: learned.Example, tries: int = learned.LOCK_TRIES) -> bool:
    """Add ``example`` to the automatic file unless it is known or past a bound (False; see
    ``room_for``). Safe with several processes (module docstring); raises ``learned.Busy``
    when another holds the file (``tries`` looks at its lock), OSError when it cannot be
    written."""
    example = dataclasses.replace(example, key=key_of(example))
    with learned.locked(path, tries):
        if not room_for(usable(learned.read(path, warn=False)), example):
            return False
        learned.append(path, example)
    return True


def room_for(examples: list[learned.Example], new: learned.Example) -> bool:
    """Whether ``new`` is no near-duplicate of an example of its source among ``examples``
    and within the bounds: fewer than ``PER_REASON`` of its reason, fewer than
    ``PER_SOURCE`` of its reason from its source."""
    same_reason = [found for found in examples if found.reason == new.reason]
    if len(same_reason) >= PER_REASON:
        return False
    if sum(found.source == new.source for found in same_reason) >= PER_SOURCE:
        return False
    return all(key_of(found) != new.key for found in examples if found.source == new.source)


def forget(path: str | Path, forgotten) -> None:
    """Rewrite the automatic file without the examples ``forgotten`` says are."""
    with learned.locked(path):
        examples = learned.read(path, warn=False)
        kept = [e for e in examples if not forgotten(e)]
        if len(kept) != len(examples):
            learned.rewrite(path, kept)


class Learner:
    """Adds lessons to one automatic file, best-effort: never raises nor waits (the lock is
    asked once); after a busy lock or a failure to write, one log line and no attempt until
    the file's directory changed or ``BACKOFF`` seconds passed (see the module docstring)."""

    def __init__(self, path: str | Path, clock=time.monotonic):
        self.path = Path(path)
        self._clock = clock
        self._resting: tuple[float, object] | None = None  # (since, directory's signature)

    def add(self, example: learned.Example) -> bool:
        """Whether ``example`` was added (False: known, busy, or the file cannot be
        written)."""
        if self._resting_still():
            return False
        try:
            return add(self.path, example, tries=1)
        except learned.Busy:
            log.info("bounce classifier: %s is busy (another process writes it); self-learning "
                     "rests %d s", self.path, BACKOFF)
        except OSError as err:
            log.warning("bounce classifier: cannot learn into %s (%s); self-learning rests "
                        "until its directory changes or %d s passed", self.path,
                        err.strerror or err, BACKOFF)
        self._resting = (self._clock(), self._directory())
        return False

    def _resting_still(self) -> bool:
        if self._resting is None:
            return False
        since, directory = self._resting
        if self._clock() - since < BACKOFF and self._directory() == directory:
            return True
        self._resting = None
        return False

    def _directory(self):
        try:
            found = self.path.parent.stat()
        except OSError:
            return None
        return found.st_mtime_ns, found.st_ino, found.st_mode
