"""``tier_health`` on a partitioned ledger: each recent attempt (or lease) finds its job by one
index lookup, instead of a hash join over every partition of ``outbox.jobs``.

Since revision 0017 partitioned ``outbox.jobs`` by day, the planner joins the view's recent
attempts (``failed``, ``waits``, ``starts``) and expired leases (``stuck``) to the jobs with a
parallel hash join over a sequential scan of every partition: the view took 531 ms on a
520,300-job ledger and 2.08 s behind the dashboard's Tiers screen on 2,020,300 jobs (22x its time
on 20,300; bench/README.md, "bench.admin_load and bench.ui_render"). Each join is now a
``CROSS JOIN LATERAL`` subquery by id with ``OFFSET 0``, which keeps the planner from flattening it
back into the join it chose before: per attempt, one lookup, pruned at run time to the one
partition holding the id, on that partition's primary key. The same reads measured 4.2 ms by hand
on the 520,300-job copy with JIT off; with JIT on (its default), the planner's estimate for those
lookups over 40 partitions compiled 1,888 functions in 2 s per read. So the view's query now lives
in ``outbox.tier_health_rows()``, a SQL function declared ``SET jit = off`` (the one place a
setting can travel with a query for every reader: the API, ``tierbox tiers``, ``/metrics``, an
operator's psql), and the view selects from it: 34 ms on that copy. Same columns, same meaning.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02
"""

import importlib

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

#: One job per attempt or lease, looked up by id (OFFSET 0: not flattened into a hash join).
_LOOKUP = ("CROSS JOIN LATERAL (SELECT j.tier, j.attempts, j.enqueued_at, j.available_at\n"
           "        FROM outbox.jobs j WHERE j.id = {fk} OFFSET 0) j")


def _tier_health_0016() -> str:
    """Revision 0016's ``outbox.tier_health`` (its CREATE OR REPLACE VIEW and COMMENT statements)."""
    module = importlib.import_module("tierbox.migrations.versions.0016_tier_health_p99")
    view: str = module._tier_health_0016()
    return view


def _tier_health_0018() -> str:
    """0016's view with every join to ``outbox.jobs`` made a lookup by id."""
    view = _tier_health_0016()
    attempts_join = "FROM outbox.attempts a JOIN outbox.jobs j ON j.id = a.job_id"
    leases_join = "FROM outbox.leases l JOIN outbox.jobs j ON j.id = l.job_id"
    if view.count(attempts_join) != 3 or view.count(leases_join) != 1:
        raise LookupError("revision 0016's tier_health is not the one this revision rewrites")
    view = view.replace(attempts_join, "FROM outbox.attempts a " + _LOOKUP.format(fk="a.job_id"))
    return view.replace(leases_join, "FROM outbox.leases l " + _LOOKUP.format(fk="l.job_id"))


#: The view's columns and types (as revision 0016 left them), the function's result.
COLUMNS = (
    "tier text, weight smallint, slo_s double precision, pending bigint, due bigint, "
    "oldest_due_age_s double precision, published bigint, running bigint, retrying bigint, stuck bigint, "
    "succeeded_5m bigint, failed_5m bigint, dead_5m bigint, succeeded_1h bigint, failed_1h bigint, "
    "dead_1h bigint, wait_p50_s double precision, wait_p95_s double precision, slo_breached boolean, "
    "published_oldest_age_s double precision, republished_1h bigint, publishing_blocked boolean, "
    "wait_p99_s double precision, started_1m bigint")


def _function_and_view() -> list[str]:
    """``outbox.tier_health_rows()`` holding 0018's query with JIT off, and the view over it."""
    view = _tier_health_0018()
    head = "CREATE OR REPLACE VIEW outbox.tier_health AS\n"
    start = view.index(head) + len(head)
    end = view.index(";\nCOMMENT ON VIEW")
    query, comment = view[start:end], view[end + 2:]
    function = (f"CREATE OR REPLACE FUNCTION outbox.tier_health_rows() RETURNS TABLE ({COLUMNS})\n"
                f" LANGUAGE sql STABLE SET jit = off AS $$\n{query}\n$$")
    return [function, "CREATE OR REPLACE VIEW outbox.tier_health AS SELECT * FROM outbox.tier_health_rows()",
            comment]


def upgrade() -> None:
    """Rewrite ``tier_health``'s joins to ``outbox.jobs`` as lookups by id, in a function without JIT."""
    for statement in _function_and_view():
        op.execute(statement)


def downgrade() -> None:
    """Restore revision 0016's view (same columns: replaced in place), then drop the function."""
    op.execute(_tier_health_0016())
    op.execute("DROP FUNCTION outbox.tier_health_rows()")
