"""The ``vsl`` command line, on top of every layer: one module per command group.

    language.py  vsl lint, vsl run, vsl test (scripts and recorded sessions)
    serve.py     vsl serve (the server or its workers)
    policyd.py   vsl policyd (the scripts as a Postfix policy service)
    milter.py    vsl milter (the stages inside Postfix or Sendmail)
    queue.py     vsl queue ... (the spool, safe while the server runs)
    users.py     vsl passwd (users-file lines)
    bounce.py    vsl bounce ... (the bounce classifier)
    zones.py     --zone FILE, shared by run and serve
    migrate.py   vsl migrate postfix (translate a Postfix configuration), and
    migrate_verify.py  vsl migrate verify (replay conversations against two servers)

A new command is a click command in the module of its group (or a new module) and one
``main.add_command`` line below. Modules import at their top what is cheap; what would
slow every ``vsl --help`` (the server, dnspython) is imported by the command that runs it.
"""
from __future__ import annotations

from importlib import metadata

import click

from . import bounce, language, migrate, milter, policyd, queue, serve, users


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(metadata.version("vsl-mta"), prog_name="vsl")
def main() -> None:
    """vSL: a mail server whose behaviour is written as policy scripts."""


main.add_command(language.lint)
main.add_command(language.run)
main.add_command(language.test_command)
main.add_command(serve.serve)
main.add_command(milter.milter)
main.add_command(queue.queue)
main.add_command(users.passwd)
main.add_command(bounce.bounce)
main.add_command(policyd.policyd)
main.add_command(migrate.migrate)
