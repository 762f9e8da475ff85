"""``vsl lint``, ``vsl run`` and ``vsl test``: policy scripts and recorded sessions."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from vsl import values
from vsl.errors import Pos, VslError
from vsl.limits import Limits
from vsl.resolve import closest
from vsl.lint import (Linter, empty_dirs, format_concise, format_full, format_json,
                      no_script_findings, script_files, summary)
from vsl.script_cache import describe
from vsl.script_file import line_of

from .local_config import local_config
from .zones import zone_option, zones_served


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["full", "concise", "json"]), default="full",
              show_default=True,
              help="full: each finding with its source line and a caret; concise: one line "
                   "each (path:line:col: level: message [code]); json: an array.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="The server's vsl.toml: check metrics:: calls against its "
                   "[metrics.script.NAME] declarations (without it they are not checked).")
def lint(paths, fmt, config_path) -> None:
    """Check .vsl files (or directories of them) without running them.

    Exit status 1 if any error was found (a directory of vSMTP .rhai scripts and no .vsl
    file is one), 0 otherwise (warnings only, such as a directory without scripts).
    """
    files = script_files(paths)
    declared = local_config(config_path).metrics.script if config_path else None
    linter = Linter.deferred(lambda: _new_engine(script_metrics=declared), _entry_points,
                             Limits(), f"vsl lint, metrics {describe(declared)}")
    empty = empty_dirs(paths)  # (the entry points say what other servers' scripts are)
    findings = (no_script_findings(empty, linter.entries.foreign_scripts) if empty else []) + \
        [d for f in files for d in linter.lint_file(f)]
    if fmt == "json":
        click.echo(format_json(findings))
    else:
        if findings:
            click.echo(format_full(findings, linter.sources) if fmt == "full"
                       else format_concise(findings))
        click.echo(summary(findings, len(files)), err=True)
    if declared is None and "metrics" in linter.namespaces_called:
        click.echo(UNCHECKED_METRICS_NOTE, err=True)
    sys.exit(1 if any(d.severity == "error" for d in findings) else 0)


def _new_engine(**options):
    """``vsl.stdlib.new_engine(**options)`` with the compiled-script cache, the natives
    imported only now (slow)."""
    from vsl.stdlib import new_engine

    return new_engine(**options, use_cache=True)


def _entry_points():
    """The server's stages (the mail model imported only now: slow)."""
    from vsl.stdlib.ctx import entry_points

    return entry_points()


