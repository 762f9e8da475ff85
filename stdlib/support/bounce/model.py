"""The bounce classifier's network and its inference, in numpy only.

Design: a fastText-style network. The hashed sparse features of ``features.py`` select rows
of an embedding table ``W1`` (``BUCKETS`` x ``hidden``) that are summed with their weights
(an embedding bag), a ReLU hidden layer follows, then a softmax over the reasons. With
``hidden == 0`` the network is a linear softmax over the same features. A row's inference
is a gather, a sum and two small matrix products, deterministic.

A diagnostic is mostly template ("Recipient address rejected:", "did not like our RCPT
TO:") around a few words that name the reason ("No relaying"), and a family never seen
wraps them in words the network weighs wrongly. So the message is also judged once per
clause of its focus text (up to 12), the clause in place of the focus, in the same batch;
the most decided clause's probabilities (a template clause is undecided: it came with
every reason) are mixed with the whole message's (``reason_probabilities``). The context
and subject, the same in every row, are read once. Leave-group-out, this mixing gained
1.2 and 3.4 points of accuracy (seeds 14 and 15).

Weights live in a ``.npz`` (``W1`` as 4-bit integers, two to a byte, with a float16 scale
per row, ``W1.scale``, to keep the file small: under a sixth of float32, with the same
held-out accuracy; the int8 ``W1`` with a scale and the float16 one without, of older
files, are read too; ``b1``, ``W2``, ``b2``;
``meta``: a JSON string with the reason labels and, per reason, the hard flag and the
enhanced status code most often seen with it, used when a message shows none). A classifier
may be an ensemble of a few networks trained from different seeds, their probabilities
averaged: the second member's arrays are ``W1@1``, ``b1@1``..., and a file of one network
is the plain names alone. ``rarity`` (optional, float32 per feature bucket) is the feature
weighting the learned examples are compared by (``memory.py``), stored so that a process
need not count it again. Loading checks that every member's ``W1`` has as many rows as the
others and as ``rarity`` (a ValueError naming them otherwise).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import SHIPPED
from .features import clauses, featurize_parts, focus_of
from .message import Bounce, Recipient, parse

MEMBER = "@"  # between an array's name and its ensemble member's number in the .npz
SCALE = ".scale"  # after W1's name: the per-row scale of its quantized values
LEVELS = 7  # W1's 4-bit values are -LEVELS..LEVELS, stored + 8 in a nibble
RARITY = "rarity"  # the array of the memory's feature weights (no network's)
CLAUSE_WEIGHT = 0.5  # the most decided clause's share of the judgement (geometric mean)
TINY = 1e-9  # added to a probability before its logarithm


@dataclass
class Classification:
    """Why a message bounced, as the model judged it."""

    reason: str
    confidence: float
    hard: bool
    status: str
    diagnostic: str


class Network:
    """The weights and the forward pass; ``train.py`` updates the arrays in place."""

    def __init__(self, weights: dict[str, np.ndarray], labels: list[str]):
        self.weights = weights
        self.labels = labels

    @property
    def hidden(self) -> bool:
        return "W2" in self.weights

    @property
    def buckets(self) -> int:
        """How many slots the features are hashed into for this network: W1's rows."""
        return len(self.weights["W1"])

    def hidden_layer(self, index, value, offsets, common=None) -> np.ndarray:
        """The pre-activation of the first layer for a batch in CSR form (no row empty);
        ``common``: (index, value) of features every row of the batch has too, read once."""
        weights = self.weights["W1"]
        first = np.add.reduceat(weights[index] * value[:, None], offsets[:-1], axis=0)
        if common is not None and len(common[0]):
            first += common[1] @ weights[common[0]]
        return first + self.weights["b1"]

    def logits(self, index, value, offsets, common=None) -> np.ndarray:
        first = self.hidden_layer(index, value, offsets, common)
        if not self.hidden:
            return first
        return np.maximum(first, 0) @ self.weights["W2"] + self.weights["b2"]

    def probabilities(self, index, value, offsets, common=None) -> np.ndarray:
        return softmax(self.logits(index, value, offsets, common))


