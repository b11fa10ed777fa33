"""The outbox schema: tiers, jobs, pending, attempts, leases, dead letters, redrive functions.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = """
CREATE SCHEMA IF NOT EXISTS outbox;

CREATE TABLE outbox.tiers (
    name    text     NOT NULL,
    weight  smallint NOT NULL,
    slo_s   double precision,
    queue   text     NOT NULL,
    pool    text     NOT NULL,
    CONSTRAINT pk_tiers PRIMARY KEY (name)
);
COMMENT ON TABLE outbox.tiers IS 'Mirror of the tier topology, written by tierbox migrate and the relay; read by SQL functions and views.';

INSERT INTO outbox.tiers (name, weight, slo_s, queue, pool) VALUES
    ('critical', 10, 5, 'critical', 'urgent'),
    ('high', 8, 30, 'high', 'urgent'),
    ('normal', 5, 120, 'normal', 'normal'),
    ('low', 3, 600, 'low', 'deferred'),
    ('bulk', 1, NULL, 'bulk', 'deferred'),
    ('calls', 9, 30, 'calls', 'calls');

CREATE TABLE outbox.jobs (
    id              uuid        NOT NULL,
    task            text        NOT NULL,
    tier            text        NOT NULL,
    priority        smallint    NOT NULL,
    payload         jsonb       NOT NULL,
    headers         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key text,
    status          text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    max_retries     integer     NOT NULL,
    available_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    enqueued_at     timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    last_error      text,
    redrive_of      uuid,
    redrive_count   integer     NOT NULL DEFAULT 0,
    CONSTRAINT pk_jobs PRIMARY KEY (id),
    CONSTRAINT ck_jobs_status CHECK (status IN ('pending', 'published', 'running', 'retrying', 'succeeded',
                                                'dead', 'discarded', 'expired')),
    CONSTRAINT ck_jobs_attempts CHECK (attempts >= 0 AND max_retries >= 0),
    CONSTRAINT ck_jobs_finished CHECK ((finished_at IS NOT NULL) = (status IN ('succeeded', 'dead', 'discarded',
                                                                                'expired'))),
    CONSTRAINT ck_jobs_running_started CHECK (status <> 'running' OR started_at IS NOT NULL),
    CONSTRAINT ck_jobs_priority CHECK (priority BETWEEN 0 AND 255)
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
COMMENT ON TABLE outbox.jobs IS 'One row per job: the ledger, audit record and idempotency index.';
CREATE UNIQUE INDEX uq_jobs_idempotency_key ON outbox.jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX ix_jobs_finished_at ON outbox.jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX ix_jobs_enqueued_at ON outbox.jobs (enqueued_at);

CREATE TABLE outbox.pending (
    job_id             uuid        NOT NULL,
    tier               text        NOT NULL,
    weight             smallint    NOT NULL,
    priority           smallint    NOT NULL,
    available_at       timestamptz NOT NULL,
    publish_attempts   integer     NOT NULL DEFAULT 0,
    last_publish_error text,
    CONSTRAINT pk_pending PRIMARY KEY (job_id),
    CONSTRAINT fk_pending_job_id_jobs FOREIGN KEY (job_id) REFERENCES outbox.jobs (id) ON DELETE CASCADE
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 500, autovacuum_vacuum_cost_delay = 0);
COMMENT ON TABLE outbox.pending IS 'Jobs due to be published (the relay''s hot path): inserted on enqueue/retry, deleted once confirmed.';
CREATE INDEX ix_pending_claim_order ON outbox.pending (weight DESC, priority DESC, available_at);
CREATE INDEX ix_pending_available_at ON outbox.pending (available_at);

CREATE TABLE outbox.attempts (
    job_id        uuid        NOT NULL,
    attempt       integer     NOT NULL,
    worker_id     text        NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    outcome       text,
    error_type    text,
    error_message text,
    traceback     text,
    CONSTRAINT pk_attempts PRIMARY KEY (job_id, attempt),
    CONSTRAINT fk_attempts_job_id_jobs FOREIGN KEY (job_id) REFERENCES outbox.jobs (id) ON DELETE CASCADE,
    CONSTRAINT ck_attempts_outcome CHECK (outcome IS NULL OR outcome IN ('succeeded', 'failed', 'timeout', 'crashed')),
    CONSTRAINT ck_attempts_finished CHECK ((outcome IS NULL) = (finished_at IS NULL))
);
COMMENT ON TABLE outbox.attempts IS 'One row per execution attempt, written before the handler starts.';

CREATE TABLE outbox.leases (
    job_id      uuid        NOT NULL,
    attempt     integer     NOT NULL,
    worker_id   text        NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    acked_early boolean     NOT NULL DEFAULT false,
    CONSTRAINT pk_leases PRIMARY KEY (job_id),
    CONSTRAINT fk_leases_job_id_jobs FOREIGN KEY (job_id) REFERENCES outbox.jobs (id) ON DELETE CASCADE
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 500);
COMMENT ON TABLE outbox.leases IS 'One row per running job: who runs it and until when; the reaper recovers expired ones.';
CREATE INDEX ix_leases_expires_at ON outbox.leases (expires_at);
CREATE INDEX ix_leases_worker_id ON outbox.leases (worker_id);

CREATE TABLE outbox.dead_letters (
    id             bigint      GENERATED BY DEFAULT AS IDENTITY,
    job_id         uuid,
    task           text,
    tier           text        NOT NULL,
    priority       smallint,
    payload        jsonb,
    headers        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    raw_body       bytea,
    reason         text        NOT NULL,
    error_type     text,
    error_message  text,
    traceback      text,
    attempts       integer     NOT NULL DEFAULT 0,
    enqueued_at    timestamptz,
    failed_at      timestamptz NOT NULL DEFAULT now(),
    redriven_at    timestamptz,
    redriven_by    text,
    redrive_reason text,
    redrive_count  integer     NOT NULL DEFAULT 0,
    new_job_id     uuid,
    discarded_at   timestamptz,
    discarded_by   text,
    discard_reason text,
    CONSTRAINT pk_dead_letters PRIMARY KEY (id),
    CONSTRAINT ck_dead_letters_reason CHECK (reason IN ('failed', 'non_retryable', 'timeout', 'crashed',
        'undecodable', 'unknown_task', 'unknown_job', 'rejected', 'maxlen', 'expired', 'delivery_limit')),
    CONSTRAINT ck_dead_letters_redriven_or_discarded CHECK (redriven_at IS NULL OR discarded_at IS NULL),
    CONSTRAINT ck_dead_letters_redrive_lineage CHECK ((redriven_at IS NULL) = (new_job_id IS NULL))
);
COMMENT ON TABLE outbox.dead_letters IS 'Every failure in one table: jobs that ran out of attempts and messages that could not be run.';
CREATE UNIQUE INDEX uq_dead_letters_job_id ON outbox.dead_letters (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX ix_dead_letters_failed_at ON outbox.dead_letters (failed_at);
CREATE INDEX ix_dead_letters_tier_failed_at ON outbox.dead_letters (tier, failed_at);
"""

FUNCTIONS = r"""
-- Wake the relay when work becomes due. One NOTIFY per statement, and Postgres
-- folds identical notifications of one transaction into one.
CREATE FUNCTION outbox.notify_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tierbox_pending', '');
    RETURN NULL;
END $$;
CREATE TRIGGER notify_pending AFTER INSERT ON outbox.pending
    FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_pending();

-- Redrive one dead letter as a new job (same task, payload, headers); returns the new job id.
-- The guard is the UPDATE's WHERE clause: of two racing callers exactly one wins.
CREATE FUNCTION outbox.redrive(p_job_id uuid, p_tier text DEFAULT NULL, p_by text DEFAULT current_user,
                               p_reason text DEFAULT NULL) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    dl outbox.dead_letters%ROWTYPE;
    new_id uuid := gen_random_uuid();
    target text;
    w smallint;
    retries integer;
BEGIN
    SELECT * INTO dl FROM outbox.dead_letters WHERE job_id = p_job_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no dead letter for job %', p_job_id USING ERRCODE = 'TB404';
    END IF;
    IF dl.task IS NULL OR dl.payload IS NULL THEN
        RAISE EXCEPTION 'dead letter of job % (reason %) holds no runnable job; discard it instead',
            p_job_id, dl.reason USING ERRCODE = 'TB001';
    END IF;
    target := COALESCE(p_tier, dl.tier);
    SELECT weight INTO w FROM outbox.tiers WHERE name = target;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tier % is not in outbox.tiers', target USING ERRCODE = 'TB001';
    END IF;
    UPDATE outbox.dead_letters
       SET redriven_at = now(), redriven_by = p_by, redrive_reason = p_reason, new_job_id = new_id
     WHERE id = dl.id AND redriven_at IS NULL AND discarded_at IS NULL;
    IF NOT FOUND THEN
        SELECT * INTO dl FROM outbox.dead_letters WHERE id = dl.id;
        IF dl.discarded_at IS NOT NULL THEN
            RAISE EXCEPTION 'job % was discarded at % by %; it cannot be redriven',
                p_job_id, dl.discarded_at, dl.discarded_by USING ERRCODE = 'TB001';
        END IF;
        RAISE EXCEPTION 'job % was already redriven at % by % as job %',
            p_job_id, dl.redriven_at, dl.redriven_by, dl.new_job_id USING ERRCODE = 'TB001';
    END IF;
    SELECT max_retries INTO retries FROM outbox.jobs WHERE id = p_job_id;
    INSERT INTO outbox.jobs (id, task, tier, priority, payload, headers, max_retries, redrive_of, redrive_count)
    VALUES (new_id, dl.task, target,
            CASE WHEN target = dl.tier THEN COALESCE(dl.priority, w) ELSE w END,
            dl.payload, dl.headers, COALESCE(retries, 3), p_job_id, dl.redrive_count + 1);
    INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
    SELECT id, tier, w, priority, available_at FROM outbox.jobs WHERE id = new_id;
    RETURN new_id;
END $$;

-- Redrive every matching dead letter not yet redriven or discarded (oldest first, at most p_limit).
CREATE FUNCTION outbox.redrive_where(p_task text DEFAULT NULL, p_tier text DEFAULT NULL,
                                     p_reason text DEFAULT NULL, p_since timestamptz DEFAULT NULL,
                                     p_until timestamptz DEFAULT NULL, p_target_tier text DEFAULT NULL,
                                     p_by text DEFAULT current_user, p_note text DEFAULT NULL,
                                     p_limit integer DEFAULT 1000)
RETURNS TABLE (job_id uuid, new_job_id uuid)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    candidate uuid;
BEGIN
    FOR candidate IN
        SELECT d.job_id FROM outbox.dead_letters d
        WHERE d.job_id IS NOT NULL AND d.task IS NOT NULL
          AND d.redriven_at IS NULL AND d.discarded_at IS NULL
          AND (p_task IS NULL OR d.task = p_task)
          AND (p_tier IS NULL OR d.tier = p_tier)
          AND (p_reason IS NULL OR d.reason = p_reason)
          AND (p_since IS NULL OR d.failed_at >= p_since)
          AND (p_until IS NULL OR d.failed_at < p_until)
        ORDER BY d.failed_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    LOOP
        job_id := candidate;
        new_job_id := outbox.redrive(candidate, p_target_tier, p_by, p_note);
        RETURN NEXT;
    END LOOP;
END $$;

-- Begin an attempt for a delivered message, or say why not. One round trip per delivery.
-- Locks the job's pending row first (waiting out a relay that is mid-batch on it, in the
-- same lock order as the relay), then the job row. Decisions:
--   run       attempt counted, lease taken, attempts row written: run the handler
--   finished  already succeeded/dead/discarded/expired: ack, do not run (a duplicate)
--   running   another worker holds a live lease: ack, do not run; the lease protects the job
--   not_due   a stale copy of an attempt whose retry is scheduled later: ack, do not run
--   expired   past expires_at: marked expired, ack, do not run
--   unknown   no such job in the ledger
CREATE FUNCTION outbox.start_attempt(p_job_id uuid, p_worker text, p_lease_s double precision,
                                     p_acked_early boolean DEFAULT false)
RETURNS TABLE (decision text, attempt integer, max_retries integer, enqueued_at timestamptz, headers jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    j outbox.jobs%ROWTYPE;
BEGIN
    PERFORM 1 FROM outbox.pending p WHERE p.job_id = p_job_id FOR UPDATE;
    SELECT * INTO j FROM outbox.jobs WHERE id = p_job_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown'::text, 0, 0, NULL::timestamptz, NULL::jsonb;
        RETURN;
    END IF;
    IF j.status IN ('succeeded', 'dead', 'discarded', 'expired') THEN
        RETURN QUERY SELECT 'finished'::text, j.attempts, j.max_retries, j.enqueued_at, j.headers;
        RETURN;
    END IF;
    IF j.status = 'running' THEN
        RETURN QUERY SELECT 'running'::text, j.attempts, j.max_retries, j.enqueued_at, j.headers;
        RETURN;
    END IF;
    IF j.status = 'retrying' AND j.available_at > now() THEN
        RETURN QUERY SELECT 'not_due'::text, j.attempts, j.max_retries, j.enqueued_at, j.headers;
        RETURN;
    END IF;
    DELETE FROM outbox.pending p WHERE p.job_id = p_job_id;  -- a stale republish candidate
    IF j.expires_at IS NOT NULL AND j.expires_at <= now() THEN
        UPDATE outbox.jobs SET status = 'expired', finished_at = now(), last_error = 'expired before it started'
         WHERE id = p_job_id;
        RETURN QUERY SELECT 'expired'::text, j.attempts, j.max_retries, j.enqueued_at, j.headers;
        RETURN;
    END IF;
    UPDATE outbox.jobs SET status = 'running', attempts = j.attempts + 1, started_at = now()
     WHERE id = p_job_id;
    INSERT INTO outbox.attempts (job_id, attempt, worker_id, started_at)
    VALUES (p_job_id, j.attempts + 1, p_worker, now());
    INSERT INTO outbox.leases (job_id, attempt, worker_id, expires_at, acked_early)
    VALUES (p_job_id, j.attempts + 1, p_worker, now() + make_interval(secs => p_lease_s), p_acked_early);
    RETURN QUERY SELECT 'run'::text, j.attempts + 1, j.max_retries, j.enqueued_at, j.headers;
END $$;

-- Recover jobs whose lease expired (their worker died or lost Postgres): the attempt is
-- recorded as crashed and the job is due again at once, or dead-lettered (reason crashed)
-- when its attempts are spent. Safe to run in every worker at once (SKIP LOCKED).
CREATE FUNCTION outbox.reap(p_limit integer DEFAULT 100)
RETURNS TABLE (job_id uuid, decision text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    l outbox.leases%ROWTYPE;
    j outbox.jobs%ROWTYPE;
    w smallint;
    msg text := 'lease expired: the worker died or lost its database connection';
BEGIN
    FOR l IN
        SELECT * FROM outbox.leases le WHERE le.expires_at < now()
        ORDER BY le.expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    LOOP
        DELETE FROM outbox.leases le WHERE le.job_id = l.job_id;
        UPDATE outbox.attempts a
           SET finished_at = now(), outcome = 'crashed', error_type = 'WorkerLost', error_message = msg
         WHERE a.job_id = l.job_id AND a.attempt = l.attempt AND a.outcome IS NULL;
        SELECT * INTO j FROM outbox.jobs WHERE id = l.job_id AND attempts = l.attempt AND status = 'running'
           FOR UPDATE;
        CONTINUE WHEN NOT FOUND;
        IF j.attempts >= j.max_retries + 1 THEN
            UPDATE outbox.jobs SET status = 'dead', finished_at = now(), last_error = msg WHERE id = j.id;
            INSERT INTO outbox.dead_letters (job_id, task, tier, priority, payload, headers, reason, error_type,
                                             error_message, attempts, enqueued_at, redrive_count)
            VALUES (j.id, j.task, j.tier, j.priority, j.payload, j.headers, 'crashed', 'WorkerLost', msg,
                    j.attempts, j.enqueued_at, j.redrive_count)
            ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO NOTHING;
            job_id := j.id; decision := 'dead';
        ELSE
            SELECT t.weight INTO w FROM outbox.tiers t WHERE t.name = j.tier;
            UPDATE outbox.jobs SET status = 'retrying', available_at = now(), last_error = msg WHERE id = j.id;
            INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
            VALUES (j.id, j.tier, COALESCE(w, 5), j.priority, now())
            ON CONFLICT ON CONSTRAINT pk_pending DO NOTHING;
            job_id := j.id; decision := 'retry';
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;

-- Discard one dead letter: kept for audit, never redriven.
CREATE FUNCTION outbox.discard(p_job_id uuid, p_by text DEFAULT current_user, p_reason text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    dl outbox.dead_letters%ROWTYPE;
BEGIN
    UPDATE outbox.dead_letters
       SET discarded_at = now(), discarded_by = p_by, discard_reason = p_reason
     WHERE job_id = p_job_id AND redriven_at IS NULL AND discarded_at IS NULL;
    IF NOT FOUND THEN
        SELECT * INTO dl FROM outbox.dead_letters WHERE job_id = p_job_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no dead letter for job %', p_job_id USING ERRCODE = 'TB404';
        END IF;
        RAISE EXCEPTION 'job % was already %', p_job_id,
            CASE WHEN dl.discarded_at IS NOT NULL THEN 'discarded' ELSE 'redriven' END USING ERRCODE = 'TB001';
    END IF;
    UPDATE outbox.jobs SET status = 'discarded' WHERE id = p_job_id AND status = 'dead';
END $$;
"""



def upgrade() -> None:
    """Create the schema, its tables, indexes, trigger and functions."""
    op.execute(TABLES)
    op.execute(FUNCTIONS)


def downgrade() -> None:
    """Drop everything the outbox schema holds except alembic's version table."""
    for name in ("start_attempt(uuid, text, double precision, boolean)", "reap(integer)",
                 "redrive_where(text, text, text, timestamptz, timestamptz, text, text, text, integer)",
                 "redrive(uuid, text, text, text)", "discard(uuid, text, text)"):
        op.execute(f"DROP FUNCTION outbox.{name}")
    for table in ("dead_letters", "leases", "attempts", "pending", "jobs", "tiers"):
        op.execute(f"DROP TABLE outbox.{table}")
    op.execute("DROP FUNCTION outbox.notify_pending()")
