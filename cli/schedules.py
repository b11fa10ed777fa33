"""``tierbox schedules``: the declared periodic schedules with their next and last runs.

The scheduler process itself is ``tierbox scheduler`` (:mod:`tierbox.cli.processes`).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import click

from outbox.config import Settings
from tierbox.cli import args, render
from tierbox.cli.errors import one_line_errors

SCHEDULE_COLUMNS = ("name", "task", "cron", "tz", "next_due", "last_due", "last_job", "misfire")


@click.command(help="List the declared schedules with their next and last due times.")
@click.option("--app", help="Modules that register tasks, comma-separated (or TIERBOX_APP).")
@click.option("--database-url", help="Postgres URL.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@one_line_errors
def schedules(as_json: bool, **overrides: Any) -> None:
    """Print one row per declared schedule."""
    logging.getLogger("tierbox").setLevel(logging.WARNING)
    rows = schedule_rows(args.load_app(**overrides))
    click.echo(render.as_json(rows) if as_json else render.table(rows, SCHEDULE_COLUMNS))


def schedule_rows(settings: Settings, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Declared schedules joined with their durable state in ``outbox.schedules``."""
    import psycopg

    from outbox._sql import run
    from tierbox.scheduler.queries import LIST_SCHEDULES
    from tierbox.scheduler.scheduler import declared

    now = now or dt.datetime.now(dt.UTC)
    with psycopg.connect(settings.psycopg_url, connect_timeout=5) as conn:
        state = {r.name: r for r in run(conn, LIST_SCHEDULES)}
    out = []
    for d in declared():
        row = state.get(d.name)
        out.append({
            "name": d.name, "task": d.task.name, "cron": d.schedule.expr, "tz": d.schedule.tz,
            "next_due": d.schedule.next_after(now).isoformat(), "expires_s": d.expires_s,
            "last_due": row.last_due_at.isoformat() if row and row.last_due_at else None,
            "last_job": str(row.last_job_id) if row and row.last_job_id else None, "misfire": d.schedule.misfire,
        })
    return out
