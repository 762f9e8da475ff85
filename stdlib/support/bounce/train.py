"""Training and leave-group-out evaluation of the bounce classifier.

    python -m vsl.stdlib.support.bounce.train DATA.jsonl --out MODEL.npz
    python -m vsl.stdlib.support.bounce.train DATA.jsonl --cv

DATA.jsonl has one object per line with ``text`` (a raw message) and ``reason``; ``group``
is needed for ``--cv``. Synthetic bounces (``synthetic.py``) are added to every training
set. ``--cv`` splits the groups into folds (a group is never on both sides), trains on
the other folds plus the synthetic set, and prints accuracy, macro-F1, per-reason and
per-family accuracy of the network, of the baselines trained on the same folds (majority
class, enhanced code -> reason table, TF-IDF + logistic regression), and of the network on
reworded held-out messages.

Design: mini-batch Adam on the softmax cross-entropy, with dropout on the input features
and the hidden layer; the embedding table is updated lazily, only on the rows a batch
touches, so a step costs what the batch reads, not the table's size.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

import numpy as np

from . import synthetic
from .features import BUCKETS, featurize
from .memory import background_rarity
from .message import Bounce, as_bounce, parse, report_text
from .model import (Classifier, Network, average_probabilities, batch_csr,
                    reason_probabilities, softmax)


@dataclass
class Settings:
    """Hyper-parameters of one training run."""

    hidden: int = 32
    epochs: int = 12
    batch: int = 32
    rate: float = 0.01
    decay: float = 1e-4
    feature_dropout: float = 0.2
    hidden_dropout: float = 0.3
    real_repeat: int = 3
    synthetic: int = 3000
    seed: int = 14
    members: int = 5  # networks in the ensemble, each trained from seed + its number
    balance: float = 0.5  # a row's loss weight is its reason's count ** -balance (macro-F1)


@dataclass
class Encoded:
    """Featurized rows: CSR parts per row, label names, and what each row came from."""

    rows: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    bounces: list[Bounce] = field(default_factory=list)


def encode(texts: list[str], reasons: list[str]) -> Encoded:
    encoded = Encoded()
    for text, reason in zip(texts, reasons):
        bounce = parse(text)
        encoded.rows.append(featurize(bounce))
        encoded.reasons.append(reason)
        encoded.statuses.append(bounce.first.status)
        encoded.bounces.append(bounce)
    return encoded


def fit(data: Encoded, settings: Settings, repeat: list[int] | None = None) -> Network:
    """Trains a network on ``data``; ``repeat[i]`` times row i per epoch (default once)."""
    rng = np.random.default_rng(settings.seed)
    labels = sorted(set(data.reasons))
    target = np.array([labels.index(reason) for reason in data.reasons])
    width = settings.hidden or len(labels)
    weights = {"W1": (rng.standard_normal((BUCKETS, width)) * 0.05).astype(np.float32),
               "b1": np.zeros(width, np.float32)}
    if settings.hidden:
        weights["W2"] = (rng.standard_normal((width, len(labels))) *
                         np.sqrt(2 / width)).astype(np.float32)
        weights["b2"] = np.zeros(len(labels), np.float32)
    network = Network(weights, labels)
    optimizer = Adam(weights, settings.rate, settings.decay)
    order = np.repeat(np.arange(len(target)), repeat or [1] * len(target))
    loss_weight = _loss_weights(target, order, settings.balance)
    trained = np.zeros(BUCKETS, bool)
    for _ in range(settings.epochs):
        rng.shuffle(order)
        for start in range(0, len(order), settings.batch):
            chosen = order[start:start + settings.batch]
            trained[_step(network, optimizer, [data.rows[i] for i in chosen], target[chosen],
                          loss_weight[target[chosen]], settings, rng)] = True
    weights["W1"][~trained] = 0  # a feature no training row had adds nothing, not its noise
    return network


def fit_ensemble(data: Encoded, settings: Settings, repeat: list[int] | None = None
                 ) -> list[Network]:
    """``settings.members`` networks trained alike on ``data``, each from its own seed."""
    return [fit(data, replace(settings, seed=settings.seed + number), repeat)
            for number in range(settings.members)]


def _loss_weights(target: np.ndarray, order: np.ndarray, balance: float) -> np.ndarray:
    """Per reason, the loss weight ``count ** -balance`` (counted as drawn in an epoch),
    scaled so that a drawn row weighs 1 on average."""
    counts = np.bincount(target[order]).astype(np.float64)  # every reason is drawn
    weights = counts ** -balance
    return (weights * len(order) / (weights * counts).sum()).astype(np.float32)


def _step(network: Network, optimizer: "Adam", rows, target, loss_weight, settings: Settings,
          rng) -> np.ndarray:
    """One Adam step on a batch; returns the ``W1`` rows the batch's features touched."""
    index, value, offsets = batch_csr(rows)
    keep = rng.random(len(value)) >= settings.feature_dropout
    value = np.where(keep, value / (1 - settings.feature_dropout), 0).astype(np.float32)
    weights = network.weights
    first = network.hidden_layer(index, value, offsets)
    if network.hidden:
        mask = (rng.random(first.shape) >= settings.hidden_dropout) / (1 - settings.hidden_dropout)
        active = np.maximum(first, 0) * mask
        logits = active @ weights["W2"] + weights["b2"]
    else:
        logits = first
    grad = softmax(logits)
    grad[np.arange(len(target)), target] -= 1
    grad *= loss_weight[:, None] / len(target)
    grads = {}
    if network.hidden:
        grads["W2"], grads["b2"] = active.T @ grad, grad.sum(axis=0)
        grad = (grad @ weights["W2"].T) * mask * (first > 0)
    grads["b1"] = grad.sum(axis=0)
    row_of = np.repeat(np.arange(len(rows)), np.diff(offsets))
    per_feature = grad[row_of] * value[:, None]
    order = np.argsort(index, kind="stable")
    touched, starts = np.unique(index[order], return_index=True)
    optimizer.update(grads, touched, np.add.reduceat(per_feature[order], starts, axis=0))
    return touched


