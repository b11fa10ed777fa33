"""``tierbox dlq groups ...``: dead letters grouped by root cause, and actions on a whole group.

The same functions as the admin API's ``/admin/failure-groups`` (:mod:`tierbox.ops.group_actions`), so
the same data and the same audit rows, with the OS user as the actor. ``FP`` is a group's fingerprint
or a unique prefix of one (the table shows the first 12 characters).
"""

from __future__ import annotations

from typing import Any

import click

from tierbox.cli import args, render
from tierbox.cli.errors import one_line_errors

GROUP_COLUMNS = ("fingerprint", "cause", "action", "open", "failed", "first_seen", "last_seen", "status")
GROUP_FIELDS = ("fingerprint", "error_type", "message", "sample_message", "tasks", "tiers", "outcomes", "reasons",
                "failed_attempts", "dead_letters", "open_dead_letters", "first_seen", "last_seen", "status",
                "status_by", "status_at", "status_note", "resolved_at", "regressed_at", "frames")
SHORT = 12

_database = click.option("--database-url", help="Postgres URL.")
_as_json = click.option("--json", "as_json", is_flag=True, help="Print JSON, as the API returns it.")


@click.group("groups", invoke_without_command=True,
             help="Dead letters grouped by root cause (fingerprint), with a cause and a suggested action; without a "
                  "subcommand, the groups, most recently seen first.")
@click.option("--status", type=click.Choice(["open", "resolved", "ignored"]), help="Only groups with this status.")
@click.option("--task", help="Only groups this task failed in.")
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@_database
@_as_json
@click.pass_context
@one_line_errors
def groups(ctx: click.Context, status: str | None, task: str | None, limit: int, database_url: str | None,
           as_json: bool) -> None:
    """List failure groups."""
    if ctx.invoked_subcommand is not None:
        return
    from tierbox.ops import triage

    found = args.with_engine(args.settings(database_url=database_url), args.reading(
        lambda conn: triage.groups_async(conn, status=status, task=task, limit=limit)))
    if as_json:
        click.echo(render.as_json(found))
        return
    click.echo(render.table([_row(t) for t in found], GROUP_COLUMNS))


def _row(item: Any) -> dict[str, Any]:
    g = item.group
    return {"fingerprint": g.fingerprint[:SHORT], "cause": item.verdict.cause, "action": item.verdict.action,
            "open": g.open_dead_letters, "failed": g.failed_attempts, "first_seen": g.first_seen,
            "last_seen": g.last_seen, "status": f"{g.status} (regressed)" if g.regressed else g.status}


@groups.command("show", help="One group: its columns, verdict (cause, action, evidence) and sample jobs.")
@click.argument("fp")
@_database
@_as_json
@one_line_errors
def groups_show(fp: str, database_url: str | None, as_json: bool) -> None:
    """Show a failure group."""
    from tierbox.ops import group_actions as actions

    detail = args.with_engine(args.settings(database_url=database_url), args.reading(
        lambda conn: actions.show(conn, fp)))
    if as_json:
        click.echo(render.as_json(detail))
        return
    click.echo(render.fields(detail.group, GROUP_FIELDS))
    click.echo(f"\ncause     {detail.verdict.cause}  (rule {detail.verdict.rule})\naction    {detail.verdict.action}"
               f"\nevidence  {detail.verdict.evidence}\n")
    click.echo(render.table(detail.sample_jobs, ("job_id", "task", "tier", "status", "attempts", "last_error")))


def _plan_text(plan: Any) -> str:
    tiers = ", ".join(f"{t} {n}" for t, n in sorted(plan.by_tier.items())) or "-"
    tasks = ", ".join(f"{t} {n}" for t, n in sorted(plan.by_task.items())) or "-"
    text = (f"group {plan.fingerprint}: {plan.redrivable} dead letter(s) to redrive "
            f"(tiers: {tiers}; tasks: {tasks})")
    if plan.target_tier:
        text += f", to tier {plan.target_tier}"
    if plan.not_redrivable:
        text += f"; {plan.not_redrivable} hold no runnable job (discard them)"
    return text


@groups.command("redrive", help="Redrive the group's open dead letters, oldest first, in batches (one transaction "
                                "and one audit row each), paced by --rate. Without --yes it shows the dry run and "
                                "asks. Interrupted, it has redriven whole batches; run it again for the rest.")
