"""Every SQL statement of the admin API and CLI, each with what it is for.

They read the operator views of revision 0002 and change state only through
the shared SQL functions (``outbox.redrive``, ``outbox.redrive_where``,
``outbox.discard``). Optional filters are written ``(CAST(:x AS t) IS NULL OR
col = :x)``: the statements run as unnamed prepared statements, planned with
their values, so an absent filter folds away and the index that fits is used.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple

from outbox._sql import Statement


class CountRow(NamedTuple):
    """A statement that counts: ``REDRIVE_WHERE_COUNT``, ``PING``."""

    total: int


#: Columns of ``outbox.failures`` the API shows, in the order the statements return them.
DEAD_LETTER_COLUMNS = (
    "id", "job_id", "task", "tier", "reason", "error_type", "error_message", "attempts", "enqueued_at",
    "failed_at", "state", "redriven_at", "redriven_by", "redrive_reason", "new_job_id", "redrive_count",
    "discarded_at", "discarded_by", "discard_reason", "last_worker_id", "last_outcome", "payload", "headers",
    "raw_body_bytes",
)
_DL = ", ".join(DEAD_LETTER_COLUMNS)

# The state filter spelled so that 'open' becomes the partial index's own predicate.
_STATE = """
  AND (CAST(:state AS text) IS NULL
       OR (CAST(:state AS text) = 'open' AND redriven_at IS NULL AND discarded_at IS NULL)
       OR (CAST(:state AS text) = 'redriven' AND redriven_at IS NOT NULL)
       OR (CAST(:state AS text) = 'discarded' AND discarded_at IS NOT NULL))
"""

# A page of dead letters, newest first, keyset on (failed_at, id): rows inserted later sort before the
# cursor, so they never shift a page being walked.
DLQ_PAGE = Statement("ops.dlq_page", f"""
SELECT {_DL} FROM outbox.failures
WHERE (CAST(:tier AS text) IS NULL OR tier = :tier)
  AND (CAST(:task AS text) IS NULL OR task = :task)
  AND (CAST(:reason AS text) IS NULL OR reason = :reason)
  AND (CAST(:error_type AS text) IS NULL OR error_type = :error_type)
  AND (CAST(:since AS timestamptz) IS NULL OR failed_at >= :since)
  AND (CAST(:until AS timestamptz) IS NULL OR failed_at < :until)
  {_STATE}
  AND (CAST(:after_failed_at AS timestamptz) IS NULL
       OR (failed_at, id) < (CAST(:after_failed_at AS timestamptz), CAST(:after_id AS bigint)))
ORDER BY failed_at DESC, id DESC
LIMIT :limit
""")

# One dead letter by its job id.
DLQ_ONE = Statement("ops.dlq_one", f"SELECT {_DL} FROM outbox.failures WHERE job_id = CAST(:job_id AS uuid)")

class AttemptRow(NamedTuple):
    """``ATTEMPTS``: one attempt of a job."""

    attempt: int
    worker_id: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    outcome: str | None
    error_type: str | None
    error_message: str | None
    traceback_tail: str | None


# Every attempt of a job, in order (the traceback cut to its tail).
ATTEMPTS = Statement("ops.attempts", """
SELECT attempt, worker_id, started_at, finished_at, outcome, error_type, error_message, right(traceback, 2000)
FROM outbox.attempts WHERE job_id = CAST(:job_id AS uuid) ORDER BY attempt
""", row=AttemptRow)

class TierReasonCountRow(NamedTuple):
    """``DLQ_BY_TIER``: open dead letters of one tier and reason."""

    tier: str
    reason: str
    open_count: int


# Open dead letters per tier and reason (the partial index on open rows).
DLQ_BY_TIER = Statement("ops.dlq_by_tier", """
SELECT tier, reason, count(*) FROM outbox.dead_letters
WHERE redriven_at IS NULL AND discarded_at IS NULL
GROUP BY tier, reason ORDER BY tier, reason
""", row=TierReasonCountRow)

# How many dead letters a bulk redrive would take: the candidate predicate of outbox.redrive_where.
REDRIVE_WHERE_COUNT = Statement("ops.redrive_where_count", """
SELECT count(*) FROM (
    SELECT 1 FROM outbox.dead_letters d
    WHERE d.job_id IS NOT NULL AND d.task IS NOT NULL AND d.redriven_at IS NULL AND d.discarded_at IS NULL
      AND (CAST(:task AS text) IS NULL OR d.task = :task)
      AND (CAST(:tier AS text) IS NULL OR d.tier = :tier)
      AND (CAST(:reason AS text) IS NULL OR d.reason = :reason)
      AND (CAST(:since AS timestamptz) IS NULL OR d.failed_at >= :since)
      AND (CAST(:until AS timestamptz) IS NULL OR d.failed_at < :until)
    LIMIT :limit
) c
""", row=CountRow)


class AuditIdRow(NamedTuple):
    """``AUDIT``: the id of the audit row just written."""

    id: int


# Record an admin action; runs in the transaction of the change it records.
AUDIT = Statement("ops.audit", """
INSERT INTO outbox.admin_audit (actor, actor_kind, action, job_ids, client_addr, result, detail)
VALUES (:actor, :actor_kind, :action, CAST(:job_ids AS uuid[]), :client_addr, :result, CAST(:detail AS jsonb))
RETURNING id
""", row=AuditIdRow)

#: Columns of ``outbox.jobs`` the API shows.
JOB_COLUMNS = (
    "id", "task", "tier", "status", "priority", "attempts", "max_retries", "enqueued_at", "available_at",
    "published_at", "started_at", "finished_at", "last_error", "redrive_of", "redrive_count", "payload", "headers",
)
_JOB = ", ".join(JOB_COLUMNS)

# One job.
JOB_ONE = Statement("ops.job_one", f"SELECT {_JOB} FROM outbox.jobs WHERE id = CAST(:job_id AS uuid)")

# A page of jobs, newest first, keyset on (enqueued_at, id) along ix_jobs_enqueued_at.
JOBS_PAGE = Statement("ops.jobs_page", f"""
SELECT {_JOB} FROM outbox.jobs
WHERE (CAST(:tier AS text) IS NULL OR tier = :tier)
  AND (CAST(:task AS text) IS NULL OR task = :task)
  AND (CAST(:status AS text) IS NULL OR status = :status)
  AND (CAST(:since AS timestamptz) IS NULL OR enqueued_at >= :since)
  AND (CAST(:until AS timestamptz) IS NULL OR enqueued_at < :until)
  AND (CAST(:after_at AS timestamptz) IS NULL
       OR (enqueued_at, id) < (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid)))
