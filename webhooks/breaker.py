"""The per-host circuit breaker of webhook deliveries, on the flow gate's Redis breakers.

Every worker of a cluster shares one breaker per receiver (``webhook:<host>:<port>``), with the
same Lua scripts, states, ``outbox.breaker_events`` history and operator views (``/admin/breakers``,
``tierbox tiers``) as a task's ``breaker=``. A delivery asks it before connecting: while it is
open the attempt fails at once (``HostCircuitOpen``, retried with back-off) without touching the host.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox.config import Settings
from outbox.flow import BreakerPolicy, breaker_policy
from outbox.registry import Task
from outbox.webhooks import DELIVERY_TASK
from tierbox.flow.gate import Decision, Gate, connect

#: 5 failures (network errors, timeouts, 5xx, 429) within 60 s open a host's breaker for 30 s.
HOST_BREAKER = breaker_policy(threshold=5, window_s=60.0, open_s=30.0, probes=1, probe_retry_s=1.0)


def breaker_name(url: str) -> str:
    """The breaker of ``url``'s receiver: ``webhook:<host>:<port>``."""
    parts = urlsplit(url)
    return f"webhook:{(parts.hostname or '').lower()}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


class HostGate(Gate):
    """A gate whose ``webhook:*`` breakers use :data:`HOST_BREAKER`."""

    def policy(self, breaker: str) -> BreakerPolicy:
        """:data:`HOST_BREAKER` for receivers, the declared or default policy otherwise."""
        return HOST_BREAKER if breaker.startswith("webhook:") else super().policy(breaker)


class Breakers:
    """The process's gate for receivers, made on first use from the worker's settings."""

    def __init__(self) -> None:
        self._gate: HostGate | None = None
        self._engine: AsyncEngine | None = None
        self._lock = asyncio.Lock()

    async def gate(self) -> HostGate:
        """The gate (one Redis client and a one-connection engine for breaker events per process)."""
        async with self._lock:
            if self._gate is None:
                settings = Settings.from_env()
                self._engine = create_async_engine(settings.sqlalchemy_url, pool_size=1, max_overflow=1)
                self._gate = HostGate(settings, connect(settings), self._engine)
            return self._gate

    @staticmethod
    def task(url: str, tier: str) -> Task:
        """The delivery as the gate sees it: a task naming the receiver's breaker."""
        return Task(name=DELIVERY_TASK, fn=_never, tier=tier, breaker=breaker_name(url))

    async def admit(self, url: str, tier: str) -> Decision:
        """May a delivery to ``url`` go now? (Fails open if Redis is down, as every admission.)"""
        return await (await self.gate()).admit(self.task(url, tier), tier, {})

    async def record(self, url: str, tier: str, ok: bool, decision: Decision) -> None:
        """Count the attempt's result for the receiver's breaker and give back a probe's slot."""
        gate = await self.gate()
        await gate.record(self.task(url, tier), ok)
        await gate.release(decision.token)


def _never() -> None:  # the gate reads a task's name and breaker only
    raise AssertionError("not a handler")


breakers = Breakers()
