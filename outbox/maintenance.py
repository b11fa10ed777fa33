"""Operational chores on the outbox schema: mirroring the topology, pruning old jobs."""

from __future__ import annotations

from typing import Any

from outbox import queries
from outbox.sql import run, run_async
from outbox.tiers import Topology

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


def prune(conn: Any, succeeded_days: float, dead_days: float, batch: int = PRUNE_BATCH_ROWS) -> int:
    """Delete finished jobs past retention in short committed batches; returns rows deleted.

    ``conn`` must be a psycopg connection in autocommit=False mode owned by the
    caller; this commits after each batch so no transaction stays open long.
    """
    total = 0
    params = {"succeeded_days": succeeded_days, "dead_days": dead_days, "batch": batch}
    while True:
        cur = conn.execute(queries.PRUNE_BATCH.pg, params)
        deleted: int = cur.rowcount
        conn.execute(queries.PRUNE_DEAD_LETTERS.pg, {"dead_days": dead_days, "batch": batch})
        conn.commit()
        total += max(deleted, 0)
        if deleted < batch:
            return total
