"""Whether a delivered job may start now: pauses, then the flow gate (rate, concurrency, breaker).

A job that may not start is *deferred*: put back through the outbox with a due
time (``DEFER``), its message acked, no attempt consumed. Nothing is dropped
and nothing fails because of flow control.

* Pauses live in ``outbox.pauses``; each pool caches them and refreshes the
  cache every ``PAUSE_REFRESH_S``. A paused tier's backlog also stays in the
  outbox (the relay does not claim it); jobs of a paused task, or already in
  the broker, come back every ``PAUSE_RECHECK_S`` until resumed.
* Tasks and tiers with no rate limit, concurrency limit or breaker skip Redis
  entirely, so flow control costs nothing where it is not used.
* Redis trouble fails open (see :mod:`workers.gate`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from outbox._logs import event
from outbox._sql import run_async
from outbox.config import Settings
from outbox.flow import BreakerPolicy
from outbox.registry import Task
from tierbox.flow.gate import Decision, Gate, Hold, connect
from tierbox.workers import queries

log = logging.getLogger("tierbox.worker")

#: How often a pool re-reads outbox.pauses, seconds.
PAUSE_REFRESH_S = 1.0
#: How long a paused job waits in the outbox before it is looked at again, seconds.
PAUSE_RECHECK_S = 5.0

RUN = Decision(run=True)


class Admission:
    """The pool's admission check; one per pool."""

    def __init__(self, settings: Settings, engine: AsyncEngine,
                 policies: Mapping[str, BreakerPolicy] | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.gate = Gate(settings, connect(settings), engine, policies=policies)
        self.paused: set[tuple[str, str]] = set()
        self._limited_tiers = {t for t, spec in settings.topology.tiers.items() if spec.rate_limit}

    async def refresh_pauses(self) -> None:
        """Re-read the pauses in force."""
        async with self.engine.connect() as conn:
            rows = await run_async(conn, queries.PAUSES)
        now = {(r.scope, r.name) for r in rows}
        for scope, name in now - self.paused:
            event(log, "worker.paused_seen", scope=scope, name=name)
        self.paused = now

    def controlled(self, task: Task, tier: str) -> bool:
        """Whether this job needs the gate at all."""
        return task.limited or bool(task.breaker) or tier in self._limited_tiers

    async def admit(self, task: Task, tier: str, kwargs: dict[str, Any]) -> Decision:
        """Run now, or defer (with how long and why)."""
        if ("tier", tier) in self.paused or ("task", task.name) in self.paused:
            return Decision(run=False, delay_s=PAUSE_RECHECK_S, reason="paused")
        if not self.controlled(task, tier):
            return RUN
        return await self.gate.admit(task, tier, kwargs)

    async def finished(self, task: Task, decision: Decision, ok: bool | None) -> None:
        """Record the outcome for the task's breaker (None: no outcome) and free its concurrency slot."""
        if ok is not None and task.breaker:
            await self.gate.record(task, ok)
        if decision.token is not None:
            await self.gate.release(decision.token)

    async def renew(self, tokens: Iterable[Hold | None]) -> None:
        """Keep the concurrency slots of running jobs."""
        held = [t for t in tokens if t is not None]
        if held:
            await self.gate.renew(held)

    async def close(self) -> None:
        """Close the Redis client."""
        await self.gate.redis.aclose()
