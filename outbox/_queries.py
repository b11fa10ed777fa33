"""Every SQL statement of the ``outbox`` package, each with what it is for."""

from __future__ import annotations

from outbox._sql import Statement

# Insert a batch of jobs and their pending rows in one round trip. Rows whose
# idempotency key already exists insert nothing and return the existing id. A task
# with a tier override in force (outbox.tier_overrides) goes to the override's tier
# unless the caller named a tier explicitly.
ENQUEUE = Statement("enqueue", """
WITH input AS (
    SELECT *
    FROM ROWS FROM (
        unnest(CAST(:ids AS uuid[])), unnest(CAST(:tasks AS text[])), unnest(CAST(:tiers AS text[])),
        unnest(CAST(:weights AS smallint[])), unnest(CAST(:priorities AS smallint[])),
        -- Payloads and headers come as one JSON array each, not as a text[] of documents: the
        -- driver escapes every quote of every element of a text array (measured: about 40 % of
        -- enqueue_many's time for 10,000 jobs); one JSON text is sent as it is.
        jsonb_array_elements(CAST(:payloads AS jsonb)), jsonb_array_elements(CAST(:headers AS jsonb)),
        unnest(CAST(:keys AS text[])), unnest(CAST(:max_retries AS integer[])),
        unnest(CAST(:run_ats AS timestamptz[])), unnest(CAST(:delays_s AS float8[])),
        unnest(CAST(:expires_ats AS timestamptz[])), unnest(CAST(:expires_s AS float8[])),
        unnest(CAST(:explicit AS boolean[]))
    ) WITH ORDINALITY AS t(id, task, tier, weight, priority, payload, headers, idempotency_key,
                          max_retries, run_at, delay_s, expires_at, expires_s, explicit_tier, ord)
),
routed AS (
    SELECT input.*, COALESCE(ov.tier, input.tier) AS route_tier, COALESCE(ov.weight, input.weight) AS route_weight,
           CASE WHEN ov.tier IS NULL THEN input.priority ELSE LEAST(input.priority, ov.weight) END AS route_priority
    FROM input
    LEFT JOIN LATERAL (
        SELECT o.tier, t.weight FROM outbox.tier_overrides AS o JOIN outbox.tiers AS t ON t.name = o.tier
        WHERE o.task = input.task AND o.expires_at > now() AND NOT input.explicit_tier
    ) AS ov ON true
),
ins AS (
    INSERT INTO outbox.jobs (id, task, tier, priority, payload, headers, idempotency_key, max_retries,
                             available_at, expires_at)
    SELECT id, task, route_tier, route_priority, payload, headers, idempotency_key, max_retries,
           COALESCE(run_at, now() + make_interval(secs => COALESCE(delay_s, 0))),
           COALESCE(expires_at, now() + make_interval(secs => expires_s))
    FROM routed ORDER BY ord
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, tier, priority, available_at
),
pend AS (
    INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
    SELECT ins.id, ins.tier, routed.route_weight, ins.priority, ins.available_at
    FROM ins JOIN routed ON routed.id = ins.id
)
SELECT input.ord, COALESCE(ins.id, existing.id) AS id, ins.id IS NOT NULL AS created
FROM input
LEFT JOIN ins ON ins.id = input.id
LEFT JOIN outbox.jobs AS existing
       ON ins.id IS NULL AND existing.idempotency_key = input.idempotency_key
ORDER BY input.ord
""")

