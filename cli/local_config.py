"""The configuration file a command acts on (``--config``, or ./vsl.toml), read without
importing the server until a file is read."""
from __future__ import annotations

from pathlib import Path

import click


def local_config(config_path: str | None):
    """The Config of ``--config``, else of ./vsl.toml when present, else the defaults (the
    file `vsl queue` and `vsl bounce` act on); a bad file is a ClickException."""
    from vsl.server import config as config_module  # (the mail model: slow to import)

    if not config_path and Path("vsl.toml").is_file():
        config_path = "vsl.toml"
    try:
        return config_module.load(config_path)
    except config_module.ConfigError as err:
        raise click.ClickException(str(err)) from None
