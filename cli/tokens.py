"""``tierbox api-token``: make a bearer token for the admin API."""

from __future__ import annotations

import click

from tierbox.cli.errors import one_line_errors


@click.command("api-token", help="Make a random API token; prints the secret (give it to the client) and the "
                                 "NAME:SCOPE:SHA256HEX line to add to TIERBOX_API_TOKENS(_FILE).")
@click.argument("name")
@click.option("--scope", type=click.Choice(["read", "operate"]), default="read", show_default=True)
@one_line_errors
def api_token(name: str, scope: str) -> None:
    """Print a new token and its config line."""
    from tierbox.api.auth import new_token, parse_tokens

    secret, line = new_token(name, "operate" if scope == "operate" else "read")
    parse_tokens(line)  # the name is valid
    click.echo(f"secret: {secret}\nconfig: {line}")
