"""The ``vsl`` command line: lint, run (and, with the server, serve/test/queue)."""
from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import click

from vsl import values
from vsl.errors import Pos, VslError
from vsl.lint import (Linter, empty_paths, foreign_note, format_concise, format_full, format_json,
                   script_files, summary)
from vsl.stdlib import new_engine
from vsl.syntax import line_of


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(metadata.version("vsl-mta"), prog_name="vsl")
def main() -> None:
    """vSL: a mail server whose behaviour is written as policy scripts."""


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["full", "concise", "json"]), default="full",
              show_default=True,
              help="full: each finding with its source line and a caret; concise: one line "
                   "each (path:line:col: level: message [code]); json: an array.")
def lint(paths, fmt) -> None:
    """Check .vsl files (or directories of them) without running them.

    Exit status 1 if any error was found (a directory of vSMTP .rhai scripts and no .vsl
    file is one), 0 otherwise (warnings only, such as a directory without scripts).
    """
    from vsl.stdlib.ctx import entry_points

    files = script_files(paths)
    entries = entry_points()
    linter = Linter(new_engine(), entries)
    findings = empty_paths(paths, entries.foreign_scripts) + \
        [d for f in files for d in linter.lint_file(f)]
    if fmt == "json":
        click.echo(format_json(findings))
    else:
        if findings:
            click.echo(format_full(findings, linter.sources) if fmt == "full"
                       else format_concise(findings))
        click.echo(summary(findings, len(files)), err=True)
    sys.exit(1 if any(d.severity == "error" for d in findings) else 0)


_ZONE_OPTION = click.option(
    "--zone", "zones", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
    help="Serve this zone file on 127.0.0.1 and send every DNS look-up there (repeat).")


@contextmanager
def _zones_served(zone_files):
    """Serve zone files on 127.0.0.1 while the block runs: yields "host:port", or None
    without zone files."""
    if not zone_files:
        yield None
        return
    from vsl.server.dnsd import DnsServer, ZoneError

    try:
        server = DnsServer([Path(f) for f in zone_files])
    except ZoneError as err:
        raise click.ClickException(str(err)) from None
    with server:
        yield f"{server.host}:{server.port}"


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--call", "fn", metavar="FN", help="Call this function after the top level ran.")
@click.option("--arg", "args", metavar="JSON", multiple=True,
              help="A JSON argument for --call (repeat for more).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_ZONE_OPTION
def run(file, fn, args, as_json, zones) -> None:
    """Run a script's top level (or one function) and print the result."""
    try:
        parsed = [values.from_python(json.loads(a), "--arg") for a in args]
    except (ValueError, RecursionError, VslError) as err:
        raise click.BadParameter(str(err), param_hint="--arg") from None
    if args and not fn:
        raise click.UsageError("--arg needs --call FN")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with _zones_served(zones) as nameserver:
        if nameserver:
            from vsl.stdlib import dns as dns_natives

            dns_natives.configure_defaults(nameservers=(nameserver,), forced=True)
        _run_script(file, fn, parsed, as_json)


def _run_script(file, fn, parsed, as_json) -> None:
    """`vsl run` once its options are read."""
    engine = new_engine()
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
    if not arities or given in arities:
        return None
    return (f"hint: {fn} takes {' or '.join(map(str, arities))} argument(s): give each with "
            "--arg JSON (a JSON object stands in for ctx: --arg '{\"helo\": \"x.test\"}')")


def _stage_result_problem(script, fn: str | None, arity: int, result) -> str | None:
    """What is wrong with a stage function's result (it must be a status), if anything."""
    from vsl.stdlib.ctx import entry_points

    from vsl.checks import wrong_return

    entries = entry_points()
    if fn not in entries.names or arity != 1:
        return None
    return wrong_return(script, entries, fn, result)


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="vsl.toml (without it: safe embedded defaults).")
@click.option("--scripts", type=click.Path(file_okay=False), help="Script directory (main.vsl).")
@click.option("--listen", multiple=True, metavar="HOST:PORT",
              help="Listen here (repeat; replaces the configured listeners).")
