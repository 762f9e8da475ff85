"""Where a command's DNS look-ups go: ``--zone FILE``, zone files served on 127.0.0.1
while it runs (run, serve); ``--dns-override HOST:PORT``, servers every resolver asks
(serve, milter, policyd)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import click

zone_option = click.option(
    "--zone", "zones", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
    help="Serve this zone file on 127.0.0.1 and send every DNS look-up there (repeat).")

dns_override_option = click.option(
    "--dns-override", multiple=True, metavar="HOST:PORT",
    help="DNS server for every resolver, whatever the script says (repeat).")


@contextmanager
def zones_served(zone_files):
    """Serve zone files on 127.0.0.1 while the block runs: yields "host:port", or None
    without zone files."""
    if not zone_files:
        yield None
        return
    from vsl.server.dnsd import DnsServer, ZoneError  # (dnspython's zone parser: slow)

    try:
        server = DnsServer([Path(f) for f in zone_files])
    except ZoneError as err:
        raise click.ClickException(str(err)) from None
    with server:
        yield f"{server.host}:{server.port}"
