"""``vsl policyd``: the policy's stages as a Postfix policy delegation service
(``check_policy_service inet:HOST:PORT`` in main.cf).

The service is imported when the command runs, not with the command line.
"""
from __future__ import annotations

import sys

import click

from vsl.server.logsetup import configure as configure_logging
from vsl.server.observability_config import LogConfig

from .serve import serve_config, serve_until_interrupted
from .zones import dns_override_option

DEFAULT_LISTEN = "127.0.0.1:10040"


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="vsl.toml (scripts, [dns], script limits, fallback_reply, hostname).")
@click.option("--scripts", type=click.Path(file_okay=False), help="Script directory (main.vsl).")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT",
              help="Where Postfix connects (check_policy_service inet:HOST:PORT).")
@dns_override_option
@click.option("--hostname", help="The server's name (ctx.server_name).")
@click.option("-v", "--verbose", is_flag=True, help="Debug log output.")
def policyd(config_path, scripts, listen, dns_override, hostname, verbose) -> None:
    """Answer Postfix's policy requests (check_policy_service) with the scripts' stages."""
    from vsl.server import config as config_module

    configure_logging(LogConfig(), verbose)  # text on stderr, whatever [log] says
    config = serve_config(config_path, scripts=scripts, listen=(), queue_dir=None,
                          dns_server=None, dns_override=dns_override, hostname=hostname,
                          workers=None)
    if config.scripts is None:
        raise click.UsageError("no scripts: give --scripts DIR (or scripts in vsl.toml)")
    try:
        where = config_module.parse_listen(listen, key="--listen")
    except config_module.ConfigError as err:
        raise click.ClickException(str(err)) from None
    _run(config, (where.host, where.port))


def _run(config, listen: tuple[str, int]) -> None:
    """Serve until interrupted."""
    from vsl.server.policy import PolicyError
    from vsl.server.policyd.service import PolicyService

    try:
        service = PolicyService(config, listen)
    except ValueError as err:  # a ConfigError ([state] cannot be opened)
        raise click.ClickException(str(err)) from None
    except PolicyError as err:
        click.echo(f"the scripts do not lint:\n{err}", err=True)
        sys.exit(1)

    serve_until_interrupted(service, lambda: click.echo(
        "vsl: policy service listening on {}:{}".format(*service.address)), config.event_loop)