@click.argument("fp")
@click.option("--dry-run", is_flag=True, help="Only show how many, in which tiers, of which tasks.")
@click.option("--rate", type=click.FloatRange(min=1, max=5000), help="At most this many jobs per second.")
@click.option("--batch", type=click.IntRange(1, 1000), default=100, show_default=True, help="Dead letters per batch.")
@click.option("--limit", type=click.IntRange(1), help="Redrive at most this many (the rest stays open).")
@click.option("--to-tier", help="Move the jobs to this tier.")
@click.option("--reason", help="Why; recorded on every dead letter and in the audit log.")
@click.option("--yes", is_flag=True, help="Do not ask.")
@_database
@_as_json
@one_line_errors
def groups_redrive(fp: str, dry_run: bool, rate: float | None, batch: int, limit: int | None, to_tier: str | None,
                   reason: str | None, yes: bool, database_url: str | None, as_json: bool) -> None:
    """Redrive a failure group."""
    from tierbox.ops import group_actions as actions
    from tierbox.ops.audit import Actor
    from tierbox.ops.params import tier as check_tier

    settings = args.settings(database_url=database_url)
    actor = Actor.os_user()
    check_tier(settings, to_tier, "--to-tier")
    planned = args.with_engine(settings, lambda engine: actions.redrive_group(
        engine, actor, fp, tier=to_tier, limit=limit, dry_run_only=True))
    if dry_run:
        click.echo(render.as_json(planned) if as_json else f"dry run: {_plan_text(planned.plan)}")
        return
    if not yes:
        click.echo(_plan_text(planned.plan))
        click.confirm("Redrive them?", abort=True)
    done = [0]
    with _ProgressBar(as_json) as bar:
        def progress(count: int, total: int) -> None:
            done[0] = count
            bar(count, total)

        try:
            result = args.with_engine(settings, lambda engine: actions.redrive_group(
                engine, actor, planned.fingerprint, tier=to_tier, reason=reason, batch=batch, rate=rate,
                limit=limit, progress=progress))
        except KeyboardInterrupt:
            from outbox.errors import TierboxError

            raise TierboxError(f"interrupted after {done[0]} redriven (whole batches only); run the same "
                                       "command again to redrive the rest") from None
    if as_json:
        click.echo(render.as_json(result))
        return
    click.echo(f"redriven {result.redriven} dead letter(s) of group {result.fingerprint} in {result.batches} "
               f"batch(es); {result.remaining} left")


class _ProgressBar:
    """A progress bar on stderr (rich) while a group redrive runs; nothing with --json or when not a terminal."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> Any:
        if not self.quiet:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("redriving"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)
            self.bar.start()
        return self.update

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self.task is None:
            self.task = self.bar.add_task("redrive", total=total)
        self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@groups.command("discard", help="Discard every open dead letter of the group (raw broker messages too): kept for "
                                "audit, never redriven. Without --yes it asks.")
@click.argument("fp")
@click.option("--reason", help="Why; recorded on every dead letter and in the audit log.")
@click.option("--yes", is_flag=True, help="Do not ask.")
@_database
@_as_json
@one_line_errors
def groups_discard(fp: str, reason: str | None, yes: bool, database_url: str | None, as_json: bool) -> None:
    """Discard a failure group's dead letters."""
    from tierbox.ops import group_actions as actions
    from tierbox.ops.audit import Actor

    settings = args.settings(database_url=database_url)
    if not yes:
        plan = args.with_engine(settings, args.reading(lambda conn: actions.dry_run(conn, fp)))
        click.confirm(f"Discard {plan.open_dead_letters} open dead letter(s) of group {plan.fingerprint}?",
                      abort=True)
    result = args.with_engine(settings, lambda engine: actions.discard_group(engine, Actor.os_user(), fp,
                                                                             reason=reason))
    click.echo(render.as_json(result) if as_json else
               f"discarded {result.discarded} dead letter(s) of group {result.fingerprint}")


def _status_command(name: str, status: str, what: str) -> None:
    @groups.command(name, help=f"{what} Audited, with --note kept on the group.")
    @click.argument("fp")
    @click.option("--note", help="Why (the fix deployed, why it is noise ...).")
    @_database
    @_as_json
    @one_line_errors
    def command(fp: str, note: str | None, database_url: str | None, as_json: bool) -> None:
        from tierbox.ops import group_actions as actions
        from tierbox.ops.audit import Actor

        result = args.with_engine(args.settings(database_url=database_url), lambda engine: actions.set_group_status(
            engine, Actor.os_user(), fp, status, note=note))
        click.echo(render.as_json(result) if as_json else
                   f"group {result.fingerprint}: {result.previous} -> {result.status}")


_status_command("resolve", "resolved", "Mark the group resolved: a later failure reopens it as a regression.")
_status_command("ignore", "ignored", "Mark the group ignored: it stays ignored, its counts keep moving.")
_status_command("reopen", "open", "Mark the group open again.")