ORDER BY enqueued_at DESC, id DESC
LIMIT :limit
""")

class TimelineRow(NamedTuple):
    """``TIMELINE``: one event of a job's life."""

    at: dt.datetime
    event: str
    attempt: int | None
    detail: dict[str, Any]


# A job's life, oldest event first. Steps of one transaction (the attempt's and the job's finish) carry
# clock_timestamp()s microseconds apart in either order: within a millisecond the logical order wins.
TIMELINE = Statement("ops.timeline", """
SELECT at, event, attempt, detail FROM outbox.job_timeline
WHERE job_id = CAST(:job_id AS uuid) ORDER BY date_trunc('milliseconds', at), seq, attempt
""", row=TimelineRow)

#: Columns of ``outbox.tier_health``.
TIER_HEALTH_COLUMNS = (
    "tier", "weight", "slo_s", "pending", "due", "oldest_due_age_s", "published", "running", "retrying", "stuck",
    "succeeded_5m", "failed_5m", "dead_5m", "succeeded_1h", "failed_1h", "dead_1h", "wait_p50_s", "wait_p95_s",
    "slo_breached", "published_oldest_age_s", "republished_1h", "publishing_blocked", "wait_p99_s", "started_1m",
)

# Per-tier health, heaviest tier first.
TIER_HEALTH = Statement("ops.tier_health", f"""
SELECT {", ".join(TIER_HEALTH_COLUMNS)} FROM outbox.tier_health ORDER BY weight DESC, tier
""")

# Bound every API read (the connection is the request's own transaction): a filter no index serves
# fails fast with a 503 instead of holding a connection and a snapshot while it scans the history.
READ_TIMEOUT = Statement("ops.read_timeout", "SELECT set_config('statement_timeout', CAST(:ms AS text), true)")

# Readiness: Postgres answers and the outbox schema is there.
PING = Statement("ops.ping", "SELECT count(*) FROM outbox.tiers", row=CountRow)

class TableHealthRow(NamedTuple):
    """``TABLE_HEALTH``: one outbox table's tuples and time since its last vacuum."""

    relname: str
    live_tuples: int
    dead_tuples: int
    #: None if the table was never vacuumed.
    since_vacuum_s: float | None


# Bloat of the outbox tables: live and dead tuples, seconds since the last (auto)vacuum.
TABLE_HEALTH = Statement("ops.table_health", """
SELECT relname, n_live_tup, n_dead_tup,
       EXTRACT(EPOCH FROM now() - GREATEST(last_vacuum, last_autovacuum))::float8
FROM pg_stat_user_tables WHERE schemaname = 'outbox' ORDER BY relname
""", row=TableHealthRow)

class OldestXminRow(NamedTuple):
    """``OLDEST_XMIN``: what holds back vacuum (0 and 0.0 when nothing does)."""

    xmin_age: int
    xact_s: float


