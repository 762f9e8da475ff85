"""Self-learning: the classifier keeps examples of what the server sees (the replies vSL's
delivery gets, the recipients of incoming bounces that ``bounce::parse`` reads), so that a
provider's own wording, once seen with a code, is recognised when it comes without one.

Design. Both sources are written by strangers, so an example is kept only when two views
agree (co-training): the network names a reason with a confidence of at least
``CONFIDENCE``, and the text's own enhanced status code is one of the ``SPECIFIC`` codes
whose meaning in RFC 3463 / RFC 5248 names that very reason (``codes.reason_of``). As the
network leans on that code too, a third look keeps the views apart: the network asked about
the wording alone (``uncoded``: every digit masked) must give the reason a probability of
at least ``PLAUSIBLE``, so that a code cannot teach a wording that says something else
("452 4.2.2 no such user here" teaches nothing).
A reason the network does not know is never learned, and an answer the operator's examples
gave is never learned from (theirs always win: they are asked first). What is kept is the
diagnostic line with its addresses and long ids masked (``masked``); two texts that are the
same once digits are masked too (``key``) are one example. The file (``[bounce]
auto_learned``) has the format of the operator's learned file (``learned.py``) and never
holds more than ``PER_REASON`` examples of a reason nor ``TOTAL`` in all: an addition past
a bound rewrites the file atomically (0600) without the oldest. Several worker processes
may learn at once: each addition reads and writes the file under an exclusive ``flock`` of
``<file>.lock``, and checks there that no other process added the same example first.

What the examples then do (``memory.Neighbours``): a text without a specific code of its own
whose nearest automatic example reaches a cosine of ``memory.NEIGHBOUR_THRESHOLD`` gets that
example's reason, when the network gives that reason at least ``PLAUSIBLE`` too
(``shared.py``); bench/bounce_selflearn.py measured it.
"""
from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from . import learned
from .codes import reason_of
from .message import Bounce, as_bounce

CONFIDENCE = 0.9  # the network's least probability for an example to be kept
PLAUSIBLE = 0.2  # the least probability the network gives a reason it finds plausible
# Enhanced codes (subject.detail) whose standard meaning names one reason.
SPECIFIC = frozenset({"1.1", "1.2", "1.6", "1.8", "2.2", "2.3", "3.4", "4.7", "7.13",
                      "7.25", "7.26"})
PER_REASON = 50
TOTAL = 500
MAX_TEXT = 1000  # characters of a diagnostic kept

_ADDRESS = re.compile(r"[^\s<>()\"',;:\[\]]+@[^\s<>()\"',;:\[\]]+")
_ID = re.compile(r"\b(?=[0-9a-f-]*\d)[0-9a-f-]{8,}\b|\b[0-9A-Za-z]*\d[0-9A-Za-z]{7,}\b", re.I)
_DIGITS = re.compile(r"\d+")


def masked(text: str) -> str:
    """``text`` without its addresses and long ids (replaced by ``<address>``, ``<id>``)."""
    return _ID.sub("<id>", _ADDRESS.sub("<address>", text))


def key(text: str) -> str:
    """What two near-duplicates share: the masked text without digits, case or spacing."""
    return " ".join(uncoded(masked(text)).lower().split())


def specific(status: str) -> bool:
    """Whether an enhanced status code is one of the ``SPECIFIC`` ones."""
    return status.partition(".")[2] in SPECIFIC


def lesson(bounce: Bounce, judged, labels: list[str], judge) -> learned.Example | None:
    """The example a network's judgement of ``bounce`` teaches, or None unless the network
    and the text's own specific code agree and the wording alone makes the reason
    plausible; ``judge``: a bounce -> (classification, probability per label) of the
    network (see the module docstring)."""
    first = bounce.first
    if judged.confidence < CONFIDENCE or judged.reason not in labels or \
            not specific(first.status) or not first.diagnostic:
        return None
    if reason_of(first.status, first.reply_code) != judged.reason:
        return None
    _, wording = judge(as_bounce(uncoded(first.diagnostic)))
    if wording[labels.index(judged.reason)] < PLAUSIBLE:
        return None
    return learned.example(masked(first.diagnostic.strip())[:MAX_TEXT], judged.reason)


def uncoded(text: str) -> str:
    """``text`` without its codes (every digit run is ``#``): its wording alone."""
    return _DIGITS.sub("#", text)


def bounded(examples: list[learned.Example]) -> list[learned.Example]:
    """``examples`` (oldest first) without near-duplicates and within the bounds, the
    newest kept."""
    kept, seen, per_reason = [], set(), {}
    for found in reversed(examples):
        if len(kept) == TOTAL:
            break
        if key(found.text) in seen or per_reason.get(found.reason, 0) == PER_REASON:
            continue
        seen.add(key(found.text))
        per_reason[found.reason] = per_reason.get(found.reason, 0) + 1
        kept.append(found)
    return kept[::-1]


def add(path: str | Path, example: learned.Example) -> bool:
    """Add ``example`` to the automatic file unless a near-duplicate is there (False);
    keeps the file within the bounds. Safe with several processes (module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        examples = learned.read(path)
        if key(example.text) in {key(found.text) for found in examples}:
            return False
        examples.append(example)
        kept = bounded(examples)
        if len(kept) == len(examples):
            learned.append(path, example)
        else:
            learned.rewrite(path, kept)
    return True


def compact(path: str | Path) -> int:
    """Rewrite the automatic file within the bounds, without near-duplicates; the number
    of examples dropped."""
    with _locked(Path(path)):
        examples = learned.read(path)
        kept = bounded(examples)
        if len(kept) != len(examples):
            learned.rewrite(path, kept)
    return len(examples) - len(kept)


def forget(path: str | Path, forgotten: list[learned.Example]) -> None:
    """Rewrite the automatic file without the ``forgotten`` examples."""
    with _locked(Path(path)):
        learned.rewrite(path, [e for e in learned.read(path) if e not in forgotten])


class _locked:
    """An exclusive flock of ``<path>.lock`` (0600), held for a with block."""

    def __init__(self, path: Path):
        self.path = path.with_name(path.name + ".lock")

    def __enter__(self):
        self.handle = open(self.path, "a", opener=lambda name, flags: os.open(name, flags, 0o600))
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.handle.close()  # releases the lock
