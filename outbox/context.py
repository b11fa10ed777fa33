"""What a handler receives when it declares a ``ctx`` parameter."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec

from outbox._attempts import attempts_left
from outbox._progress import ProgressWriter, validate


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
    #: The failure group this attempt's failure is filed under, if the handler names one
    #: (:meth:`set_fingerprint`); None: computed from the exception (docs/triage.md).
    fingerprint: str | None = None
    #: Where :meth:`progress` writes (set by the worker and by ``outbox.testing.drain``); None: nowhere.
    progress_writer: ProgressWriter | None = None

    def set_fingerprint(self, value: str) -> None:
        """File a failure of this attempt under ``value`` instead of the computed fingerprint.

        Set it before raising (``ctx.fingerprint = ...`` does the same); a ``Reject`` raised with
        its own ``fingerprint=`` keeps that one.
        """
        self.fingerprint = value

    def progress(self, fraction: float, message: str | None = None, data: Any = None) -> None:
        """Report how far the job got: ``fraction`` from 0 to 1, an optional ``message`` (at most 1000
        characters) and JSON ``data`` (at most 8 KiB encoded).

        Returns at once. Written to ``outbox.job_events`` in a short transaction of its own (kept
        if the handler's transaction rolls back), at most once per 0.5 s per attempt: a call within
        the interval is held and replaced by later ones, and the last is written before the outcome.
        Bad input raises :class:`outbox.ProgressError` naming the field. docs/progress.md.
        """
        report = validate(fraction, message, data)
        if self.progress_writer is not None:
            self.progress_writer.report(report)

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now dead-letters the job."""
        return attempts_left(self.attempt, self.max_retries) == 0
