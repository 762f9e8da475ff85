"""The ``vsl`` command line, on top of every layer: one module per command group.

    language.py  vsl lint, vsl run, vsl test (scripts and recorded sessions)
    serve.py     vsl serve (the server or its workers)
    policyd.py   vsl policyd (the scripts as a Postfix policy service)
    milter.py    vsl milter (the stages inside Postfix or Sendmail)
    queue.py     vsl queue ... (the spool, safe while the server runs)
    users.py     vsl passwd (users-file lines)
    bounce.py    vsl bounce ... (the bounce classifier)
    log.py       vsl log summary (what a log says happened, like pflogsumm)
    zones.py     --zone FILE, shared by run and serve
    local_config.py  --config FILE (or ./vsl.toml), shared by lint, queue and bounce
    migrate.py   vsl migrate postfix (translate a Postfix configuration), and
    migrate_verify.py  vsl migrate verify (replay conversations against two servers)

A command's module is imported only when that command runs (or shows its own help):
``vsl --help`` lists the commands from :data:`COMMANDS`, their one-line help included, and
imports neither the language nor the server. A new command is a click command in the
module of its group (or a new module) and one entry in :data:`COMMANDS`, whose help is the
first sentence of the command's own (tests/test_cli.py checks it).
"""
from __future__ import annotations

from importlib import import_module

import click

# name: (module in vsl.cli, the click command in it, its help's first sentence)
COMMANDS = {
    "bounce": ("bounce", "bounce",
               "Why messages bounced: the bounce classifier (docs/bounces.md)."),
    "lint": ("language", "lint", "Check .vsl files (or directories of them) without running them."),
    "log": ("log", "log",
            "Read vSL's own log: totals, rejects, deliveries (docs/observability.md)."),
    "migrate": ("migrate", "migrate", "Move a site from another mail server to vSL."),
    "milter": ("milter", "milter", "Run the policy's stages as a milter (Postfix smtpd_milters, "
               "Sendmail INPUT_MAIL_FILTER)."),
    "passwd": ("users", "passwd",
               "Print a users-file line (user:scrypt$...) for [auth] users_file."),
    "policyd": ("policyd", "policyd", "Answer Postfix's policy requests (check_policy_service) "
                "with the scripts' stages."),
    "queue": ("queue", "queue", "Look at and act on the mail queue (safe while the server runs)."),
    "run": ("language", "run", "Run a script's top level (or one function) and print the result."),
    "serve": ("serve", "serve", "Run the SMTP server on a directory of scripts."),
    "test": ("language", "test_command",
             "Replay recorded SMTP sessions against the policy, without a network."),
}


class LazyGroup(click.Group):
    """A group that imports a command's module when the command is looked up to run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute, _ = COMMANDS[name]
        return getattr(import_module(f"{__name__}.{module}"), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The list of commands from :data:`COMMANDS`, without importing them (the help is
        cut to the width as click cuts a command's short help)."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        with formatter.section("Commands"):
            formatter.write_dl([(name, _short_help(COMMANDS[name][2], limit)) for name in names])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vsl-mta", prog_name="vsl")
def main() -> None:
    """vSL: a mail server whose behaviour is written as policy scripts."""


def _short_help(first_sentence: str, limit: int) -> str:
    return click.Command(None, help=first_sentence).get_short_help_str(limit)
