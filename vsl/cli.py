"""The ``vsl`` command line: lint, run (and, with the server, serve/test/queue)."""
from __future__ import annotations

import json
import logging
import sys

import click

from . import values
from .engine import Engine
from .errors import VslError
from .lint import Linter, format_json, format_text, script_files


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """vSL: a mail server whose behaviour is written as policy scripts."""


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Output format.")
def lint(paths, fmt) -> None:
    """Check .vsl files (or directories of them) without running them.

    Exit status 1 if any error was found, 0 otherwise (warnings only).
    """
    linter = Linter(Engine())
    findings = [d for f in script_files(paths) for d in linter.lint_file(f)]
    text = format_json(findings) if fmt == "json" else format_text(findings)
    if text:
        click.echo(text)
    sys.exit(1 if any(d.severity == "error" for d in findings) else 0)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--call", "fn", metavar="FN", help="Call this function after the top level ran.")
@click.option("--arg", "args", metavar="JSON", multiple=True,
              help="A JSON argument for --call (repeat for more).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def run(file, fn, args, as_json) -> None:
    """Run a script's top level (or one function) and print the result."""
    try:
        parsed = [values.from_python(json.loads(a), "--arg") for a in args]
    except (ValueError, VslError) as err:
        raise click.BadParameter(str(err), param_hint="--arg") from None
    if args and not fn:
        raise click.UsageError("--arg needs --call FN")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    engine = Engine()
    try:
        script = engine.load(file)
        result = script.call(fn, *parsed) if fn else script.top_value
    except VslError as err:
        click.echo(str(err), err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(values.to_python(result)))
    else:
        click.echo(values.display(result))