# One job: the same effect as ENQUEUE for a single row, without the array machinery.
# enqueue() is the hot path of every business transaction; measured on the 2-core box
# this statement costs ~0.37 ms in the caller's transaction against ~1.1 ms for the
# 14-array unnest form (bench/README.md, "enqueue overhead"). Returns the same
# (ord, id, created) shape; a NULL id means a concurrent transaction committed the key
# after our snapshot (the caller then looks it up by key).
ENQUEUE_ONE = Statement("enqueue_one", """
WITH ov AS (
    SELECT o.tier, t.weight FROM outbox.tier_overrides AS o JOIN outbox.tiers AS t ON t.name = o.tier
    WHERE o.task = CAST(:task AS text) AND o.expires_at > now() AND NOT CAST(:explicit AS boolean)
),
ins AS (
    INSERT INTO outbox.jobs (id, task, tier, priority, payload, headers, idempotency_key, max_retries,
                             available_at, expires_at)
    SELECT CAST(:id AS uuid), CAST(:task AS text), COALESCE(ov.tier, CAST(:tier AS text)),
           CASE WHEN ov.tier IS NULL THEN CAST(:priority AS smallint)
                ELSE LEAST(CAST(:priority AS smallint), ov.weight) END,
           CAST(:payload AS jsonb), CAST(:headers AS jsonb), CAST(:key AS text), CAST(:max_retries AS integer),
           COALESCE(CAST(:run_at AS timestamptz),
                    now() + make_interval(secs => COALESCE(CAST(:delay_s AS float8), 0))),
           COALESCE(CAST(:expires_at AS timestamptz), now() + make_interval(secs => CAST(:expires_s AS float8)))
    FROM (SELECT) AS one LEFT JOIN ov ON true
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, tier, priority, available_at
),
pend AS (
    INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
    SELECT ins.id, ins.tier, COALESCE((SELECT weight FROM ov), CAST(:weight AS smallint)), ins.priority,
           ins.available_at
    FROM ins
)
SELECT 1, COALESCE((SELECT id FROM ins),  -- COALESCE stops at the first non-null: no lookup when inserted
                   (SELECT id FROM outbox.jobs WHERE idempotency_key = CAST(:key AS text))),
       EXISTS (SELECT FROM ins)
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
INSERT INTO outbox.tiers (name, weight, slo_s, queue, pool, notify)
VALUES (:name, :weight, :slo_s, :queue, :pool, :notify)
ON CONFLICT (name) DO UPDATE
SET weight = EXCLUDED.weight, slo_s = EXCLUDED.slo_s, queue = EXCLUDED.queue, pool = EXCLUDED.pool,
    notify = EXCLUDED.notify
""")

# Delete a bounded batch of finished jobs past retention (short transactions, no long locks).
PRUNE_BATCH = Statement("prune_batch", """
WITH doomed AS (
    SELECT id FROM outbox.jobs
    WHERE finished_at IS NOT NULL
      AND ((status IN ('succeeded', 'expired')
            AND finished_at < now() - make_interval(secs => CAST(:succeeded_days AS float8) * 86400))
        OR (status IN ('dead', 'discarded')
            AND finished_at < now() - make_interval(secs => CAST(:dead_days AS float8) * 86400)))
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
)
DELETE FROM outbox.jobs j USING doomed WHERE j.id = doomed.id
""")

# Delete dead letters past retention that are settled (redriven or discarded) or name no job (garbage).
PRUNE_DEAD_LETTERS = Statement("prune_dead_letters", """
DELETE FROM outbox.dead_letters
WHERE id IN (
    SELECT id FROM outbox.dead_letters
    WHERE (redriven_at IS NOT NULL OR discarded_at IS NOT NULL OR job_id IS NULL)
      AND failed_at < now() - make_interval(secs => CAST(:dead_days AS float8) * 86400)
    LIMIT :batch
)
""")

# The outbox schema's alembic revision (its own version table).
SCHEMA_REVISION = Statement("schema_revision", "SELECT version_num FROM outbox.alembic_version")

# --- Ledger transitions, shared by the workers and outbox.testing. Completion is fenced on the
# attempt number: a stale worker finishing late changes nothing.

# Decide whether a delivery runs; if so, count the attempt and take the lease (see the SQL function).
START_ATTEMPT = Statement("ledger.start_attempt", """
SELECT decision, attempt, max_retries, enqueued_at, headers
FROM outbox.start_attempt(CAST(:job_id AS uuid), :worker_id, CAST(:lease_s AS float8), CAST(:acked_early AS boolean),
                          CAST(:token AS uuid))
""")