class Classifier:
    """Trained networks (an ensemble of one or more, trained alike from other seeds, whose
    probabilities are averaged) with the per-reason tables; classifies raw messages."""

    def __init__(self, networks: list[Network], meta: dict, rarity: np.ndarray | None = None):
        self.networks = networks
        self.meta = meta
        self.rarity = rarity  # memory.py's feature weights, None when the file has none

    @property
    def labels(self) -> list[str]:
        """The reasons the networks tell apart, in their output order."""
        return self.networks[0].labels

    @classmethod
    def load(cls, path: str | Path = SHIPPED) -> "Classifier":
        members: dict[str, dict[str, np.ndarray]] = {}
        with np.load(path, allow_pickle=False) as data:
            for name in data.files:
                if name not in ("meta", RARITY):
                    array, _, member = name.partition(MEMBER)
                    members.setdefault(member, {})[array] = data[name]
            meta = json.loads(str(data["meta"]))
            rarity = data[RARITY].astype(np.float32) if RARITY in data.files else None
        networks = [Network(_restored(members[key]), meta["labels"]) for key in sorted(members)]
        _check_widths(networks, rarity)
        return cls(networks, meta, rarity)

    def save(self, path: str | Path) -> None:
        """Writes the weights (``W1`` quantized); the first member's arrays keep their plain
        names, member k's are suffixed ``@k``; ``rarity`` when there is one."""
        arrays = {} if self.rarity is None else {RARITY: self.rarity.astype(np.float32)}
        for number, network in enumerate(self.networks):
            suffix = f"{MEMBER}{number}" if number else ""
            for name, array in network.weights.items():
                arrays.update({stored + suffix: value for stored, value in _stored(name, array)})
        np.savez_compressed(path, meta=np.array(json.dumps(self.meta)), **arrays)

    def classify(self, raw: bytes | str) -> Classification:
        """Classifies one raw RFC 5322 message by its first recipient."""
        return self.classify_bounce(parse(raw))

    def classify_bounce(self, bounce: Bounce) -> Classification:
        return self.judge(bounce)[0]

    def judge(self, bounce: Bounce) -> tuple[Classification, np.ndarray]:
        """The classification of ``bounce`` and the probability of each reason (``labels``)."""
        probs = reason_probabilities(self.networks, bounce)
        best = int(np.argmax(probs))
        return self.named(bounce, self.labels[best], float(probs[best])), probs

    def named(self, bounce: Bounce, reason: str, confidence: float) -> Classification:
        """``bounce`` classified as ``reason``: its status its own enhanced code, else the
        one usual for the reason (in the class of its reply code), and hard by that."""
        first = bounce.first
        status = first.status or inferred_status(first, self.meta["status"].get(reason, ""))
        hard = status.startswith("5") if status[:1] in ("4", "5") else \
            self.meta["hard"].get(reason, True)
        return Classification(reason=reason, confidence=confidence, hard=hard,
                              status=status, diagnostic=first.diagnostic or bounce.text[:500])


def inferred_status(first: Recipient, usual: str) -> str:
    """The enhanced code of a recipient that shows none: the reason's ``usual`` one, in the
    class of the reply code when there is one (a 450 is never ``5.x.x``), else ``X.0.0``."""
    cls = first.reply_code[:1] if first.reply_code[:1] in ("2", "4", "5") else ""
    if usual and cls:
        return cls + usual[1:]
    return usual or (f"{cls}.0.0" if cls else "")


def _stored(name: str, array: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """An array as written: ``W1`` as rows of 4-bit values, two to a byte (the even
    column in the low nibble), with a float16 scale per row (``W1.scale``); the others as
    float32."""
    if name != "W1":
        return [(name, array.astype(np.float32))]
    scale = np.abs(array).max(axis=1) / LEVELS
    if not (scale <= np.finfo(np.float16).max).all():
        raise ValueError("W1 has weights too large (or not finite) for its float16 scale")
    scale = scale.astype(np.float16)
    scale[scale == 0] = 1
    levels = np.clip(np.round(array / scale[:, None]), -LEVELS, LEVELS)
    nibbles = (levels + LEVELS + 1).astype(np.uint8)
    if nibbles.shape[1] % 2:
        nibbles = np.pad(nibbles, ((0, 0), (0, 1)), constant_values=LEVELS + 1)
    return [(name, nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)),
            (name + SCALE, scale)]


