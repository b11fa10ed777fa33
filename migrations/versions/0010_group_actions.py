"""Group actions (issue #14): one SQL function upserts a failure group; redrive, discard and triage a whole group.

``outbox.record_failure_group``
    The failure-group upsert, once. Revision 0009 wrote it twice (a CTE template in
    ``outbox/_transitions.py`` and a copy in ``outbox.reap``); the failure statements (RETRY, DEAD,
    DEAD_WITHOUT_ATTEMPT, DEAD_MESSAGE) and the reaper now call this function. Same columns, counts and
    bounds; a resolved group that fails again is reopened and stamped ``regressed_at``.
``outbox.reap``
    0009's reaper with its two inline upserts replaced by calls of ``record_failure_group``.
``outbox.failure_group_open``
    A group's open dead letters counted by task, tier and whether ``outbox.redrive`` can run them
    (a raw broker message with no job cannot be redriven, only discarded): the dry run of a redrive.
``outbox.redrive_group``
    Redrive up to ``p_limit`` of a group's open dead letters (oldest first, ``SKIP LOCKED``) through
    ``outbox.redrive``; returns how many and how many remain, and writes one ``admin_audit`` row
    (action ``redrive_group``) naming the operator and the fingerprint. The caller paces by calling it
    again; each call is its own transaction, so an interrupted group redrive resumes where it stopped.
``outbox.discard_group``
    Discard up to ``p_limit`` of a group's open dead letters (raw messages included); a dead job
    becomes ``discarded`` as ``outbox.discard`` does; audited (``discard_group``).
``outbox.set_failure_group_status``
    ``open``, ``resolved`` or ``ignored``, with who, when and why (the new columns ``status_by``,
    ``status_at``, ``status_note``); ``resolved`` also stamps ``resolved_at``; audited (``group_status``).
``admin_audit``
    Admits the three new actions.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

import importlib
from types import ModuleType

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

OLD_ACTIONS = "('redrive', 'redrive_bulk', 'discard', 'pause', 'resume', 'override_set', 'override_clear', 'reconcile')"
NEW_ACTIONS = OLD_ACTIONS[:-1] + ", 'redrive_group', 'discard_group', 'group_status')"

COLUMNS = """
ALTER TABLE outbox.failure_groups ADD COLUMN status_by text, ADD COLUMN status_at timestamptz,
    ADD COLUMN status_note text;
COMMENT ON COLUMN outbox.failure_groups.status_by IS 'Who set the status last (an operator; NULL: never set by hand).';
"""

RECORD_FAILURE_GROUP = r"""
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
"""

FAILURE_GROUP_OPEN = r"""
CREATE OR REPLACE FUNCTION outbox.failure_group_open(p_fingerprint text)
RETURNS TABLE (task text, tier text, redrivable boolean, open_count bigint)
LANGUAGE sql STABLE AS $$
SELECT d.task, d.tier, (d.job_id IS NOT NULL AND d.task IS NOT NULL AND d.payload IS NOT NULL), count(*)
FROM outbox.dead_letters d
WHERE d.fingerprint = p_fingerprint AND d.redriven_at IS NULL AND d.discarded_at IS NULL
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
$$;
"""

REDRIVE_GROUP = r"""
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
"""

DISCARD_GROUP = r"""
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
"""

SET_FAILURE_GROUP_STATUS = r"""
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
"""

FUNCTIONS = (RECORD_FAILURE_GROUP, FAILURE_GROUP_OPEN, REDRIVE_GROUP, DISCARD_GROUP, SET_FAILURE_GROUP_STATUS)
DROPS = """
DROP FUNCTION outbox.set_failure_group_status(text, text, text, text, text, text);
DROP FUNCTION outbox.discard_group(text, integer, text, text, text, text);
DROP FUNCTION outbox.redrive_group(text, integer, text, text, text, text, text);
DROP FUNCTION outbox.failure_group_open(text);
DROP FUNCTION outbox.record_failure_group(text, text, text, text, text[], text, text, text, text, integer, integer,
                                          uuid, timestamp with time zone);
"""


def _0009() -> ModuleType:
    return importlib.import_module("tierbox.migrations.versions.0009_failure_groups")


def reap_0009() -> str:
    """Revision 0009's ``outbox.reap`` (a downgrade restores it verbatim)."""
    reap: str = _0009().reap_0009()
    return reap


def _reap_group(outcomes: str, reasons: str, attempts: int, dead: int) -> str:
    upsert: str = _0009()._REAP_GROUP.format(outcomes=outcomes, reasons=reasons, attempts=attempts, dead=dead)
    return upsert


def reap_0010() -> str:
    """0009's reaper calling ``outbox.record_failure_group`` instead of its two copies of the upsert."""
    edits = [
        (_reap_group("ARRAY['crashed']", "'{}'::text[]", 1, 0),
         "\n            PERFORM outbox.record_failure_group(fp, 'WorkerLost', msg, msg, '{}'::text[], j.task, j.tier,\n"
         "                                                'crashed', NULL, 1, 0, j.id, now());"),
        (_reap_group("'{}'::text[]", "ARRAY['crashed']", 0, 1).replace("\n", "\n    "),
         "\n                PERFORM outbox.record_failure_group(fp, 'WorkerLost', msg, msg, '{}'::text[], j.task,\n"
         "                                                    j.tier, NULL, 'crashed', 0, 1, j.id, now());"),
    ]
    body = reap_0009()
    for old, new in edits:
        if body.count(old) != 1:
            raise LookupError(f"revision 0009's reap is not the one this revision changes: {old[:80]!r}")
        body = body.replace(old, new)
    return body


def upgrade() -> None:
    """Add the status columns and the functions, let the reaper call the shared upsert, admit the audit actions."""
    op.execute(COLUMNS)
    for function in FUNCTIONS:
        op.execute(function)
    op.execute(reap_0010())
    op.execute("ALTER TABLE outbox.admin_audit DROP CONSTRAINT ck_admin_audit_action")
    op.execute(f"ALTER TABLE outbox.admin_audit ADD CONSTRAINT ck_admin_audit_action CHECK (action IN {NEW_ACTIONS})")


def downgrade() -> None:
    """Back to revision 0009: its reaper, the old audit actions, no group functions, no status columns."""
    op.execute("DELETE FROM outbox.admin_audit WHERE action IN ('redrive_group', 'discard_group', 'group_status')")
    op.execute("ALTER TABLE outbox.admin_audit DROP CONSTRAINT ck_admin_audit_action")
    op.execute(f"ALTER TABLE outbox.admin_audit ADD CONSTRAINT ck_admin_audit_action CHECK (action IN {OLD_ACTIONS})")
    op.execute(reap_0009())
    op.execute(DROPS)
    op.execute("ALTER TABLE outbox.failure_groups DROP COLUMN status_note, DROP COLUMN status_at, "
               "DROP COLUMN status_by")
