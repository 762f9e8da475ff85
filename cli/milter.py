"""``vsl milter``: the policy's stages inside Postfix or Sendmail (server/milter/)."""
from __future__ import annotations

import sys

import click

from vsl.server.logsetup import configure as configure_logging
from vsl.server.observability_config import LogConfig

from .serve import serve_config, serve_until_interrupted
from .zones import dns_override_option


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="vsl.toml (hostname, limits, DNS, script threads, fallback reply).")
@click.option("--scripts", type=click.Path(file_okay=False), help="Script directory (main.vsl).")
@click.option("--listen", default="inet:127.0.0.1:8891", show_default=True,
              metavar="inet:HOST:PORT|unix:PATH", help="Where the MTA connects.")
@dns_override_option
@click.option("--hostname", help="The server's name when the MTA does not send it.")
@click.option("-v", "--verbose", is_flag=True, help="Debug log output.")
def milter(config_path, scripts, listen, dns_override, hostname, verbose) -> None:
    """Run the policy's stages as a milter (Postfix smtpd_milters, Sendmail INPUT_MAIL_FILTER)."""
    from vsl.server.config import ConfigError
    from vsl.server.milter.server import MilterServer
    from vsl.server.policy import PolicyError

    configure_logging(LogConfig(), verbose, "purepythonmilter")  # text on stderr
    config = serve_config(config_path, scripts, (), None, None, dns_override, hostname, None)
    try:
        server = MilterServer(config, listen)
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    except PolicyError as err:
        click.echo(f"the scripts do not lint:\n{err}", err=True)
        sys.exit(1)

    serve_until_interrupted(
        server, lambda: click.echo(f"vsl: milter listening on {server.address}"), config.event_loop)
