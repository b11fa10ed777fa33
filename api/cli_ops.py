"""Operator commands: ``tierbox api``, ``tierbox api-token``, ``tierbox dlq ...``, ``tierbox tiers``.

The ``dlq`` and ``tiers`` commands call the same functions as the admin API
(``api.dlq``, ``api.tiers``), so they show the same data and write the same
audit rows, with the OS user as the actor. ``--json`` prints what the API
would return.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from api import render
from api.errors import ApiError
from api.service_errors import service_error
from outbox.config import Settings
from outbox.errors import TierboxError

T = TypeVar("T")
log = logging.getLogger("tierbox.api")

DL_COLUMNS = ("failed_at", "job_id", "tier", "task", "reason", "error_type", "attempts", "state")
DL_FIELDS = ("job_id", "task", "tier", "reason", "error_type", "error_message", "attempts", "enqueued_at",
             "failed_at", "state", "redriven_at", "redriven_by", "redrive_reason", "new_job_id", "discarded_at",
             "discarded_by", "discard_reason", "last_worker_id", "payload", "headers", "raw_body_bytes")
TIER_COLUMNS = ("tier", "pending", "oldest_due_age_s", "published", "running", "stuck", "succeeded_5m",
                "failed_5m", "dead_5m", "wait_p95_s", "slo_breached", "queue_depth", "queue_consumers", "dlq_depth")


def register(cli: click.Group, env_help: str = "") -> None:
    """Add the operator commands to the ``tierbox`` group, their help ending with ``env_help``.

    ``env_help`` is passed in rather than imported: ``api.cli`` imports this
    module, and under ``python -m api.cli`` importing it back would load it twice.
    """
    from api.cli_control import COMMANDS as CONTROL  # imports this module: import it late
    from api.cli_control import override

    for command in (api_command, api_token, dlq, tiers, *dlq.commands.values(), *CONTROL,
                    *override.commands.values()):
        if env_help and env_help not in (command.help or ""):
            command.help = (command.help or "") + env_help
    for command in (api_command, api_token, dlq, tiers, *CONTROL):
        cli.add_command(command)


def operator_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Refusals and unreachable services as one line on stderr and exit 1 (bad input: exit 2)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import psycopg
        import sqlalchemy.exc

        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            click.echo(f"tierbox: {exc.message}", err=True)
            sys.exit(2 if exc.status == 422 else 1)
        except (TierboxError, OSError) as exc:
            click.echo(f"tierbox: {exc}", err=True)
            sys.exit(1)
        except (psycopg.OperationalError, sqlalchemy.exc.OperationalError) as exc:
            click.echo(f"tierbox: {service_error(exc)}", err=True)
            sys.exit(1)
    return wrapper


def _settings(database_url: str | None = None, amqp_url: str | None = None) -> Settings:
    return Settings.from_env(database_url=database_url, amqp_url=amqp_url)


def _run(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(engine)`` on a fresh engine, disposed afterwards."""
    from api.db import create_engine

    async def main() -> T:
        engine = create_engine(settings)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _job_id(value: str) -> uuid.UUID:
    from api.params import job_id

    return job_id(value)


def _when(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO date/time: {value!r}", param_hint=name) from None


# --- tierbox api / api-token ---------------------------------------------------------------------

@click.command("api", help="Serve the admin API (Litestar) until SIGTERM. Tokens: TIERBOX_API_TOKENS or "
                           "TIERBOX_API_TOKENS_FILE, entries NAME:SCOPE:SHA256HEX (see tierbox api-token).")
@click.option("--host", default=None, help="Interface to bind [127.0.0.1].")
@click.option("--port", type=int, default=None, help="TCP port [8080].")
@click.option("--insecure-dev", is_flag=True, help="Serve without tokens, on 127.0.0.1 only (never in production).")
@click.option("--database-url", help="Postgres URL.")
@click.option("--amqp-url", help="RabbitMQ URL.")
@operator_errors
def api_command(host: str | None, port: int | None, insecure_dev: bool, database_url: str | None,
                amqp_url: str | None) -> None:
    """Run the admin API."""
    import os

    import uvicorn

    from api.app import create_app
    from api.config import ApiConfig
    from outbox.logs import event, setup

    setup(os.environ.get("TIERBOX_LOG_LEVEL", "INFO"))
    config = ApiConfig.from_env(insecure_dev=insecure_dev, host=host, port=port)
    if config.insecure_dev:
        banner = "!" * 72
        log.warning("%s\naction=api.insecure_dev INSECURE DEV MODE: %s; listening on 127.0.0.1 only. "
                    "Never run this in production.\n%s", banner,
                    "no token is checked, every caller may redrive and discard" if config.auth_disabled
                    else "tokens are checked", banner)
    settings = _settings(database_url, amqp_url)
    event(log, "api.starting", host=config.host, port=config.port, tokens=len(config.tokens))
    uvicorn.run(create_app(settings, config), host=config.host, port=config.port, log_level="warning",
                server_header=False, proxy_headers=False, access_log=False)


@click.command("api-token", help="Make a random API token; prints the secret (give it to the client) and the "
                                 "NAME:SCOPE:SHA256HEX line to add to TIERBOX_API_TOKENS(_FILE).")
@click.argument("name")
@click.option("--scope", type=click.Choice(["read", "operate"]), default="read", show_default=True)
def api_token(name: str, scope: str) -> None:
    """Print a new token and its config line."""
    from api.auth import new_token, parse_tokens

    secret, line = new_token(name, "operate" if scope == "operate" else "read")
    parse_tokens(line)  # the name is valid
    click.echo(f"secret: {secret}\nconfig: {line}")


# --- tierbox dlq ---------------------------------------------------------------------------------

@click.group(help="Dead letters: list, show, redrive, discard (audited with your OS user as the actor).")
def dlq() -> None:
    """The dlq command group."""


def _filters(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--tier", help="Only this tier."), click.option("--task", help="Only this task."),
        click.option("--failure-reason", help="Only this dead-letter reason (failed, non_retryable, ...)."),
        click.option("--since", help="Failed at or after (ISO time, UTC if no zone)."),
        click.option("--until", help="Failed before (ISO time)."),
        click.option("--database-url", help="Postgres URL."),
    ]):
        fn = option(fn)
    return fn


