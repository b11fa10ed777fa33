"""Failure groups: every failure gets a fingerprint, and ``outbox.failure_groups`` counts them (issue #14).

``outbox.attempts.fingerprint``, ``outbox.dead_letters.fingerprint``
    The failure group of a failed attempt and of a dead letter (``outbox._fingerprint``: the
    exception type, the normalised message and the application's innermost frames, or a
    fingerprint the handler set). Nullable: rows written before this revision have none.
``outbox.failure_groups``
    One row per fingerprint, upserted by the same statement that records the failure (RETRY, DEAD,
    DEAD_WITHOUT_ATTEMPT, DEAD_MESSAGE in ``outbox/_transitions.py``): counts of failed attempts and
    dead letters, first and last seen, the tasks, tiers, outcomes and reasons seen, up to 10 sample
    job ids, and a triage status (``open``, ``resolved``, ``ignored``); a failure arriving after the
    group was resolved reopens it and stamps ``regressed_at``. A table, not a view over attempts:
    reading groups then costs the number of groups, not the number of failures kept.
``ix_dead_letters_open_fingerprint``
    The open dead letters of a group, counted when groups are read (redrive and discard change them).
``outbox.reap``
    Revision 0005's reaper, which also records the fingerprint of the crashes it finds (a lease that
    expired: ``WorkerLost``, one constant message, so one constant fingerprint) and upserts their
    group the way the Python statements do.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

import importlib
import textwrap

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE outbox.attempts ADD COLUMN fingerprint text;
ALTER TABLE outbox.dead_letters ADD COLUMN fingerprint text;
CREATE INDEX ix_dead_letters_open_fingerprint ON outbox.dead_letters (fingerprint)
    WHERE redriven_at IS NULL AND discarded_at IS NULL;
CREATE TABLE outbox.failure_groups (
    fingerprint     text        NOT NULL,
    error_type      text        NOT NULL,
    message         text        NOT NULL,
    sample_message  text,
    frames          text[]      NOT NULL DEFAULT '{}'::text[],
    tasks           text[]      NOT NULL DEFAULT '{}'::text[],
    tiers           text[]      NOT NULL DEFAULT '{}'::text[],
    outcomes        text[]      NOT NULL DEFAULT '{}'::text[],
    reasons         text[]      NOT NULL DEFAULT '{}'::text[],
    failed_attempts bigint      NOT NULL DEFAULT 0,
    dead_letters    bigint      NOT NULL DEFAULT 0,
    first_seen      timestamptz NOT NULL DEFAULT now(),
    last_seen       timestamptz NOT NULL DEFAULT now(),
    sample_job_ids  uuid[]      NOT NULL DEFAULT '{}'::uuid[],
    status          text        NOT NULL DEFAULT 'open',
    resolved_at     timestamptz,
    regressed_at    timestamptz,
    CONSTRAINT pk_failure_groups PRIMARY KEY (fingerprint),
    CONSTRAINT ck_failure_groups_status CHECK (status IN ('open', 'resolved', 'ignored'))
);
CREATE INDEX ix_failure_groups_last_seen ON outbox.failure_groups (last_seen);
COMMENT ON TABLE outbox.failure_groups IS 'One row per failure fingerprint, upserted by the statement that records each failure.';
COMMENT ON COLUMN outbox.failure_groups.message IS 'The normalised message (ids, numbers, ... as placeholders).';
COMMENT ON COLUMN outbox.failure_groups.sample_message IS 'The latest failure''s message as raised.';
"""

DOWNGRADE = """
DROP TABLE outbox.failure_groups;
DROP INDEX outbox.ix_dead_letters_open_fingerprint;
ALTER TABLE outbox.dead_letters DROP COLUMN fingerprint;
ALTER TABLE outbox.attempts DROP COLUMN fingerprint;
"""


#: ``ErrorInfo("WorkerLost", <the reaper's message>).params()["fingerprint"]``: the reaper's crashes fall in
#: the group a Python failure with the same type and message would (a test keeps the two equal).
WORKER_LOST_FINGERPRINT = "2ef6b41f05b6a6fc"

