"""The memory of learned bounces: a text like the examples an operator gave a reason gets
that reason, before the network is asked (``learned.py`` keeps the examples).

Design: a text is compared by its focus (the diagnostic: ``features.focus_features``: words,
bigrams and character n-grams) weighted by each feature's inverse document frequency in
ordinary bounce language (``rarity``: stored in the model file by ``vsl bounce train``,
computed from the synthetic bounces for a model without it), so "try again later" counts
for little and "greylisted" for much. The examples of one reason are averaged
into one unit vector, its centroid: what the examples share (the reason's own words) stands
out, what only one of them says fades. A text whose cosine with a centroid reaches
``THRESHOLD`` gets that reason, with the confidence ``0.5 + 0.5 * (cosine - THRESHOLD) /
(1 - THRESHOLD)`` (0.5 at the threshold, 1 at a cosine of 1).

THRESHOLD was measured with two custom reasons of five examples each (greylisting, a daily
quota: tests/test_bounce_learn.py): eight of nine unseen paraphrases score 0.25-0.63 (one
saying "per-day" where the examples say "daily" scores 0.16); other reply lines score at
most 0.11, the 353 messages of the labelled file at most 0.15, so none of their answers
changes. Examples worded close to an existing reason can reach further (a mailbox-limit
wording scored 0.24 against an example about a mailbox's daily maximum): give a custom
reason the words that set it apart.

The status and hard flag are the text's own enhanced code when it shows one, else the code
most seen in the reason's examples (in the class of the text's reply code, if any), else
``X.0.0`` of the reply code, else ``5.0.0`` (hard).

The automatic examples of self-learning (``selflearn.py``) are not averaged: each is its own
vector of at most ``MAX_FEATURES`` features (``Neighbours``), grouped by their source (the
registrable domain whose server answered), and a reply from the same source near one of them
(cosine >= ``NEIGHBOUR_THRESHOLD``, with addresses and ids masked on both sides) gets its
reason, but only when the network gives that reason a probability of at least
``selflearn.PLAUSIBLE`` (``shared.py`` asks): an example can tip the network between reasons
it finds plausible, never impose one it rules out. An example with the key of an operator's
example (``Memory.keys``) is never used. Both values were chosen by
bench/bounce_selflearn.py (docs/bounces.md has its numbers).
"""
from __future__ import annotations

import functools
from collections import Counter

import numpy as np

from . import selflearn, synthetic
from .features import BUCKETS, focus_features
from .message import Bounce, as_bounce, parse
from .model import Classification, inferred_status

THRESHOLD = 0.2
NEIGHBOUR_THRESHOLD = 0.6
BACKGROUND = 1000  # synthetic bounces the feature weights are counted on
MAX_FEATURES = 512  # features an automatic example keeps (its strongest)


class Memory:
    """The centroids of the learned reasons, and what each reason's examples showed."""

    def __init__(self, examples, rarity: np.ndarray):
        by_reason: dict[str, list] = {}
        for learned in examples:
            by_reason.setdefault(learned.reason, []).append(as_bounce(learned.text))
        self.rarity = rarity
        self.keys = {selflearn.diagnostic_key(bounce)
                     for found in by_reason.values() for bounce in found}
        self.reasons = sorted(by_reason)
        self.centroids = np.stack([_centroid(by_reason[r], rarity) for r in self.reasons])
        self.statuses = {r: _usual_status(by_reason[r]) for r in self.reasons}

    def match(self, bounce: Bounce) -> Classification | None:
        """The learned reason of the centroid nearest ``bounce``, when near enough."""
        index, value = _weighted(bounce, self.rarity)
        if not len(index):
            return None
        similarity = self.centroids[:, index] @ value
        best = int(np.argmax(similarity))
        if similarity[best] < THRESHOLD:
            return None
        reason, first = self.reasons[best], bounce.first
        status = first.status or inferred_status(first, self.statuses[reason]) or "5.0.0"
        confidence = 0.5 + 0.5 * (float(similarity[best]) - THRESHOLD) / (1 - THRESHOLD)
        return Classification(reason=reason, confidence=min(confidence, 1.0),
                              hard=status.startswith("5"), status=status,
                              diagnostic=first.diagnostic or bounce.text[:500])