@click.option("--queue-dir", type=click.Path(file_okay=False), help="Spool directory.")
@click.option("--dns", "dns_server", metavar="HOST:PORT",
              help="DNS server for a dns::resolver() that names none.")
@click.option("--dns-override", multiple=True, metavar="HOST:PORT",
              help="DNS server for every resolver, whatever the script says (repeat).")
@_ZONE_OPTION
@click.option("--hostname", help="The server's name (greeting, Received, local domain).")
@click.option("--workers", type=click.IntRange(min=1), metavar="N",
              help="Server processes accepting on the same listeners.")
@click.option("-v", "--verbose", count=True, help="Debug log output (-vv: the SMTP dialogue too).")
def serve(config_path, scripts, listen, queue_dir, dns_server, dns_override, zones, hostname,
          workers, verbose) -> None:
    """Run the SMTP server on a directory of scripts."""
    if zones and dns_override:
        raise click.UsageError("--zone and --dns-override both say where every look-up goes: "
                               "give one")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO)
    _log_format("%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    logging.getLogger("mail.log").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
    options = dict(scripts=scripts, listen=listen, queue_dir=queue_dir, dns_server=dns_server,
                   dns_override=dns_override, hostname=hostname, workers=workers)
    with _zones_served(zones) as nameserver:
        if nameserver:
            click.echo(f"vsl: zones served on {nameserver}")
            options["dns_override"] = (nameserver,)
        _serve(_serve_config(config_path, **options))


def _serve_config(config_path, scripts, listen, queue_dir, dns_server, dns_override, hostname,
                  workers):
    """The configuration `vsl serve` runs: the file's, changed by the options."""
    from dataclasses import replace

    from vsl.server import config as config_module
    from vsl.stdlib.ctx import entry_points

    try:
        config = config_module.load(config_path)
        changes = {}
        if scripts:
            if not (Path(scripts) / "main.vsl").is_file():
                foreign = foreign_note(Path(scripts), entry_points().foreign_scripts)
                raise click.ClickException(f"{scripts}: no main.vsl (the policy) there{foreign}")
            changes["scripts"] = Path(scripts)
        if listen:
            changes["listen"] = tuple(config_module.parse_listen(a, key="--listen")
                                      for a in listen)
        if queue_dir:
            changes["queue_dir"] = Path(queue_dir)
        if hostname:
            changes["hostname"] = hostname
        if dns_server:
            changes["dns"] = replace(config.dns, nameservers=(
                config_module.nameserver(dns_server, "--dns"),))
        if dns_override:
            changes["dns"] = replace(changes.get("dns", config.dns), override=tuple(
                config_module.nameserver(a, "--dns-override") for a in dns_override))
        if workers:
            changes["workers"] = workers
        return replace(config, **changes)
    except config_module.ConfigError as err:
        raise click.ClickException(str(err)) from None


def _serve(config) -> None:
    """Run the server (or its workers) until interrupted."""
    import asyncio

    from vsl.server.app import Server
    from vsl.server.policy import PolicyError

    try:
        server = Server(config)
    except ValueError as err:
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


def _log_format(fmt: str) -> None:
    """Every log line of `vsl serve` in ``fmt``, with client text escaped."""
    from vsl.server.printable import SafeFormatter

    for handler in logging.getLogger().handlers:
        handler.setFormatter(SafeFormatter(fmt))


def _serve_workers(config) -> None:
    """`vsl serve` with [server] workers > 1 (server/workers.py)."""
    from vsl.server.workers import Workers

    _log_format("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")  # whose line
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
    from vsl.server.policy import PolicyError
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


@main.command()
@click.argument("user")
@click.password_option(help="The password (asked for when not given).")
def passwd(user, password) -> None:
    """Print a users-file line (user:scrypt$...) for [auth] users_file."""
    from vsl.server.passwords import hash_password

    if ":" in user or not user.strip():
        raise click.BadParameter("a user name cannot be empty or contain ':'", param_hint="USER")
    click.echo(f"{user}:{hash_password(password)}")


@main.group()
@click.option("--queue-dir", type=click.Path(file_okay=False), help="The spool directory.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="vsl.toml (its server.queue_dir); default: ./vsl.toml when present.")
@click.pass_context
def queue(ctx, queue_dir, config_path) -> None:
    """Look at and act on the mail queue (safe while the server runs)."""
    from pathlib import Path

    from vsl.server import config as config_module
    from vsl.server.queue import Spool

    if not queue_dir and not config_path and Path("vsl.toml").is_file():
        config_path = "vsl.toml"
    try:
        directory = Path(queue_dir) if queue_dir else config_module.load(config_path).queue_dir
    except config_module.ConfigError as err:
        raise click.ClickException(str(err)) from None
    if not directory.is_dir():
        raise click.ClickException(f"{directory}: no queue here (use --queue-dir)")
    ctx.obj = Spool(directory)


def _queue_error(err) -> click.ClickException:
    from vsl.server.printable import printable

    return click.ClickException(printable(err))


@queue.command("list")
@click.argument("name", required=False)
@click.option("--by-domain", is_flag=True,
              help="Pending recipients by queue, domain and age (minutes), like qshape.")
@click.option("--json", "as_json", is_flag=True, help="Every message, as JSON.")
@click.pass_obj
def queue_list(spool, name, by_domain, as_json) -> None:
    """Messages, oldest first: id, queue, age (minutes), recipients pending, sender."""
    from vsl.server import queue_admin
    from vsl.server.queue import QueueError

    try:
        entries, unreadable = spool.scan(name)
    except QueueError as err:
        raise _queue_error(err) from None
    for warning in spool.quarantine_warnings():
        click.echo(f"vsl: warning: {warning}", err=True)
    if as_json or by_domain:
        click.echo((queue_admin.as_json if as_json else queue_admin.table)(entries))
        if unreadable:
            click.echo(f"vsl: warning: {len(unreadable)} unreadable envelope(s) left out "
                       "(vsl queue list shows them)", err=True)
    else:
        click.echo(queue_admin.listing(entries, unreadable))


@queue.command("show")
@click.argument("msg_id")
@click.option("--eml", is_flag=True,
              help="Print the message itself: its bytes as stored into a file or pipe, "
                   "control characters escaped on a terminal.")
@click.pass_obj
def queue_show(spool, msg_id, eml) -> None:
    """One message: envelope, status per recipient, last error."""
    from vsl.server import queue_admin
    from vsl.server.queue import QueueError

    try:
        if eml:
            _write_message(spool.message(msg_id))
        else:
            click.echo(queue_admin.describe(spool.get(msg_id)))
    except QueueError as err:
        raise _queue_error(err) from None


def _write_message(data: bytes) -> None:
    """A queued message on standard output: unchanged into a file or a pipe (``--eml >
    msg.eml`` is the message), escaped on a terminal (no escape sequence reaches it)."""
    from vsl.server.printable import printable

    out = click.get_binary_stream("stdout")
    if not out.isatty():
        out.write(data)
        out.flush()
        return
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    click.echo(printable(text, lines=True), nl=False)


def _queue_action(action: str, help_text: str, all_flag: bool = False):
    @click.argument("msg_ids", nargs=-1)
    @click.pass_obj
    def command(spool, msg_ids, **flags) -> None:
        from vsl.server import queue_admin

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
    from vsl.server import queue_admin

    done, line = queue_admin.act(spool, f"move:{target}", [msg_id])[0]
    click.echo(line)
    if not done:
        sys.exit(1)