def _check_widths(networks: list[Network], rarity: np.ndarray | None) -> None:
    """A ValueError unless every network's ``W1`` and ``rarity`` (when given) have as many
    rows (feature slots) as each other."""
    widths = [network.buckets for network in networks]
    if rarity is not None:
        widths.append(len(rarity))
    if len(set(widths)) > 1:
        raise ValueError(f"its arrays disagree on the number of feature slots ({widths}: "
                         "each member's W1 rows, then rarity)")


def _restored(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float32 weights of one network from its stored arrays: a uint8 ``W1`` holds
    4-bit values, an int8 one 8-bit values (files of stop 27 and before), both scaled per
    row; a float16 ``W1`` without scale (older still) is read as it is."""
    weights = {name: array.astype(np.float32) for name, array in arrays.items()
               if not name.endswith(SCALE)}
    packed, scale, b1 = arrays["W1"], arrays.get("W1" + SCALE), arrays["b1"]
    quantized = packed.dtype in (np.uint8, np.int8)
    if packed.ndim != 2 or b1.ndim != 1 or quantized != (scale is not None) or \
            (quantized and scale.shape != packed.shape[:1]) or \
            (packed.dtype == np.uint8 and packed.shape[1] != (len(b1) + 1) // 2):
        raise ValueError(f"W1 {packed.shape} {packed.dtype}, its scale "
                         f"{None if scale is None else scale.shape} and b1 {b1.shape} "
                         "do not fit together")
    if packed.dtype == np.uint8:
        nibbles = np.stack([packed & 15, packed >> 4], axis=2).reshape(len(packed), -1)
        weights["W1"] = nibbles[:, :len(b1)].astype(np.float32) - (LEVELS + 1)
    if scale is not None:
        weights["W1"] *= scale[:, None].astype(np.float32)
    return weights


def reason_probabilities(networks: list[Network], bounce: Bounce) -> np.ndarray:
    """The probability of each reason for ``bounce``: the ensemble's judgement of the whole
    message, sharpened by its judgement of the focus' most decided clause (the message
    with that clause as its focus), a weighted geometric mean of the two; ``expired`` left
    out for a reply that cannot tell it (``_unless_expiry_unsaid``)."""
    focus = focus_of(bounce)
    parts = [clause for clause in clauses(focus) if clause != focus]
    common, batch = featurize_parts(bounce, [focus] + parts, networks[0].buckets)
    probs = average_probabilities(networks, *batch, common)
    judged = probs[0]
    if parts:
        sharpest = probs[1 + int(probs[1:].max(axis=1).argmax())]
        mixed = np.exp((1 - CLAUSE_WEIGHT) * np.log(probs[0] + TINY) +
                       CLAUSE_WEIGHT * np.log(sharpest + TINY))
        judged = mixed / mixed.sum()
    return _unless_expiry_unsaid(networks[0].labels, bounce, judged)


def _unless_expiry_unsaid(labels: list[str], bounce: Bounce, probs: np.ndarray) -> np.ndarray:
    """``probs`` without ``expired`` for one SMTP reply: a report recipient with a reply
    code but no ``Action``, which tells neither that the message was given up nor that it
    is still retried (what a reply is read as, see ``message.reply_report``), unless its
    enhanced code says it expired (X.4.7, RFC 3463): one attempt's failure is not its queue
    lifetime's end. (A text without codes, as self-learning's wording check asks, is left
    alone.)"""
    first = bounce.first
    if bounce.kind != "dsn" or first.action or not first.reply_code or \
            first.status[1:] == ".4.7" or "expired" not in labels:
        return probs
    kept = probs.copy()
    kept[labels.index("expired")] = 0
    return kept / kept.sum() if kept.sum() > TINY else probs


def batch_csr(rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated (index, value, offsets) of a list of feature rows."""
    lengths = [len(index) for index, _ in rows]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return (np.concatenate([index for index, _ in rows]),
            np.concatenate([value for _, value in rows]), offsets)


def average_probabilities(networks: list[Network], index, value, offsets, common=None
                          ) -> np.ndarray:
    """The ensemble's reason probabilities for a batch in CSR form (``common``: features
    every row has too): the members' mean."""
    return sum(network.probabilities(index, value, offsets, common)
               for network in networks) / len(networks)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
