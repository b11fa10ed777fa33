"""``tierbox pause|resume|pauses`` and ``tierbox override set|clear|list``: flow control from a shell.

Same code path and audit rows as the admin API (:mod:`tierbox.ops.control`), with the OS user as the actor.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import click
import msgspec

from tierbox.cli import args
from tierbox.cli.errors import one_line_errors
from tierbox.cli.render import table
from tierbox.ops import control
from tierbox.ops.audit import Actor

SCOPES = click.Choice(["tier", "task"])


def _check_tier(name: str) -> str:
    settings = args.settings()
    if name not in settings.topology.tiers:
        raise click.BadParameter(f"unknown tier {name!r}; one of {', '.join(settings.topology.tiers)}",
                                 param_hint="TIER")
    return name


@click.command("pause", help="Stop workers starting a tier's or a task's jobs (nothing is dropped; audited).")
@click.argument("scope", type=SCOPES)
@click.argument("name")
@click.option("--reason", help="Why (recorded with the pause and in the audit log).")
@click.option("--database-url", help="Postgres URL.")
@one_line_errors
def pause(scope: str, name: str, reason: str | None, database_url: str | None) -> None:
    """Pause a tier or task."""
    if scope == "tier":
        _check_tier(name)
    changed = args.with_engine(
        args.settings(database_url=database_url), lambda e: control.pause(e, Actor.os_user(), scope, name, reason))  # type: ignore[arg-type]
    click.echo(f"{scope} {name} paused" if changed else f"{scope} {name} was already paused")


@click.command("resume", help="Let a paused tier's or task's jobs run again (audited).")
@click.argument("scope", type=SCOPES)
@click.argument("name")
@click.option("--database-url", help="Postgres URL.")
@one_line_errors
def resume(scope: str, name: str, database_url: str | None) -> None:
    """Resume a tier or task."""
    changed = args.with_engine(
        args.settings(database_url=database_url), lambda e: control.resume(e, Actor.os_user(), scope, name))  # type: ignore[arg-type]
    click.echo(f"{scope} {name} resumed" if changed else f"{scope} {name} was not paused")


@click.command("pauses", help="The pauses in force.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--database-url", help="Postgres URL.")
@one_line_errors
def pauses(as_json: bool, database_url: str | None) -> None:
    """List pauses."""
    rows = args.with_engine(args.settings(database_url=database_url), args.reading(control.pauses))
    _print(rows, ("scope", "name", "paused_at", "paused_by", "reason"), as_json)


@click.group(help="Route a task to another tier for a while: set, clear, list (audited).")
def override() -> None:
    """The override command group."""


@override.command("set", help="Route TASK to TIER until --until, or for --hours (at most 90 days).")
@click.argument("task")
@click.argument("tier")
@click.option("--hours", type=float, help="How long, from now.")
@click.option("--until", help="Until this ISO time (with a zone).")
@click.option("--reason", help="Why.")
@click.option("--database-url", help="Postgres URL.")
@one_line_errors
def override_set(task: str, tier: str, hours: float | None, until: str | None, reason: str | None,
                 database_url: str | None) -> None:
    """Set an override."""

    end = control.expiry(args.when(until, "--until"), hours)
    target = _check_tier(tier)
    moved = args.with_engine(args.settings(database_url=database_url),
                 lambda e: control.set_override(e, Actor.os_user(), task, target, end, reason))
    click.echo(f"{task} routed to {tier} until {end.isoformat()}; {moved} waiting jobs moved")


@override.command("clear", help="End TASK's override now.")
@click.argument("task")
@click.option("--database-url", help="Postgres URL.")
@one_line_errors
def override_clear(task: str, database_url: str | None) -> None:
    """Clear an override."""
    changed = args.with_engine(
        args.settings(database_url=database_url), lambda e: control.clear_override(e, Actor.os_user(), task))
    click.echo(f"{task}: override cleared" if changed else f"{task} had no override")


@override.command("list", help="Overrides in force.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--database-url", help="Postgres URL.")
@one_line_errors
def override_list(as_json: bool, database_url: str | None) -> None:
    """List overrides."""
    rows = args.with_engine(args.settings(database_url=database_url), args.reading(control.overrides))
    _print(rows, ("task", "tier", "expires_at", "created_by", "reason"), as_json)


def _print(rows: list[Any], columns: tuple[str, ...], as_json: bool) -> None:
    if as_json:
        click.echo(msgspec.json.encode(rows).decode())
        return
    click.echo(table([{c: _cell(getattr(r, c)) for c in columns} for r in rows], columns))


def _cell(value: Any) -> Any:
    return value.isoformat(timespec="seconds") if isinstance(value, dt.datetime) else value


COMMANDS = (pause, resume, pauses, override)
