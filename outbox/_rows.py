"""Row types of the statements in :mod:`outbox._transitions` that return rows to the relay and operators.

Each is a ``NamedTuple`` whose fields are the statement's columns in order (``Statement(..., row=)``),
so callers read ``row.job_id`` where they used to read ``row[0]``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import NamedTuple


class ClaimedRow(NamedTuple):
    """A due pending row the relay claimed (``CLAIM``), with what its message needs."""

    job_id: uuid.UUID
    weight: int
    task: str
    tier: str
    priority: int
    #: ``jobs.payload`` as JSON text (the envelope carries it unparsed).
    payload: str
    #: ``jobs.headers`` as JSON text.
    headers: str
    attempts: int
    enqueued_at: dt.datetime
    #: Past ``expires_at``: the relay marks it expired instead of publishing it.
    expired: bool


class EnqueuedRow(NamedTuple):
    """One input row of ``ENQUEUE`` / ``ENQUEUE_ONE``: the job it wrote, or the job its idempotency key names."""

    #: The input row's position (1-based; always 1 for ``ENQUEUE_ONE``).
    ord: int
    #: The new job, or the existing job of a used key; None when a concurrent transaction committed the
    #: key after this one's snapshot (the caller looks it up with ``JOB_IDS_BY_KEY``).
    job_id: uuid.UUID | None
    #: True when this row inserted the job, False when its idempotency key was already used.
    created: bool


class RedriveRow(NamedTuple):
    """``REDRIVE``: the job a redrive created."""

    new_job_id: uuid.UUID


class RedrivenRow(NamedTuple):
    """One dead letter a bulk redrive (``REDRIVE_WHERE``) turned into a new job."""

    job_id: uuid.UUID
    new_job_id: uuid.UUID


class GroupRedrivenRow(NamedTuple):
    """One batch of a failure group's redrive (``REDRIVE_GROUP``)."""

    redriven: int
    #: Open dead letters of the group that a redrive can still run, after this batch.
    remaining: int
    job_ids: list[uuid.UUID]
    new_job_ids: list[uuid.UUID]


class GroupDiscardedRow(NamedTuple):
    """One batch of a failure group's discard (``DISCARD_GROUP``)."""

    discarded: int
    #: Open dead letters of the group after this batch.
    remaining: int
    #: The jobs of the discarded dead letters (raw messages have none).
    job_ids: list[uuid.UUID]


class MovedRow(NamedTuple):
    """A job whose backlog row ``MOVE_BACKLOG`` moved to an override's tier."""

    job_id: uuid.UUID


class RepublishedRow(NamedTuple):
    """A published job whose pending row ``REPUBLISH`` re-inserted (the relay publishes it again)."""

    job_id: uuid.UUID
