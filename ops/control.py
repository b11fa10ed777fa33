"""Pause/resume tiers and tasks, and temporary tier overrides: shared by the admin API and the CLI.

Every change is one transaction with its ``outbox.admin_audit`` row. Pausing
stops workers from starting the paused jobs (the relay also holds a paused
tier's backlog in the outbox); nothing is dropped — resuming lets it flow.
An override routes a task's new jobs (and its backlog still in the outbox) to
another tier until ``expires_at``; it needs no process to expire.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import _transitions as transitions
from outbox._sql import run_async
from tierbox.ops import audit, queries
from tierbox.ops.audit import Actor
from tierbox.ops.errors import invalid

if TYPE_CHECKING:
    from outbox.registry import Task

Scope = Literal["tier", "task"]
#: The longest override accepted (a forgotten override must not route a task forever).
MAX_OVERRIDE = dt.timedelta(days=90)
#: The same bound in hours, for a request's ``hours`` (checked before any datetime arithmetic).
MAX_OVERRIDE_HOURS = MAX_OVERRIDE.total_seconds() / 3600


class Pause(msgspec.Struct, frozen=True):
    """A pause in force."""

    scope: str
    name: str
    paused_at: dt.datetime
    paused_by: str
    reason: str | None


class Override(msgspec.Struct, frozen=True):
    """A tier override in force."""

    task: str
    tier: str
    expires_at: dt.datetime
    created_at: dt.datetime
    created_by: str
    reason: str | None


async def pause(engine: AsyncEngine, actor: Actor, scope: Scope, name: str, reason: str | None) -> bool:
    """Pause ``name``; False if it was already paused (audited either way)."""
    async with engine.begin() as conn:
        rows = await run_async(conn, queries.PAUSE, {"scope": scope, "name": name, "by": actor.name,
                                                     "reason": reason})
        await audit.record(conn, actor, "pause", [], "ok" if rows else "refused",
                           {"scope": scope, "name": name, "reason": reason, "already_paused": not rows})
    return bool(rows)


async def resume(engine: AsyncEngine, actor: Actor, scope: Scope, name: str) -> bool:
    """Resume ``name``; False if it was not paused (audited either way)."""
    async with engine.begin() as conn:
        rows = await run_async(conn, queries.RESUME, {"scope": scope, "name": name})
        await audit.record(conn, actor, "resume", [], "ok" if rows else "not_found", {"scope": scope, "name": name})
    return bool(rows)


async def pauses(conn: Any) -> list[Pause]:
    """Every pause in force."""
    return [Pause(scope=r.scope, name=r.name, paused_at=r.paused_at, paused_by=r.paused_by, reason=r.reason)
            for r in await run_async(conn, queries.PAUSES)]


async def set_override(engine: AsyncEngine, actor: Actor, task: str, tier: str, expires_at: dt.datetime,
                       reason: str | None) -> int:
    """Route ``task`` to ``tier`` until ``expires_at``; returns how many waiting jobs moved."""
    async with engine.begin() as conn:
        await run_async(conn, queries.SET_OVERRIDE, {"task": task, "tier": tier, "expires_at": expires_at,
                                                     "by": actor.name, "reason": reason})
        moved = await run_async(conn, transitions.MOVE_BACKLOG, {"task": task, "tier": tier})
        await audit.record(conn, actor, "override_set", [], "ok",
                           {"task": task, "tier": tier, "expires_at": expires_at.isoformat(), "reason": reason,
                            "moved": len(moved)})
    return len(moved)


async def clear_override(engine: AsyncEngine, actor: Actor, task: str) -> bool:
    """Drop ``task``'s override; False if it had none (audited either way)."""
    async with engine.begin() as conn:
        rows = await run_async(conn, queries.CLEAR_OVERRIDE, {"task": task})
        await audit.record(conn, actor, "override_clear", [], "ok" if rows else "not_found", {"task": task})
    return bool(rows)


async def overrides(conn: Any) -> list[Override]:
    """Overrides still in force."""
    return [Override(task=r.task, tier=r.tier, expires_at=r.expires_at, created_at=r.created_at,
                     created_by=r.created_by, reason=r.reason)
            for r in await run_async(conn, queries.OVERRIDES)]


@contextlib.asynccontextmanager
async def _redis(settings: Any, redis: Any) -> AsyncIterator[Any]:
    """``redis`` (the caller's long-lived client, left open) or a client of its own, closed after use."""
    from tierbox.flow.gate import connect

    if redis is not None:
        yield redis
        return
    client = connect(settings)
    try:
        yield client
    finally:
        await client.aclose()


