"""``tierbox reconcile``: one reconciliation round now, from a shell (audited, as ``POST /admin/reconcile``).

The relay runs rounds on its own every ``reconcile_interval_s``; this runs one at once, for an operator
who knows a queue was purged or a broker reset. ``--force`` skips the two-round rule (a candidate is
otherwise republished only if the previous round saw it missing too), never the grace.
"""

from __future__ import annotations

from typing import Any

import click

from tierbox.cli import args
from tierbox.cli.errors import one_line_errors
from tierbox.cli.render import as_json, table
from tierbox.ops.audit import Actor

COLUMNS = ("tier", "owed", "ready", "held", "shortfall", "candidates", "republished")


@click.command("reconcile", help="Republish published, unstarted jobs RabbitMQ no longer holds: one round now "
                                 "(audited).")
@click.option("--tier", help="Only this tier [every tier].")
@click.option("--dry-run", is_flag=True, help="Say what would be republished; change nothing (still audited).")
@click.option("--force", is_flag=True, help="Skip the two-round rule (the grace still holds).")
@click.option("--reason", help="Why (recorded in the audit log).")
@click.option("--json", "as_json_", is_flag=True, help="Print the round as one JSON document.")
@click.option("--database-url", help="Postgres URL.")
@click.option("--amqp-url", help="RabbitMQ URL.")
@one_line_errors
def reconcile(tier: str | None, dry_run: bool, force: bool, reason: str | None, as_json_: bool,
              database_url: str | None, amqp_url: str | None) -> None:
    """Run one reconciliation round."""
    from tierbox.relay.manual import reconcile_now  # deferred: keeps `tierbox --help` light

    settings = args.settings(database_url=database_url, amqp_url=amqp_url)
    if tier is not None and tier not in settings.topology.tiers:
        raise click.BadParameter(f"unknown tier {tier!r}; one of {', '.join(settings.topology.tiers)}",
                                 param_hint="--tier")
    done = args.with_engine(settings, lambda e: reconcile_now(e, settings, Actor.os_user(), tier, dry_run=dry_run,
                                                              force=force, reason=reason))
    if as_json_:
        click.echo(as_json(done))
        if done.skipped:  # the same exit status as the table form: a script must not read "done" from 0
            raise SystemExit(1)
        return
    if done.skipped:
        raise click.ClickException(f"round skipped: {done.skipped}")
    rows: list[dict[str, Any]] = [{**{c: getattr(t, c) for c in COLUMNS[:5]}, "candidates": len(t.candidates),
                                   "republished": len(t.republished)} for t in done.tiers]
    click.echo(table(rows, COLUMNS))
    verb = "would republish" if dry_run else "republished"
    for t in done.tiers:
        for job_id in t.republished:
            click.echo(f"{verb} {t.tier} {job_id}")
    click.echo(f"{verb} {sum(len(t.republished) for t in done.tiers)} job(s)")
    for tier, error in done.skipped_tiers.items():
        click.echo(f"tier {tier} skipped (its queue could not be read): {error}", err=True)