# What holds back vacuum: the oldest transaction's xmin age (in transactions) and duration (seconds).
OLDEST_XMIN = Statement("ops.oldest_xmin", """
SELECT COALESCE(max(age(backend_xmin)), 0)::bigint,
       COALESCE(EXTRACT(EPOCH FROM now() - min(xact_start)), 0)::float8
FROM pg_stat_activity WHERE backend_xmin IS NOT NULL OR xact_start IS NOT NULL
""", row=OldestXminRow)

class TierCountRow(NamedTuple):
    """``DLQ_OPEN_BY_TIER``: open dead letters of one tier."""

    tier: str
    open_count: int


# Open dead letters per tier (the DLQ size gauge).
DLQ_OPEN_BY_TIER = Statement("ops.dlq_open_by_tier", """
SELECT tier, count(*) FROM outbox.dead_letters
WHERE redriven_at IS NULL AND discarded_at IS NULL GROUP BY tier
""", row=TierCountRow)

# --- Flow control: pauses and tier overrides (revision 0003) -----------------------------------------

class PausedAtRow(NamedTuple):
    """``PAUSE`` and ``RESUME``: when the pause began (no row: nothing was paused, or already paused)."""

    paused_at: dt.datetime


# Pause a tier or task (idempotent: pausing twice keeps the first pause's time and author).
PAUSE = Statement("ops.pause", """
INSERT INTO outbox.pauses (scope, name, paused_by, reason) VALUES (:scope, :name, :by, :reason)
ON CONFLICT (scope, name) DO NOTHING
RETURNING paused_at
""", row=PausedAtRow)

# Resume: delete the pause; returns the row if there was one.
RESUME = Statement("ops.resume", """
DELETE FROM outbox.pauses WHERE scope = :scope AND name = :name RETURNING paused_at
""", row=PausedAtRow)

class PauseRow(NamedTuple):
    """``PAUSES``: one pause in force."""

    scope: str
    name: str
    paused_at: dt.datetime
    paused_by: str
    reason: str | None


# Every pause in force.
PAUSES = Statement("ops.pauses", """
SELECT scope, name, paused_at, paused_by, reason FROM outbox.pauses ORDER BY scope, name
""", row=PauseRow)

# Route a task to another tier until a time (replaces an existing override of the task).
SET_OVERRIDE = Statement("ops.set_override", """
INSERT INTO outbox.tier_overrides (task, tier, expires_at, created_by, reason)
VALUES (:task, :tier, :expires_at, :by, :reason)
ON CONFLICT (task) DO UPDATE
SET tier = EXCLUDED.tier, expires_at = EXCLUDED.expires_at, created_at = now(),
    created_by = EXCLUDED.created_by, reason = EXCLUDED.reason
""")


class ClearedOverrideRow(NamedTuple):
    """``CLEAR_OVERRIDE``: the tier the dropped override routed to (no row: there was none)."""

    tier: str


# Drop a task's override (jobs already moved stay where they are).
CLEAR_OVERRIDE = Statement("ops.clear_override", """
DELETE FROM outbox.tier_overrides WHERE task = :task RETURNING tier
""", row=ClearedOverrideRow)

class OverrideRow(NamedTuple):
    """``OVERRIDES``: one tier override in force."""

    task: str
    tier: str
    expires_at: dt.datetime
    created_at: dt.datetime
    created_by: str
    reason: str | None


# Overrides still in force.
OVERRIDES = Statement("ops.overrides", """
SELECT task, tier, expires_at, created_at, created_by, reason FROM outbox.tier_overrides
WHERE expires_at > now() ORDER BY task
""", row=OverrideRow)


class FailureGroupRow(NamedTuple):
    """``FAILURE_GROUPS``: one failure group with the evidence its triage rules read (docs/triage.md)."""

    fingerprint: str
    error_type: str
    message: str
    sample_message: str | None
    frames: list[str]
    tasks: list[str]
    tiers: list[str]
    outcomes: list[str]
    reasons: list[str]
    failed_attempts: int
    dead_letters: int
    open_dead_letters: int
    first_seen: dt.datetime
    last_seen: dt.datetime
    sample_job_ids: list[Any]
    status: str
    resolved_at: dt.datetime | None
    regressed_at: dt.datetime | None
    status_by: str | None
    status_at: dt.datetime | None
    status_note: str | None
    jobs_retried: int
    jobs_same_every_attempt: int
    breaker_opens: int


