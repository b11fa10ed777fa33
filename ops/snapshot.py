"""One shared, at most about one second old, view of tier health for every reader of a process.

``GET /admin/tiers`` and every open dashboard ask for the same numbers; each
read costs a ``tier_health`` query and a passive declare per queue on
RabbitMQ. :class:`TierSnapshot` reads them once per ``max_age_s`` however many
readers ask: readers that arrive while a refresh runs await that refresh (one
shared task), never start their own. So ten open dashboards cost the broker
and the database what one does. The same refresh counts the open dead letters
per tier (a GROUP BY over the open ones), the other read of the Tiers screen
whose cost grows with the ledger; the pauses and overrides stay per request
(two tiny tables), so a page shows a pause the moment it is made.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox._sql import run_async
from outbox.config import Settings
from tierbox.flow.gate import connect as connect_redis
from tierbox.ops import dead_letters, queries
from tierbox.ops import tier_health as tiers
from tierbox.ops.broker import BrokerProbe
from tierbox.ops.models import TierHealth

#: How old the shared view may be before a reader triggers a refresh, seconds.
DEFAULT_MAX_AGE_S = 1.0
#: Statement timeout of the refresh's read, milliseconds (as the API's other reads).
READ_TIMEOUT_MS = 5000


class TierSnapshot:
    """Tier health read at most once per ``max_age_s``; concurrent readers share one refresh."""

    def __init__(self, engine: AsyncEngine, settings: Settings, broker: BrokerProbe,
                 max_age_s: float = DEFAULT_MAX_AGE_S, redis: aioredis.Redis | None = None) -> None:
        self._engine = engine
        self._settings = settings
        self._broker = broker
        self.max_age_s = max_age_s
        self._value: list[TierHealth] | None = None
        #: Open dead letters per tier, read by the same refresh as the view (tiers with none are absent).
        self.open_dead_letters: dict[str, int] = {}
        self._read_at = 0.0
        self._refresh: asyncio.Task[list[TierHealth]] | None = None
        #: The app's shared client when given (the app closes it), else one of the snapshot's own.
        self._redis: aioredis.Redis | None = redis
        self._owns_redis = redis is None
        #: Refreshes done (each one query and one broker round): what a benchmark or test counts.
        self.refreshes = 0

    @property
    def age_s(self) -> float | None:
        """Seconds since the view was read, None before the first read."""
        return None if self._value is None else time.monotonic() - self._read_at

    async def get(self) -> list[TierHealth]:
        """The view, refreshed first if older than ``max_age_s`` (joining a refresh already running)."""
        if self._value is not None and time.monotonic() - self._read_at < self.max_age_s:
            return self._value
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._read())
        # shield: one reader disconnecting must not cancel the refresh the others await.
        return await asyncio.shield(self._refresh)

    async def _read(self) -> list[TierHealth]:
        async with self._engine.connect() as conn:
            await run_async(conn, queries.READ_TIMEOUT, {"ms": READ_TIMEOUT_MS})
            if self._redis is None:
                self._redis = connect_redis(self._settings)
            value = await tiers.health(conn, self._settings, self._broker, self._redis)
            open_dead = await dead_letters.open_by_tier(conn)
        self._value, self.open_dead_letters, self._read_at = value, open_dead, time.monotonic()
        self.refreshes += 1
        return value

    async def close(self) -> None:
        """Close the Redis client if it is the snapshot's own (the engine and the broker probe belong to the app)."""
        if self._redis is not None and self._owns_redis:
            await self._redis.aclose()
            self._redis = None
