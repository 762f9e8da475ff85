"""``vsl migrate verify``: replay SMTP conversations against two servers (the running
Postfix and vSL, say) and show every reply that differs (docs/migrate-verify.md)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

@click.command()
@click.option("--scenarios", "scenario_paths", multiple=True, metavar="FILE|DIR",
              type=click.Path(exists=True, path_type=Path),
              help="A transcript (the format of vsl test), or a directory of them (repeat).")
@click.option("--from-maillog", "maillogs", multiple=True, metavar="LOG",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Postfix's mail log: one scenario per smtpd connection (repeat).")
@click.option("--write", "write_dir", metavar="DIR", type=click.Path(file_okay=False,
              path_type=Path), help="Write the scenarios to DIR, one transcript each.")
@click.option("--a", "server_a", metavar="HOST:PORT", help="The first server (Postfix).")
@click.option("--b", "server_b", metavar="HOST:PORT", help="The second server (vSL).")
@click.option("--text", is_flag=True, help="Compare the replies' text too, not only the "
              "codes and enhanced codes.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds to wait for each reply.")
@click.option("--send-messages", is_flag=True, help="Send each message whole, up to its "
              "final dot (only against test instances: the servers queue and deliver "
              "them). By default the connection is dropped at the message, so nothing is "
              "queued.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def verify(scenario_paths, maillogs, write_dir, server_a, server_b, text, timeout,
           send_messages, as_json) -> None:
    """Replay each conversation against the servers --a and --b, compare every reply
    (code and enhanced code), print the commands whose replies differ side by side and
    a summary. The exit code is 1 when a reply differs. No message is completed unless
    --send-messages: point that only at test instances.

    With --write, the scenarios (from --from-maillog, say) are written as transcripts
    to edit and replay later; --a and --b are then optional."""
    from vsl.server import maillog, replay, replay_report
    from vsl.server.config import parse_listen

    if not scenario_paths and not maillogs:
        raise click.UsageError("give scenarios: --scenarios FILE|DIR or --from-maillog LOG")
    if not write_dir and not (server_a and server_b):
        raise click.UsageError("give the two servers to compare: --a HOST:PORT --b HOST:PORT")
    try:
        targets = [(where.host, where.port) for where in
                   (parse_listen(server, key=option) for server, option in
                    ((server_a, "--a"), (server_b, "--b")) if server)]
        scenarios = replay.load(list(scenario_paths))
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    for log in maillogs:
        scenarios += maillog.scenarios(log)
    if write_dir:
        _write(scenarios, write_dir)
    if len(targets) < 2:
        return
    report = replay_report.compare(scenarios, *targets, names=(server_a, server_b),
                                   text=text, timeout=timeout,
                                   send_messages=send_messages)
    if as_json:
        click.echo(json.dumps(replay_report.as_json(report), indent=2))
    else:
        click.echo(replay_report.render(report))
    sys.exit(1 if report.differences else 0)


def _write(scenarios, directory: Path) -> None:
    """One transcript per scenario: DIR/0001-IP.transcript, ..."""
    from vsl.server.replay import to_transcript

    directory.mkdir(parents=True, exist_ok=True)
    for number, scenario in enumerate(scenarios, 1):
        name = f"{number:04d}-{scenario.client_ip or 'client'}.transcript".replace(":", "_")
        (directory / name).write_text(to_transcript(scenario), encoding="utf-8")
    click.echo(f"{len(scenarios)} scenarios written to {directory}", err=True)
