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

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

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


def upgrade() -> None:
    """Add the fingerprint columns and create ``outbox.failure_groups``."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Back to revision 0008: drop the table, the index and the columns."""
    op.execute(DOWNGRADE)
