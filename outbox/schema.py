"""The ``outbox`` schema as SQLAlchemy tables (``outbox.metadata``).

The alembic revisions in ``migrations/`` create exactly these tables; a test
compares the migrated database with this metadata.

Why the hot path only inserts and deletes
-----------------------------------------
``jobs`` is the ledger and the audit record: one row per job, kept for the
retention window. The relay never scans it. Work waiting to be published
lives in ``pending``, a small table the relay claims from with
``FOR UPDATE SKIP LOCKED`` and deletes from once the broker confirmed. Its
size is the backlog, not the history, so claiming costs the same with ten
million finished jobs as with none, and a long analytics transaction holding
back vacuum can bloat only a table that stays small. Running jobs hold a row
in ``leases`` (inserted at start, deleted at finish) so the reaper, too, scans
only what is live. ``jobs`` is updated in place a few times per job (published,
running, outcome): it has a fillfactor of 80 so those updates stay HOT (no
index touched), and aggressive per-table autovacuum settings.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

SCHEMA = "outbox"

#: Job statuses; ``outbox.jobs.status`` is CHECKed against this list.
JOB_STATUSES = ("pending", "published", "running", "retrying", "succeeded", "dead", "discarded", "expired")
#: Statuses after which a job never runs again.
FINISHED_STATUSES = ("succeeded", "dead", "discarded", "expired")
#: Outcomes of one attempt.
ATTEMPT_OUTCOMES = ("succeeded", "failed", "timeout", "crashed")
#: Why a job or message is in ``dead_letters``.
DEAD_LETTER_REASONS = (
    "failed",          # retries exhausted
    "non_retryable",   # the handler raised Reject or a non-retryable type
    "timeout",         # the last attempt hit the task's time limit
    "crashed",         # the worker died during the last attempt
    "undecodable",     # the message body was not a Tierbox envelope
    "unknown_task",    # no handler registered under the message's task name
    "unknown_job",     # the message names a job the ledger does not hold
    "rejected",        # RabbitMQ dead-lettered it: rejected without requeue
    "maxlen",          # RabbitMQ dead-lettered it: queue length limit
    "expired",         # RabbitMQ dead-lettered it: message TTL
    "delivery_limit",  # RabbitMQ dead-lettered it: quorum delivery limit
)

naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(schema=SCHEMA, naming_convention=naming_convention)

_NOW = text("now()")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


tiers = Table(
    "tiers",
    metadata,
    Column("name", Text, primary_key=True),
    Column("weight", SmallInteger, nullable=False),
    Column("slo_s", Float, nullable=True),
    Column("queue", Text, nullable=False),
    Column("pool", Text, nullable=False),
    Column("notify", Boolean, nullable=False, server_default=text("true"),
           comment="Inserting a pending row of this tier NOTIFYs the relay (urgent tiers)."),
    comment="Mirror of the tier topology, written by tierbox migrate and the relay; read by SQL functions and views.",
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("task", Text, nullable=False),
    Column("tier", Text, nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("idempotency_key", Text, nullable=True),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("max_retries", Integer, nullable=False),
    Column("available_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("enqueued_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("redrive_of", UUID(as_uuid=True), nullable=True),
    Column("redrive_count", Integer, nullable=False, server_default=text("0")),
    CheckConstraint(_in("status", JOB_STATUSES), name="status"),
    CheckConstraint("attempts >= 0 AND max_retries >= 0", name="attempts"),
    CheckConstraint(f"(finished_at IS NOT NULL) = ({_in('status', FINISHED_STATUSES)})", name="finished"),
    CheckConstraint("status <> 'running' OR started_at IS NOT NULL", name="running_started"),
    CheckConstraint("priority BETWEEN 0 AND 255", name="priority"),
    # Revision 0017: no unique index on idempotency_key (a partitioned table's unique index must hold
    # the partition key): outbox.idempotency_keys holds each key once.
    Index("ix_jobs_finished_at", "finished_at", postgresql_where=text("finished_at IS NOT NULL")),
    Index("ix_jobs_enqueued_at", "enqueued_at"),
    comment="One row per job: the ledger and audit record; partitioned by day of its UUIDv7 id.",
    # Revision 0017: one partition per UTC day of the (UUIDv7) id, plus jobs_default (outbox._partitions).
    # A partitioned table has no storage options: each partition gets info["partition_storage"].
    postgresql_partition_by="RANGE (id)",
    info={"partition_storage": {"fillfactor": "80", "autovacuum_vacuum_scale_factor": "0.02",
                                "autovacuum_analyze_scale_factor": "0.02"}},
)

pending = Table(
    "pending",
    metadata,
    # No foreign key to jobs since revision 0017 (its docstring: a key check against the partitioned jobs
    # halved enqueue_many); every statement that deletes a job deletes its pending row with it.
    Column("job_id", UUID(as_uuid=True), primary_key=True),
    Column("tier", Text, nullable=False),
    Column("weight", SmallInteger, nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("available_at", DateTime(timezone=True), nullable=False),
    Column("publish_attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_publish_error", Text, nullable=True),
    Index("ix_pending_claim_order", text("weight DESC"), text("priority DESC"), "available_at"),
    Index("ix_pending_available_at", "available_at"),
    comment="Jobs due to be published (the relay's hot path): inserted on enqueue/retry, deleted once confirmed.",
    postgresql_with={"autovacuum_vacuum_scale_factor": "0", "autovacuum_vacuum_threshold": "500",
                     "autovacuum_vacuum_cost_delay": "0"},
)

attempts = Table(
    "attempts",
    metadata,
    # No foreign key since revision 0017 (its docstring: every DETACH of a jobs partition would check every
    # attempts partition); PRUNE_BATCH deletes a job's attempts with the job, retention drops them with its day.
    Column("job_id", UUID(as_uuid=True), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("worker_id", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("outcome", Text, nullable=True),
    Column("error_type", Text, nullable=True),
    Column("error_message", Text, nullable=True),
    Column("traceback", Text, nullable=True),
    # Revision 0009: the failure group (outbox.failure_groups) of a failed attempt.
    Column("fingerprint", Text, nullable=True),
    CheckConstraint(f"outcome IS NULL OR {_in('outcome', ATTEMPT_OUTCOMES)}", name="outcome"),
    CheckConstraint("(outcome IS NULL) = (finished_at IS NULL)", name="finished"),
    comment="One row per execution attempt, written before the handler starts; partitioned as outbox.jobs.",
    postgresql_partition_by="RANGE (job_id)",
)

leases = Table(
    "leases",
    metadata,
    # No foreign key to jobs since revision 0017, as pending.
    Column("job_id", UUID(as_uuid=True), primary_key=True),
    Column("attempt", Integer, nullable=False),
    Column("worker_id", Text, nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("acked_early", Boolean, nullable=False, server_default=text("false")),
    # Revision 0006: the delivery that took the lease, so it can resume after a lost start reply.
    Column("start_token", UUID(as_uuid=True), comment="Random per delivery: the same delivery asking "
           "again after a lost reply resumes its attempt."),
    Index("ix_leases_expires_at", "expires_at"),
    Index("ix_leases_worker_id", "worker_id"),
    comment="One row per running job: who runs it and until when; the reaper recovers expired ones.",
    postgresql_with={"autovacuum_vacuum_scale_factor": "0", "autovacuum_vacuum_threshold": "500"},
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("job_id", UUID(as_uuid=True), nullable=True),
    Column("task", Text, nullable=True),
    Column("tier", Text, nullable=False),
    Column("priority", SmallInteger, nullable=True),
    Column("payload", JSONB, nullable=True),
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("raw_body", LargeBinary, nullable=True),
    Column("reason", Text, nullable=False),
    Column("error_type", Text, nullable=True),
    Column("error_message", Text, nullable=True),
    Column("traceback", Text, nullable=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("enqueued_at", DateTime(timezone=True), nullable=True),
    Column("failed_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("redriven_at", DateTime(timezone=True), nullable=True),
    Column("redriven_by", Text, nullable=True),
    Column("redrive_reason", Text, nullable=True),
    Column("redrive_count", Integer, nullable=False, server_default=text("0")),
    Column("new_job_id", UUID(as_uuid=True), nullable=True),
    Column("discarded_at", DateTime(timezone=True), nullable=True),
    Column("discarded_by", Text, nullable=True),
    Column("discard_reason", Text, nullable=True),
    # Revision 0009: the failure group (outbox.failure_groups) of the failure that dead-lettered it.
    Column("fingerprint", Text, nullable=True),
    CheckConstraint(_in("reason", DEAD_LETTER_REASONS), name="reason"),
    CheckConstraint("redriven_at IS NULL OR discarded_at IS NULL", name="redriven_or_discarded"),
    CheckConstraint("(redriven_at IS NULL) = (new_job_id IS NULL)", name="redrive_lineage"),
    Index("uq_dead_letters_job_id", "job_id", unique=True, postgresql_where=text("job_id IS NOT NULL")),
    Index("ix_dead_letters_failed_at", "failed_at"),
    Index("ix_dead_letters_tier_failed_at", "tier", "failed_at"),
    comment="Every failure in one table: jobs that ran out of attempts and messages that could not be run.",
)

#: Who may act through the admin API and CLI, what they did, and the outcome (revision 0002).
ADMIN_ACTIONS = ("redrive", "redrive_bulk", "discard", "pause", "resume", "override_set", "override_clear",
                 "reconcile", "redrive_group", "discard_group", "group_status")
ADMIN_RESULTS = ("ok", "refused", "not_found")
ADMIN_ACTOR_KINDS = ("token", "os_user", "insecure_dev")

admin_audit = Table(
    "admin_audit",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("actor", Text, nullable=False),
    Column("actor_kind", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("job_ids", ARRAY(UUID(as_uuid=True)), nullable=False, server_default=text("'{}'::uuid[]")),
    Column("client_addr", Text, nullable=True),
    Column("result", Text, nullable=False),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    CheckConstraint(_in("actor_kind", ADMIN_ACTOR_KINDS), name="actor_kind"),
    CheckConstraint(_in("action", ADMIN_ACTIONS), name="action"),
    CheckConstraint(_in("result", ADMIN_RESULTS), name="result"),
    Index("ix_admin_audit_at", "at"),
    comment="Who changed what through the admin API or CLI: one row per action, written in the same transaction "
            "as the change.",
)

# Indexes the operator views read through (revision 0002; its docstring says which query uses which).
# They touch no column the published/running/retrying updates change, so those updates stay HOT.
Index("ix_jobs_unfinished_tier", jobs.c.tier, postgresql_where=text("finished_at IS NULL"))
Index("ix_attempts_started_at", attempts.c.started_at)
Index("ix_dead_letters_open_failed_at_id", dead_letters.c.failed_at, dead_letters.c.id,
      postgresql_where=text("redriven_at IS NULL AND discarded_at IS NULL"))


# --- Time and flow control (revision 0003) ---------------------------------------------------------

schedules = Table(
    "schedules",
    metadata,
    Column("name", Text, primary_key=True),
    Column("task", Text, nullable=False),
    Column("cron", Text, nullable=False),
    Column("tz", Text, nullable=False, server_default=text("'UTC'")),
    Column("expires_s", Float, nullable=False),
    Column("misfire", Text, nullable=False, server_default=text("'latest'")),
    Column("last_due_at", DateTime(timezone=True), nullable=True),
    Column("last_job_id", UUID(as_uuid=True), nullable=True),
    Column("last_enqueued_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    CheckConstraint("misfire IN ('latest', 'all', 'none')", name="misfire"),
    CheckConstraint("expires_s > 0", name="expires"),
    comment="Periodic schedules and their durable last-run state.",
)

pauses = Table(
    "pauses",
    metadata,
    Column("scope", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("paused_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("paused_by", Text, nullable=False),
    Column("reason", Text, nullable=True),
    CheckConstraint("scope IN ('tier', 'task')", name="scope"),
    comment="Paused tiers and tasks: workers start none of their jobs while a row exists.",
)

tier_overrides = Table(
    "tier_overrides",
    metadata,
    Column("task", Text, primary_key=True),
    Column("tier", Text, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("created_by", Text, nullable=False),
    Column("reason", Text, nullable=True),
    comment="Temporary routing of a task to another tier, ignored once expired.",
)

breaker_events = Table(
    "breaker_events",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("breaker", Text, nullable=False),
    Column("from_state", Text, nullable=False),
    Column("to_state", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("failures", Integer, nullable=False, server_default=text("0")),
    Column("detail", Text, nullable=True),
    CheckConstraint("from_state IN ('closed', 'open', 'half_open') AND to_state IN ('closed', 'open', 'half_open')",
                    name="states"),
    Index("ix_breaker_events_breaker_at", "breaker", "at"),
    comment="Every circuit-breaker state change (the state itself lives in Redis).",
)


# --- Reconciliation (revision 0007) ------------------------------------------------------------------

#: Why a job was republished: the relay's reconciler found it missing, or an operator asked.
REPUBLISH_REASONS = ("reconcile", "manual")

republished = Table(
    "republished",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    # No foreign key to jobs since revision 0017, as pending.
    Column("job_id", UUID(as_uuid=True), nullable=False),
    Column("tier", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("reason", Text, nullable=False),
    Column("actor", Text, nullable=False),
    CheckConstraint(_in("reason", REPUBLISH_REASONS), name="reason"),
    Index("ix_republished_at", "at"),
    Index("ix_republished_job_id", "job_id"),
    comment="One row per job republished because RabbitMQ no longer held its message (reconciliation).",
)


# --- Relay blocks (revision 0008) --------------------------------------------------------------------

relay_blocks = Table(
    "relay_blocks",
    metadata,
    Column("relay_id", Text, primary_key=True),
    Column("lane", Text, primary_key=True),
    Column("since", DateTime(timezone=True), nullable=False, server_default=_NOW),
    # Refreshed while the block lasts: a row its relay stopped refreshing (killed while blocked) goes stale.
    Column("seen_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    comment="One row per relay lane the broker blocks now (connection.blocked: a memory or disk alarm); "
            "stale after 30 s without a refresh.",
)


# --- Failure groups (revision 0009, docs/triage.md) --------------------------------------------------

#: A failure group's triage status: ``open`` until an operator resolves or ignores it; a failure
#: after its resolution reopens it (``regressed_at``).
FAILURE_GROUP_STATUSES = ("open", "resolved", "ignored")

failure_groups = Table(
    "failure_groups",
    metadata,
    Column("fingerprint", Text, primary_key=True),
    Column("error_type", Text, nullable=False),
    Column("message", Text, nullable=False, comment="The normalised message (ids, numbers, ... as placeholders)."),
    Column("sample_message", Text, nullable=True, comment="The latest failure's message as raised."),
    Column("frames", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("tasks", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("tiers", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("outcomes", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("reasons", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("failed_attempts", BigInteger, nullable=False, server_default=text("0")),
    Column("dead_letters", BigInteger, nullable=False, server_default=text("0")),
    Column("first_seen", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("last_seen", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Column("sample_job_ids", ARRAY(UUID(as_uuid=True)), nullable=False, server_default=text("'{}'::uuid[]")),
    Column("status", Text, nullable=False, server_default=text("'open'")),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Column("regressed_at", DateTime(timezone=True), nullable=True),
    # Revision 0010: who set the status by hand last, when and why (outbox.set_failure_group_status).
    Column("status_by", Text, nullable=True,
           comment="Who set the status last (an operator; NULL: never set by hand)."),
    Column("status_at", DateTime(timezone=True), nullable=True),
    Column("status_note", Text, nullable=True),
    CheckConstraint(_in("status", FAILURE_GROUP_STATUSES), name="status"),
    # Revision 0011: no index on last_seen (it made every upsert a non-HOT update) and room on each
    # page, so the many updates of few rows stay in place.
    comment="One row per failure fingerprint, upserted by the statement that records each failure.",
    postgresql_with={"fillfactor": "50", "autovacuum_vacuum_scale_factor": "0.0",
                     "autovacuum_vacuum_threshold": "1000", "autovacuum_analyze_scale_factor": "0.0",
                     "autovacuum_analyze_threshold": "1000"},
)

# The open dead letters of a group, counted when groups are read (redrive and discard change them).
Index("ix_dead_letters_open_fingerprint", dead_letters.c.fingerprint,
      postgresql_where=text("redriven_at IS NULL AND discarded_at IS NULL"))


# --- Job events (revision 0012) ----------------------------------------------------------------------

#: Kinds of ``outbox.job_events`` rows: a status change, a handler's progress, the outcome.
JOB_EVENT_KINDS = ("status", "progress", "outcome")

job_events = Table(
    "job_events",
    metadata,
    # No foreign key: its check would lock the job row from the progress writer's transaction;
    # PRUNE_BATCH deletes a job's events with the job.
    Column("job_id", UUID(as_uuid=True), primary_key=True),
    # The SSE event id (unique: a sequence's): a reconnecting stream resumes after it (Last-Event-ID).
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=text("clock_timestamp()")),
    Column("kind", Text, nullable=False),
    Column("status", Text, nullable=True),
    Column("fraction", Float, nullable=True),
    Column("message", Text, nullable=True),
    Column("data", JSONB, nullable=True),
    CheckConstraint(_in("kind", JOB_EVENT_KINDS), name="kind"),
    CheckConstraint("fraction IS NULL OR (fraction >= 0 AND fraction <= 1)", name="fraction"),
    # The primary key (job_id, id) is the one index: one job's events in order is every read.
    comment="Status changes, progress and outcomes of jobs, in order (id is the SSE event id); partitioned as "
            "outbox.jobs.",
    postgresql_partition_by="RANGE (job_id)",
)

job_watchers = Table(
    "job_watchers",
    metadata,
    Column("job_id", UUID(as_uuid=True), primary_key=True),
    # Renewed by the streams while they read; an expired row is ignored, then deleted.
    Column("expires_at", DateTime(timezone=True), nullable=False),
    comment="Jobs whose event stream is being read: only their events NOTIFY (renewed by the streams).",
    prefixes=["UNLOGGED"],  # ephemeral: lost in a crash, rebuilt by the streams' next renewal
)


# --- Completion webhooks (revision 0013) -------------------------------------------------------------

webhooks = Table(
    "webhooks",
    metadata,
    # No foreign key, as job_events: PRUNE_BATCH deletes a job's declaration with the job.
    Column("job_id", UUID(as_uuid=True), primary_key=True),
    Column("url", Text, nullable=False),
    # The secret's NAME; its values live in the workers' configuration only (docs/webhooks.md).
    Column("secret_name", Text, nullable=False),
    # Where and how the delivery job runs, resolved at enqueue (the trigger copies them).
    Column("tier", Text, nullable=False),
    Column("weight", SmallInteger, nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("max_retries", Integer, nullable=False),
    Column("include_result", Boolean, nullable=False, server_default=text("false")),
    Column("result", JSONB, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    # Set once by the trigger enqueue_webhook_delivery, in the transaction that records the outcome.
    Column("outcome", Text, nullable=True),
    Column("delivery_job_id", UUID(as_uuid=True), nullable=True),
    # Set by the delivery's success, in its own transaction.
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    Column("response_status", Integer, nullable=True),
    CheckConstraint("secret_name ~ '^[A-Za-z0-9_]{1,64}$'", name="secret_name"),
    comment="Completion webhooks of jobs: URL, secret name, and the delivery job once the outcome is recorded.",
)


# --- The partitioned history (revision 0017, docs/schema.md "Partitions") ------------------------------

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    # Written by the enqueue statement itself (ENQUEUE, ENQUEUE_ONE) and by enqueue_webhook_delivery;
    # deleted with its job (PRUNE_BATCH, or with the job's day partition).
    Column("key", Text, primary_key=True),
    Column("job_id", UUID(as_uuid=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
    Index("ix_idempotency_keys_job_id", "job_id"),
    comment="One row per idempotency key in use: the job it names (uniqueness across every partition of "
            "outbox.jobs); pruned with its job.",
)
