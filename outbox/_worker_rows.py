"""The rows the worker-side job transitions return (``outbox._transitions``), one NamedTuple each.

Fields follow the statements' column order (a NamedTuple is still a tuple: the order is the
contract); names may differ from the SQL column where the column's name would shadow a tuple
method (``count``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, NamedTuple


class StartRow(NamedTuple):
    """``START_ATTEMPT``: what ``outbox.start_attempt`` decided for one delivery."""

    decision: str
    attempt: int
    max_retries: int
    enqueued_at: dt.datetime | None
    headers: dict[str, Any] | None


class StartManyRow(NamedTuple):
    """``START_MANY``: one delivery's decision, ``n`` its 1-based position in the request arrays."""

    n: int
    decision: str
    attempt: int
    max_retries: int
    enqueued_at: dt.datetime | None
    headers: dict[str, Any] | None


class Changed(NamedTuple):
    """``SUCCEED``, ``RETRY``, ``DEAD``, ``DEAD_WITHOUT_ATTEMPT``: job rows the transition changed (0: fenced)."""

    jobs: int


class Succeeded(NamedTuple):
    """``SUCCEED_MANY``: one attempt recorded as succeeded."""

    job_id: uuid.UUID
    attempt: int


class Reaped(NamedTuple):
    """``REAP``: a job whose lease expired, and what ``outbox.reap`` made of it (``retry`` or ``dead``)."""

    job_id: uuid.UUID
    decision: str


class Deferred(NamedTuple):
    """``DEFER``: a job put back through the outbox."""

    job_id: uuid.UUID