async def breakers(settings: Any, redis: Any = None) -> dict[str, dict[str, Any]]:
    """Circuit-breaker states from Redis (``{}`` if none has ever tripped); raises if Redis is unreachable.

    ``redis``: the caller's long-lived client (the API's), else one is opened and closed for this call."""
    from outbox.registry import registry
    from tierbox.flow.gate import Gate

    # Failures are counted over the window the workers recorded with (kept in Redis); the policies
    # this process imported only fill in for a breaker no worker has recorded since that change.
    async with _redis(settings, redis) as client:
        return await Gate(settings, client, None, policies=registry.breakers).breaker_states()


class RateLimitRow(msgspec.Struct, frozen=True, kw_only=True):
    """A configured limit (a tier's rate, a task's rate and concurrency) and its state in Redis now."""

    scope: str
    name: str
    #: The task's tier (None for a tier row).
    tier: str | None
    #: Starts allowed, as configured (``"5/s"``); None: no rate limit.
    rate: str | None
    #: The kwarg whose every value has its own bucket of ``rate`` (None: one bucket).
    rate_key: str | None
    #: Jobs of the task running at once, at most; None: no limit.
    concurrency: int | None
    #: The state now (:class:`tierbox.flow.gate.LimitState`); None when Redis did not answer.
    next_start_in_s: float | None = None
    held: int | None = None


def rate_text(count: float, period_s: float) -> str:
    """A rate as it is written in code and topology: ``5/s``, ``10/m``, ``5/h``, ``3/10s``."""
    unit = {1.0: "s", 60.0: "m", 3600.0: "h"}.get(period_s)
    return f"{count:g}/{unit}" if unit else f"{count:g}/{period_s:g}s"


def configured_limits(settings: Any, tasks: Iterable[Task]) -> list[RateLimitRow]:
    """Every rate-limited tier of the topology, then every task with a rate or concurrency limit, by name."""
    rows = [RateLimitRow(scope="tier", name=name, tier=None, rate=spec.rate_limit, rate_key=None, concurrency=None)
            for name, spec in settings.topology.tiers.items() if spec.rate_limit]
    rows += [RateLimitRow(scope="task", name=t.name, tier=t.tier, rate_key=t.rate_key, concurrency=t.concurrency,
                          rate=rate_text(t.rate_limit.count, t.rate_limit.period_s) if t.rate_limit else None)
             for t in sorted(tasks, key=lambda t: t.name) if t.limited]
    return rows


async def rate_limits(settings: Any, redis: Any = None,
                      tasks: Iterable[Task] | None = None) -> tuple[list[RateLimitRow], str | None]:
    """The configured limits with their state in Redis now, and why the state is missing (None: it is not).

    ``tasks``: the registered tasks (default: this process's registry, filled by the app modules
    ``tierbox api --app`` imported). Redis trouble leaves the rows without state and says so, rather
    than hiding the limits."""
    from outbox.errors import FlowStateUnavailableError
    from outbox.registry import registry
    from tierbox.flow.gate import Gate

    limited = [t for t in (registry if tasks is None else tasks) if t.limited]
    rows = configured_limits(settings, limited)
    if not rows:
        return rows, None
    try:
        async with _redis(settings, redis) as client:
            states = await Gate(settings, client, None).limit_states(limited)
    except FlowStateUnavailableError as exc:
        return rows, str(exc)
    return [msgspec.structs.replace(r, next_start_in_s=s.next_start_in_s, held=s.held)
            if (s := states.get((r.scope, r.name))) is not None else r for r in rows], None


async def scheduler_leader(settings: Any, redis: Any = None) -> tuple[str | None, float]:
    """Who holds the scheduler's leader lock in Redis (None: nobody) and its seconds left; raises if Redis is down.

    ``redis``: the caller's long-lived client (the API's), else one is opened and closed for this call."""
    from tierbox.scheduler.scheduler import leader_key

    key = leader_key(settings.queue_prefix)
    async with _redis(settings, redis) as client:
        holder = await client.get(key)
        ttl_ms = await client.pttl(key)
    return (holder.decode() if isinstance(holder, bytes) else holder), max(int(ttl_ms), 0) / 1000


def expiry(until: dt.datetime | None, hours: float | None) -> dt.datetime:
    """When an override ends; 422 unless exactly one of ``until``/``hours`` puts it within 90 days."""
    if (until is None) == (hours is None):
        raise invalid("until", "give until or hours (exactly one)")
    if hours is not None and not (math.isfinite(hours) and 0 < hours <= MAX_OVERRIDE_HOURS):
        # Checked before timedelta(): a huge value overflows it (OverflowError), nan compares false everywhere.
        raise invalid("hours", f"a number of hours above 0 and at most {MAX_OVERRIDE_HOURS:g} (90 days)")
    now = dt.datetime.now(dt.UTC)
    if until is not None and until.tzinfo is None:
        raise invalid("until", "give a time zone (e.g. 2026-12-01T00:00:00Z)")
    end = until if until is not None else now + dt.timedelta(hours=hours or 0)
    if end <= now or end - now > MAX_OVERRIDE:
        raise invalid("until" if until is not None else "hours", "the override must end within 90 days from now")
    return end
