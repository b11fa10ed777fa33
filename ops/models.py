"""Request and response bodies of the admin API (msgspec Structs, one per direction).

The CLI prints these same structs (as tables or ``--json``), so HTTP and the
command line show the same data.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

#: Dead-letter reasons (``outbox.schema.DEAD_LETTER_REASONS``; a test keeps them equal).
DeadLetterReason = Literal["failed", "non_retryable", "timeout", "crashed", "undecodable", "unknown_task",
                           "unknown_job", "rejected", "maxlen", "expired", "delivery_limit"]
#: Job statuses (``outbox.schema.JOB_STATUSES``).
JobStatus = Literal["pending", "published", "running", "retrying", "succeeded", "dead", "discarded", "expired"]
#: A dead letter's state: neither redriven nor discarded (open), or which of the two.
DeadLetterState = Literal["open", "redriven", "discarded"]

#: Longest filter value or free-text reason accepted.
MAX_TEXT = 200
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]
Note = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class DeadLetter(msgspec.Struct, kw_only=True):
    """One row of ``outbox.failures``: a dead letter, its last attempt, and what was done about it."""

    id: int
    job_id: uuid.UUID | None
    task: str | None
    tier: str
    reason: str
    error_type: str | None
    error_message: str | None
    attempts: int
    enqueued_at: datetime | None
    failed_at: datetime
    state: str
    redriven_at: datetime | None
    redriven_by: str | None
    redrive_reason: str | None
    new_job_id: uuid.UUID | None
    redrive_count: int
    discarded_at: datetime | None
    discarded_by: str | None
    discard_reason: str | None
    last_worker_id: str | None
    last_outcome: str | None
    #: The payload after redaction (see ``api.redaction``).
    payload: Any
    headers: Any
    #: Size of the undecodable message body, for dead letters that hold one.
    raw_body_bytes: int | None


class DeadLetterPage(msgspec.Struct, kw_only=True):
    """A page of dead letters, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[DeadLetter]
    next_cursor: str | None


class Attempt(msgspec.Struct, kw_only=True):
    """One execution attempt of a job."""

    attempt: int
    worker_id: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    error_type: str | None
    error_message: str | None
    #: The traceback's last lines (tracebacks can hold local values; the full one stays in SQL).
    traceback_tail: str | None


class DeadLetterDetail(msgspec.Struct, kw_only=True):
    """One dead letter with every attempt of its job."""

    dead_letter: DeadLetter
    attempts: list[Attempt]


class TierReasonCount(msgspec.Struct, kw_only=True):
    """Open dead letters of one tier and reason."""

    tier: str
    reason: str
    count: int


class RedriveRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Optional body of a single redrive."""

    #: Move the job to this tier. Defaults to its own tier.
    tier: ShortText | None = None
    #: The new job always starts with zero attempts (it is a new job); false is refused.
    reset_attempts: bool = True
    #: Why, recorded on the dead letter and in the audit log.
    reason: Note | None = None


class DiscardRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Optional body of a discard."""

    reason: Note | None = None


class Redriven(msgspec.Struct, kw_only=True):
    """A redriven job and the new job that replaces it (lineage: ``jobs.redrive_of``)."""

    job_id: uuid.UUID
    new_job_id: uuid.UUID


class Discarded(msgspec.Struct, kw_only=True):
    """A discarded dead letter."""

    job_id: uuid.UUID
    discarded: bool = True


class BulkFilter(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Which open dead letters a bulk redrive takes (the parameters of ``outbox.redrive_where``)."""

    tier: ShortText | None = None
    task: ShortText | None = None
    reason: DeadLetterReason | None = None
    since: datetime | None = None
    until: datetime | None = None


class BulkRedriveRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Redrive many dead letters, oldest first, paced in separate transactions."""

    #: Why: required, recorded on every dead letter and in the audit log.
    reason: Note
    filter: BulkFilter = msgspec.field(default_factory=BulkFilter)
    #: Move the jobs to this tier. Defaults to each job's own tier.
    target_tier: ShortText | None = None
    #: Redrive at most this many.
    limit: Annotated[int, msgspec.Meta(ge=1, le=50_000)] = 1000
    #: Pace: at most this many per second, each second's batch in its own transaction.
    rate_per_s: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 200
    #: Only count what would be redriven.
    dry_run: bool = False


class BulkRedriveResult(msgspec.Struct, kw_only=True):
    """What a bulk redrive did (or, for a dry run, would do)."""

    dry_run: bool
    #: Dead letters matched (dry run) or redriven.
    count: int
    batches: int
    redriven: list[Redriven]


class Job(msgspec.Struct, kw_only=True):
    """One job of the ledger (``outbox.jobs``), payload redacted."""

    id: uuid.UUID
    task: str
    tier: str
    status: str
    priority: int
    attempts: int
    max_retries: int
    enqueued_at: datetime
    available_at: datetime
    published_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
    redrive_of: uuid.UUID | None
    redrive_count: int
    payload: Any
    headers: Any


class JobPage(msgspec.Struct, kw_only=True):
    """A page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[Job]
    next_cursor: str | None


class TimelineEvent(msgspec.Struct, kw_only=True):
    """One event of ``outbox.job_timeline``."""

    at: datetime
    event: str
    attempt: int | None
    detail: dict[str, Any]


class JobDetail(msgspec.Struct, kw_only=True):
    """A job and its timeline, oldest event first."""

    job: Job
    timeline: list[TimelineEvent]


class TierHealth(msgspec.Struct, kw_only=True):
    """One row of ``outbox.tier_health`` plus the live RabbitMQ view of its queue and dead-letter queue."""

    tier: str
    weight: int
    slo_s: float | None
    pending: int
    due: int
    oldest_due_age_s: float | None
    published: int
    running: int
    retrying: int
    stuck: int
    succeeded_5m: int
    failed_5m: int
    dead_5m: int
    succeeded_1h: int
    failed_1h: int
    dead_1h: int
    wait_p50_s: float | None
    wait_p95_s: float | None
    slo_breached: bool
    #: Age of the oldest job published and not started (revision 0007); None when there is none.
    published_oldest_age_s: float | None = None
    #: Jobs republished by reconciliation in the last hour (revision 0007).
    republished_1h: int = 0
    #: Some relay is blocked by the broker now (a memory or disk alarm; revision 0008). The same for
    #: every tier: a block is per connection, and every relay lane publishes to every tier it claims.
    publishing_blocked: bool = False
    #: 99th percentile of first-attempt waits over 15 minutes, what ``slo_breached`` is judged on (revision 0016).
    wait_p99_s: float | None = None
    #: Attempts started in the last minute (revision 0016): ``started_1m / 60`` is the start rate.
    started_1m: int = 0
    #: Messages the worker pools hold delivered and not yet acked (buffered, starting or running), from
    #: the pools' reports in Redis (:mod:`tierbox.workers.inflight`): RabbitMQ 3.x tells unacked counts
    #: only through its management plugin. None while Redis cannot be read.
    unacked: int | None = None
    queue: str = ""
    queue_depth: int | None = None
    queue_consumers: int | None = None
    dlq_depth: int | None = None
    dlq_consumers: int | None = None
    #: Why the broker numbers are missing, if they are.
    broker_error: str | None = None


class Health(msgspec.Struct, kw_only=True):
    """Liveness/readiness: ``ok``, or what is unreachable."""

    status: str
    postgres: str | None = None
    rabbitmq: str | None = None
