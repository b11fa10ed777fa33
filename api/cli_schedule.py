"""``tierbox scheduler`` (run the periodic scheduler) and ``tierbox schedules`` (list them).

Any number of ``tierbox scheduler`` processes may run: one leads through a Redis lock and the
others stand by (see ``relay.scheduler``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from api import render
from outbox.config import Settings
from outbox.errors import TierboxError

SCHEDULE_COLUMNS = ("name", "task", "cron", "tz", "next_due", "last_due", "last_job", "misfire")


Guard = Callable[[Callable[..., Any]], Callable[..., Any]]
_guard: list[Guard] = []


def register(cli: click.Group, env_help: str = "", guard: Guard | None = None) -> None:
    """Add ``scheduler`` and ``schedules`` to ``cli``, help ending with ``env_help``, errors through ``guard``.

    ``env_help`` and ``guard`` (``api.cli.friendly``: operator-fixable failures as one line, exit 1)
    are passed in, not imported: under ``python -m api.cli`` importing ``api.cli`` back would load
    it a second time.
    """
    if guard is not None:
        _guard[:] = [guard]
    for command in (scheduler, schedules):
        if env_help and env_help not in (command.help or ""):
            command.help = (command.help or "") + env_help
        cli.add_command(command)


def _guarded(fn: Callable[[], None]) -> None:
    (_guard[0](fn) if _guard else fn)()


def _load_app(**overrides: Any) -> Settings:
    """Settings from the environment and flags, with the app's tasks imported and enqueue configured."""
    from outbox.enqueue import configure
    from outbox.registry import import_app

    settings = Settings.from_env(**overrides)
    failures = import_app(settings.app_modules())
    if failures:
        raise TierboxError("; ".join(failures))
    configure(topology=settings.topology, max_payload_bytes=settings.max_payload_bytes)
    return settings


@click.command(help="Enqueue the declared periodic schedules until SIGTERM (one leader, any number of standbys).")
@click.option("--app", help="Modules that register tasks, comma-separated (or TIERBOX_APP).")
@click.option("--database-url", help="Postgres URL.")
@click.option("--redis-url", help="Redis URL (the leader lock).")
@click.option("--lock-ttl", "lock_ttl_s", type=float, default=10.0, show_default=True,
              help="Leader lock lifetime, seconds: a standby takes over within about this long.")
def scheduler(lock_ttl_s: float, **overrides: Any) -> None:
    """Run one scheduler process."""
    from outbox.logs import setup
    from relay.scheduler import Scheduler, declared

    def main() -> None:
        setup(os.environ.get("TIERBOX_LOG_LEVEL", "INFO"))
        if lock_ttl_s <= 0:
            raise TierboxError("--lock-ttl must be > 0")
        settings = _load_app(**overrides)
        declared()  # a clash of schedule names fails here, as one line, not in the loop
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        Scheduler(settings.psycopg_url, redis_url=settings.redis_url, key_prefix=settings.queue_prefix,
                  lock_ttl_s=lock_ttl_s).run(stop)
        sys.exit(0)

    _guarded(main)


@click.command(help="List the declared schedules with their next and last due times.")
@click.option("--app", help="Modules that register tasks, comma-separated (or TIERBOX_APP).")
@click.option("--database-url", help="Postgres URL.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def schedules(as_json: bool, **overrides: Any) -> None:
    """Print one row per declared schedule."""
    def main() -> None:
        logging.getLogger("tierbox").setLevel(logging.WARNING)
        rows = schedule_rows(_load_app(**overrides))
        click.echo(render.as_json(rows) if as_json else render.table(rows, SCHEDULE_COLUMNS))

    _guarded(main)


def schedule_rows(settings: Settings, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Declared schedules joined with their durable state in ``outbox.schedules``."""
    import psycopg

    from outbox.sql import run
    from relay.scheduler import declared
    from relay.scheduler_queries import LIST_SCHEDULES

    now = now or dt.datetime.now(dt.UTC)
    with psycopg.connect(settings.psycopg_url, connect_timeout=5) as conn:
        state = {r[0]: r for r in run(conn, LIST_SCHEDULES)}
    out = []
    for d in declared():
        row = state.get(d.name)
        out.append({
            "name": d.name, "task": d.task.name, "cron": d.schedule.expr, "tz": d.schedule.tz,
            "next_due": d.schedule.next_after(now).isoformat(), "expires_s": d.expires_s,
            "last_due": row[6].isoformat() if row and row[6] else None,
            "last_job": str(row[7]) if row and row[7] else None, "misfire": d.schedule.misfire,
        })
    return out