UNCHECKED_METRICS_NOTE = ("note: metrics:: names and labels were not checked: give "
                          "--config vsl.toml to check them against its [metrics.script.NAME]")


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--call", "fn", metavar="FN", help="Call this function after the top level ran.")
@click.option("--arg", "args", metavar="JSON", multiple=True,
              help="A JSON argument for --call (repeat for more).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@zone_option
def run(file, fn, args, as_json, zones) -> None:
    """Run a script's top level (or one function) and print the result."""
    try:
        parsed = [values.from_python(json.loads(a), "--arg") for a in args]
        parsed = _stand_in_ctx(fn, parsed)
    except (ValueError, RecursionError, VslError) as err:
        raise click.BadParameter(str(err), param_hint="--arg") from None
    if args and not fn:
        raise click.UsageError("--arg needs --call FN")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with zones_served(zones) as nameserver:
        _run_script(file, fn, parsed, as_json, nameserver)


def _stand_in_ctx(fn: str | None, parsed: list) -> list:
    """For a stage given one JSON object: that object with its addresses (``sender``,
    ``rcpt``, ``recipient``, each of ``recipients``) made the mailboxes a server's ctx
    holds, so ``ctx.sender.domain`` works as it does in ``vsl serve``."""
    from vsl.stdlib.ctx import entry_points
    from vsl.stdlib.support.mail import Mailbox

    entries = entry_points()
    if fn not in entries.names or len(parsed) != 1 or not isinstance(parsed[0], dict):
        return parsed
    ctx = dict(parsed[0])
    for key, cls in entries.member_types.items():
        if cls is Mailbox and isinstance(ctx.get(key), str):
            ctx[key] = Mailbox.parse(ctx[key])
    if isinstance(ctx.get("recipients"), list):
        ctx["recipients"] = [Mailbox.parse(r) if isinstance(r, str) else r
                             for r in ctx["recipients"]]
    return [ctx]


def _run_script(file, fn, parsed, as_json, nameserver=None) -> None:
    """`vsl run` once its options are read (``nameserver``: what every resolver asks)."""
    from vsl.stdlib.dns import DnsDefaults  # (dnspython: slow)

    engine = _new_engine(dns_defaults=DnsDefaults(nameservers=(nameserver,), forced=True)
                        if nameserver else None)
    script = None
    try:
        script = engine.load(file)
        result = script.call(fn, *parsed) if fn else script.top_value
        text = _result_text(script, fn, result, as_json)
    except VslError as err:
        click.echo(str(err), err=True)
        hint = script and fn and _arguments_hint(script, fn, len(parsed))
        if hint:
            click.echo(hint, err=True)
        sys.exit(1)
    problem = _stage_result_problem(script, fn, len(parsed), result)
    if problem:
        click.echo(problem, err=True)
        sys.exit(1)
    click.echo(text)


def _result_text(script, fn: str | None, result, as_json: bool) -> str:
    """The result as ``vsl run`` prints it; a value that cannot be printed is an error
    located where it was made (the function, or the top level's last statement)."""
    try:
        return json.dumps(values.to_python(result)) if as_json else values.display(result)
    except VslError as err:
        made = next((f for f in script.module.functions if f.name == fn), None) if fn else \
            (script.module.body[-1] if script.module.body else None)
        line, col = made.pos if made is not None else (1, 1)
        raise err.located(Pos(script.file, line, col),
                          line_of(script.module.source, line)) from None


def _arguments_hint(script, fn: str, given: int) -> str | None:
    """For --call FN with the wrong number of --arg: how many FN takes."""
    arities = sorted(arity for name, arity in script.functions if name == fn)
    if not arities:
        near = closest(fn, sorted({name for name, _ in script.functions}))
        return f"hint: did you mean '{near}'?" if near else None
    if given in arities:
        return None
    return (f"hint: {fn} takes {' or '.join(map(str, arities))} argument(s): give each with "
            "--arg JSON (a JSON object stands in for ctx: --arg '{\"helo\": \"x.test\"}')")


def _stage_result_problem(script, fn: str | None, arity: int, result) -> str | None:
    """What is wrong with a stage function's result (it must be a status), if anything."""
    from vsl.checks import wrong_return

    entries = _entry_points()
    if fn not in entries.names or arity != 1:
        return None
    return wrong_return(script, entries, fn, result)


@click.command("test")
@click.argument("transcripts", nargs=-1, required=True, type=click.Path(exists=True,
                                                                        dir_okay=False))
@click.option("--scripts", type=click.Path(exists=True, file_okay=False),
              help="Script directory (default: the config's, or the transcript's own).")
def test_command(transcripts, scripts) -> None:
    """Replay recorded SMTP sessions against the policy, without a network.

    Exit status 1 if any transcript fails.
    """
    from vsl.server.policy import PolicyError  # (the server: slow)
    from vsl.server.transcript import TranscriptError, parse, replay

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    failed = 0
    for path in transcripts:
        try:
            outcome = replay(parse(Path(path)), Path(scripts) if scripts else None)
        except (TranscriptError, PolicyError, ValueError) as err:
            click.echo(f"ERROR {path}: {err}")
            failed += 1
            continue
        click.echo(f"{'PASS' if outcome.passed else 'FAIL'} {path}")
        for problem in outcome.problems:
            click.echo(f"  {problem}")
        failed += not outcome.passed
    click.echo(f"{len(transcripts) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
