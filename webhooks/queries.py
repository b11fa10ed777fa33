"""The SQL of webhook deliveries (each statement's parameters are bound, never formatted in)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, NamedTuple

from outbox._sql import Statement


class Announcement(NamedTuple):
    """What a delivery announces: the job as its outcome left it, and where to send it."""

    job_id: uuid.UUID
    task: str
    tier: str
    outcome: str
    attempts: int
    enqueued_at: dt.datetime
    finished_at: dt.datetime | None
    last_error: str | None
    error_type: str | None
    url: str
    secret_name: str
    include_result: bool
    result: Any


# The outcome announced is the one the trigger saw (outbox.webhooks.outcome): a dead job discarded
# since is still announced as dead, once. The error type is the dead letter's (the last failure's).
ANNOUNCEMENT = Statement("webhook.announcement", """
SELECT j.id, j.task, j.tier, w.outcome, j.attempts, j.enqueued_at, j.finished_at, j.last_error,
       (SELECT d.error_type FROM outbox.dead_letters AS d WHERE d.job_id = j.id ORDER BY d.id DESC LIMIT 1),
       w.url, w.secret_name, w.include_result, w.result
FROM outbox.webhooks AS w JOIN outbox.jobs AS j ON j.id = w.job_id
WHERE w.job_id = CAST(:job_id AS uuid)
""", row=Announcement)

# The receiver answered 2xx: recorded in the delivery's own transaction, with its success.
MARK_DELIVERED = Statement("webhook.mark_delivered", """
UPDATE outbox.webhooks SET delivered_at = clock_timestamp(), response_status = CAST(:status AS integer)
WHERE job_id = CAST(:job_id AS uuid)
""")
