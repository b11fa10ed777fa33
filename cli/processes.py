"""The long-running processes and the chores that prepare them.

``tierbox migrate``, ``relay``, ``worker``, ``scheduler``, ``api``, ``check``, ``prune`` and ``partitions``:
each reads its settings from ``TIERBOX_*`` variables with its flags on top (see
:mod:`tierbox.cli.args`) and runs until SIGTERM or until its chore is done.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

import click

from outbox.config import Settings, redact_url
from outbox.errors import TierboxError
from tierbox.cli import args
from tierbox.cli.errors import one_line_errors

log = logging.getLogger("tierbox.api")


@click.command(help="Create or upgrade the outbox schema (alembic, own version table).")
@click.option("--database-url", help="Postgres URL (overrides TIERBOX_DATABASE_URL).")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@one_line_errors
def migrate(database_url: str | None, revision: str) -> None:
    """Upgrade the schema and mirror the topology into outbox.tiers."""
    import psycopg

    from outbox._maintenance import sync_tiers
    from tierbox import migrations

    settings = args.settings(database_url=database_url)
    _ping_postgres(settings)
    created = migrations.upgrade(settings.database_url, revision, partition_days_ahead=settings.partition_days_ahead)
    if revision == "head":
        with psycopg.connect(settings.psycopg_url) as conn:
            sync_tiers(conn, settings.topology)
    click.echo(f"outbox schema at {revision} on {redact_url(settings.database_url)}")
    if created:
        click.echo(f"created {len(created)} history partitions: {', '.join(created)}")


@click.command(help="Publish committed outbox rows to the tier queues until SIGTERM.")
@click.option("--database-url", help="Postgres URL.")
@click.option("--amqp-url", help="RabbitMQ URL.")
@click.option("--batch-size", "relay_batch_size", type=int, help="Rows per batch [500].")
@click.option("--poll-interval", "relay_poll_interval_s", type=float, help="Idle poll per lane, s [0.25].")
@click.option("--urgent-lanes", "relay_urgent_lanes", type=int,
              help="Lanes claiming urgent tiers' rows, each with its own connections [1].")
@click.option("--lane", type=click.Choice(["all", "main", "urgent"]), default="all", show_default=True,
              help="Run the main lane and the urgent lanes in this process, or one kind: main (every tier, "
                   "polls) or urgent (urgent tiers, NOTIFY); run one process of each to keep urgent rows "
                   "off the main lane's event loop.")
@click.option("--metrics-port", type=int, help="Serve this process's Prometheus counters on 127.0.0.1:PORT.")
@one_line_errors
def relay(metrics_port: int | None, lane: str, **overrides: Any) -> None:
    """Run the relay process."""
    from tierbox.relay.main import main

    args.setup_logging()
    settings = args.settings(**overrides)
    sys.exit(main(settings, metrics_port, lane))


@click.command(help="Run a worker pool until SIGTERM (graceful: in-flight jobs get a grace period).")
@click.option("--pool", help="A pool of the topology: urgent, normal, deferred, calls.")
@click.option("--queues", help="Ad-hoc pool over these tiers, comma-separated (e.g. critical,high).")
@click.option("--concurrency", type=int, help="Jobs running at once [pool default].")
@click.option("--prefetch", type=int, help="Messages waiting per queue beyond those running [pool default].")
@click.option("--app", help="Modules that register tasks, comma-separated (or TIERBOX_APP).")
@click.option("--database-url", help="Postgres URL.")
@click.option("--amqp-url", help="RabbitMQ URL.")
@click.option("--shutdown-grace", "shutdown_grace_s", type=float, help="Seconds in-flight jobs get after SIGTERM [30].")
@click.option("--metrics-port", type=int, help="Serve this process's Prometheus counters on 127.0.0.1:PORT.")
@click.option("--burst", is_flag=True, help="Exit 0 once the pool's queues are empty and nothing is in flight "
                                            "(retries due within a moment included) instead of waiting for SIGTERM.")
@one_line_errors
def worker(pool: str | None, queues: str | None, concurrency: int | None, prefetch: int | None,
           metrics_port: int | None, burst: bool, **overrides: Any) -> None:
    """Run one worker pool."""
    from outbox.enqueue import configure
    from outbox.registry import import_app, registry
    from tierbox.workers.main import main, pool_spec

    args.setup_logging()
    settings = args.settings(**overrides)
    name, spec = pool_spec(settings, pool, queues, concurrency, prefetch)
    failures = import_app(settings.app_modules())
    if failures:
        raise TierboxError("; ".join(failures))
    import tierbox.webhooks.deliver  # noqa: F401 - registers the built-in task tierbox.webhook.deliver
    from outbox import webhooks

    configure(topology=settings.topology, max_payload_bytes=settings.max_payload_bytes)
    webhooks.configure(allow=settings.webhook_allow, tier=settings.webhook_tier)
    sys.exit(main(settings, name, spec, registry, metrics_port, burst=burst))


@click.command(help="Check the task registry and topology; exit 1 listing every problem.")
@click.option("--app", help="Modules that register tasks, comma-separated (or TIERBOX_APP).")
@one_line_errors
def check(app: str | None) -> None:
    """Report tasks without a tier, tiers no pool consumes, duplicate names."""
    from outbox.registry import import_app, registry

    settings = args.settings(app=app)
    with registry.collecting():  # report every duplicate name, not only the first one
        problems = import_app(settings.app_modules())
    problems += registry.problems(settings.topology)
    if not settings.app_modules():
        problems.append("no --app given: name the modules that register your tasks")
    for line in problems:
        click.echo(f"problem: {line}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"ok: {len(registry)} tasks, {len(settings.topology.tiers)} tiers, "
               f"{len(settings.topology.pools)} pools")


@click.command(help="Drop the history days whose jobs are all finished past retention, then delete the other "
                    "finished jobs past retention in short batches.")
@click.option("--database-url", help="Postgres URL.")
@click.option("--succeeded-days", "retention_succeeded_days", type=float, help="Keep succeeded/expired jobs [7].")
@click.option("--dead-days", "retention_dead_days", type=float, help="Keep dead/discarded jobs [30].")
@one_line_errors
def prune(**overrides: Any) -> None:
    """Prune old jobs."""
    import psycopg

    from outbox._maintenance import prune_detailed as do_prune

    settings = args.settings(**overrides)
    with psycopg.connect(settings.psycopg_url) as conn:
        dropped, deleted = do_prune(conn, settings.retention_succeeded_days, settings.retention_dead_days)
    for day in dropped:
        click.echo(f"dropped {day.day}: {day.jobs} jobs ({', '.join(day.partitions)})")
    in_days = sum(d.jobs for d in dropped)
    detail = f" ({in_days} in {len(dropped)} dropped days, {deleted} deleted row by row)" if dropped else ""
    click.echo(f"pruned {in_days + deleted} jobs{detail}")


@click.command(help="Create the job-history day partitions missing from yesterday to N days ahead, and list them.")
@click.option("--database-url", help="Postgres URL.")
@click.option("--days-ahead", "partition_days_ahead", type=int, help="Days ahead of today [7].")
@one_line_errors
def partitions(**overrides: Any) -> None:
    """Ensure and list the day partitions of outbox.jobs, attempts and job_events."""
    import psycopg

    from outbox import _partitions

    settings = args.settings(**overrides)
    with psycopg.connect(settings.psycopg_url) as conn:
        if not _partitions.is_partitioned(conn):
            raise TierboxError("outbox.jobs is not partitioned: run `tierbox migrate` first (revision 0017)")
        created = _partitions.ensure(conn, settings.partition_days_ahead)
        days = _partitions.partitions(conn, "jobs")
        default_rows = conn.execute("SELECT reltuples::bigint FROM pg_class "
                                    "WHERE oid = 'outbox.jobs_default'::regclass").fetchone()
    for name in created:
        click.echo(f"created {name}")
    first, last = (days[0].day, days[-1].day) if days else (None, None)
    estimate = max(default_rows[0], 0) if default_rows else 0
    click.echo(f"{len({d.day for d in days})} days of partitions ({first} to {last}), "
               f"{len(created)} partitions created now; default partition ~{estimate} rows (estimate)")


@click.command("api", help="Serve the admin API (Litestar) until SIGTERM. Tokens: TIERBOX_API_TOKENS or "
                           "TIERBOX_API_TOKENS_FILE, entries NAME:SCOPE:SHA256HEX (see tierbox api-token).")
@click.option("--host", default=None, help="Interface to bind [127.0.0.1].")
@click.option("--port", type=int, default=None, help="TCP port [8080].")
@click.option("--insecure-dev", is_flag=True, help="Serve without tokens, on 127.0.0.1 only (never in production).")
@click.option("--database-url", help="Postgres URL.")
@click.option("--amqp-url", help="RabbitMQ URL.")
@click.option("--app", help="Modules that register tasks, comma-separated (or TIERBOX_APP): the dashboard "
                            "then shows their rate and concurrency limits.")
@one_line_errors
def api_command(host: str | None, port: int | None, insecure_dev: bool, database_url: str | None,
                amqp_url: str | None, app: str | None) -> None:
    """Run the admin API."""
    import uvicorn

    from outbox._logs import event
    from tierbox.api.app import create_app
    from tierbox.api.config import ApiConfig

    args.setup_logging()
    config = ApiConfig.from_env(insecure_dev=insecure_dev, host=host, port=port)
    if config.insecure_dev:
        banner = "!" * 72
        log.warning("%s\naction=api.insecure_dev INSECURE DEV MODE: %s; listening on 127.0.0.1 only. "
                    "Never run this in production.\n%s", banner,
                    "no token is checked, every caller may redrive and discard" if config.auth_disabled
                    else "tokens are checked", banner)
    # The tasks are imported only to read their declared limits and breaker policies; the API runs none.
    settings = args.load_app(database_url=database_url, amqp_url=amqp_url, app=app)
    event(log, "api.starting", host=config.host, port=config.port, tokens=len(config.tokens))
    uvicorn.run(create_app(settings, config), host=config.host, port=config.port, log_level="warning",
                server_header=False, proxy_headers=False, access_log=False)


@click.command(help="Enqueue the declared periodic schedules until SIGTERM (one leader, any number of standbys).")
@click.option("--app", help="Modules that register tasks, comma-separated (or TIERBOX_APP).")
@click.option("--database-url", help="Postgres URL.")
@click.option("--redis-url", help="Redis URL (the leader lock).")
@click.option("--lock-ttl", "lock_ttl_s", type=float, default=10.0, show_default=True,
              help="Leader lock lifetime, seconds: a standby takes over within about this long.")
@one_line_errors
def scheduler(lock_ttl_s: float, **overrides: Any) -> None:
    """Run one scheduler process."""
    from tierbox.scheduler.scheduler import Scheduler, declared

    args.setup_logging()
    if lock_ttl_s <= 0:
        raise TierboxError("--lock-ttl must be > 0")
    settings = args.load_app(**overrides)
    declared()  # a clash of schedule names fails here, as one line, not in the loop
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Scheduler(settings.psycopg_url, redis_url=settings.redis_url, key_prefix=settings.queue_prefix,
              lock_ttl_s=lock_ttl_s).run(stop)
    sys.exit(0)


def _ping_postgres(settings: Settings) -> None:
    import psycopg

    with psycopg.connect(settings.psycopg_url, connect_timeout=5):
        pass


COMMANDS = (migrate, relay, worker, scheduler, api_command, check, prune, partitions)
