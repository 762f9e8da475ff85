"""``vsl serve``: the SMTP server (or its workers) on a directory of scripts.

The server and its configuration are imported when they are used, not with the
command line: they would slow every ``vsl --help``.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
import logging
import os
from pathlib import Path
import shutil
import signal
import sys

import click

from vsl.lint import foreign_note
from vsl.server.logsetup import configure as configure_logging
from vsl.server.syslog5424 import SyslogTargetError

from .zones import dns_override_option, zone_option, zones_served


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="vsl.toml (without it: safe embedded defaults).")
@click.option("--scripts", type=click.Path(file_okay=False), help="Script directory (main.vsl).")
@click.option("--listen", multiple=True, metavar="HOST:PORT",
              help="Listen here (repeat; replaces the configured listeners).")
@click.option("--queue-dir", type=click.Path(file_okay=False), help="Spool directory.")
@click.option("--dns", "dns_server", metavar="HOST:PORT",
              help="DNS server for a dns::resolver() that names none.")
@dns_override_option
@zone_option
@click.option("--hostname", help="The server's name (greeting, Received, local domain).")
@click.option("--workers", metavar="N|auto",
              callback=lambda _ctx, _param, option: workers_count(option),
              help="Server processes accepting on the same listeners (default auto: one per "
                   "usable CPU, at most 8).")
@click.option("--role", type=click.Choice(["all", "receiver", "worker", "delivery"]),
              default="all", show_default=True,
              help="What this process runs: the listeners up to on_pre_queue (receiver), "
                   "on_post_queue (worker), delivery, or all three. A single role needs "
                   "a queue shared between machines ([queue] backend = \"rabbitmq\").")
@click.option("--metrics-listen", metavar="HOST:PORT",
              help="Serve /metrics, /healthz and /readyz here (overrides [metrics] listen).")
@click.option("-v", "--verbose", count=True, help="Debug log output (-vv: the SMTP dialogue too).")
def serve(config_path, scripts, listen, queue_dir, dns_server, dns_override, zones, hostname,
          workers, role, metrics_listen, verbose) -> None:
    """Run the SMTP server on a directory of scripts."""
    if zones and dns_override:
        raise click.UsageError("--zone and --dns-override both say where every look-up goes: "
                               "give one")
    if zones and (workers or 1) > 1:
        raise click.UsageError("--zone serves the zones from a thread of this process, "
                               "which cannot fork workers: give --workers 1")
    options = dict(scripts=scripts, listen=listen, queue_dir=queue_dir, dns_server=dns_server,
                   dns_override=dns_override, hostname=hostname, workers=workers,
                   metrics_listen=metrics_listen)
    with zones_served(zones) as nameserver:
        if nameserver:
            click.echo(f"vsl: zones served on {nameserver}")
            options["dns_override"] = (nameserver,)
            options["workers"] = 1  # (see above)
        config = serve_config(config_path, **options)
        try:
            configure_logging(config.log, verbose)
        except SyslogTargetError as err:
            raise click.ClickException(str(err)) from None
        logging.getLogger("mail.log").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
        _serve(config, role)


def workers_count(option: str | None) -> int | None:
    """The processes ``--workers N|auto`` asks for (None without it); a usage error for
    anything else."""
    from vsl.server import config as config_module  # (the mail model: slow to import)

    if option is None:
        return None
    try:
        return config_module.parse_workers(int(option) if option.isdigit() else option,
                                           "--workers")
    except config_module.ConfigError as err:
        raise click.BadParameter(str(err)) from None


def serve_config(config_path, scripts, listen, queue_dir, dns_server, dns_override, hostname,
                 workers, metrics_listen=None):
    """The configuration `vsl serve` runs: the file's, changed by the options."""
    from vsl.server import config as config_module  # (the mail model: slow to import)
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
        if metrics_listen:
            config_module.parse_listen(metrics_listen, key="--metrics-listen")
            changes["metrics"] = replace(config.metrics, listen=metrics_listen)
        return replace(config, **changes)
    except config_module.ConfigError as err:
        raise click.ClickException(str(err)) from None


def _serve(config, role: str) -> None:
    """Run the server (or its workers) in ``role`` (``all``: every role) until
    interrupted."""
    from vsl.server.app import ALL_ROLES

    roles = ALL_ROLES if role == "all" else frozenset({role})
    with _metrics_directory(config):
        _serve_measured(config, roles)


@contextmanager
def _metrics_directory(config):
    """The metrics' directory prepared before anything imports prometheus_client; a
    private one is removed when `vsl serve` stops, by a SIGTERM before or after the server
    runs too (which ends the process at once; while it runs, SIGTERM stops it cleanly)."""
    from vsl.server import metrics

    try:
        directory = metrics.prepare(config)
    except metrics.DirectoryInUse as err:
        raise click.ClickException(str(err)) from None
    if directory is None or config.metrics.dir is not None:
        yield
        return

    def terminated(signum, _frame):
        shutil.rmtree(directory, ignore_errors=True)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(directory, ignore_errors=True)


def _serve_measured(config, roles: frozenset[str]) -> None:
    """`vsl serve` once the metrics directory is ready."""
    from vsl.server import metrics
    from vsl.server.app import Server
    from vsl.server.policy import PolicyError
    from vsl.server.queue_backend import QueueError

    metrics.enable(config)
    try:
        server = Server(config, roles=roles)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    except PolicyError as err:
        click.echo(f"the scripts do not lint:\n{err}", err=True)
        sys.exit(1)
    if config.workers > 1:
        _serve_workers(config, roles)
        return

    def announce():
        for listener, address in server.bound:
            click.echo(f"vsl: {listener.kind} listening on {address[0]}:{address[1]}")

    try:
        serve_until_interrupted(server, announce, config.event_loop)
    except QueueError as err:  # the broker refused the login: retrying cannot heal it
        raise click.ClickException(str(err)) from None


def serve_until_interrupted(server, announce, loop: str) -> None:
    """Start ``server``, call ``announce()`` (where it listens), serve until Ctrl-C or
    SIGTERM (`vsl serve`, `vsl policyd`, `vsl milter`) on the event loop ``loop``
    ([server] event_loop); an address that cannot be bound is a ClickException."""
    from vsl.server import event_loop

    async def run():
        await server.start()
        announce()
        await server.serve_forever()

    try:
        event_loop.run(run(), loop, stop_on_sigterm=True)
    except KeyboardInterrupt:
        pass
    except OSError as err:
        raise click.ClickException(f"cannot listen: {err}") from None


def _serve_workers(config, roles: frozenset[str]) -> None:
    """`vsl serve` with [server] workers > 1 (server/workers.py)."""
    from vsl.server.workers import Workers

    workers = Workers(config, roles)
    try:
        workers.prepare()
    except OSError as err:
        raise click.ClickException(f"cannot listen: {err}") from None
    for listener, sock in workers.sockets:
        address = sock.getsockname()
        click.echo(f"vsl: {listener.kind} listening on {address[0]}:{address[1]}")
    click.echo(f"vsl: {config.workers} workers")
    sys.exit(workers.run())
