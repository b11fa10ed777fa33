"""``tierbox tiers``: per-tier health and the breakers, as the admin API's ``/admin/tiers`` reports them."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from outbox.config import Settings
from tierbox.cli import args, render
from tierbox.cli.errors import one_line_errors

TIER_COLUMNS = ("tier", "pending", "oldest_due_age_s", "published", "running", "stuck", "succeeded_5m",
                "failed_5m", "dead_5m", "wait_p95_s", "slo_breached", "queue_depth", "queue_consumers", "dlq_depth")


@click.command("tiers", help="Per-tier health: backlog, relay lag, running, stuck, outcomes, wait, SLO, queues.")
@click.option("--database-url", help="Postgres URL.")
@click.option("--amqp-url", help="RabbitMQ URL.")
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def tiers(database_url: str | None, amqp_url: str | None, as_json: bool) -> None:
    """Show tier health."""
    from tierbox.ops import tier_health as ops
    from tierbox.ops.broker import DEFAULT_BROKER_TIMEOUT_S, BrokerProbe

    settings = args.settings(database_url=database_url, amqp_url=amqp_url)

    async def work(engine: Any) -> Any:
        broker = BrokerProbe(settings.amqp_url, DEFAULT_BROKER_TIMEOUT_S)
        try:
            async with engine.connect() as conn:
                return await ops.health(conn, settings, broker)
        finally:
            await broker.close()

    result = args.with_engine(settings, work)
    click.echo(render.as_json(result) if as_json else render.table(result, TIER_COLUMNS))
    errors = {t.broker_error for t in result if t.broker_error}
    if errors and not as_json:
        click.echo(f"RabbitMQ: {errors.pop()}", err=True)
    if not as_json:
        _print_breakers(settings)


def _print_breakers(settings: Settings) -> None:
    from tierbox.ops.control import breakers

    try:
        states = asyncio.run(breakers(settings))
    except Exception as exc:  # noqa: BLE001 - the tier table is still useful without Redis
        click.echo(f"breakers: Redis unreachable ({type(exc).__name__})", err=True)
        return
    if states:
        rows = [{"breaker": name, **info} for name, info in sorted(states.items())]
        click.echo("\n" + render.table(rows, ("breaker", *sorted(next(iter(states.values())).keys()))))
