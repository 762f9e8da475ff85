"""``vsl passwd``: users-file lines for SMTP AUTH."""
from __future__ import annotations

import click

from vsl.server.smtp_users import hash_password


@click.command()
@click.argument("user")
@click.password_option(help="The password (asked for when not given).")
def passwd(user, password) -> None:
    """Print a users-file line (user:scrypt$...) for [auth] users_file."""
    if ":" in user or not user.strip():
        raise click.BadParameter("a user name cannot be empty or contain ':'", param_hint="USER")
    click.echo(f"{user}:{hash_password(password)}")