class Neighbours:
    """The automatic examples, each its own unit vector of at most ``MAX_FEATURES``
    features, by source (see the module docstring)."""

    def __init__(self, examples, rarity: np.ndarray, earlier: Neighbours | None = None):
        """``earlier``: the examples' previous Neighbours, whose vectors are reused (a
        rebuild after an addition computes one)."""
        self.rarity = rarity
        known = earlier.vectors if earlier is not None and earlier.rarity is rarity else {}
        self.vectors = {}  # key -> the example's sparse unit vector
        for learned in examples:
            key = selflearn.key_of(learned)
            self.vectors[key] = known.get(key) or _strongest(
                *_weighted(as_bounce(learned.text), rarity))
        by_source: dict[str, list] = {}
        for learned in examples:
            by_source.setdefault(learned.source, []).append(learned)
        self.sources = {source: _Examples(found, self.vectors)
                        for source, found in by_source.items()}

    def keys_of(self, source: str) -> set[str]:
        """The keys of the examples of ``source``."""
        examples = self.sources.get(source)
        return set(examples.keys) if examples is not None else set()

    def nearest(self, bounce: Bounce, source: str,
                excluded=frozenset()) -> tuple[str, float] | None:
        """The reason and cosine of the example of ``source`` nearest ``bounce``, when near
        enough; an example whose key is ``excluded`` (the operator's) is never used."""
        examples = self.sources.get(source)
        if examples is None:
            return None
        diagnostic = bounce.first.diagnostic or bounce.text
        index, value = _weighted(as_bounce(selflearn.masked(diagnostic)), self.rarity)
        if not len(index):
            return None
        query = np.zeros(BUCKETS, np.float32)
        np.add.at(query, index, value)
        similarity = np.bincount(examples.owner, weights=query[examples.index] * examples.value,
                                 minlength=len(examples.reasons))
        if excluded:
            similarity[[key in excluded for key in examples.keys]] = 0
        best = int(np.argmax(similarity))
        if similarity[best] < NEIGHBOUR_THRESHOLD:
            return None
        return examples.reasons[best], float(similarity[best])


class _Examples:
    """Some automatic examples as one sparse matrix: for each stored feature, its example
    (``owner``), bucket (``index``) and weight (``value``)."""

    def __init__(self, examples, vectors_by_key: dict):
        self.reasons = [learned.reason for learned in examples]
        self.keys = [selflearn.key_of(learned) for learned in examples]
        vectors = [vectors_by_key[key] for key in self.keys]
        self.owner = np.concatenate([np.full(len(index), number, np.int32)
                                     for number, (index, _) in enumerate(vectors)])
        self.index = np.concatenate([index for index, _ in vectors]).astype(np.int32)
        self.value = np.concatenate([value for _, value in vectors])


def _strongest(index: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``MAX_FEATURES`` features of largest weight of a unit vector, still a unit vector."""
    if len(index) <= MAX_FEATURES:
        return index, value
    kept = np.argpartition(value, -MAX_FEATURES)[-MAX_FEATURES:]
    index, value = index[kept], value[kept]
    return index, value / np.linalg.norm(value)


def _centroid(bounces: list[Bounce], rarity: np.ndarray) -> np.ndarray:
    total = np.zeros(BUCKETS, np.float32)
    for bounce in bounces:
        index, value = _weighted(bounce, rarity)
        np.add.at(total, index, value)
    norm = np.linalg.norm(total)
    return total / norm if norm else total


def _weighted(bounce: Bounce, rarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The focus features weighted by ``rarity``, as a unit vector (sparse)."""
    index, value = focus_features(bounce)
    value = value * rarity[index]
    norm = np.linalg.norm(value)
    return index, (value / norm if norm else value)


def _usual_status(bounces: list[Bounce]) -> str:
    seen = Counter(b.first.status for b in bounces if b.first.status)
    return seen.most_common(1)[0][0] if seen else ""


@functools.cache
def background_rarity() -> np.ndarray:
    """Per feature bucket: log((1 + N) / (1 + bounces using it)) over ``BACKGROUND``
    synthetic bounces (0 for what every bounce says): about a second, once a process, for a
    model file that does not store them."""
    used = np.zeros(BUCKETS, np.float32)
    for row in synthetic.samples(BACKGROUND):
        used[np.unique(focus_features(parse(row["text"]))[0])] += 1
    return np.log((1 + BACKGROUND) / (1 + used)).astype(np.float32)
