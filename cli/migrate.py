"""``vsl migrate ...``: moving a site to vSL (``postfix``: translate a Postfix configuration;
``verify``, in migrate_verify.py: replay conversations against two servers)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from . import migrate_verify


@click.group()
def migrate() -> None:
    """Move a site from another mail server to vSL."""


migrate.add_command(migrate_verify.verify)


@migrate.command()
@click.option("--config-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("/etc/postfix"), show_default=True,
              help="Postfix's configuration directory (main.cf, master.cf, the tables).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to write main.vsl, postfix.vsl, tables.vsl, vsl.toml and "
                   "MIGRATION.md to.")
@click.option("--strict", is_flag=True,
              help="Exit 3 when anything of main.cf is left untranslated.")
def postfix(config_dir: Path, out: Path, strict: bool) -> None:
    """Translate a Postfix configuration into a vSL policy directory.

    The policy is linted and loaded before the command ends."""
    from vsl.server.migrate.translate import PostfixWouldNotStart, translate
    from vsl.server.policy import PolicyError, load_policy
    from vsl.stdlib import new_engine

    if not (config_dir / "main.cf").is_file():
        raise click.UsageError(f"{config_dir}: no main.cf")
    try:
        translation = translate(config_dir)
    except PostfixWouldNotStart as err:
        click.echo(f"{config_dir}: Postfix would not start: {err}", err=True)
        sys.exit(1)
    translation.write(out)
    try:
        load_policy(new_engine(), out)
    except PolicyError as err:
        click.echo(f"the translated policy does not lint (please report it):\n{err}", err=True)
        sys.exit(1)
    click.echo(f"wrote {out}/main.vsl, vsl.toml and MIGRATION.md: "
               f"{len(translation.left)} item(s) not translated")
    for item in translation.left:
        click.echo(f"  {item.where}: {item.item}: {item.why}")
    if strict and translation.left:
        sys.exit(3)
