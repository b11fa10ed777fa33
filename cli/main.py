"""The ``tierbox`` command group: every command of :mod:`tierbox.cli` joins it here.

Settings come from ``TIERBOX_*`` environment variables (see ``outbox.config``);
flags override them. Failures an operator can fix (bad URL, unreachable
service, bad topology) print one line naming what failed and exit 1
(:mod:`tierbox.cli.errors`).
"""

from __future__ import annotations

import click

from tierbox.cli import control, dlq, processes, reconcile, schedules, tiers, tokens
from tierbox.cli.args import ENV_HELP


@click.group(help="Tierbox: transactional, tiered, auditable background jobs." + ENV_HELP)
def cli() -> None:
    """The tierbox command group."""


def _with_env_help(command: click.Command) -> None:
    """End ``command``'s help (and its subcommands') with the environment table."""
    command.help = (command.help or "") + ENV_HELP
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _with_env_help(sub)


for _command in (*processes.COMMANDS, dlq.dlq, tiers.tiers, *control.COMMANDS, schedules.schedules,
                 tokens.api_token, reconcile.reconcile):
    _with_env_help(_command)
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="tierbox")