class Adam:
    """Adam with decoupled weight decay; ``W1`` is updated only on the rows given."""

    def __init__(self, weights: dict[str, np.ndarray], rate: float, decay: float):
        self.weights, self.rate, self.decay, self.step = weights, rate, decay, 0
        self.moments = {name: (np.zeros_like(w), np.zeros_like(w)) for name, w in weights.items()}

    def update(self, grads: dict[str, np.ndarray], rows: np.ndarray, rows_grad: np.ndarray):
        self.step += 1
        for name, grad in grads.items():
            self._apply(name, slice(None), grad)
        self._apply("W1", rows, rows_grad)

    def _apply(self, name: str, where, grad: np.ndarray) -> None:
        first, second = self.moments[name]
        first[where] = 0.9 * first[where] + 0.1 * grad
        second[where] = 0.999 * second[where] + 0.001 * grad * grad
        scale = self.rate * np.sqrt(1 - 0.999 ** self.step) / (1 - 0.9 ** self.step)
        weight = self.weights[name]
        weight[where] -= scale * first[where] / (np.sqrt(second[where]) + 1e-8) + \
            self.rate * self.decay * weight[where]


def predict(networks: list[Network], rows) -> list[tuple[str, float]]:
    """The most probable reason and its probability for each feature row."""
    return _best(networks[0].labels, average_probabilities(networks, *batch_csr(rows)))


def judge_all(networks: list[Network], bounces: list[Bounce]) -> list[tuple[str, float]]:
    """The reason and its probability for each bounce, judged as a classifier does."""
    return _best(networks[0].labels,
                 np.array([reason_probabilities(networks, bounce) for bounce in bounces]))


def _best(labels: list[str], probs: np.ndarray) -> list[tuple[str, float]]:
    return [(labels[i], float(probs[n, i])) for n, i in enumerate(probs.argmax(axis=1))]


def tables(rows: list[dict]) -> dict:
    """Per reason: the hard flag and enhanced code most often seen with it in ``rows`` (a
    row without a hard flag, a learned one without a code, counts for neither; nor does a
    code no registry has: subject 0 has only the detail 0 in RFC 3463 and RFC 5248, so the
    labels' ``5.0.910``-like codes are the labeler's own)."""
    hard, status = defaultdict(Counter), defaultdict(Counter)
    for row in rows:
        if "hard" in row:
            hard[row["reason"]][bool(row["hard"])] += 1
        if registered(row.get("status", "")):
            status[row["reason"]][row["status"]] += 1
    return {"hard": {r: c.most_common(1)[0][0] for r, c in hard.items()},
            "status": {r: c.most_common(1)[0][0] for r, c in status.items()}}


