"""The ``tierbox`` command line: one entry point for every Tierbox process and chore.

Settings come from ``TIERBOX_*`` environment variables (see ``outbox.config``);
flags override them. Failures an operator can fix (bad URL, unreachable
service, bad topology) print one line naming what failed and exit 1.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from api.service_errors import service_error
from outbox.config import Settings, redact_url
from outbox.errors import TierboxError

ENV_HELP = """

\b
Environment (flags override):
  TIERBOX_DATABASE_URL  Postgres  [postgresql://postgres@127.0.0.1:5432/test]
  TIERBOX_AMQP_URL      RabbitMQ  [amqp://guest:guest@127.0.0.1:5672/]
  TIERBOX_REDIS_URL     Redis     [redis://127.0.0.1:6379/0]
  TIERBOX_QUEUE_PREFIX  prefix of every queue/exchange name  [none]
  TIERBOX_TOPOLOGY_FILE JSON file overriding the tier topology [none]
  TIERBOX_APP           modules that register tasks (comma-separated)
  TIERBOX_LOG_LEVEL     DEBUG, INFO, WARNING  [INFO]
"""


def _settings(**overrides: Any) -> Settings:
    return Settings.from_env(**overrides)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn operator-fixable failures into one line on stderr and exit code 1."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TierboxError as exc:
            click.echo(f"tierbox: {exc}", err=True)
            sys.exit(1)
        except OSError as exc:
            click.echo(f"tierbox: {exc}", err=True)
            sys.exit(1)
        except Exception as exc:
            line = service_error(exc)
            if line is None:
                raise
            click.echo(f"tierbox: {line}", err=True)
            sys.exit(1)
    return wrapper


def _setup_logging() -> None:
    import os

    from outbox.logs import setup

    setup(os.environ.get("TIERBOX_LOG_LEVEL", "INFO"))


@click.group(help="Tierbox: transactional, tiered, auditable background jobs." + ENV_HELP)
def cli() -> None:
    """The tierbox command group."""


@cli.command(help="Create or upgrade the outbox schema (alembic, own version table)." + ENV_HELP)
@click.option("--database-url", help="Postgres URL (overrides TIERBOX_DATABASE_URL).")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@friendly
def migrate(database_url: str | None, revision: str) -> None:
    """Upgrade the schema and mirror the topology into outbox.tiers."""
    import psycopg

    import migrations
    from outbox.maintenance import sync_tiers

    settings = _settings(database_url=database_url)
    _ping_postgres(settings)
    migrations.upgrade(settings.database_url, revision)
    if revision == "head":
        with psycopg.connect(settings.psycopg_url) as conn:
            sync_tiers(conn, settings.topology)
    click.echo(f"outbox schema at {revision} on {redact_url(settings.database_url)}")


@cli.command(help="Publish committed outbox rows to the tier queues until SIGTERM." + ENV_HELP)
@click.option("--database-url", help="Postgres URL.")
@click.option("--amqp-url", help="RabbitMQ URL.")
@click.option("--batch-size", "relay_batch_size", type=int, help="Rows per batch [500].")
@click.option("--poll-interval", "relay_poll_interval_s", type=float, help="Idle poll per lane, s [0.25].")
@click.option("--lane", type=click.Choice(["all", "main", "urgent"]), default="all", show_default=True,
              help="Run both lanes in this process, or one: main (every tier, polls) or urgent (urgent tiers, "
                   "NOTIFY); run one process of each to keep urgent rows off the main lane's event loop.")
@click.option("--metrics-port", type=int, help="Serve this process's Prometheus counters on 127.0.0.1:PORT.")
@friendly
def relay(metrics_port: int | None, lane: str, **overrides: Any) -> None:
    """Run the relay process."""
    from relay.main import main

    _setup_logging()
    settings = _settings(**overrides)
    sys.exit(main(settings, metrics_port, lane))


@cli.command(help="Run a worker pool until SIGTERM (graceful: in-flight jobs get a grace period)." + ENV_HELP)
@click.option("--pool", help="A pool of the topology: urgent, normal, deferred, calls.")
@click.option("--queues", help="Ad-hoc pool over these tiers, comma-separated (e.g. critical,high).")
@click.option("--concurrency", type=int, help="Jobs running at once [pool default].")
@click.option("--prefetch", type=int, help="Messages waiting per queue beyond those running [pool default].")
@click.option("--app", help="Modules that register tasks, comma-separated (or TIERBOX_APP).")
@click.option("--database-url", help="Postgres URL.")
@click.option("--amqp-url", help="RabbitMQ URL.")
@click.option("--shutdown-grace", "shutdown_grace_s", type=float, help="Seconds in-flight jobs get after SIGTERM [30].")
@click.option("--metrics-port", type=int, help="Serve this process's Prometheus counters on 127.0.0.1:PORT.")
@friendly
def worker(pool: str | None, queues: str | None, concurrency: int | None, prefetch: int | None,
           metrics_port: int | None, **overrides: Any) -> None:
    """Run one worker pool."""
    from outbox.enqueue import configure
    from outbox.registry import import_app, registry
    from workers.main import main, pool_spec

    _setup_logging()
    settings = _settings(**overrides)
    name, spec = pool_spec(settings, pool, queues, concurrency, prefetch)
    failures = import_app(settings.app_modules())
    if failures:
        raise TierboxError("; ".join(failures))
    configure(topology=settings.topology, max_payload_bytes=settings.max_payload_bytes)
    sys.exit(main(settings, name, spec, registry, metrics_port))


@cli.command(help="Check the task registry and topology; exit 1 listing every problem." + ENV_HELP)
@click.option("--app", help="Modules that register tasks, comma-separated (or TIERBOX_APP).")
@friendly
def check(app: str | None) -> None:
    """Report tasks without a tier, tiers no pool consumes, duplicate names."""
    from outbox.registry import import_app, registry

    settings = _settings(app=app)
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


@cli.command(help="Delete finished jobs past retention, in short batches." + ENV_HELP)
@click.option("--database-url", help="Postgres URL.")
@click.option("--succeeded-days", "retention_succeeded_days", type=float, help="Keep succeeded/expired jobs [7].")
@click.option("--dead-days", "retention_dead_days", type=float, help="Keep dead/discarded jobs [30].")
@friendly
def prune(**overrides: Any) -> None:
    """Prune old jobs."""
    import psycopg

    from outbox.maintenance import prune as do_prune

    settings = _settings(**overrides)
    with psycopg.connect(settings.psycopg_url) as conn:
        n = do_prune(conn, settings.retention_succeeded_days, settings.retention_dead_days)
    click.echo(f"pruned {n} jobs")


@cli.command(help="Run the relay and the four pools, enqueue sample jobs in every tier, print the ledger." + ENV_HELP)
@friendly
def demo() -> None:
    """The narrated end-to-end demo (run `tierbox migrate` first)."""
    from api.demo import run

    settings = _settings()
    _ping_postgres(settings)
    sys.exit(run(settings))


def _ping_postgres(settings: Settings) -> None:
    import psycopg

    with psycopg.connect(settings.psycopg_url, connect_timeout=5):
        pass


from api.cli_ops import register  # noqa: E402 - the operator commands (api, dlq, tiers) join the group here

register(cli, ENV_HELP)
from api.cli_schedule import register as register_schedule; register_schedule(cli, ENV_HELP, friendly)  # noqa: E402,E702,I001 - scheduler commands


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="tierbox")


if __name__ == "__main__":
    main()
