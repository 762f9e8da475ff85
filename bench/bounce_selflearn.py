"""Self-learning of the bounce classifier, simulated on the labelled bounces: does what the
server sees make it better or worse on vendor families it was never trained on?

For each of 8 folds of whole vendor groups (train.group_folds), one network
(``Settings(members=1)``) is trained on the other folds and the synthetic bounces; then the
held-out fold's messages stream through it in file order, as a server would see them. Each
message is classified by the network alone, then with the automatic examples learned so far
("before": what a server would have answered), then learned from (its recipients'
diagnostic lines, as delivery gets them, the first one teaching at most, as one attempt's
batch) and classified again ("after"). The source of every example and question is the
message's MTA family (``mta``), the proxy of the provider whose server answered. Last, each
message's diagnostic line with its codes masked ("codeless") is classified by the network
alone and with the fold's automatic examples of its family: the wording a provider also
sends without a code. Each fold starts with an empty self-learning file. With
``--retrain``, the network is then trained again with the fold's automatic examples (as
``vsl bounce train --config --with-auto`` does) and classifies the fold once more.

    python bench/bounce_selflearn.py [DATA.jsonl] [--models DIR] [--threshold T] [--plausible P]
                                     [--retrain]

``--models DIR`` keeps the trained networks there and reuses them on the next run (to try
other thresholds without training again).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vsl.stdlib.support.bounce import learned, memory, selflearn, train  # noqa: E402
from vsl.stdlib.support.bounce.message import parse  # noqa: E402
from vsl.stdlib.support.bounce.shared import SharedClassifier  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "bounces-train.jsonl"
FOLDS = 8


def model_of(fold: int, rows: list[dict], fold_of: list[int], models: Path) -> Path:
    """The weights of one network trained without ``fold`` (reused when ``models`` has it)."""
    path = models / f"fold{fold}.npz"
    if not path.exists():
        kept = [row for row, f in zip(rows, fold_of) if f != fold]
        train.train_classifier(kept, train.Settings(members=1)).save(path)
    return path


def retrained(fold: int, rows: list[dict], fold_of: list[int], auto: Path) -> list[str]:
    """The held-out fold's answers of a network trained with its automatic examples too
    (as ``vsl bounce train --config --with-auto`` does)."""
    kept = [row for row, f in zip(rows, fold_of) if f != fold]
    classifier = train.train_classifier(kept, train.Settings(members=1),
                                        train.learned_rows([], [str(auto)])[1])
    return [classifier.classify(row["text"]).reason for row, f in zip(rows, fold_of)
            if f == fold]


def stream(model: Path, rows: list[dict], auto: Path) -> tuple[dict[str, list], int]:
    """The answers for ``rows`` streamed in order (see the module docstring), and how many
    examples were learned with another reason than their message's label."""
    alone = SharedClassifier(model)
    learning = SharedClassifier(model)
    taught: list[str] = []  # the reason of each example learned, in order (on_learned)
    learning.learn_from(None, auto, clock=itertools.count().__next__,  # looks every time
                        on_learned=taught.append)
    network, before, after, codeless, mislearned = [], [], [], [], 0
    for row in rows:
        bounce, source = parse(row["text"]), row["mta"]  # the family: the provider's proxy
        codeless.append((selflearn.uncoded(bounce.first.diagnostic), source))
        network.append(alone.classify(bounce).reason)
        before.append(learning.classify(bounce, source).reason)
        count = len(taught)
        for index in range(len(bounce.recipients)):
            single = dataclasses.replace(bounce, recipients=bounce.recipients[index:index + 1])
            if single.first.diagnostic:  # one lesson at most per message, as per attempt
                learning.classify_text(single.first.diagnostic, source, learn=index == 0)
        mislearned += sum(reason != row["reason"] for reason in taught[count:])
        after.append(learning.classify(bounce, source).reason)
    return {"network": network, "before": before, "after": after,
            "codeless, network": [alone.classify_text(line).reason for line, _ in codeless],
            "codeless, after": [learning.classify_text(line, source).reason
                                for line, source in codeless]}, mislearned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=str(DATA))
    parser.add_argument("--models", help="where the fold networks are kept and reused")
    parser.add_argument("--threshold", type=float, default=memory.NEIGHBOUR_THRESHOLD)
    parser.add_argument("--plausible", type=float, default=selflearn.PLAUSIBLE)
    parser.add_argument("--retrain", action="store_true",
                        help="also train each fold's network again with its examples")
    args = parser.parse_args()
    if not Path(args.data).is_file():
        sys.exit(f"{args.data}: absent (the labelled bounces are never copied into the project)")
    memory.NEIGHBOUR_THRESHOLD, selflearn.PLAUSIBLE = args.threshold, args.plausible
    rows = train.load_jsonl(args.data)
    fold_of = train.group_folds([r["group"] for r in rows], FOLDS)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        models = Path(args.models or scratch)
        models.mkdir(parents=True, exist_ok=True)
        truth, answers, kept = [], {}, 0
        for fold in range(FOLDS):
            held = [row for row, f in zip(rows, fold_of) if f == fold]
            auto = Path(scratch) / f"auto{fold}.jsonl"
            found, wrong = stream(model_of(fold, rows, fold_of, models), held, auto)
            for name, guessed in found.items():
                answers.setdefault(name, []).extend(guessed)
            truth += [row["reason"] for row in held]
            if args.retrain:
                answers.setdefault("retrained", []).extend(retrained(fold, rows, fold_of, auto))
            learned_here = len(learned.read(auto))
            kept += learned_here
            print(f"fold {fold}: {len(held)} messages, {learned_here} learned "
                  f"({wrong} unlike their message's label)", flush=True)
    print(f"threshold {args.threshold}, plausible {args.plausible}; {kept} examples learned; "
          f"{time.perf_counter() - started:.0f} s")
    for name, guessed in answers.items():
        plain = answers["codeless, network" if name.startswith("codeless") else "network"]
        changed = sum(a != b for a, b in zip(guessed, plain))
        print(f"{name:18s} accuracy {train.accuracy(truth, guessed):6.1%}  "
              f"macro-F1 {train.macro_f1(truth, guessed):.3f}  ({changed} answers changed)")


if __name__ == "__main__":
    main()
