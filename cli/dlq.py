"""``tierbox dlq ...``: dead letters from a shell.

The same functions as the admin API's ``/admin/dlq`` (:mod:`tierbox.ops.dead_letters`), so
they show the same data and write the same audit rows, with the OS user as the actor.
``--json`` prints what the API would return.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from tierbox.cli import args, render
from tierbox.cli.errors import one_line_errors

DL_COLUMNS = ("failed_at", "job_id", "tier", "task", "reason", "error_type", "attempts", "state")
DL_FIELDS = ("job_id", "task", "tier", "reason", "error_type", "error_message", "attempts", "enqueued_at",
             "failed_at", "state", "redriven_at", "redriven_by", "redrive_reason", "new_job_id", "discarded_at",
             "discarded_by", "discard_reason", "last_worker_id", "payload", "headers", "raw_body_bytes")

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
@one_line_errors
def dlq_list(tier: str | None, task: str | None, failure_reason: str | None, since: str | None,
             until: str | None, database_url: str | None, error_type: str | None, state: str, limit: int,
             cursor: str | None, as_json: bool) -> None:
    """List dead letters."""
    from tierbox.ops import dead_letters as ops
    from tierbox.ops.params import tier as check_tier

    settings = args.settings(database_url=database_url)
    flt = ops.DeadLetterFilter(tier=check_tier(settings, tier), task=task, reason=failure_reason,
                               error_type=error_type, since=args.when(since, "--since"),
                               until=args.when(until, "--until"),
                               state=None if state == "all" else state)

    async def work(engine: Any) -> Any:
        async with engine.connect() as conn:
            return await ops.page(conn, flt, limit, cursor)

    result = args.with_engine(settings, work)
    if as_json:
        click.echo(render.as_json(result))
        return
    click.echo(render.table(result.items, DL_COLUMNS))
    if result.next_cursor:
        click.echo(f"more: --cursor {result.next_cursor}")


@dlq.command("by-tier", help="Open dead letters counted per tier and reason.")
@click.option("--database-url", help="Postgres URL.")
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def dlq_by_tier(database_url: str | None, as_json: bool) -> None:
    """Count open dead letters."""
    from tierbox.ops import dead_letters as ops

    async def work(engine: Any) -> Any:
        async with engine.connect() as conn:
            return await ops.by_tier(conn)

    result = args.with_engine(args.settings(database_url=database_url), work)
    click.echo(render.as_json(result) if as_json else render.table(result, ("tier", "reason", "count")))


@dlq.command("show", help="One dead letter with every attempt of its job.")
@click.argument("job_id")
@click.option("--database-url", help="Postgres URL.")
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def dlq_show(job_id: str, database_url: str | None, as_json: bool) -> None:
    """Show a dead letter."""
    from tierbox.ops import dead_letters as ops

    parsed = args.job_id(job_id)

    async def work(engine: Any) -> Any:
        async with engine.connect() as conn:
            return await ops.show(conn, parsed)

    result = args.with_engine(args.settings(database_url=database_url), work)
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
@one_line_errors
def dlq_redrive(job_id: str | None, tier: str | None, task: str | None, failure_reason: str | None,
                since: str | None, until: str | None, database_url: str | None, bulk: bool, to_tier: str | None,
                reason: str | None, limit: int, rate: int, dry_run: bool, as_json: bool) -> None:
    """Redrive dead letters."""
    import msgspec

    from tierbox.ops import dead_letters as ops
    from tierbox.ops.audit import Actor
    from tierbox.ops.models import BulkRedriveRequest
    from tierbox.ops.params import tier as check_tier

    settings = args.settings(database_url=database_url)
    actor = Actor.os_user()
    check_tier(settings, to_tier, "--to-tier")
    if bulk == (job_id is not None):
        raise click.UsageError("give either JOB_ID or --all with filters")
    if job_id is not None:
        parsed = args.job_id(job_id)
        one = args.with_engine(settings, lambda engine: ops.redrive(engine, actor, parsed, tier=to_tier, reason=reason))
        click.echo(render.as_json(one) if as_json else f"redriven {one.job_id} as {one.new_job_id}")
        return
    if not reason:
        raise click.UsageError("--reason is required with --all (it is recorded on every dead letter)")
    try:
        req = msgspec.convert({"reason": reason, "target_tier": to_tier, "limit": limit, "rate_per_s": rate,
                               "dry_run": dry_run, "filter": {"tier": check_tier(settings, tier, "--tier"),
                               "task": task, "reason": failure_reason, "since": args.when(since, "--since"),
                               "until": args.when(until, "--until")}}, BulkRedriveRequest)
    except msgspec.ValidationError as exc:
        raise click.BadParameter(str(exc)) from None
    result = args.with_engine(settings, lambda engine: ops.redrive_bulk(engine, actor, req))
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
@one_line_errors
def dlq_discard(job_id: str, reason: str | None, database_url: str | None, as_json: bool) -> None:
    """Discard a dead letter."""
    from tierbox.ops import dead_letters as ops
    from tierbox.ops.audit import Actor
    from tierbox.ops.models import Discarded

    parsed = args.job_id(job_id)
    args.with_engine(
        args.settings(database_url=database_url),
        lambda engine: ops.discard(engine, Actor.os_user(), parsed, reason=reason))
    click.echo(render.as_json(Discarded(job_id=parsed)) if as_json else f"discarded {parsed}")


# `tierbox dlq groups ...`: the dead letters by failure group (cli/groups.py).
from tierbox.cli.groups import groups as _groups  # noqa: E402 - registered after the dlq group exists

dlq.add_command(_groups)
