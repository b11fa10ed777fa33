"""Generic plans for the connections that run only Tierbox's own ledger and relay statements.

Since revision 0017 the job history is partitioned by day (``outbox.jobs``, ``outbox.attempts``,
``outbox.job_events``). Every hot statement finds its rows by job id (``id = ANY(:ids)``), and with
the default ``plan_cache_mode = auto`` Postgres plans such a prepared statement again on every
execution: the generic plan's estimate covers every partition, so it never looks cheaper than a
custom one, and the custom plan pays a planning pass that grows with the number of partitions.
Measured with ``python -m bench.plans`` (one job per statement, prepared, p50; bench/README.md,
"Generic plans"): with 10 partitions ``START_MANY`` 0.99 -> 0.66 ms, ``MARK_PUBLISHED`` 0.62 -> 0.46 ms,
``SUCCEED_MANY`` 1.45 -> 0.65 ms; with 47 (a 30-day retention) 1.09 -> 0.84, 1.43 -> 0.64 and
3.83 -> 0.96 ms. The generic plan prunes the partitions when it starts executing
("Subplans Removed"), which grows far more slowly with them (Postgres 15 still locks every partition
of a generic plan first: the 47-partition figures above).

Only connections no application code runs on get it: the relay's lanes and the worker's ledger
engine (batched starts, sessionless successes, retries, dead letters, heartbeats). A handler's own
transaction keeps ``auto``: a generic plan for the application's statements would be our choice
imposed on their queries. ``SET`` after connecting (:mod:`outbox._session_sql`).
"""

from __future__ import annotations

from typing import Any, TypeVar

from outbox import _session_sql

E = TypeVar("E")

SQL = "SET plan_cache_mode = force_generic_plan"


async def apply_async(conn: Any) -> None:
    """Use generic plans on a new psycopg ``AsyncConnection`` (committed unless in autocommit mode)."""
    await _session_sql.apply_async(conn, SQL)


def on_connect(engine: E) -> E:
    """Use generic plans on every connection ``engine`` (a SQLAlchemy ``AsyncEngine`` or ``Engine``)
    opens; returns the engine."""
    return _session_sql.on_connect(engine, SQL)
