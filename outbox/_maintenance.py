"""Operational chores on the outbox schema: mirroring the topology, pruning old jobs."""

from __future__ import annotations

from typing import Any

from outbox import _partitions as partitions
from outbox import _queries as queries
from outbox import _transitions as transitions
from outbox._sql import Statement, run, run_async
from outbox.errors import SchemaOutdatedError
from outbox.tiers import Topology

#: The schema revision this code needs (the newest in migrations/versions; a test keeps them equal).
#: Relays and workers refuse to work against an older one; a newer one is fine (migrate first,
#: then roll out the code: old processes keep working on the migrated schema).
REQUIRED_REVISION = "0018"
#: SQLSTATE of "relation does not exist".
UNDEFINED_TABLE = "42P01"

#: Rows deleted per prune transaction: small enough that no lock is held long.
PRUNE_BATCH_ROWS = 5000


def tier_rows(topology: Topology) -> list[dict[str, Any]]:
    """One UPSERT_TIER parameter set per tier."""
    return [
        {"name": name, "weight": spec.weight, "slo_s": spec.slo_s, "queue": spec.queue_name(name), "pool": spec.pool,
         "notify": spec.urgent}
        for name, spec in topology.tiers.items()
    ]


def sync_tiers(conn: Any, topology: Topology) -> None:
    """Mirror ``topology`` into ``outbox.tiers`` (caller commits)."""
    for params in tier_rows(topology):
        run(conn, queries.UPSERT_TIER, params)


async def sync_tiers_async(conn: Any, topology: Topology) -> None:
    """:func:`sync_tiers` on an async connection (caller commits)."""
    for params in tier_rows(topology):
        await run_async(conn, queries.UPSERT_TIER, params)


async def check_schema_async(conn: Any) -> None:
    """Raise :class:`SchemaOutdatedError` unless the ``outbox`` schema is at :data:`REQUIRED_REVISION` or newer.

    Without it, a worker rolled out before ``tierbox migrate`` fails every start with "function
    does not exist" and hands every message back, forever; this says what to do instead.
    """
    try:
        rows = await run_async(conn, queries.SCHEMA_REVISION)
    except Exception as exc:
        # undefined_table, from psycopg directly or wrapped by SQLAlchemy (.orig)
        if UNDEFINED_TABLE in (getattr(exc, "sqlstate", None), getattr(getattr(exc, "orig", None), "sqlstate", None)):
            raise SchemaOutdatedError(f"the database has no outbox schema (needs revision {REQUIRED_REVISION}): "
                                      "run `tierbox migrate` first") from exc
        raise
    found = rows[0].version_num if rows else None
    if found is None or str(found) < REQUIRED_REVISION:
        raise SchemaOutdatedError(f"the outbox schema is at revision {found}, this Tierbox needs {REQUIRED_REVISION}: "
                                  "run `tierbox migrate` first (then roll out the new code)")


def prune(conn: Any, succeeded_days: float, dead_days: float, batch: int = PRUNE_BATCH_ROWS) -> int:
    """Remove finished jobs past retention; returns how many (dropped with their day, plus deleted).

    First every day partition whose jobs are all finished past retention is dropped whole
    (:func:`outbox._partitions.drop_expired`: no row deletes, no WAL per row, no bloat); then what
    is left past retention (the default partition's pre-0017 jobs, days held by one unfinished or
    retained job) is deleted in short committed batches. ``conn`` must be a psycopg connection in
    autocommit=False mode owned by the caller; this commits after each step.
    """
    dropped, deleted = prune_detailed(conn, succeeded_days, dead_days, batch)
    return sum(d.jobs for d in dropped) + deleted


def prune_detailed(conn: Any, succeeded_days: float, dead_days: float,
                   batch: int = PRUNE_BATCH_ROWS) -> tuple[list[partitions.Dropped], int]:
    """:func:`prune`, saying which days were dropped (and their job counts) and how many rows were deleted."""
    dropped = partitions.drop_expired(conn, succeeded_days, dead_days)
    return dropped, _delete_expired(conn, succeeded_days, dead_days, batch)


def _delete_expired(conn: Any, succeeded_days: float, dead_days: float, batch: int) -> int:
    """Row deletes past retention: the default partitions, then each day old enough to hold any."""
    total = 0
    params: dict[str, Any] = {"succeeded_days": succeeded_days, "dead_days": dead_days, "batch": batch}
    # Every day, however recent (finished_at is only compared, never assumed to follow the id's time):
    # for a day with nothing past retention the batch is one probe of ix_jobs_finished_at.
    days = sorted({p.day for p in partitions.partitions(conn, "jobs")})
    conn.rollback()
    targets: list[tuple[Statement[Any], dict[str, Any]]] = [(transitions.PRUNE_DEFAULT_BATCH, {})]
    for day in days:
        lo, hi = partitions.day_bounds(day)
        targets.append((transitions.PRUNE_BATCH, {"lo": lo, "hi": hi}))
    for stmt, bounds in targets:
        while True:
            # Not prepared: a generic plan would read every partition instead of the day's.
            cur = conn.execute(stmt.pg, {**params, **bounds}, prepare=False)
            deleted: int = cur.rowcount
            conn.commit()
            total += max(deleted, 0)
            if deleted < batch:
                break
    while conn.execute(transitions.PRUNE_DEAD_LETTERS.pg, {"dead_days": dead_days, "batch": batch}).rowcount >= batch:
        conn.commit()
    conn.commit()
    return total