def registered(status: str) -> bool:
    """Whether ``status`` can be an RFC 3463 code of the registry (not ``X.0.Y``, Y > 0)."""
    return bool(status) and not (status.split(".")[1:2] == ["0"] and
                                 status.split(".")[2:] != ["0"])


def train_classifier(rows: list[dict], settings: Settings, auto: list[dict] = ()) -> Classifier:
    """The classifier trained on the labelled ``rows`` (repeated ``real_repeat`` times),
    the synthetic bounces and self-learning's ``auto`` rows (each weighted like a synthetic
    one: strangers wrote them); its per-reason hard flags and codes come from ``rows``
    alone (automatic rows may not outvote them)."""
    extra = list(auto) + synthetic.samples(settings.synthetic, settings.seed)
    data = encode([r["text"] for r in rows + extra], [r["reason"] for r in rows + extra])
    repeat = [settings.real_repeat] * len(rows) + [1] * len(extra)
    networks = fit_ensemble(data, settings, repeat)
    return Classifier(networks, {"labels": networks[0].labels, **tables(rows)},
                      background_rarity())


# ---- leave-group-out evaluation -------------------------------------------------------

def group_folds(groups: list[str], count: int) -> list[int]:
    """A fold number per row: whole groups, largest first, to the smallest fold."""
    sizes = Counter(groups)
    load, fold_of = [0] * count, {}
    for group, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        fold = load.index(min(load))
        fold_of[group], load[fold] = fold, load[fold] + size
    return [fold_of[group] for group in groups]


def code_table_baseline(train_status, train_reason, test_status) -> list[str]:
    """Enhanced code -> most frequent reason in training; then subject.detail; then majority."""
    exact, detail = defaultdict(Counter), defaultdict(Counter)
    for status, reason in zip(train_status, train_reason):
        exact[status][reason] += 1
        detail[status[2:]][reason] += 1
    majority = Counter(train_reason).most_common(1)[0][0]
    return [(exact.get(s) or detail.get(s[2:]) or Counter([majority])).most_common(1)[0][0]
            for s in test_status]


def tfidf_rows(texts: list[str], idf: np.ndarray | None = None):
    """Word unigram + bigram TF-IDF of whole raw messages, hashed; returns rows and idf."""
    hashed = []
    for text in texts:
        words = re.findall(r"[a-z][a-z'-]+", text.lower()[:20000])
        tokens = words + [a + " " + b for a, b in zip(words, words[1:])]
        counts = Counter(hash_token(t) for t in tokens)
        hashed.append((np.array(list(counts), np.int64),
                       np.array(list(counts.values()), np.float32)))
    if idf is None:
        df = np.zeros(BUCKETS, np.float32)
        for index, _ in hashed:
            df[index] += 1
        idf = np.log((1 + len(hashed)) / (1 + df)).astype(np.float32) + 1
    rows = []
    for index, count in hashed:
        order = np.argsort(index)
        value = (1 + np.log(count[order])) * idf[index[order]]
        rows.append((index[order], (value / np.linalg.norm(value)).astype(np.float32)))
    return rows, idf


def hash_token(token: str) -> int:
    return zlib.crc32(token.encode()) % BUCKETS


def reword_message(text: str, rng: random.Random) -> str:
    """Rewords a raw message's body lines (field values too), keeping MIME structure."""
    head, sep, body = text.partition("\n\n")
    lines = []
    for line in body.split("\n"):
        name, colon, rest = line.partition(":")
        if line.startswith("--") or not line.strip():
            lines.append(line)
        elif colon and re.fullmatch(r"[\w-]{1,40}", name):
            lines.append(name + ":" + synthetic.reword(rest, rng, case=False))
        else:
            lines.append(synthetic.reword(line, rng, case=False))
    return head + sep + "\n".join(lines)