@dlq.command("list", help="Dead letters, newest first, payloads redacted.")
@_filters
@click.option("--error-type", help="Only this error type.")
@click.option("--state", type=click.Choice(["open", "redriven", "discarded", "all"]), default="open",
              show_default=True)
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@click.option("--cursor", help="next_cursor printed by the previous page.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, as the API returns it.")
@operator_errors
def dlq_list(tier: str | None, task: str | None, failure_reason: str | None, since: str | None,
             until: str | None, database_url: str | None, error_type: str | None, state: str, limit: int,
             cursor: str | None, as_json: bool) -> None:
    """List dead letters."""
    from api import dlq as ops
    from api.params import tier as check_tier

    settings = _settings(database_url)
    flt = ops.DeadLetterFilter(tier=check_tier(settings, tier), task=task, reason=failure_reason,
                               error_type=error_type, since=_when(since, "--since"), until=_when(until, "--until"),
                               state=None if state == "all" else state)

    async def work(engine: Any) -> Any:
        async with engine.connect() as conn:
            return await ops.page(conn, flt, limit, cursor)

    result = _run(settings, work)
    if as_json:
        click.echo(render.as_json(result))
        return
    click.echo(render.table(result.items, DL_COLUMNS))
    if result.next_cursor:
        click.echo(f"more: --cursor {result.next_cursor}")


@dlq.command("by-tier", help="Open dead letters counted per tier and reason.")
@click.option("--database-url", help="Postgres URL.")
@click.option("--json", "as_json", is_flag=True)
@operator_errors
def dlq_by_tier(database_url: str | None, as_json: bool) -> None:
    """Count open dead letters."""
    from api import dlq as ops

    async def work(engine: Any) -> Any:
        async with engine.connect() as conn:
            return await ops.by_tier(conn)

    result = _run(_settings(database_url), work)
    click.echo(render.as_json(result) if as_json else render.table(result, ("tier", "reason", "count")))


@dlq.command("show", help="One dead letter with every attempt of its job.")
@click.argument("job_id")
@click.option("--database-url", help="Postgres URL.")
@click.option("--json", "as_json", is_flag=True)
@operator_errors
def dlq_show(job_id: str, database_url: str | None, as_json: bool) -> None:
    """Show a dead letter."""
    from api import dlq as ops

    parsed = _job_id(job_id)

    async def work(engine: Any) -> Any:
        async with engine.connect() as conn:
            return await ops.show(conn, parsed)

    result = _run(_settings(database_url), work)
    if as_json:
        click.echo(render.as_json(result))
        return
    click.echo(render.fields(result.dead_letter, DL_FIELDS))
    click.echo("\n" + render.table(result.attempts, ("attempt", "worker_id", "started_at", "finished_at",
                                                      "outcome", "error_type", "error_message")))


@dlq.command("redrive", help="Redrive one dead letter (JOB_ID) or, with --all, every open one matching the "
                             "filters: oldest first, --rate per second, each second's batch its own transaction.")
