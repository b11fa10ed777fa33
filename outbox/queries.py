"""Every SQL statement of the ``outbox`` package, each with what it is for."""

from __future__ import annotations

from outbox.sql import Statement

# Insert a batch of jobs and their pending rows in one round trip. Rows whose
# idempotency key already exists insert nothing and return the existing id.
ENQUEUE = Statement("enqueue", """
WITH input AS (
    SELECT *
    FROM unnest(
        CAST(:ids AS uuid[]), CAST(:tasks AS text[]), CAST(:tiers AS text[]),
        CAST(:weights AS smallint[]), CAST(:priorities AS smallint[]), CAST(:payloads AS jsonb[]),
        CAST(:headers AS jsonb[]), CAST(:keys AS text[]), CAST(:max_retries AS integer[]),
        CAST(:run_ats AS timestamptz[]), CAST(:delays_s AS float8[]),
        CAST(:expires_ats AS timestamptz[]), CAST(:expires_s AS float8[])
    ) WITH ORDINALITY AS t(id, task, tier, weight, priority, payload, headers, idempotency_key,
                          max_retries, run_at, delay_s, expires_at, expires_s, ord)
),
ins AS (
    INSERT INTO outbox.jobs (id, task, tier, priority, payload, headers, idempotency_key, max_retries,
                             available_at, expires_at)
    SELECT id, task, tier, priority, payload, headers, idempotency_key, max_retries,
           COALESCE(run_at, now() + make_interval(secs => COALESCE(delay_s, 0))),
           COALESCE(expires_at, now() + make_interval(secs => expires_s))
    FROM input ORDER BY ord
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, tier, priority, available_at
),
pend AS (
    INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
    SELECT ins.id, ins.tier, input.weight, ins.priority, ins.available_at
    FROM ins JOIN input ON input.id = ins.id
)
SELECT input.ord, COALESCE(ins.id, existing.id) AS id, ins.id IS NOT NULL AS created
FROM input
LEFT JOIN ins ON ins.id = input.id
LEFT JOIN outbox.jobs AS existing
       ON ins.id IS NULL AND existing.idempotency_key = input.idempotency_key
ORDER BY input.ord
""")

# Look up ids by idempotency key (after a concurrent insert committed under our snapshot).
JOB_IDS_BY_KEY = Statement("job_ids_by_key", """
SELECT idempotency_key, id FROM outbox.jobs WHERE idempotency_key = ANY(CAST(:keys AS text[]))
""")

# Redrive one dead letter through the shared SQL function; returns the new job id.
REDRIVE = Statement("redrive", """
SELECT outbox.redrive(CAST(:job_id AS uuid), CAST(:tier AS text), CAST(:by AS text), CAST(:reason AS text))
""")

# Discard one dead letter (kept for audit, never redriven).
DISCARD = Statement("discard", """
SELECT outbox.discard(CAST(:job_id AS uuid), CAST(:by AS text), CAST(:reason AS text))
""")

# Mirror the tier topology into outbox.tiers (read by SQL functions and views).
UPSERT_TIER = Statement("upsert_tier", """
INSERT INTO outbox.tiers (name, weight, slo_s, queue, pool)
VALUES (:name, :weight, :slo_s, :queue, :pool)
ON CONFLICT (name) DO UPDATE
SET weight = EXCLUDED.weight, slo_s = EXCLUDED.slo_s, queue = EXCLUDED.queue, pool = EXCLUDED.pool
""")

# Delete a bounded batch of finished jobs past retention (short transactions, no long locks).
PRUNE_BATCH = Statement("prune_batch", """
WITH doomed AS (
    SELECT id FROM outbox.jobs
    WHERE finished_at IS NOT NULL
      AND ((status IN ('succeeded', 'expired') AND finished_at < now() - make_interval(secs => CAST(:succeeded_days AS float8) * 86400))
        OR (status IN ('dead', 'discarded') AND finished_at < now() - make_interval(secs => CAST(:dead_days AS float8) * 86400)))
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
)
DELETE FROM outbox.jobs j USING doomed WHERE j.id = doomed.id
""")

# Delete dead letters that are settled (redriven or discarded) and past retention.
PRUNE_DEAD_LETTERS = Statement("prune_dead_letters", """
DELETE FROM outbox.dead_letters
WHERE id IN (
    SELECT id FROM outbox.dead_letters
    WHERE (redriven_at IS NOT NULL OR discarded_at IS NOT NULL)
      AND failed_at < now() - make_interval(secs => CAST(:dead_days AS float8) * 86400)
    LIMIT :batch
)
""")