# start_attempt for several deliveries in one statement (one commit): workers.batch.StartBatcher.
# It never waits for a job row: the rows are locked first, in id order, SKIP LOCKED, so one job
# row held elsewhere (an operator's transaction, a long MOVE_BACKLOG) cannot stall the whole batch;
# start_attempt then re-locks each row it already holds. A job not locked here (held elsewhere, or
# not in the ledger at all) comes back as 'busy': the worker starts that delivery alone
# (START_ATTEMPT, which waits, or answers 'unknown'). n: the row's position in the arrays.
START_MANY = Statement("ledger.start_many", """
WITH req AS (
    SELECT * FROM unnest(CAST(:job_ids AS uuid[]), CAST(:acked_early AS boolean[]), CAST(:tokens AS uuid[]))
        WITH ORDINALITY AS s(job_id, acked_early, token, n)
),
free AS MATERIALIZED (
    SELECT j.id FROM outbox.jobs j WHERE j.id = ANY(CAST(:job_ids AS uuid[])) ORDER BY j.id FOR UPDATE SKIP LOCKED
),
started AS MATERIALIZED (
    SELECT req.n, r.decision, r.attempt, r.max_retries, r.enqueued_at, r.headers
    FROM req JOIN free ON free.id = req.job_id
    CROSS JOIN LATERAL outbox.start_attempt(req.job_id, :worker_id, CAST(:lease_s AS float8), req.acked_early,
                                         req.token) AS r
)
SELECT n, decision, attempt, max_retries, enqueued_at, headers FROM started
UNION ALL
SELECT req.n, 'busy', 0, 0, NULL::timestamptz, NULL::jsonb FROM req WHERE req.job_id NOT IN (SELECT id FROM free)
ORDER BY 1
""")


# Success, fenced on the attempt; runs in the handler's own transaction.
SUCCEED = Statement("ledger.succeed", """
WITH ts AS MATERIALIZED (SELECT clock_timestamp() AS at),  -- one instant for every row of the transition
j AS (
    UPDATE outbox.jobs SET status = 'succeeded', finished_at = (SELECT at FROM ts), last_error = NULL
    WHERE id = :job_id AND attempts = :attempt AND status = 'running'
    RETURNING id
), a AS (
    UPDATE outbox.attempts SET finished_at = (SELECT at FROM ts), outcome = 'succeeded'
    WHERE job_id = :job_id AND attempt = :attempt AND EXISTS (SELECT 1 FROM j)
), l AS (
    DELETE FROM outbox.leases WHERE job_id = :job_id AND EXISTS (SELECT 1 FROM j)
)
SELECT count(*) FROM j
""")


# Success of several sessionless attempts in one statement (workers.batch.SuccessBatcher):
# SUCCEED for each (job_id, attempt) pair, fenced the same way; returns the ids that succeeded.
SUCCEED_MANY = Statement("ledger.succeed_many", """
WITH ts AS MATERIALIZED (SELECT clock_timestamp() AS at),  -- one instant for every row of the transition
input AS (
    SELECT * FROM unnest(CAST(:job_ids AS uuid[]), CAST(:attempts AS integer[])) AS t(job_id, attempt)
),
-- Job rows locked in id order, as every multi-row ledger/relay statement does: no deadlock cycles.
ordered AS MATERIALIZED (
    SELECT id FROM outbox.jobs WHERE id = ANY(CAST(:job_ids AS uuid[])) ORDER BY id FOR NO KEY UPDATE
),
j AS (
    UPDATE outbox.jobs SET status = 'succeeded', finished_at = (SELECT at FROM ts), last_error = NULL
    FROM input
    WHERE jobs.id = input.job_id AND jobs.attempts = input.attempt AND jobs.status = 'running'
      AND jobs.id IN (SELECT id FROM ordered)
    RETURNING jobs.id, jobs.attempts
), a AS (
    UPDATE outbox.attempts SET finished_at = (SELECT at FROM ts), outcome = 'succeeded'
    FROM j WHERE attempts.job_id = j.id AND attempts.attempt = j.attempts
), l AS (
    DELETE FROM outbox.leases USING j WHERE leases.job_id = j.id
)
SELECT id, attempts FROM j
""")