def cross_validate(rows: list[dict], settings: Settings, folds: int,
                   quick: bool = False) -> dict[str, list[str]]:
    """The reason each approach guesses for each row when its group is held out; ``quick``
    trains the network with the synthetic set only (no baselines, no reworded run)."""
    fold_of = group_folds([r["group"] for r in rows], folds)
    real = encode([r["text"] for r in rows], [r["reason"] for r in rows])
    rng = random.Random(settings.seed)
    reworded = encode([reword_message(r["text"], rng) for r in rows], [r["reason"] for r in rows])
    extra = synthetic.samples(settings.synthetic, settings.seed)
    synth = encode([r["text"] for r in extra], [r["reason"] for r in extra])
    truth = [r["reason"] for r in rows]
    names = ("network",) if quick else ("majority", "code table", "tfidf+logreg", "network",
                                         "network, no synthetic", "network, reworded")
    guesses = {name: [""] * len(rows) for name in names}
    started = time.perf_counter()
    for fold in range(folds):
        test = [i for i, f in enumerate(fold_of) if f == fold]
        train = [i for i, f in enumerate(fold_of) if f != fold]
        train_reasons = [truth[i] for i in train]
        combined = Encoded([real.rows[i] for i in train] + synth.rows,
                           train_reasons + synth.reasons)
        networks = fit_ensemble(combined, settings,
                               [settings.real_repeat] * len(train) + [1] * len(synth.rows))
        if quick:
            for i, (reason, _) in zip(test, judge_all(networks, [real.bounces[i] for i in test])):
                guesses["network"][i] = reason
            continue
        majority = Counter(train_reasons).most_common(1)[0][0]
        table = code_table_baseline([real.statuses[i] for i in train], train_reasons,
                                    [real.statuses[i] for i in test])
        tfidf_train, idf = tfidf_rows([rows[i]["text"] for i in train])
        tfidf_test, _ = tfidf_rows([rows[i]["text"] for i in test], idf)
        linear = fit(Encoded(tfidf_train, train_reasons), Settings(hidden=0, feature_dropout=0))
        alone = fit_ensemble(Encoded([real.rows[i] for i in train], train_reasons), settings)
        results = {"majority": [(majority, 1.0)] * len(test),
                   "code table": [(t, 1.0) for t in table],
                   "tfidf+logreg": predict([linear], tfidf_test),
                   "network": judge_all(networks, [real.bounces[i] for i in test]),
                   "network, no synthetic": judge_all(alone, [real.bounces[i] for i in test]),
                   "network, reworded": judge_all(networks,
                                                  [reworded.bounces[i] for i in test])}
        for name, predicted in results.items():
            for i, (reason, _) in zip(test, predicted):
                guesses[name][i] = reason
    print(f"leave-group-out, {folds} folds over {len(set(r['group'] for r in rows))} groups, "
          f"{len(rows)} messages, {settings.synthetic} synthetic; "
          f"{time.perf_counter() - started:.0f} s")
    return guesses


def report(rows: list[dict], guesses: dict[str, list[str]]) -> None:
    """Prints accuracy and macro-F1 of each approach, then the network's tables."""
    truth = [r["reason"] for r in rows]
    for name, guessed in guesses.items():
        print(f"  {name:24s} accuracy {accuracy(truth, guessed):6.1%}  "
              f"macro-F1 {macro_f1(truth, guessed):.3f}")
    accuracy_table("reason", truth, truth, guesses["network"])
    accuracy_table("family", [r["mta"] for r in rows], truth, guesses["network"])
    confusion_pairs(truth, guesses["network"], 20)


def accuracy(truth, guessed) -> float:
    return sum(t == g for t, g in zip(truth, guessed)) / len(truth)


def macro_f1(truth, guessed) -> float:
    scores = []
    for label in set(truth):
        tp = sum(t == g == label for t, g in zip(truth, guessed))
        fp = sum(g == label != t for t, g in zip(truth, guessed))
        fn = sum(t == label != g for t, g in zip(truth, guessed))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def accuracy_table(title: str, keys, truth, guessed) -> None:
    """Prints the accuracy per value of ``keys`` (a reason, a family), most frequent first."""
    hits, totals = Counter(), Counter(keys)
    for key, t, g in zip(keys, truth, guessed):
        hits[key] += t == g
    print(f"per {title}:")
    for key, total in totals.most_common():
        print(f"  {key:24s} {hits[key]:3d}/{total:<3d} {hits[key] / total:6.1%}")