# Failure groups, most recently seen first, with the evidence the triage rules read:
# open_dead_letters (counted now: redrive and discard change it; ix_dead_letters_open_fingerprint),
# of the sample jobs those that failed more than once (jobs_retried) and those whose every failed
# attempt carries this fingerprint (jobs_same_every_attempt: "the same job fails the same way"),
# and the breakers that opened while the group was failing (outbox.breaker_events).
FAILURE_GROUPS = Statement("ops.failure_groups", """
SELECT g.fingerprint, g.error_type, g.message, g.sample_message, g.frames, g.tasks, g.tiers, g.outcomes, g.reasons,
       g.failed_attempts, g.dead_letters,
       (SELECT count(*) FROM outbox.dead_letters d
        WHERE d.fingerprint = g.fingerprint AND d.redriven_at IS NULL AND d.discarded_at IS NULL),
       g.first_seen, g.last_seen, g.sample_job_ids, g.status, g.resolved_at, g.regressed_at,
       g.status_by, g.status_at, g.status_note, COALESCE(s.retried, 0), COALESCE(s.same_way, 0),
       (SELECT count(*) FROM outbox.breaker_events b
        WHERE b.to_state = 'open' AND b.at BETWEEN g.first_seen - interval '1 minute' AND g.last_seen)
FROM outbox.failure_groups g
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE failed >= 2) AS retried,
           count(*) FILTER (WHERE failed >= 2 AND same = failed) AS same_way
    FROM (
        SELECT a.job_id, count(*) FILTER (WHERE a.outcome <> 'succeeded') AS failed,
               count(*) FILTER (WHERE a.fingerprint = g.fingerprint) AS same
        FROM outbox.attempts a WHERE a.job_id = ANY(g.sample_job_ids) GROUP BY a.job_id
    ) AS per_job
) AS s ON true
WHERE (CAST(:status AS text) IS NULL OR g.status = CAST(:status AS text))
  AND (CAST(:task AS text) IS NULL OR CAST(:task AS text) = ANY(g.tasks))
  AND (CAST(:fingerprint AS text) IS NULL OR g.fingerprint = CAST(:fingerprint AS text))
ORDER BY g.last_seen DESC, g.fingerprint
LIMIT CAST(:limit AS integer)
""", row=FailureGroupRow)


# --- Failure-group actions (revision 0010; the statements that change jobs are in outbox/_transitions.py) ---

class FingerprintRow(NamedTuple):
    """``FINGERPRINTS_BY_PREFIX``: one fingerprint."""

    fingerprint: str


# The group a fingerprint or a prefix of one names: the exact one first, then (at most two) that start with it,
# so the caller can tell "unique", "ambiguous" and "none". left() = the prefix, with no LIKE wildcards to escape.
FINGERPRINTS_BY_PREFIX = Statement("ops.fingerprints_by_prefix", """
(SELECT fingerprint FROM outbox.failure_groups WHERE fingerprint = CAST(:prefix AS text))
UNION ALL
(SELECT fingerprint FROM outbox.failure_groups
 WHERE left(fingerprint, length(CAST(:prefix AS text))) = CAST(:prefix AS text)
   AND fingerprint <> CAST(:prefix AS text)
 ORDER BY fingerprint LIMIT 2)
""", row=FingerprintRow)


class GroupOpenRow(NamedTuple):
    """``GROUP_OPEN``: open dead letters of a group with one task, tier and redrivability."""

    task: str | None
    tier: str | None
    redrivable: bool
    open_count: int


# The dry run of a group redrive: its open dead letters by task, tier and whether they can be redriven.
GROUP_OPEN = Statement("ops.group_open", """
SELECT task, tier, redrivable, open_count FROM outbox.failure_group_open(CAST(:fingerprint AS text))
""", row=GroupOpenRow)


class GroupStatusRow(NamedTuple):
    """``SET_GROUP_STATUS``: the status before and after, and when it was set."""

    previous: str
    status: str
    status_at: dt.datetime


# Resolve, ignore or reopen a group, recording who and when; the function writes the audit row.
SET_GROUP_STATUS = Statement("ops.set_group_status", """
SELECT previous, status, status_at FROM outbox.set_failure_group_status(
    p_fingerprint => CAST(:fingerprint AS text), p_status => CAST(:status AS text), p_by => CAST(:by AS text),
    p_note => CAST(:note AS text), p_actor_kind => CAST(:actor_kind AS text),
    p_client_addr => CAST(:client_addr AS text))
""", row=GroupStatusRow)


class SampleJobRow(NamedTuple):
    """``SAMPLE_JOBS``: one of a group's sample jobs as the ledger holds it now."""

    job_id: Any
    task: str
    tier: str
    status: str
    attempts: int
    last_error: str | None
    finished_at: dt.datetime | None


# A group's sample jobs (newest failure first), with their state now.
SAMPLE_JOBS = Statement("ops.sample_jobs", """
SELECT j.id, j.task, j.tier, j.status, j.attempts, j.last_error, j.finished_at
FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS s(id, ord)
JOIN outbox.jobs AS j ON j.id = s.id
ORDER BY s.ord
""", row=SampleJobRow)
