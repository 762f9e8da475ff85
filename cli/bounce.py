"""``vsl bounce ...``: classify bounces, evaluate and train the bounce classifier, and learn
from an operator (``learn``, ``learned``, ``forget``: the learned file of the configuration the
server reads, found as ``vsl queue`` finds it: --config, else ./vsl.toml when present).

numpy and the model are imported by the commands, never here: ``vsl --help`` stays fast.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from vsl.server.printable import printable

from .local_config import local_config

DATA = click.Path(exists=True, dir_okay=False)
CONFIG = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                      help="vsl.toml (its [bounce] learned); default: ./vsl.toml when present.")


@click.group()
def bounce() -> None:
    """Why messages bounced: the bounce classifier (docs/bounces.md)."""


@bounce.command()
@click.argument("files", nargs=-1, required=True,
                type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line: file, reason, confidence, hard, status.")
@CONFIG
def classify(files, as_json, config_path) -> None:
    """Print why each FILE (a raw message, or a reply line; - for stdin) bounced:
    FILE<TAB>reason<TAB>confidence (learned bounces first, as the server does)."""
    from vsl.stdlib.support.bounce.shared import shipped

    shipped().learn_from(local_config(config_path).learned_bounces)  # (no source: no auto)
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
@click.option("--quick", is_flag=True, help="With --cv: the network alone, no baselines.")
@click.option("--learned", type=DATA,
              help="Learned bounces to train on too (default with --config: its operator's "
                   "file).")
@click.option("--with-auto", is_flag=True,
              help="With --config: self-learning's examples too, each weighted like a "
                   "synthetic bounce.")
@CONFIG
def train_command(data, out, cv, quick, learned, with_auto, config_path) -> None:
    """Train the classifier on DATA.jsonl (text, reason; group for --cv), the synthetic
    bounces and the learned ones; write it to --out."""
    from vsl.stdlib.support.bounce import train

    if not out and not cv:
        raise click.UsageError("give --out MODEL, --cv or both")
    if with_auto and not config_path:
        raise click.UsageError("--with-auto needs --config (its self-learning file)")
    rows = _labelled(data)
    operator, auto = _learned_files(learned, config_path, with_auto)
    train.run(rows, train.Settings(), out, cv, quick, learned=operator, auto=auto)


@bounce.command()
@click.argument("message", type=click.Path(dir_okay=False, allow_dash=True))
@click.argument("reason")
@CONFIG
def learn(message, reason, config_path) -> None:
    """Learn that MESSAGE (a raw message or a reply line; - for stdin) bounced for REASON:
    a correction, or an example of a reason of your own. The running server applies it
    within a second; `vsl bounce train` trains on it too."""
    from vsl.stdlib.support.bounce import learned

    problem = learned.reason_problem(reason)
    if problem:
        raise click.BadParameter(problem, param_hint="REASON")
    try:
        text = _read(message)
    except OSError as err:
        raise click.ClickException(f"{message}: {err.strerror or err}") from None
    if not text.strip():
        raise click.ClickException(f"{message}: empty, nothing to learn")
    config = local_config(config_path)
    path = config.learned_bounces
    try:
        with learned.locked(path):
            learned.append(path, learned.example(text, reason))
    except OSError as err:
        raise _cannot_write(err, path) from None
    count = sum(e.reason == reason for e in learned.read(path))
    click.echo(f"learned: {reason} ({count} example(s) in {path})")
    _overruled(text, config.auto_learned_bounces)


def _overruled(text: str, auto: Path | None) -> None:
    """Forget the automatic examples that say what ``text`` says (the operator wins; they
    are never used anyway): a warning when their file cannot be written now."""
    from vsl.stdlib.support.bounce import selflearn
    from vsl.stdlib.support.bounce.message import as_bounce

    if auto is None or not auto.exists():
        return
    said = selflearn.diagnostic_key(as_bounce(text))
    try:
        selflearn.forget(auto, lambda example: selflearn.key_of(example) == said)
    except OSError as err:
        click.echo(f"vsl: warning: {err.filename or auto}: the automatic examples this "
                   f"overrules were left there ({err.strerror or err}); they are not used",
                   err=True)


def _cannot_write(err: OSError, path: Path) -> click.ClickException:
    return click.ClickException(f"{err.filename or path}: cannot write: {err.strerror or err}")


@bounce.command("learned")
@CONFIG
def learned_command(config_path) -> None:
    """List the learned bounces: id (1, 2, ... the operator's: vsl bounce learn; a...
    self-learning's), source (operator, or auto and the recipient's registrable domain;
    "auto unused" for an automatic example of an older version, without one), reason,
    when, first line of the diagnostic."""
    from vsl.stdlib.support.bounce.message import as_bounce

    operator, auto = _all_learned(local_config(config_path))
    listed = [(str(number), "operator", found) for number, found in enumerate(operator, 1)]
    listed += [(ident, f"auto {found.source or 'unused'}", found)
               for ident, found in auto.items()]
    for ident, source, found in listed:
        first = as_bounce(found.text).first
        line = (first.diagnostic or found.text).strip().split("\n")[0][:100]
        click.echo(f"{ident}\t{source}\t{found.reason}\t{found.learned_at}\t{printable(line)}")


@bounce.command()
@click.argument("ids", nargs=-1, required=True)
@CONFIG
def forget(ids, config_path) -> None:
    """Forget learned bounces by their IDS in `vsl bounce learned` (1, 2, ... the
    operator's; a... self-learning's)."""
    from vsl.stdlib.support.bounce import learned, selflearn

    config = local_config(config_path)
    numbers = {int(i) for i in ids if i.isdecimal()}
    names = {i for i in ids if not i.isdecimal()}
    path = config.learned_bounces
    try:
        with learned.locked(path):
            operator, auto = _all_learned(config)
            _check_ids(numbers, names, len(operator), auto)
            if numbers:
                learned.rewrite(path, [e for n, e in enumerate(operator, 1) if n not in numbers])
        forgotten = {auto[i] for i in names}
        if forgotten:
            selflearn.forget(config.auto_learned_bounces, lambda e: e in forgotten)
    except OSError as err:
        raise _cannot_write(err, path) from None
    gone = len(numbers) + len(names)
    click.echo(f"forgot {gone}, {len(operator) + len(auto) - gone} left")


def _check_ids(numbers: set[int], names: set[str], operators: int, auto: dict) -> None:
    """A usage error naming the ids that are no learned bounce."""
    unknown = sorted(str(n) for n in numbers if not 1 <= n <= operators) + \
        sorted(names - set(auto))
    if unknown:
        raise click.UsageError(f"no learned bounce {', '.join(unknown)} (see vsl bounce "
                               "learned)")


def _all_learned(config) -> tuple[list, dict]:
    """``config``'s operator's learned bounces, and self-learning's by id (none when it is
    off)."""
    from vsl.stdlib.support.bounce import learned, selflearn

    auto = config.auto_learned_bounces
    found = learned.read(auto) if auto is not None else []
    return learned.read(config.learned_bounces), {selflearn.example_id(e): e for e in found}


def _learned_files(learned: str | None, config_path: str | None,
                   with_auto: bool) -> tuple[list[str], list[str]]:
    """What ``vsl bounce train`` trains on besides DATA: --learned, else with --config its
    operator's file; and with ``with_auto`` its self-learning file (when on)."""
    config = local_config(config_path) if config_path else None
    operator = [learned] if learned else [str(config.learned_bounces)] if config else []
    auto = config.auto_learned_bounces if config and with_auto else None
    return operator, [str(auto)] if auto is not None else []


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
