"""The admin API as a Litestar app: :func:`create_app` wires routes, auth, errors and the pool.

Run it with ``tierbox api`` (see ``api.cli_ops``). State shared by handlers
lives on ``app.state``: ``settings``, ``config``, ``tokens``, ``engine``,
``broker``, ``auth_disabled``, ``redis`` (the process's Redis client), ``snapshot`` (shared tier
health, :mod:`tierbox.ops.snapshot`),
``ui_sessions`` (the dashboard's cookie signer, :mod:`tierbox.api.ui`), ``job_events`` (the job event
streams, :mod:`tierbox.api.job_events`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from outbox._sql import run_async
from outbox.config import Settings
from tierbox.api import errors, openapi, params, ui
from tierbox.api.auth import TokenStore
from tierbox.api.config import ApiConfig
from tierbox.api.job_events import JobEvents
from tierbox.api.routes_control import ROUTES as CONTROL_ROUTES
from tierbox.api.routes_dlq import DeadLetterController
from tierbox.api.routes_jobs import JobController
from tierbox.api.routes_reconcile import reconcile
from tierbox.api.routes_tiers import TierController, healthz, readyz, scrape
from tierbox.api.routes_triage import FailureGroupController
from tierbox.api.ui.session import SessionCodec, signing_key
from tierbox.flow.gate import connect as connect_redis
from tierbox.ops import db, queries
from tierbox.ops.broker import BrokerProbe
from tierbox.ops.snapshot import TierSnapshot

log = logging.getLogger("tierbox.api")
VERSION = "1"


#: Longest a read of one request may run.
READ_TIMEOUT_MS = 5000


async def provide_db(state: State) -> AsyncIterator[AsyncConnection]:
    """Dependency ``db``: a pooled connection for one request's reads, rolled back at the end."""
    async with state.engine.connect() as conn:
        await run_async(conn, queries.READ_TIMEOUT, {"ms": READ_TIMEOUT_MS})
        yield conn


def create_app(settings: Settings, config: ApiConfig, *, engine: AsyncEngine | None = None) -> Litestar:
    """The admin API for ``settings`` (database, broker, topology) and ``config`` (tokens, limits)."""
    engine = engine or db.create_engine(settings)
    broker = BrokerProbe(settings.amqp_url, config.broker_timeout_s)
    # One Redis client (a connection pool) for the process: /metrics, the breakers and the dashboard
    # reuse its connections instead of opening and closing their own per request.
    redis = connect_redis(settings, name=f"tierbox-api:{os.getpid()}")
    # One tier-health read per second for /admin/tiers and every open dashboard together.
    snapshot = TierSnapshot(engine, settings, broker, redis=redis)

    # Operators' job event streams (/admin/jobs/{id}/events): one listening connection for the process.
    job_events = JobEvents(settings.database_url, engine=engine)

    async def close() -> None:
        await job_events.close()
        await snapshot.close()
        await redis.aclose()
        await broker.close()
        await engine.dispose()

    return Litestar(
        route_handlers=[DeadLetterController, JobController, TierController, *CONTROL_ROUTES, reconcile, scrape,
                        healthz, readyz, FailureGroupController, *ui.routers()],
        template_config=ui.template_config(),
        dependencies={"db": Provide(provide_db)},
        exception_handlers=errors.HANDLERS,
        before_request=params.screen,  # hostile input stops here, before parsing or Postgres
        request_max_body_size=config.max_body_bytes,
        openapi_config=openapi.config(VERSION),
        state=State({"settings": settings, "config": config, "tokens": TokenStore(config.tokens),
                     "engine": engine, "broker": broker, "auth_disabled": config.auth_disabled,
                     "snapshot": snapshot, "redis": redis, "ui_sessions": SessionCodec(signing_key()),
                     "job_events": job_events}),
        on_shutdown=[close],
        debug=False,
    )
