-- The current definition of every function and trigger in schema outbox, as `alembic upgrade head`
-- leaves them (tierbox.migrations). The migrations (migrations/versions/) are their history: how a
-- database gets here. This file is what is there now, the place to read them.
--
-- tests/ledger/test_functions_sql.py compares this file with pg_get_functiondef/pg_get_triggerdef on a
-- migrated database, so a migration that changes a function must change it here too (and the other
-- way round: editing a body here changes nothing in a database until a migration says so).
--
-- Every statement is CREATE OR REPLACE, so the file can be run on a migrated database (PostgreSQL 14+)
-- without changing anything. Function bodies are stored verbatim by Postgres: keep them byte for byte.

-- A UUIDv7 (RFC 9562) for now: 48-bit Unix milliseconds (clock_timestamp), version 7, variant 10,
-- the rest random (gen_random_uuid's bytes): the job ids SQL makes (redrive, webhook delivery), in the
-- same day partition as the Python-made ones (outbox._ids.new_job_id).
-- Created by 0017; unchanged since.
CREATE OR REPLACE FUNCTION outbox.uuid7() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                                      PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                                                        FROM 3)
                                      FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;

-- Wake the relay when urgent work becomes due: one NOTIFY per INSERT statement on outbox.pending,
-- sent only if the statement inserted a row of a tier with tiers.notify (or one the mirror does not
-- know yet). Other rows wait for the relay's main-lane poll.
-- Created by 0001; last changed by 0004 (notify only for urgent tiers, via a transition table).
CREATE OR REPLACE FUNCTION outbox.notify_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted AS i LEFT JOIN outbox.tiers AS t ON t.name = i.tier
               WHERE t.notify IS DISTINCT FROM false) THEN
        PERFORM pg_notify('tierbox_pending', '');
    END IF;
    RETURN NULL;
END $$;

-- The trigger that calls it, once per statement, with the inserted rows as the table `inserted`.
-- Created by 0001; last changed by 0004 (REFERENCING NEW TABLE AS inserted).
CREATE OR REPLACE TRIGGER notify_pending AFTER INSERT ON outbox.pending
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_pending();

