"""What every command reads the same way: settings from the environment and flags, ids, times, the app."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from outbox.config import Settings
from outbox.errors import TierboxError

T = TypeVar("T")

#: Appended to every command's help by :mod:`tierbox.cli.main`.
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


def settings(**overrides: Any) -> Settings:
    """The process's settings: ``TIERBOX_*`` variables, with the flags that were given on top."""
    return Settings.from_env(**overrides)


def load_app(**overrides: Any) -> Settings:
    """Settings, with the app's task modules imported and enqueue configured for its topology."""
    from outbox import webhooks
    from outbox.enqueue import configure
    from outbox.registry import import_app

    loaded = settings(**overrides)
    failures = import_app(loaded.app_modules())
    if failures:
        raise TierboxError("; ".join(failures))
    configure(topology=loaded.topology, max_payload_bytes=loaded.max_payload_bytes)
    webhooks.configure(allow=loaded.webhook_allow, tier=loaded.webhook_tier)  # the scheduler's runs may declare one
    return loaded


def setup_logging() -> None:
    """Structured log lines at ``TIERBOX_LOG_LEVEL`` (INFO by default)."""
    from outbox._logs import setup

    setup(os.environ.get("TIERBOX_LOG_LEVEL", "INFO"))


def job_id(value: str) -> uuid.UUID:
    """A job id argument; a malformed one is a 422-style refusal naming the field."""
    from tierbox.ops.params import job_id as parse

    return parse(value)


def when(value: str | None, name: str) -> datetime | None:
    """An ISO date/time option, or None when it was not given."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO date/time: {value!r}", param_hint=name) from None


def with_engine(loaded: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(engine)`` on a fresh SQLAlchemy engine, disposed afterwards."""
    from tierbox.ops.db import create_engine

    async def main() -> T:
        engine = create_engine(loaded)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def reading(fn: Callable[[Any], Awaitable[T]]) -> Callable[[Any], Awaitable[T]]:
    """``work(engine)`` that runs ``fn(conn)`` on one read connection."""
    async def work(engine: Any) -> T:
        async with engine.connect() as conn:
            return await fn(conn)
    return work
