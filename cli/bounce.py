"""``vsl bounce ...``: classify bounces, evaluate and train the bounce classifier.

numpy and the model are imported by the commands, never here: ``vsl --help`` stays fast.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

DATA = click.Path(exists=True, dir_okay=False)


@click.group()
def bounce() -> None:
    """Why messages bounced: the bounce classifier (docs/bounces.md)."""


@bounce.command()
@click.argument("files", nargs=-1, required=True,
                type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line: file, reason, confidence, hard, status.")
def classify(files, as_json) -> None:
    """Print why each FILE (a raw message, or a reply line; - for stdin) bounced:
    FILE<TAB>reason<TAB>confidence."""
    from vsl.stdlib.support.bounce.shared import shipped

    failed = False
    for name in files:
        try:
            text = _read(name)
        except OSError as err:
            click.echo(f"vsl: {name}: {err.strerror or err}", err=True)
            failed = True
            continue
        judged = shipped().classify_text(text)
        if as_json:
            click.echo(json.dumps({"file": name, "reason": judged.reason,
                                   "confidence": round(judged.confidence, 4),
                                   "hard": judged.hard, "status": judged.status}))
        else:
            click.echo(f"{name}\t{judged.reason}\t{judged.confidence:.3f}")
    sys.exit(1 if failed else 0)


@bounce.command("eval")
@click.argument("data", type=DATA)
@click.option("--model", type=DATA, help="The weights (.npz); default: the shipped ones.")
def eval_command(data, model) -> None:
    """Accuracy, macro-F1, per-reason accuracy, confused pairs and ms/message of the model
    on DATA.jsonl (one {"text", "reason"} object per line)."""
    from vsl.stdlib.support.bounce import model as model_module, train
    from vsl.stdlib.support.bounce.shared import UNREADABLE

    rows = _labelled(data)
    try:
        classifier = model_module.Classifier.load(model or model_module.SHIPPED)
    except UNREADABLE as err:
        raise click.ClickException(f"{model or model_module.SHIPPED}: cannot load the model "
                                   f"({err}); write one with vsl bounce train") from None
    train.evaluate(classifier, rows)


@bounce.command("train")
@click.argument("data", type=DATA)
@click.option("--out", type=click.Path(dir_okay=False), help="Where to write the model (.npz).")
@click.option("--cv", is_flag=True, help="First print the leave-group-out evaluation.")
def train_command(data, out, cv) -> None:
    """Train the classifier on DATA.jsonl (text, reason; group for --cv) and the synthetic
    bounces; write it to --out."""
    from vsl.stdlib.support.bounce import train

    if not out and not cv:
        raise click.UsageError("give --out MODEL, --cv or both")
    _labelled(data)
    train.main([data] + (["--out", out] if out else []) + (["--cv"] if cv else []))


def _read(name: str) -> str:
    raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    return raw.decode("utf-8", "surrogateescape")


def _labelled(path: str) -> list[dict]:
    """The rows of a labelled JSONL file; a ClickException when one is not an object with
    a text and a reason."""
    from vsl.stdlib.support.bounce.train import load_jsonl

    try:
        rows = load_jsonl(path)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise click.ClickException(f"{path}: {err}") from None
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or \
                not isinstance(row.get("reason"), str):
            raise click.ClickException(f"{path}: object {number} needs a text and a reason")
    if not rows:
        raise click.ClickException(f"{path}: no labelled messages")
    return rows
