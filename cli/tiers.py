"""``tierbox tiers``: per-tier health and the breakers, as the admin API's ``/admin/tiers`` and
``/admin/breakers`` report them; ``--json`` prints the same report as one document."""

from __future__ import annotations

import asyncio
from typing import Any

import click
import msgspec

from outbox.config import Settings
from tierbox.cli import args, render
from tierbox.cli.errors import one_line_errors
from tierbox.ops.models import TierHealth

TIER_COLUMNS = ("tier", "pending", "oldest_due_age_s", "published", "published_oldest_age_s", "republished_1h",
                "running", "stuck", "succeeded_5m", "failed_5m", "dead_5m", "wait_p99_s", "slo_breached",
                "queue_depth", "queue_consumers", "dlq_depth")

#: Printed under the table while tier_health's ``publishing_blocked`` is true.
PUBLISHING_BLOCKED_LINE = ("publishing blocked: RabbitMQ blocks a relay (memory or disk alarm); "
                           "jobs stay pending until the alarm clears")


class Breakers(msgspec.Struct, frozen=True, kw_only=True):
    """The breaker states from Redis, or why they could not be read (``states`` is then null, not ``{}``)."""

    states: dict[str, dict[str, Any]] | None
    error: str | None = None


class TiersReport(msgspec.Struct, frozen=True, kw_only=True):
    """What ``tierbox tiers --json`` prints: the tier rows and the breakers."""

    tiers: list[TierHealth]
    breakers: Breakers


@click.command("tiers", help="Per-tier health: backlog, relay lag, running, stuck, outcomes, wait, SLO, queues; "
                             "and the circuit breakers.")
@click.option("--database-url", help="Postgres URL.")
@click.option("--amqp-url", help="RabbitMQ URL.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: {tiers, breakers: {states, error}}.")
@one_line_errors
def tiers(database_url: str | None, amqp_url: str | None, as_json: bool) -> None:
    """Show tier health and the breakers."""
    settings = args.settings(database_url=database_url, amqp_url=amqp_url)
    rows = _health(settings)
    report = TiersReport(tiers=rows, breakers=_breakers(settings))
    if as_json:
        click.echo(render.as_json(report))
        return
    click.echo(render.table(rows, TIER_COLUMNS))
    if any(t.publishing_blocked for t in rows):  # one line, not a column: every tier has the same value
        click.echo(PUBLISHING_BLOCKED_LINE)
    errors = {t.broker_error for t in rows if t.broker_error}
    if errors:
        click.echo(f"RabbitMQ: {errors.pop()}", err=True)
    _print_breakers(report.breakers)


def _health(settings: Settings) -> list[TierHealth]:
    from tierbox.ops import tier_health as ops
    from tierbox.ops.broker import DEFAULT_BROKER_TIMEOUT_S, BrokerProbe

    async def work(engine: Any) -> list[TierHealth]:
        broker = BrokerProbe(settings.amqp_url, DEFAULT_BROKER_TIMEOUT_S)
        try:
            async with engine.connect() as conn:
                return list(await ops.health(conn, settings, broker))
        finally:
            await broker.close()

    return args.with_engine(settings, work)


def _breakers(settings: Settings) -> Breakers:
    from tierbox.ops.control import breakers

    try:
        return Breakers(states=asyncio.run(breakers(settings)))
    except Exception as exc:  # noqa: BLE001 - the tier report is still useful without Redis; the outage is named
        return Breakers(states=None, error=f"Redis unreachable ({type(exc).__name__})")


def _print_breakers(found: Breakers) -> None:
    if found.states is None:
        click.echo(f"breakers: {found.error}", err=True)
    elif found.states:
        states = found.states
        rows = [{"breaker": name, **info} for name, info in sorted(states.items())]
        click.echo("\n" + render.table(rows, ("breaker", *sorted(next(iter(states.values())).keys()))))
