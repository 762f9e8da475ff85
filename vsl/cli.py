"""The ``vsl`` command line: lint, run (and, with the server, serve/test/queue)."""
from __future__ import annotations

import json
import logging
import sys

import click

from . import values
from .engine import Engine
from .errors import Pos, VslError
from .lint import Linter, format_json, format_text, script_files
from .syntax import _line_of


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
    except (ValueError, RecursionError, VslError) as err:
        raise click.BadParameter(str(err), param_hint="--arg") from None
    if args and not fn:
        raise click.UsageError("--arg needs --call FN")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    engine = Engine()
    try:
        script = engine.load(file)
        result = script.call(fn, *parsed) if fn else script.top_value
        text = _result_text(script, fn, result, as_json)
    except VslError as err:
        click.echo(str(err), err=True)
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
                          _line_of(script.module.source, line)) from None


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="vsl.toml (without it: safe embedded defaults).")
@click.option("--scripts", type=click.Path(file_okay=False), help="Script directory (main.vsl).")
@click.option("--listen", multiple=True, metavar="HOST:PORT",
              help="Listen here (repeat; replaces the configured listeners).")
@click.option("--queue-dir", type=click.Path(file_okay=False), help="Spool directory.")
@click.option("--dns", "dns_server", metavar="HOST:PORT", help="DNS server for dns::resolver().")
@click.option("--hostname", help="The server's name (greeting, Received, local domain).")
@click.option("--workers", type=click.IntRange(min=1), metavar="N",
              help="Server processes accepting on the same listeners.")
