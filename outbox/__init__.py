"""Tierbox: transactional, tiered, auditable background jobs.

The public surface is what this module exports; everything else is internal.

    import outbox

    @outbox.task(tier=outbox.Tier.HIGH)
    def send_receipt(order_id: int) -> None: ...

    with Session(engine) as session, session.begin():
        session.add(order)
        outbox.enqueue(session, send_receipt, args=[order.id])
"""

from outbox._progress import CapabilityError, ProgressError, job_capability
from outbox.config import Settings
from outbox.context import TaskContext
from outbox.enqueue import JobOptions, configure, enqueue, enqueue_async, enqueue_many, enqueue_many_async, job
from outbox.errors import (
    ConfigError,
    EnqueueError,
    FlowStateUnavailableError,
    InvalidOptionError,
    InvalidScheduleError,
    NonRetryable,
    PayloadEncodeError,
    PayloadTooLargeError,
    RedriveError,
    RegistryError,
    Reject,
    SchemaOutdatedError,
    TierboxError,
    TopologyMismatchError,
    UnknownTaskError,
    UnknownTierError,
)
from outbox.flow import cron
from outbox.redrive import discard, redrive, redrive_async
from outbox.registry import Task, breaker, registry, task
from outbox.schema import metadata
from outbox.tiers import Tier
from outbox.webhooks import Webhook, WebhookError

__all__ = [
    "CapabilityError",
    "ConfigError",
    "EnqueueError",
    "FlowStateUnavailableError",
    "InvalidOptionError",
    "InvalidScheduleError",
    "JobOptions",
    "NonRetryable",
    "PayloadEncodeError",
    "PayloadTooLargeError",
    "ProgressError",
    "RedriveError",
    "RegistryError",
    "Reject",
    "SchemaOutdatedError",
    "Settings",
    "Task",
    "TaskContext",
    "Tier",
    "TierboxError",
    "TopologyMismatchError",
    "UnknownTaskError",
    "UnknownTierError",
    "Webhook",
    "WebhookError",
    "breaker",
    "configure",
    "cron",
    "discard",
    "enqueue",
    "enqueue_async",
    "enqueue_many",
    "enqueue_many_async",
    "job",
    "job_capability",
    "metadata",
    "redrive",
    "redrive_async",
    "registry",
    "task",
]
