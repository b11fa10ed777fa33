"""``/admin/tiers``, ``/metrics``, ``/healthz`` and ``/readyz``."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.openapi import ResponseSpec

from outbox._logs import clip
from outbox._sql import run_async
from tierbox.api import metrics
from tierbox.api.guards import require
from tierbox.api.openapi import ERRORS
from tierbox.ops import queries
from tierbox.ops.models import Health, TierHealth
from tierbox.ops.snapshot import TierSnapshot


class TierController(Controller):
    """Per-tier health (``read`` scope)."""

    path = "/admin/tiers"
    tags = ["tiers"]

    @get("/", guards=[require("read")], responses=ERRORS)
    async def list_tiers(self, state: State) -> list[TierHealth]:
        """``outbox.tier_health`` plus live queue and dlq depth and consumers from RabbitMQ.

        Served from the process's shared snapshot (``ops.snapshot``): at most about a second old, so
        any number of callers cost Postgres and RabbitMQ one read per second."""
        snapshot: TierSnapshot = state.snapshot
        return await snapshot.get()


@get("/metrics", guards=[require("read")], tags=["health"], responses=ERRORS, media_type=metrics.CONTENT_TYPE)
async def scrape(state: State) -> Response[bytes]:
    """Prometheus metrics, read from Postgres and RabbitMQ at scrape time."""
    snap = await metrics.snapshot(state.engine, state.settings, state.broker, state.redis)
    return Response(metrics.render(snap), media_type=metrics.CONTENT_TYPE)


@get("/healthz", tags=["health"], security=[{}])
async def healthz() -> Health:
    """The process is up (no dependency checked, no token needed)."""
    return Health(status="ok")


@get("/readyz", tags=["health"], security=[{}],
     responses={503: ResponseSpec(data_container=Health, description="Postgres or RabbitMQ unreachable.")})
async def readyz(state: State) -> Response[Health]:
    """Postgres and RabbitMQ are reachable (503 naming what is not; no token needed)."""
    problems: dict[str, str] = {}
    try:
        async with state.engine.connect() as conn:
            await run_async(conn, queries.PING)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: that is the endpoint's job
        problems["postgres"] = clip(f"{type(exc).__name__}: {exc}", 200)
    try:
        await state.broker.ping()
    except Exception as exc:  # noqa: BLE001
        problems["rabbitmq"] = clip(f"{type(exc).__name__}: {exc}", 200)
    body = Health(status="unavailable" if problems else "ok", **problems)
    return Response(body, status_code=503 if problems else 200)