@click.option("-v", "--verbose", count=True, help="Debug log output (-vv: the SMTP dialogue too).")
def serve(config_path, scripts, listen, queue_dir, dns_server, hostname, workers,
          verbose) -> None:
    """Run the SMTP server on a directory of scripts."""
    import asyncio
    from dataclasses import replace
    from pathlib import Path

    from server import config as config_module
    from server.app import Server
    from server.policy import PolicyError

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    logging.getLogger("mail.log").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
    try:
        config = config_module.load(config_path)
        changes = {}
        if scripts:
            changes["scripts"] = Path(scripts)
        if listen:
            changes["listen"] = tuple(config_module.parse_listen(a, key="--listen")
                                      for a in listen)
        if queue_dir:
            changes["queue_dir"] = Path(queue_dir)
        if hostname:
            changes["hostname"] = hostname
        if dns_server:
            changes["dns"] = replace(config.dns, nameservers=(dns_server,))
        if workers:
            changes["workers"] = workers
        config = replace(config, **changes)
        server = Server(config)
    except (config_module.ConfigError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    except PolicyError as err:
        click.echo(f"the scripts do not lint:\n{err}", err=True)
        sys.exit(1)
    if config.workers > 1:
        _serve_workers(config)
        return

    async def run():
        await server.start()
        for listener, address in server.bound:
            click.echo(f"vsl: {listener.kind} listening on {address[0]}:{address[1]}")
        await server.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    except OSError as err:
        raise click.ClickException(f"cannot listen: {err}") from None


def _serve_workers(config) -> None:
    """`vsl serve` with [server] workers > 1 (server/workers.py)."""
    from server.workers import Workers

    for handler in logging.getLogger().handlers:  # whose line is it
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    workers = Workers(config)
    try:
        workers.prepare()
    except OSError as err:
        raise click.ClickException(f"cannot listen: {err}") from None
    for listener, sock in workers.sockets:
        address = sock.getsockname()
        click.echo(f"vsl: {listener.kind} listening on {address[0]}:{address[1]}")
    click.echo(f"vsl: {config.workers} workers")
    sys.exit(workers.run())


@main.command("test")
@click.argument("transcripts", nargs=-1, required=True, type=click.Path(exists=True,
                                                                        dir_okay=False))
@click.option("--scripts", type=click.Path(exists=True, file_okay=False),
              help="Script directory (default: the config's, or the transcript's own).")
def test_command(transcripts, scripts) -> None:
    """Replay recorded SMTP sessions against the policy, without a network.

    Exit status 1 if any transcript fails.
    """
    from pathlib import Path

    from server.policy import PolicyError
    from server.transcript import TranscriptError, parse, replay

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


@main.command()
@click.argument("user")
@click.password_option(help="The password (asked for when not given).")
def passwd(user, password) -> None:
    """Print a users-file line (user:scrypt$...) for [auth] users_file."""
    from server.passwords import hash_password

    if ":" in user or not user.strip():
        raise click.BadParameter("a user name cannot be empty or contain ':'", param_hint="USER")
    click.echo(f"{user}:{hash_password(password)}")


@main.group()
@click.option("--queue-dir", type=click.Path(file_okay=False), help="The spool directory.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="vsl.toml (its server.queue_dir).")
@click.pass_context
def queue(ctx, queue_dir, config_path) -> None:
    """Look at and act on the mail queue (safe while the server runs)."""
    from pathlib import Path

    from server import config as config_module
    from server.queue import Spool

    try:
        directory = Path(queue_dir) if queue_dir else config_module.load(config_path).queue_dir
    except config_module.ConfigError as err:
        raise click.ClickException(str(err)) from None
    if not directory.is_dir():
        raise click.ClickException(f"{directory}: no queue here (use --queue-dir)")
    ctx.obj = Spool(directory)


def _queue_error(err) -> click.ClickException:
    return click.ClickException(str(err))


@queue.command("list")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Every message, as JSON.")
@click.pass_obj
def queue_list(spool, name, as_json) -> None:
    """Messages by queue, recipient domain and age (minutes)."""
    from server import queue_admin
    from server.queue import QueueError

    try:
        entries = spool.list(name)
    except QueueError as err:
        raise _queue_error(err) from None
    click.echo(queue_admin.as_json(entries) if as_json else queue_admin.table(entries))


@queue.command("show")
@click.argument("msg_id")
@click.option("--eml", is_flag=True, help="Print the message itself.")
@click.pass_obj
def queue_show(spool, msg_id, eml) -> None:
    """One message: envelope, status per recipient, last error."""
    from server import queue_admin
    from server.queue import QueueError

    try:
        if eml:
            click.echo(spool.message(msg_id).decode("utf-8", "replace"), nl=False)
        else:
            click.echo(queue_admin.describe(spool.get(msg_id)))
    except QueueError as err:
        raise _queue_error(err) from None


def _queue_action(action: str, help_text: str, all_flag: bool = False):
    @click.argument("msg_ids", nargs=-1)
    @click.pass_obj
    def command(spool, msg_ids, **flags) -> None:
        from server import queue_admin

        if flags.get("every"):
            msg_ids = [e.id for e in spool.list("deferred")]
            if not msg_ids:
                click.echo("no deferred message")
                return
        if not msg_ids:
            raise click.UsageError("give message ids" + (" or --all" if all_flag else ""))
        outcomes = queue_admin.act(spool, action, list(msg_ids))
        click.echo("\n".join(line for _, line in outcomes))
        if not all(done for done, _ in outcomes):
            sys.exit(1)

    command.__doc__ = help_text
    if all_flag:
        command = click.option("--all", "every", is_flag=True,
                               help="Every deferred message.")(command)
    return command


queue.command("retry")(_queue_action("retry", "Deliver now (deferred messages).", True))
queue.command("hold")(_queue_action("hold", "Keep messages from delivery."))
queue.command("release")(_queue_action("release", "Let held messages be delivered."))
queue.command("remove")(_queue_action("remove", "Delete messages."))


@queue.command("move")
@click.argument("msg_id")
@click.argument("target")
@click.pass_obj
def queue_move(spool, msg_id, target) -> None:
    """Move a message to another queue (working, deliver, deferred, dead, hold,
    quarantine/NAME)."""
    from server import queue_admin

    done, line = queue_admin.act(spool, f"move:{target}", [msg_id])[0]
    click.echo(line)
    if not done:
        sys.exit(1)
