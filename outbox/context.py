"""What a handler receives when it declares a ``ctx`` parameter."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec

from outbox._attempts import attempts_left


class TaskContext(msgspec.Struct, kw_only=True):
    """The running job: identity, attempt, and the session its success commits with.

    ``session`` is a SQLAlchemy ``Session`` for sync handlers and an
    ``AsyncSession`` for async ones. Writes made through it (including
    ``outbox.enqueue`` of a next step) commit in the same transaction that
    marks the job succeeded, and roll back if the attempt fails or the
    process dies first. Never commit it yourself.
    """

    job_id: uuid.UUID
    task: str
    tier: str
    attempt: int
    max_retries: int
    enqueued_at: dt.datetime | None
    headers: dict[str, Any]
    session: Any = None

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now dead-letters the job."""
        return attempts_left(self.attempt, self.max_retries) == 0
