"""The bounce classifier against its baselines, in one run: leave-group-out accuracy and
macro-F1 (8 folds of whole vendor groups: no family is on both sides) of the majority class,
the enhanced code -> reason table, TF-IDF + logistic regression and the network with and
without the synthetic bounces, plus the shipped model's time per message (parsing
included), its size on disk and the time one full training takes.

    python bench/bounce.py [DATA.jsonl]     (default: ../shared/data/bounces-train.jsonl)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vsl.stdlib.support.bounce import SHIPPED  # noqa: E402
from vsl.stdlib.support.bounce import train  # noqa: E402
from vsl.stdlib.support.bounce.model import Classifier  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "bounces-train.jsonl"


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA
    if not data.is_file():
        sys.exit(f"{data}: absent (the labelled bounces are never copied into the project)")
    rows = train.load_jsonl(str(data))
    truth = [r["reason"] for r in rows]
    guesses = train.cross_validate(rows, train.Settings(), folds=8)
    scores = {name: (train.accuracy(truth, g), train.macro_f1(truth, g))
              for name, g in guesses.items()}
    best_baseline = max(scores[name][0] for name in ("majority", "code table", "tfidf+logreg"))
    print(f"{'approach':24s} {'accuracy':>8s} {'macro-F1':>8s} {'vs best baseline':>16s}")
    for name, (acc, f1) in scores.items():
        print(f"{name:24s} {acc:8.1%} {f1:8.3f} {acc / best_baseline:15.2f}x")
    classifier = Classifier.load()
    start = time.perf_counter()
    for row in rows:
        classifier.classify(row["text"])
    per_message = (time.perf_counter() - start) / len(rows)
    start = time.perf_counter()
    train.train_classifier(rows, train.Settings())
    print(f"shipped model: {1000 * per_message:.2f} ms/message (parsing included), "
          f"{SHIPPED.stat().st_size / 1e6:.1f} MB; one full training: "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