def confusion_pairs(truth, guessed, count: int = 10) -> None:
    """Prints the ``count`` most frequent (true reason, guessed reason) mistakes."""
    mistakes = Counter((t, g) for t, g in zip(truth, guessed) if t != g)
    print("most confused (true -> guessed):")
    for (t, g), times in mistakes.most_common(count):
        print(f"  {t:16s} -> {g:16s} {times:3d}")


def evaluate(classifier: Classifier, rows: list[dict]) -> None:
    """Prints how ``classifier`` does on labelled ``rows``: accuracy, macro-F1, accuracy per
    reason, the most confused pairs and the time per message (parsing included)."""
    truth = [r["reason"] for r in rows]
    start = time.perf_counter()
    guessed = [classifier.classify(r["text"]).reason for r in rows]
    elapsed = time.perf_counter() - start
    print(f"{len(rows)} messages: accuracy {accuracy(truth, guessed):6.1%}  "
          f"macro-F1 {macro_f1(truth, guessed):.3f}  "
          f"{1000 * elapsed / len(rows):.2f} ms/message")
    accuracy_table("reason", truth, truth, guessed)
    confusion_pairs(truth, guessed)


def learned_rows(operator: list[str], auto: list[str] = ()) -> tuple[list[dict], list[dict]]:
    """The examples of the operator's learned files and of self-learning's (``auto``) as
    labelled rows, a reply line as the report the classifier reads it as, its hard flag and
    status its own code's (none when it shows none); a near-duplicate of an earlier example
    (the operator's come first) is left out, and so are automatic rows without a source
    (``selflearn.usable``)."""
    from . import learned, selflearn

    seen: set[str] = set()

    def rows_of(paths, examples_of) -> list[dict]:
        rows = []
        for path in paths:
            for example in examples_of(path):
                if selflearn.key_of(example) not in seen:
                    seen.add(selflearn.key_of(example))
                    rows.append(learned_row(example))
        return rows

    return (rows_of(operator, learned.read),
            rows_of(auto, lambda path: selflearn.usable(learned.read(path))))


def learned_row(example) -> dict:
    """A learned example as a labelled row (see ``learned_rows``)."""
    row = {"text": report_text(example.text), "reason": example.reason}
    first = as_bounce(example.text).first
    code = first.status or first.reply_code
    if code[:1] in ("4", "5"):
        row["hard"] = code.startswith("5")
    if first.status:
        row["status"] = first.status
    return row


def load_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


FOLDS = 8  # --cv's folds


def run(rows: list[dict], settings: Settings, out: str | None = None, cv: bool = False,
        quick: bool = False, folds: int = FOLDS, learned: list[str] = (),
        auto: list[str] = ()) -> None:
    """With ``cv``, print the leave-group-out evaluation on ``rows``; with ``out``, write
    the classifier trained on them (and on the examples of the ``learned`` files, and of
    self-learning's ``auto`` files) there."""
    if cv:
        report(rows, cross_validate(rows, settings, folds, quick))
    if out:
        operator, automatic = learned_rows(learned, auto)
        train_classifier(rows + operator, settings, automatic).save(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--out", help="where to write the trained model (.npz)")
    parser.add_argument("--cv", action="store_true", help="leave-group-out evaluation")
    parser.add_argument("--quick", action="store_true",
                        help="with --cv: the network only (no baselines, no reworded run)")
    parser.add_argument("--folds", type=int, default=FOLDS)
    parser.add_argument("--hidden", type=int, default=Settings.hidden)
    parser.add_argument("--epochs", type=int, default=Settings.epochs)
    parser.add_argument("--synthetic", type=int, default=Settings.synthetic)
    parser.add_argument("--learned", help="learned bounces (vsl bounce learn) to train on too")
    args = parser.parse_args(argv)
    settings = Settings(hidden=args.hidden, epochs=args.epochs, synthetic=args.synthetic)
    run(load_jsonl(args.data), settings, args.out, args.cv, args.quick, args.folds,
        [args.learned] if args.learned else [])


if __name__ == "__main__":
    main()