-- Begin an attempt for a delivered message, or say why not (one round trip per delivery; the
-- worker's START_ATTEMPT and START_MANY call it). Decisions: run, finished, running, not_due, expired, unknown.
-- Created by 0001; 0005 stopped it waiting for a pending row a relay holds; last changed by 0006
-- (p_token: the same delivery asking again after a lost reply resumes its attempt).
CREATE OR REPLACE FUNCTION outbox.start_attempt(p_job_id uuid, p_worker text, p_lease_s double precision,
                                                p_acked_early boolean DEFAULT false, p_token uuid DEFAULT NULL)
RETURNS TABLE (decision text, attempt integer, max_retries integer, enqueued_at timestamptz, headers jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    j outbox.jobs%ROWTYPE;
BEGIN
    -- the pending row is not awaited: a relay may hold it until its batch commits
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
        -- The same delivery asking again: its start committed but the reply was lost on the way.
        -- The attempt is its own to run (same attempt number, lease renewed), not a duplicate.
        IF p_token IS NOT NULL THEN
            UPDATE outbox.leases SET expires_at = now() + make_interval(secs => p_lease_s)
             WHERE job_id = p_job_id AND start_token = p_token AND attempt = j.attempts;
            IF FOUND THEN
                RETURN QUERY SELECT 'run'::text, j.attempts, j.max_retries, j.enqueued_at, j.headers;
                RETURN;
            END IF;
        END IF;
        RETURN QUERY SELECT 'running'::text, j.attempts, j.max_retries, j.enqueued_at, j.headers;
        RETURN;
    END IF;
    IF j.status = 'retrying' AND j.available_at > now() THEN
        RETURN QUERY SELECT 'not_due'::text, j.attempts, j.max_retries, j.enqueued_at, j.headers;
        RETURN;
    END IF;
    -- a stale republish candidate; one a relay holds is its to delete (MARK_PUBLISHED) or republish
    DELETE FROM outbox.pending p
     WHERE p.job_id IN (SELECT q.job_id FROM outbox.pending q WHERE q.job_id = p_job_id FOR UPDATE SKIP LOCKED);
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
    INSERT INTO outbox.leases (job_id, attempt, worker_id, expires_at, acked_early, start_token)
    VALUES (p_job_id, j.attempts + 1, p_worker, now() + make_interval(secs => p_lease_s), p_acked_early, p_token);
    RETURN QUERY SELECT 'run'::text, j.attempts + 1, j.max_retries, j.enqueued_at, j.headers;
END $$;

-- The failure group of one failure (docs/triage.md), upserted: counts of failed attempts and dead
-- letters, first and last seen, the tasks, tiers, outcomes and reasons seen (20 each at most), up to
-- 10 sample jobs (newest first, each once). A resolved group that fails again is reopened and stamped
-- regressed_at; an ignored one stays ignored. The failure statements (RETRY, DEAD,
-- DEAD_WITHOUT_ATTEMPT, DEAD_MESSAGE in outbox/_transitions.py) and outbox.reap call it, in the
-- transaction that records the failure. Returns 1, or 0 for a failure without a fingerprint.
-- Created by 0010 (0009 wrote the same upsert inline, twice); unchanged since.

CREATE OR REPLACE FUNCTION outbox.record_failure_group(p_fingerprint text, p_error_type text, p_message text,
                                                       p_sample_message text, p_frames text[], p_task text,
                                                       p_tier text, p_outcome text, p_reason text,
                                                       p_attempts integer, p_dead integer, p_job_id uuid,
                                                       p_at timestamp with time zone)
RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    IF p_fingerprint IS NULL THEN  -- a failure recorded by a caller that computes none
        RETURN 0;
    END IF;
    INSERT INTO outbox.failure_groups AS fg (fingerprint, error_type, message, sample_message, frames, tasks, tiers,
                                             outcomes, reasons, failed_attempts, dead_letters, first_seen, last_seen,
                                             sample_job_ids)
    VALUES (p_fingerprint, p_error_type, p_message, p_sample_message, COALESCE(p_frames, '{}'::text[]),
            array_remove(ARRAY[p_task], NULL), ARRAY[p_tier], array_remove(ARRAY[p_outcome], NULL),
            array_remove(ARRAY[p_reason], NULL), p_attempts, p_dead, p_at, p_at, array_remove(ARRAY[p_job_id], NULL))
    ON CONFLICT (fingerprint) DO UPDATE SET
        failed_attempts = fg.failed_attempts + EXCLUDED.failed_attempts,
        dead_letters = fg.dead_letters + EXCLUDED.dead_letters,
        last_seen = EXCLUDED.last_seen,
        sample_message = EXCLUDED.sample_message,
        tasks = CASE WHEN EXCLUDED.tasks <@ fg.tasks THEN fg.tasks ELSE (fg.tasks || EXCLUDED.tasks)[1:20] END,
        tiers = CASE WHEN EXCLUDED.tiers <@ fg.tiers THEN fg.tiers ELSE (fg.tiers || EXCLUDED.tiers)[1:20] END,
        outcomes = CASE WHEN EXCLUDED.outcomes <@ fg.outcomes THEN fg.outcomes
                        ELSE (fg.outcomes || EXCLUDED.outcomes)[1:20] END,
        reasons = CASE WHEN EXCLUDED.reasons <@ fg.reasons THEN fg.reasons
                       ELSE (fg.reasons || EXCLUDED.reasons)[1:20] END,
        sample_job_ids = CASE WHEN EXCLUDED.sample_job_ids <@ fg.sample_job_ids THEN fg.sample_job_ids
                              ELSE (EXCLUDED.sample_job_ids || fg.sample_job_ids)[1:10] END,
        status = CASE WHEN fg.status = 'resolved' THEN 'open' ELSE fg.status END,
        regressed_at = CASE WHEN fg.status = 'resolved' THEN EXCLUDED.last_seen ELSE fg.regressed_at END;
    RETURN 1;
END $$;

-- Recover jobs whose lease expired (their worker died or lost Postgres): the attempt is recorded
-- as crashed and the job is due again at once, or dead-lettered (reason crashed) when its attempts
-- are spent. Safe to run in every worker at once (SKIP LOCKED); the worker's reaper calls it.
-- Created by 0001; changed by 0005 (skips rows a relay or a finishing worker holds, upserts
-- pending, takes leases in job id order); changed by 0009 (records the crash's fingerprint and
-- upserts its failure group, as RETRY and DEAD do); last changed by 0010 (the upsert is
-- outbox.record_failure_group's, no longer a copy of its own).
CREATE OR REPLACE FUNCTION outbox.reap(p_limit integer DEFAULT 100)
RETURNS TABLE (job_id uuid, decision text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    l outbox.leases%ROWTYPE;
    j outbox.jobs%ROWTYPE;
    w smallint;
    msg text := 'lease expired: the worker died or lost its database connection';
    fp text := '2ef6b41f05b6a6fc';  -- ErrorInfo('WorkerLost', msg)'s fingerprint
    n integer;
BEGIN
    FOR l IN
        SELECT * FROM (
            SELECT * FROM outbox.leases le WHERE le.expires_at < now()
            ORDER BY le.expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED
        ) AS expired ORDER BY expired.job_id  -- job rows in id order, as every multi-row statement
    LOOP
        -- A relay mid-batch on this job's pending row: do not wait for it while holding other jobs'
        -- locks; the lease stays expired and the next round takes it.
        PERFORM 1 FROM outbox.pending p WHERE p.job_id = l.job_id;
        IF FOUND THEN
            PERFORM 1 FROM outbox.pending p WHERE p.job_id = l.job_id FOR UPDATE SKIP LOCKED;
            CONTINUE WHEN NOT FOUND;
        END IF;
        -- The job row before the lease's neighbours (the order every finishing statement uses: job,
        -- attempts, lease), and never waited for: a worker finishing this job right now holds it.
        SELECT * INTO j FROM outbox.jobs WHERE id = l.job_id FOR NO KEY UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        DELETE FROM outbox.leases le WHERE le.job_id = l.job_id;
        UPDATE outbox.attempts a
           SET finished_at = now(), outcome = 'crashed', error_type = 'WorkerLost', error_message = msg,
               fingerprint = fp
         WHERE a.job_id = l.job_id AND a.attempt = l.attempt AND a.outcome IS NULL;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN  -- one crashed attempt for its failure group
            PERFORM outbox.record_failure_group(fp, 'WorkerLost', msg, msg, '{}'::text[], j.task, j.tier,
                                                'crashed', NULL, 1, 0, j.id, now());
        END IF;
        CONTINUE WHEN NOT (j.attempts = l.attempt AND j.status = 'running');
        IF j.attempts >= j.max_retries + 1 THEN
            UPDATE outbox.jobs SET status = 'dead', finished_at = now(), last_error = msg WHERE id = j.id;
            INSERT INTO outbox.dead_letters (job_id, task, tier, priority, payload, headers, reason, error_type,
                                             error_message, attempts, enqueued_at, redrive_count, fingerprint)
            VALUES (j.id, j.task, j.tier, j.priority, j.payload, j.headers, 'crashed', 'WorkerLost', msg,
                    j.attempts, j.enqueued_at, j.redrive_count, fp)
            ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO NOTHING;
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n > 0 THEN  -- one dead letter for its failure group
                PERFORM outbox.record_failure_group(fp, 'WorkerLost', msg, msg, '{}'::text[], j.task,
                                                    j.tier, NULL, 'crashed', 0, 1, j.id, now());
            END IF;
            job_id := j.id; decision := 'dead';
        ELSE
            SELECT t.weight INTO w FROM outbox.tiers t WHERE t.name = j.tier;
            UPDATE outbox.jobs SET status = 'retrying', available_at = now(), last_error = msg WHERE id = j.id;
            INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
            VALUES (j.id, j.tier, COALESCE(w, 5), j.priority, now())
            ON CONFLICT ON CONSTRAINT pk_pending DO UPDATE SET available_at = EXCLUDED.available_at;
            job_id := j.id; decision := 'retry';
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;

-- Redrive one dead letter as a new job (same task, payload, headers); returns the new job id.
-- Raises TB404 (no dead letter) or TB001 (refused). outbox.redrive() in Python calls it.
-- Created by 0001; last changed by 0017 (the new job's id is a UUIDv7: outbox.uuid7()).
CREATE OR REPLACE FUNCTION outbox.redrive(p_job_id uuid, p_tier text DEFAULT NULL, p_by text DEFAULT current_user,
                                          p_reason text DEFAULT NULL) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    dl outbox.dead_letters%ROWTYPE;
    new_id uuid := outbox.uuid7();
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

-- Redrive every matching dead letter not yet redriven or discarded (oldest first, at most p_limit);
-- returns (job_id, new_job_id) per redrive. The operator API and CLI call it (REDRIVE_WHERE).
-- Created by 0001; unchanged since.
CREATE OR REPLACE FUNCTION outbox.redrive_where(p_task text DEFAULT NULL, p_tier text DEFAULT NULL,
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

-- Discard one dead letter: kept for audit, never redriven; a dead job becomes discarded.
-- Raises TB404 (no dead letter) or TB001 (already redriven or discarded).
-- Created by 0001; unchanged since.
CREATE OR REPLACE FUNCTION outbox.discard(p_job_id uuid, p_by text DEFAULT current_user, p_reason text DEFAULT NULL)
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

-- A failure group's open dead letters counted by task, tier and whether outbox.redrive can run them
-- (a raw broker message holds no job: it can only be discarded). The dry run of a group redrive.
-- Created by 0010; unchanged since.

CREATE OR REPLACE FUNCTION outbox.failure_group_open(p_fingerprint text)
RETURNS TABLE (task text, tier text, redrivable boolean, open_count bigint)
LANGUAGE sql STABLE AS $$
SELECT d.task, d.tier, (d.job_id IS NOT NULL AND d.task IS NOT NULL AND d.payload IS NOT NULL), count(*)
FROM outbox.dead_letters d
WHERE d.fingerprint = p_fingerprint AND d.redriven_at IS NULL AND d.discarded_at IS NULL
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
$$;

-- Redrive up to p_limit open dead letters of a failure group (oldest first, SKIP LOCKED) through
-- outbox.redrive; returns how many were redriven and how many redrivable ones remain, and writes one
-- admin_audit row (redrive_group) naming the operator and the fingerprint. The caller paces by calling
-- it again, each call its own transaction. Raises TB404 (no such group) or TB001 (bad limit, or a
-- refusal of outbox.redrive, which undoes the batch).
-- Created by 0010; unchanged since.

CREATE OR REPLACE FUNCTION outbox.redrive_group(p_fingerprint text, p_limit integer DEFAULT 100,
                                                p_tier text DEFAULT NULL, p_by text DEFAULT current_user,
                                                p_note text DEFAULT NULL, p_actor_kind text DEFAULT 'os_user',
                                                p_client_addr text DEFAULT NULL)
RETURNS TABLE (redriven integer, remaining bigint, job_ids uuid[], new_job_ids uuid[])
LANGUAGE plpgsql AS $$
DECLARE
    v_candidate uuid;
    v_done uuid[] := '{}'::uuid[];
    v_made uuid[] := '{}'::uuid[];
    v_left bigint;
BEGIN
    PERFORM 1 FROM outbox.failure_groups g WHERE g.fingerprint = p_fingerprint;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no failure group %', p_fingerprint USING ERRCODE = 'TB404';
    END IF;
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'limit must be at least 1, not %', p_limit USING ERRCODE = 'TB001';
    END IF;
    -- Oldest first; rows another group redrive holds are skipped, never redriven twice.
    FOR v_candidate IN
        SELECT d.job_id FROM outbox.dead_letters d
        WHERE d.fingerprint = p_fingerprint AND d.redriven_at IS NULL AND d.discarded_at IS NULL
          AND d.job_id IS NOT NULL AND d.task IS NOT NULL AND d.payload IS NOT NULL
        ORDER BY d.failed_at, d.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    LOOP
        v_done := v_done || v_candidate;
        v_made := v_made || outbox.redrive(v_candidate, p_tier, p_by, p_note);
    END LOOP;
    SELECT count(*) INTO v_left FROM outbox.dead_letters d
    WHERE d.fingerprint = p_fingerprint AND d.redriven_at IS NULL AND d.discarded_at IS NULL
      AND d.job_id IS NOT NULL AND d.task IS NOT NULL AND d.payload IS NOT NULL;
    IF cardinality(v_done) > 0 THEN
        INSERT INTO outbox.admin_audit (actor, actor_kind, action, job_ids, client_addr, result, detail)
        VALUES (p_by, p_actor_kind, 'redrive_group', v_done, p_client_addr, 'ok',
                jsonb_build_object('fingerprint', p_fingerprint, 'target_tier', p_tier, 'reason', p_note,
                                   'new_job_ids', to_jsonb(v_made), 'remaining', v_left));
    END IF;
    RETURN QUERY SELECT cardinality(v_done), v_left, v_done, v_made;
END $$;

-- Discard up to p_limit open dead letters of a failure group (raw messages too): kept for audit,
-- never redriven; their dead jobs become discarded, as outbox.discard leaves them. Audited
-- (discard_group). Raises TB404 (no such group) or TB001 (bad limit).
-- Created by 0010; unchanged since.

CREATE OR REPLACE FUNCTION outbox.discard_group(p_fingerprint text, p_limit integer DEFAULT 1000,
                                                p_by text DEFAULT current_user, p_reason text DEFAULT NULL,
                                                p_actor_kind text DEFAULT 'os_user', p_client_addr text DEFAULT NULL)
RETURNS TABLE (discarded integer, remaining bigint, job_ids uuid[])
LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
    v_ids uuid[];
    v_left bigint;
BEGIN
    PERFORM 1 FROM outbox.failure_groups g WHERE g.fingerprint = p_fingerprint;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no failure group %', p_fingerprint USING ERRCODE = 'TB404';
    END IF;
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'limit must be at least 1, not %', p_limit USING ERRCODE = 'TB001';
    END IF;
    WITH picked AS (
        SELECT d.id FROM outbox.dead_letters d
        WHERE d.fingerprint = p_fingerprint AND d.redriven_at IS NULL AND d.discarded_at IS NULL
        ORDER BY d.failed_at, d.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), marked AS (
        UPDATE outbox.dead_letters d SET discarded_at = now(), discarded_by = p_by, discard_reason = p_reason
        FROM picked WHERE d.id = picked.id
        RETURNING d.job_id
    )
    SELECT count(*), COALESCE(array_agg(m.job_id ORDER BY m.job_id) FILTER (WHERE m.job_id IS NOT NULL),
                              '{}'::uuid[])
    INTO v_count, v_ids FROM marked m;
    -- The dead jobs become discarded, as outbox.discard leaves them; their rows locked in id order first,
    -- as every multi-row statement locks jobs.
    PERFORM 1 FROM outbox.jobs j WHERE j.id = ANY(v_ids) ORDER BY j.id FOR NO KEY UPDATE;
    UPDATE outbox.jobs j SET status = 'discarded' WHERE j.id = ANY(v_ids) AND j.status = 'dead';
    SELECT count(*) INTO v_left FROM outbox.dead_letters d
    WHERE d.fingerprint = p_fingerprint AND d.redriven_at IS NULL AND d.discarded_at IS NULL;
    IF v_count > 0 THEN
        INSERT INTO outbox.admin_audit (actor, actor_kind, action, job_ids, client_addr, result, detail)
        VALUES (p_by, p_actor_kind, 'discard_group', v_ids, p_client_addr, 'ok',
                jsonb_build_object('fingerprint', p_fingerprint, 'reason', p_reason, 'discarded', v_count,
                                   'remaining', v_left));
    END IF;
    RETURN QUERY SELECT v_count, v_left, v_ids;
END $$;

-- Set a failure group's status (open, resolved, ignored) with who, when and why; resolved also
-- stamps resolved_at (a later failure reopens the group and stamps regressed_at). Audited
-- (group_status). Raises TB404 (no such group) or TB001 (bad status).
-- Created by 0010; unchanged since.

CREATE OR REPLACE FUNCTION outbox.set_failure_group_status(p_fingerprint text, p_status text,
                                                           p_by text DEFAULT current_user, p_note text DEFAULT NULL,
                                                           p_actor_kind text DEFAULT 'os_user',
                                                           p_client_addr text DEFAULT NULL)
RETURNS TABLE (previous text, status text, status_at timestamp with time zone)
LANGUAGE plpgsql AS $$
DECLARE
    v_old text;
    v_at timestamptz := clock_timestamp();
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('open', 'resolved', 'ignored') THEN
        RAISE EXCEPTION 'status must be open, resolved or ignored, not %', p_status USING ERRCODE = 'TB001';
    END IF;
    SELECT g.status INTO v_old FROM outbox.failure_groups g WHERE g.fingerprint = p_fingerprint FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no failure group %', p_fingerprint USING ERRCODE = 'TB404';
    END IF;
    UPDATE outbox.failure_groups g
       SET status = p_status, status_by = p_by, status_at = v_at, status_note = p_note,
           resolved_at = CASE WHEN p_status = 'resolved' THEN v_at ELSE g.resolved_at END
     WHERE g.fingerprint = p_fingerprint;
    INSERT INTO outbox.admin_audit (actor, actor_kind, action, job_ids, client_addr, result, detail)
    VALUES (p_by, p_actor_kind, 'group_status', '{}'::uuid[], p_client_addr, 'ok',
            jsonb_build_object('fingerprint', p_fingerprint, 'status', p_status, 'previous', v_old, 'note', p_note));
    RETURN QUERY SELECT v_old, p_status, v_at;
END $$;

-- Record a job's change of status in outbox.job_events (kind status, or outcome for a final status)
-- and wake the SSE streams (NOTIFY tierbox_job_events, payload the job id, delivered at commit; only
-- if outbox.job_watchers says someone streams the job), in the transaction that changed it.
-- docs/progress.md.
-- Created by 0012; unchanged since.
CREATE OR REPLACE FUNCTION outbox.record_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox.job_events (job_id, kind, status, data)
    VALUES (NEW.id,
            CASE WHEN NEW.status IN ('succeeded', 'dead', 'discarded', 'expired') THEN 'outcome' ELSE 'status' END,
            NEW.status, jsonb_build_object('attempt', NEW.attempts));
    -- NOTIFY (a database-wide lock at commit) only for a job whose stream someone reads.
    IF EXISTS (SELECT 1 FROM outbox.job_watchers w WHERE w.job_id = NEW.id AND w.expires_at > now()) THEN
        PERFORM pg_notify('tierbox_job_events', NEW.id::text);
    END IF;
    RETURN NULL;
END $$;

-- The trigger that calls it, once per job row whose status changes to one a watcher cares about:
-- the relay's published and a deferral's pending are left out by the WHEN clause, which Postgres
-- evaluates without calling the function.
-- Created by 0012; unchanged since.
CREATE OR REPLACE TRIGGER record_job_event AFTER UPDATE OF status ON outbox.jobs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('running', 'retrying', 'succeeded', 'dead', 'discarded', 'expired'))
    EXECUTE FUNCTION outbox.record_job_event();

-- When a job reaches a final outcome and has a completion webhook not yet used (outbox.webhooks),
-- insert its delivery job (task tierbox.webhook.deliver) and outbox row, in the transaction that
-- records the outcome. docs/webhooks.md.
-- Created by 0013; last changed by 0017 (a UUIDv7 id; the key in outbox.idempotency_keys).
CREATE OR REPLACE FUNCTION outbox.enqueue_webhook_delivery() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    w outbox.webhooks%ROWTYPE;
    delivery uuid := outbox.uuid7();
BEGIN
    UPDATE outbox.webhooks SET delivery_job_id = delivery, outcome = NEW.status
    WHERE job_id = NEW.id AND delivery_job_id IS NULL
    RETURNING * INTO w;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- The payload is the job's id only: the body is built at delivery from the ledger, and the
    -- secret's values are never in the database. max_retries + 50: attempts that found the
    -- receiver's breaker open do not count against the declared retries (tierbox.webhooks.deliver
    -- counts its contacts; outbox.webhooks.BREAKER_SKIPS_ALLOWED).
    INSERT INTO outbox.jobs (id, task, tier, priority, payload, headers, idempotency_key, max_retries, available_at)
    VALUES (delivery, 'tierbox.webhook.deliver', w.tier, w.priority,
            jsonb_build_object('args', jsonb_build_array(NEW.id::text), 'kwargs', '{}'::jsonb), '{}'::jsonb,
            'tierbox.webhook:' || NEW.id::text, w.max_retries + 50, now());
    INSERT INTO outbox.idempotency_keys (key, job_id)
    VALUES ('tierbox.webhook:' || NEW.id::text, delivery);
    INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
    VALUES (delivery, w.tier, w.weight, w.priority, now());
    RETURN NULL;
END $$;

-- The trigger that calls it, once per job row whose status becomes final (evaluated without calling
-- the function for every other change of status).
-- Created by 0013; unchanged since.
CREATE OR REPLACE TRIGGER enqueue_webhook_delivery AFTER UPDATE OF status ON outbox.jobs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('succeeded', 'dead', 'discarded', 'expired'))
    EXECUTE FUNCTION outbox.enqueue_webhook_delivery();

-- The rows of the view outbox.tier_health (`SELECT * FROM outbox.tier_health_rows()`): per tier,
-- backlog, live, stuck, outcomes, waits, starts. A function so that `SET jit = off` travels with the
-- query to every reader: on the partitioned ledger the planner's estimate for the per-attempt job
-- lookups (CROSS JOIN LATERAL ... OFFSET 0, one index probe each) switched JIT on and compiled for 2 s
-- per read; without JIT the read took 34 ms on 520,300 jobs (the hash joins of 0016's view, 531 ms).
-- Created by 0018; unchanged since.
CREATE OR REPLACE FUNCTION outbox.tier_health_rows()
 RETURNS TABLE(tier text, weight smallint, slo_s double precision, pending bigint, due bigint, oldest_due_age_s double precision, published bigint, running bigint, retrying bigint, stuck bigint, succeeded_5m bigint, failed_5m bigint, dead_5m bigint, succeeded_1h bigint, failed_1h bigint, dead_1h bigint, wait_p50_s double precision, wait_p95_s double precision, slo_breached boolean, published_oldest_age_s double precision, republished_1h bigint, publishing_blocked boolean, wait_p99_s double precision, started_1m bigint)
 LANGUAGE sql
 STABLE
 SET jit TO 'off'
AS $function$
WITH pend AS (
    SELECT tier, count(*) AS pending, count(*) FILTER (WHERE available_at <= now()) AS due,
           EXTRACT(EPOCH FROM now() - min(available_at) FILTER (WHERE available_at <= now()))::float8
               AS oldest_due_age_s
    FROM outbox.pending GROUP BY tier
), live AS (
    SELECT tier, count(*) FILTER (WHERE status = 'published') AS published,
           count(*) FILTER (WHERE status = 'running') AS running,
           count(*) FILTER (WHERE status = 'retrying') AS retrying,
           EXTRACT(EPOCH FROM now() - min(published_at) FILTER (WHERE status = 'published'))::float8
               AS published_oldest_age_s
    FROM outbox.jobs WHERE finished_at IS NULL GROUP BY tier
), stuck AS (
    SELECT j.tier, count(*) AS stuck
    FROM outbox.leases l CROSS JOIN LATERAL (SELECT j.tier, j.attempts, j.enqueued_at, j.available_at
        FROM outbox.jobs j WHERE j.id = l.job_id OFFSET 0) j
    WHERE l.expires_at < now() GROUP BY j.tier
), done AS (
    SELECT tier, count(*) FILTER (WHERE finished_at >= now() - interval '5 minutes') AS succeeded_5m,
           count(*) AS succeeded_1h
    FROM outbox.jobs
    WHERE finished_at >= now() - interval '1 hour' AND status = 'succeeded' GROUP BY tier
), dead AS (
    SELECT t.name AS tier,
           (SELECT count(*) FROM outbox.dead_letters d WHERE d.tier = t.name
                AND d.failed_at >= now() - interval '5 minutes') AS dead_5m,
           (SELECT count(*) FROM outbox.dead_letters d WHERE d.tier = t.name
                AND d.failed_at >= now() - interval '1 hour') AS dead_1h
    FROM outbox.tiers t
), failed AS (
    SELECT j.tier, count(*) FILTER (WHERE a.started_at >= now() - interval '5 minutes') AS failed_5m,
           count(*) AS failed_1h
    FROM outbox.attempts a CROSS JOIN LATERAL (SELECT j.tier, j.attempts, j.enqueued_at, j.available_at
        FROM outbox.jobs j WHERE j.id = a.job_id OFFSET 0) j
    WHERE a.started_at >= now() - interval '1 hour' AND a.outcome IN ('failed', 'timeout', 'crashed')
    GROUP BY j.tier
), waits AS (
    SELECT j.tier,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY w.wait_s) AS wait_p50_s,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY w.wait_s) AS wait_p95_s,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY w.wait_s) AS wait_p99_s
    FROM outbox.attempts a CROSS JOIN LATERAL (SELECT j.tier, j.attempts, j.enqueued_at, j.available_at
        FROM outbox.jobs j WHERE j.id = a.job_id OFFSET 0) j
    CROSS JOIN LATERAL (
        SELECT GREATEST(0, EXTRACT(EPOCH FROM a.started_at - CASE WHEN j.attempts <= 1
            THEN GREATEST(j.enqueued_at, j.available_at) ELSE j.enqueued_at END))::float8 AS wait_s
    ) w
    WHERE a.attempt = 1 AND a.started_at >= now() - interval '15 minutes'
    GROUP BY j.tier
), starts AS (
    SELECT j.tier, count(*) AS started_1m
    FROM outbox.attempts a CROSS JOIN LATERAL (SELECT j.tier, j.attempts, j.enqueued_at, j.available_at
        FROM outbox.jobs j WHERE j.id = a.job_id OFFSET 0) j
    WHERE a.started_at >= now() - interval '1 minute' GROUP BY j.tier
), repub AS (
    SELECT tier, count(*) AS republished_1h
    FROM outbox.republished WHERE at >= now() - interval '1 hour' GROUP BY tier
)
SELECT t.name AS tier, t.weight, t.slo_s,
       COALESCE(p.pending, 0) AS pending, COALESCE(p.due, 0) AS due, p.oldest_due_age_s,
       COALESCE(l.published, 0) AS published, COALESCE(l.running, 0) AS running,
       COALESCE(l.retrying, 0) AS retrying, COALESCE(s.stuck, 0) AS stuck,
       COALESCE(o.succeeded_5m, 0) AS succeeded_5m, COALESCE(f.failed_5m, 0) AS failed_5m, d.dead_5m,
       COALESCE(o.succeeded_1h, 0) AS succeeded_1h, COALESCE(f.failed_1h, 0) AS failed_1h, d.dead_1h,
       w.wait_p50_s, w.wait_p95_s,
       (t.slo_s IS NOT NULL AND (COALESCE(p.oldest_due_age_s, 0) > t.slo_s
                                 OR COALESCE(w.wait_p99_s, 0) > t.slo_s)) AS slo_breached,
       l.published_oldest_age_s, COALESCE(r.republished_1h, 0) AS republished_1h,
       EXISTS (SELECT 1 FROM outbox.relay_blocks b
               WHERE b.seen_at >= now() - interval '30 seconds') AS publishing_blocked,
       w.wait_p99_s, COALESCE(st.started_1m, 0) AS started_1m
FROM outbox.tiers t
LEFT JOIN pend p ON p.tier = t.name
LEFT JOIN live l ON l.tier = t.name
LEFT JOIN stuck s ON s.tier = t.name
LEFT JOIN done o ON o.tier = t.name
LEFT JOIN dead d ON d.tier = t.name
LEFT JOIN failed f ON f.tier = t.name
LEFT JOIN waits w ON w.tier = t.name
LEFT JOIN repub r ON r.tier = t.name
LEFT JOIN starts st ON st.tier = t.name
$function$;