@click.argument("job_id", required=False)
@_filters
@click.option("--all", "bulk", is_flag=True, help="Bulk: every open dead letter matching the filters.")
@click.option("--to-tier", help="Move the job(s) to this tier.")
@click.option("--reason", help="Why (required with --all); recorded on the dead letter and in the audit log.")
@click.option("--limit", type=click.IntRange(1, 50_000), default=1000, show_default=True)
@click.option("--rate", type=click.IntRange(1, 5000), default=200, show_default=True, help="Per second.")
@click.option("--dry-run", is_flag=True, help="Only count what --all would redrive.")
@click.option("--json", "as_json", is_flag=True)
@operator_errors
def dlq_redrive(job_id: str | None, tier: str | None, task: str | None, failure_reason: str | None,
                since: str | None, until: str | None, database_url: str | None, bulk: bool, to_tier: str | None,
                reason: str | None, limit: int, rate: int, dry_run: bool, as_json: bool) -> None:
    """Redrive dead letters."""
    import msgspec

    from api import dlq as ops
    from api.audit import Actor
    from api.models import BulkRedriveRequest
    from api.params import tier as check_tier

    settings = _settings(database_url)
    actor = Actor.os_user()
    check_tier(settings, to_tier, "--to-tier")
    if bulk == (job_id is not None):
        raise click.UsageError("give either JOB_ID or --all with filters")
    if job_id is not None:
        parsed = _job_id(job_id)
        one = _run(settings, lambda engine: ops.redrive(engine, actor, parsed, tier=to_tier, reason=reason))
        click.echo(render.as_json(one) if as_json else f"redriven {one.job_id} as {one.new_job_id}")
        return
    if not reason:
        raise click.UsageError("--reason is required with --all (it is recorded on every dead letter)")
    try:
        req = msgspec.convert({"reason": reason, "target_tier": to_tier, "limit": limit, "rate_per_s": rate,
                               "dry_run": dry_run, "filter": {"tier": check_tier(settings, tier, "--tier"),
                               "task": task, "reason": failure_reason, "since": _when(since, "--since"),
                               "until": _when(until, "--until")}}, BulkRedriveRequest)
    except msgspec.ValidationError as exc:
        raise click.BadParameter(str(exc)) from None
    result = _run(settings, lambda engine: ops.redrive_bulk(engine, actor, req))
    if as_json:
        click.echo(render.as_json(result))
    elif result.dry_run:
        click.echo(f"dry run: {result.count} dead letters would be redriven")
    else:
        click.echo(f"redriven {result.count} dead letters in {result.batches} batches")


@dlq.command("discard", help="Discard one dead letter: kept for audit, never redriven.")
@click.argument("job_id")
@click.option("--reason", help="Why; recorded on the dead letter and in the audit log.")
@click.option("--database-url", help="Postgres URL.")
@click.option("--json", "as_json", is_flag=True)
@operator_errors
def dlq_discard(job_id: str, reason: str | None, database_url: str | None, as_json: bool) -> None:
    """Discard a dead letter."""
    from api import dlq as ops
    from api.audit import Actor
    from api.models import Discarded

    parsed = _job_id(job_id)
    _run(_settings(database_url), lambda engine: ops.discard(engine, Actor.os_user(), parsed, reason=reason))
    click.echo(render.as_json(Discarded(job_id=parsed)) if as_json else f"discarded {parsed}")


# --- tierbox tiers -------------------------------------------------------------------------------

@click.command("tiers", help="Per-tier health: backlog, relay lag, running, stuck, outcomes, wait, SLO, queues.")
@click.option("--database-url", help="Postgres URL.")
@click.option("--amqp-url", help="RabbitMQ URL.")
@click.option("--json", "as_json", is_flag=True)
@operator_errors
def tiers(database_url: str | None, amqp_url: str | None, as_json: bool) -> None:
    """Show tier health."""
    from api import tiers as ops
    from api.broker import BrokerProbe
    from api.config import DEFAULT_BROKER_TIMEOUT_S

    settings = _settings(database_url, amqp_url)

    async def work(engine: Any) -> Any:
        broker = BrokerProbe(settings.amqp_url, DEFAULT_BROKER_TIMEOUT_S)
        try:
            async with engine.connect() as conn:
                return await ops.health(conn, settings, broker)
        finally:
            await broker.close()

    result = _run(settings, work)
    click.echo(render.as_json(result) if as_json else render.table(result, TIER_COLUMNS))
    errors = {t.broker_error for t in result if t.broker_error}
    if errors and not as_json:
        click.echo(f"RabbitMQ: {errors.pop()}", err=True)
    if not as_json:
        _print_breakers(settings)


def _print_breakers(settings: Settings) -> None:
    from api.control import breakers

    try:
        states = asyncio.run(breakers(settings))
    except Exception as exc:  # noqa: BLE001 - the tier table is still useful without Redis
        click.echo(f"breakers: Redis unreachable ({type(exc).__name__})", err=True)
        return
    if states:
        rows = [{"breaker": name, **info} for name, info in sorted(states.items())]
        click.echo("\n" + render.table(rows, ("breaker", *sorted(next(iter(states.values())).keys()))))