# Failure with attempts left: record it, schedule the retry through the outbox (durable back-off).
# The job's pending row may still exist: start_attempt does not wait for the relay that published
# the attempt's message, so that relay may hold the row (and delete it when its batch commits).
# Lock it first, in the relay's order (pending, then jobs), waiting out that batch; then upsert.
RETRY = Statement("ledger.retry", """
WITH ts AS MATERIALIZED (SELECT clock_timestamp() AS at),  -- one instant for every row of the transition
locked AS MATERIALIZED (SELECT job_id FROM outbox.pending WHERE job_id = :job_id FOR UPDATE),
j AS (
    UPDATE outbox.jobs
    SET status = 'retrying', available_at = (SELECT at FROM ts) + make_interval(secs => CAST(:delay_s AS float8)),
        last_error = :error_message
    WHERE id = :job_id AND attempts = :attempt AND status = 'running'
      AND (SELECT count(*) FROM locked) >= 0  -- evaluated before the job row is locked
    RETURNING id, tier, priority, available_at
), a AS (
    UPDATE outbox.attempts
    SET finished_at = (SELECT at FROM ts), outcome = :outcome, error_type = :error_type,
        error_message = :error_message, traceback = :traceback
    WHERE job_id = :job_id AND attempt = :attempt AND EXISTS (SELECT 1 FROM j)
), l AS (
    DELETE FROM outbox.leases WHERE job_id = :job_id AND EXISTS (SELECT 1 FROM j)
), p AS (
    INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
    SELECT j.id, j.tier, COALESCE(t.weight, 5), j.priority, j.available_at
    FROM j LEFT JOIN outbox.tiers t ON t.name = j.tier
    ON CONFLICT (job_id) DO UPDATE SET available_at = EXCLUDED.available_at
)
SELECT count(*) FROM j
""")


# Final failure: mark dead and copy everything a redrive needs into dead_letters.
DEAD = Statement("ledger.dead", """
WITH ts AS MATERIALIZED (SELECT clock_timestamp() AS at),  -- one instant for every row of the transition
j AS (
    UPDATE outbox.jobs SET status = 'dead', finished_at = (SELECT at FROM ts), last_error = :error_message
    WHERE id = :job_id AND attempts = :attempt AND status = 'running'
    RETURNING *
), a AS (
    UPDATE outbox.attempts
    SET finished_at = (SELECT at FROM ts), outcome = :outcome, error_type = :error_type,
        error_message = :error_message, traceback = :traceback
    WHERE job_id = :job_id AND attempt = :attempt AND EXISTS (SELECT 1 FROM j)
), l AS (
    DELETE FROM outbox.leases WHERE job_id = :job_id AND EXISTS (SELECT 1 FROM j)
), d AS (
    INSERT INTO outbox.dead_letters (job_id, task, tier, priority, payload, headers, reason, error_type,
                                     error_message, traceback, attempts, enqueued_at, redrive_count, failed_at)
    SELECT id, task, tier, priority, payload, headers, :reason, :error_type, :error_message, :traceback,
           attempts, enqueued_at, redrive_count, finished_at
    FROM j
    ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO NOTHING
)
SELECT count(*) FROM j
""")


# Due pending jobs visible to the caller's transaction, for outbox.testing.drain (no broker).
TESTING_DUE = Statement("testing.due", """
SELECT p.job_id, j.task, j.tier, j.payload::text
FROM outbox.pending AS p JOIN outbox.jobs AS j ON j.id = p.job_id
WHERE p.available_at <= clock_timestamp() AND NOT (p.job_id = ANY(CAST(:skip AS uuid[])))
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