# The reaper's failure-group upsert: the same columns and bounds as _group_upsert in
# outbox/_transitions.py (keep them in step). {attempts}/{dead}: what this failure counts.
_REAP_GROUP = """
            INSERT INTO outbox.failure_groups AS fg (fingerprint, error_type, message, sample_message, tasks, tiers,
                                                     outcomes, reasons, failed_attempts, dead_letters, first_seen,
                                                     last_seen, sample_job_ids)
            VALUES (fp, 'WorkerLost', msg, msg, ARRAY[j.task], ARRAY[j.tier], {outcomes}, {reasons}, {attempts},
                    {dead}, now(), now(), ARRAY[j.id])
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
                regressed_at = CASE WHEN fg.status = 'resolved' THEN EXCLUDED.last_seen ELSE fg.regressed_at END;"""


def _reap_0005() -> str:
    """Revision 0005's ``outbox.reap`` (the one this revision replaces; a downgrade restores it verbatim)."""
    reap: str = importlib.import_module("tierbox.migrations.versions.0005_start_without_waiting").REAP
    return reap


def reap_0009() -> str:
    """0005's reaper with the fingerprint recorded and the failure group upserted."""
    edits = [
        ("    msg text := 'lease expired: the worker died or lost its database connection';\n",
         "    msg text := 'lease expired: the worker died or lost its database connection';\n"
         f"    fp text := '{WORKER_LOST_FINGERPRINT}';  -- ErrorInfo('WorkerLost', msg)'s fingerprint\n"
         "    n integer;\n"),
        ("error_type = 'WorkerLost', error_message = msg\n"
         "         WHERE a.job_id = l.job_id AND a.attempt = l.attempt AND a.outcome IS NULL;\n",
         "error_type = 'WorkerLost', error_message = msg,\n"
         "               fingerprint = fp\n"
         "         WHERE a.job_id = l.job_id AND a.attempt = l.attempt AND a.outcome IS NULL;\n"
         "        GET DIAGNOSTICS n = ROW_COUNT;\n"
         "        IF n > 0 THEN  -- one crashed attempt for its failure group"
         + _REAP_GROUP.format(outcomes="ARRAY['crashed']", reasons="'{}'::text[]", attempts=1, dead=0)
         + "\n        END IF;\n"),
        ("                                             error_message, attempts, enqueued_at, redrive_count)\n"
         "            VALUES (j.id, j.task, j.tier, j.priority, j.payload, j.headers, 'crashed', 'WorkerLost', msg,\n"
         "                    j.attempts, j.enqueued_at, j.redrive_count)\n"
         "            ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO NOTHING;\n",
         "                                             error_message, attempts, enqueued_at, redrive_count, fingerprint)\n"
         "            VALUES (j.id, j.task, j.tier, j.priority, j.payload, j.headers, 'crashed', 'WorkerLost', msg,\n"
         "                    j.attempts, j.enqueued_at, j.redrive_count, fp)\n"
         "            ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO NOTHING;\n"
         "            GET DIAGNOSTICS n = ROW_COUNT;\n"
         "            IF n > 0 THEN  -- one dead letter for its failure group"
         + textwrap.indent(_REAP_GROUP.format(outcomes="'{}'::text[]", reasons="ARRAY['crashed']", attempts=0, dead=1),
                           "    ")
         + "\n            END IF;\n"),
    ]
    body = _reap_0005()
    for old, new in edits:
        if body.count(old) != 1:
            raise LookupError(f"revision 0005's reap is not the one this revision extends: {old[:60]!r}")
        body = body.replace(old, new)
    return body


def upgrade() -> None:
    """Add the fingerprint columns, create ``outbox.failure_groups``, let the reaper record both."""
    op.execute(UPGRADE)
    op.execute(reap_0009())


def downgrade() -> None:
    """Back to revision 0008: 0005's reaper, then drop the table, the index and the columns."""
    op.execute(_reap_0005())
    op.execute(DOWNGRADE)
