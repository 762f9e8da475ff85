"""``vsl queue ...``: look at and act on the mail queue (safe while the server runs).

Each command is one event loop (``asyncio.run``): the backend is opened, used and closed
in it (server/queue_admin.py ``administer``).

On a broker (``[queue] backend = "rabbitmq"``) reading a queue means taking each message
and giving it back: ``list`` stops after ``--limit`` messages, and messages being worked
on (claimed by a worker or delivery) are neither counted nor listed; the output says so.
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from vsl.server import queue_admin
from vsl.server.printable import printable
from vsl.server.queue_backend import QueueBackend, QueueError

from .local_config import local_config

BROKER = "vsl.queue.broker"  # ctx.meta: on a broker (reads skip messages in flight)
NOT_COUNTED = "(on the broker: messages being worked on are not counted)"
NOT_LISTED = "vsl: on the broker, messages being worked on are not listed"
LIST_LIMIT = 1000


class _QueueGroup(click.Group):
    """``vsl queue``, taking its own options after the command too (``vsl queue list
    --config vsl.toml`` as ``vsl queue --config vsl.toml list``)."""

    OWN = ("--config", "--queue-dir")

    def parse_args(self, ctx, args):
        front, rest, args = [], [], list(args)
        while args:
            arg = args.pop(0)
            if arg in self.OWN and args:
                front += [arg, args.pop(0)]
            elif arg.startswith(tuple(f"{own}=" for own in self.OWN)):
                front.append(arg)
            else:
                rest.append(arg)
        return super().parse_args(ctx, front + rest)


@click.group(cls=_QueueGroup, invoke_without_command=True)
@click.option("--queue-dir", type=click.Path(file_okay=False), help="The spool directory.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="vsl.toml (its server.queue_dir); default: ./vsl.toml when present.")
@click.pass_context
def queue(ctx, queue_dir, config_path) -> None:
    """Look at and act on the mail queue (safe while the server runs). Without a
    command: messages per queue (as ``vsl queue counts``)."""
    from vsl.server.config import Config  # (the mail model: slow to import)
    from vsl.server.queues import open_queue

    config = Config(queue_dir=Path(queue_dir)) if queue_dir else local_config(config_path)
    ctx.meta[BROKER] = config.queue.backend != "spool"
    if not ctx.meta[BROKER] and not config.queue_dir.is_dir():
        raise click.ClickException(f"{config.queue_dir}: no queue here (use --queue-dir)")
    try:
        ctx.obj = open_queue(config)
    except QueueError as err:
        raise _queue_error(err) from None
    if ctx.invoked_subcommand is None:
        ctx.invoke(queue_counts)


def _queue_error(err) -> click.ClickException:
    return click.ClickException(printable(err))


def _run(mail_queue: QueueBackend, work):
    """``work(mail_queue)`` (a coroutine) in an event loop of its own, the backend open
    around it; a QueueError becomes the command's error."""
    try:
        return asyncio.run(queue_admin.administer(mail_queue, work))
    except QueueError as err:
        raise _queue_error(err) from None


@queue.command("counts")
@click.pass_obj
def queue_counts(mail_queue: QueueBackend) -> None:
    """Messages per queue (on a broker: not those being worked on)."""
    click.echo(queue_admin.counts_table(_run(mail_queue, lambda q: q.counts())))
    if _on_broker():
        click.echo(NOT_COUNTED)


def _on_broker() -> bool:
    return click.get_current_context().meta[BROKER]


@queue.command("list")
@click.argument("name", required=False)
@click.option("--by-domain", is_flag=True,
              help="Pending recipients by queue, domain and age (minutes), like qshape.")
@click.option("--json", "as_json", is_flag=True, help="Every message, as JSON.")
@click.option("--limit", type=click.IntRange(min=1), default=LIST_LIMIT, show_default=True,
              help="On a broker: read at most this many messages (each is taken and "
                   "given back).")
@click.pass_obj
def queue_list(mail_queue: QueueBackend, name, by_domain, as_json, limit) -> None:
    """Messages, oldest first: id, queue, age (minutes), recipients pending, sender."""
    if _on_broker():
        entries, unreadable = _run(mail_queue, lambda q: q.scan(name, limit=limit))
        click.echo(NOT_LISTED, err=True)
        if len(entries) + len(unreadable) >= limit:
            click.echo(f"vsl: stopped after {limit} messages (--limit): more may not have "
                       "been read", err=True)
    else:
        entries, unreadable = _run(mail_queue, lambda q: q.scan(name))
    for warning in mail_queue.quarantine_warnings():
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
def queue_show(mail_queue: QueueBackend, msg_id, eml) -> None:
    """One message: envelope, status per recipient, last error."""
    if eml:
        _write_message(_run(mail_queue, lambda q: q.message(msg_id)))
    else:
        click.echo(queue_admin.describe(_run(mail_queue, lambda q: q.get(msg_id))))


def _write_message(data: bytes) -> None:
    """A queued message on standard output: unchanged into a file or a pipe (``--eml >
    msg.eml`` is the message), escaped on a terminal (no escape sequence reaches it)."""
    out = sys.stdout.buffer
    if not out.isatty():
        out.write(data)
        out.flush()
        return
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    click.echo(printable(text, lines=True), nl=False)


def _queue_action(action: str, help_text: str, all_flag: bool = False):
    @click.argument("msg_ids", nargs=-1)
    @click.pass_obj
    def command(mail_queue: QueueBackend, msg_ids, every=False) -> None:
        if not msg_ids and not every:
            raise click.UsageError("give message ids" + (" or --all" if all_flag else ""))
        outcomes = _run(mail_queue, lambda q: _act(q, action, list(msg_ids), every))
        if not outcomes:
            click.echo("no deferred message")
            return
        click.echo("\n".join(line for _, line in outcomes))
        if not all(done for done, _ in outcomes):
            sys.exit(1)

    command.__doc__ = help_text
    if all_flag:
        command = click.option("--all", "every", is_flag=True,
                               help="Every deferred message.")(command)
    return command


async def _act(mail_queue: QueueBackend, action: str, msg_ids: list[str],
               every: bool) -> list[tuple[bool, str]]:
    """``action`` on each message (``every``: retry each deferred one instead)."""
    if every:
        return await queue_admin.retry_all(mail_queue)
    return await queue_admin.act(mail_queue, action, msg_ids)


queue.command("retry")(_queue_action("retry", "Deliver now (deferred messages).", True))
queue.command("hold")(_queue_action("hold", "Keep messages from delivery."))
queue.command("release")(_queue_action("release", "Let held messages be delivered."))
queue.command("remove")(_queue_action("remove", "Delete messages."))


@queue.command("move")
@click.argument("msg_id")
@click.argument("target")
@click.pass_obj
def queue_move(mail_queue: QueueBackend, msg_id, target) -> None:
    """Move a message to another queue (working, deliver, deferred, dead, hold,
    quarantine/NAME)."""
    done, line = _run(mail_queue, lambda q: queue_admin.act(q, f"move:{target}", [msg_id]))[0]
    click.echo(line)
    if not done:
        sys.exit(1)
