"""Every SQL statement of the ``outbox`` package, each with what it is for."""

from __future__ import annotations

from outbox._sql import Statement

# Look up ids by idempotency key (after a concurrent insert committed under our snapshot).
JOB_IDS_BY_KEY = Statement("job_ids_by_key", """
SELECT idempotency_key, id FROM outbox.jobs WHERE idempotency_key = ANY(CAST(:keys AS text[]))
""")


# Mirror the tier topology into outbox.tiers (read by SQL functions and views).
UPSERT_TIER = Statement("upsert_tier", """
INSERT INTO outbox.tiers (name, weight, slo_s, queue, pool, notify)
VALUES (:name, :weight, :slo_s, :queue, :pool, :notify)
ON CONFLICT (name) DO UPDATE
SET weight = EXCLUDED.weight, slo_s = EXCLUDED.slo_s, queue = EXCLUDED.queue, pool = EXCLUDED.pool,
    notify = EXCLUDED.notify
""")


# The outbox schema's alembic revision (its own version table).
SCHEMA_REVISION = Statement("schema_revision", "SELECT version_num FROM outbox.alembic_version")

# --- Ledger transitions, shared by the workers and outbox.testing. Completion is fenced on the
# attempt number: a stale worker finishing late changes nothing.


# Due pending jobs visible to the caller's transaction, for outbox.testing.drain (no broker).
TESTING_DUE = Statement("testing.due", """
SELECT p.job_id, j.task, j.tier, j.payload::text
FROM outbox.pending AS p JOIN outbox.jobs AS j ON j.id = p.job_id
WHERE p.available_at <= clock_timestamp() AND NOT (p.job_id = ANY(CAST(:skip AS uuid[])))
  AND (CAST(:only AS uuid[]) IS NULL OR p.job_id = ANY(CAST(:only AS uuid[])))
ORDER BY p.weight DESC, p.priority DESC, p.available_at
LIMIT :limit
""")

# Jobs visible to the caller's transaction, newest first, for outbox.testing assertions.
TESTING_JOBS = Statement("testing.jobs", """
SELECT id, task, tier, payload::text, status, idempotency_key
FROM outbox.jobs
WHERE (CAST(:task AS text) IS NULL OR task = :task)
ORDER BY enqueued_at DESC, id
""")
