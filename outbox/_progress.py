"""A handler's progress (``ctx.progress``) and the per-job read capability (:func:`job_capability`).

Progress is validated at the call (typed errors naming the field), throttled per attempt, and
written to ``outbox.job_events`` in a short transaction of its own: not the handler's session, so a
handler that rolls back keeps the progress it reported, and never on the job's ledger row, so
reporting progress cannot block (or be blocked by) the job's state changes. docs/progress.md.

Throttle (:data:`MIN_INTERVAL_S`): a call is written at once unless an earlier one of the same
attempt was written less than 0.5 s before; then it is held, replaced by any later call, and
written by the next call after the interval or, at the latest, when the handler returns or raises
(before the outcome is recorded, so the last progress always precedes the outcome). A call with
``fraction == 1.0`` is never held.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import math
import time
import uuid
from typing import Any

import msgspec

from outbox import _queries as queries
from outbox._logs import event
from outbox._sql import run, run_async
from outbox.errors import TierboxError

log = logging.getLogger("tierbox.progress")

#: At most one progress write per attempt per this many seconds (the rest are coalesced).
MIN_INTERVAL_S = 0.5
#: Longest ``message`` accepted, in characters.
MAX_MESSAGE_CHARS = 1000
#: Largest ``data`` accepted, JSON-encoded, in bytes.
MAX_DATA_BYTES = 8 * 1024


class ProgressError(TierboxError, ValueError):
    """``ctx.progress`` was given a bad ``fraction``, ``message`` or ``data``; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class CapabilityError(TierboxError, ValueError):
    """A job capability is malformed, tampered with, expired, or for another job."""


class Report(msgspec.Struct, frozen=True):
    """One validated progress call, ready to write."""

    fraction: float
    message: str | None
    data: str | None  # JSON text


def validate(fraction: Any, message: Any = None, data: Any = None) -> Report:
    """Check one ``ctx.progress`` call; raises :class:`ProgressError` naming the bad field."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise ProgressError("fraction", f"must be a number from 0 to 1, not {type(fraction).__name__}")
    if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        raise ProgressError("fraction", f"must be from 0 to 1, not {fraction!r}")
    if message is not None:
        if not isinstance(message, str):
            raise ProgressError("message", f"must be a string or None, not {type(message).__name__}")
        if len(message) > MAX_MESSAGE_CHARS:
            raise ProgressError("message", f"is {len(message)} characters long; at most {MAX_MESSAGE_CHARS}")
        if "\x00" in message:
            raise ProgressError("message", "holds a NUL character, which Postgres text cannot store")
    encoded: str | None = None
    if data is not None:
        try:
            raw = msgspec.json.encode(data)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProgressError("data", f"is not JSON-encodable: {exc}") from None
        if len(raw) > MAX_DATA_BYTES:
            raise ProgressError("data", f"is {len(raw)} bytes as JSON; at most {MAX_DATA_BYTES}")
        if b"\\u0000" in raw:
            raise ProgressError("data", "holds a NUL character, which Postgres jsonb cannot store")
        encoded = raw.decode()
    return Report(float(fraction), message, encoded)


class ProgressWriter:
    """The throttle of one attempt and where its progress goes; ``TaskContext`` holds one.

    Subclasses write: :class:`EngineProgress` (a worker) and :class:`BufferedProgress` (``outbox.testing``).
    """

    def __init__(self, job_id: uuid.UUID, attempt: int, min_interval_s: float = MIN_INTERVAL_S) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.min_interval_s = min_interval_s
        self._last_write = -math.inf
        self._held: Report | None = None

    def report(self, report: Report) -> None:
        """Write ``report`` now, or hold it (the throttle); see the module docstring."""
        now = time.monotonic()
        if report.fraction < 1.0 and now - self._last_write < self.min_interval_s:
            self._held = report
            return
        self._held = None
        self._last_write = now
        self._emit(report)

    def take_held(self) -> Report | None:
        """The call held by the throttle, if any (it is then no longer held)."""
        held, self._held = self._held, None
        return held

    def params(self, report: Report) -> dict[str, Any]:
        """INSERT_PROGRESS's parameters for ``report``."""
        return {"job_id": self.job_id, "attempt": self.attempt, "fraction": report.fraction,
                "message": report.message, "data": report.data}

    def _emit(self, report: Report) -> None:
        raise NotImplementedError


class EngineProgress(ProgressWriter):
    """A worker's writer: async handlers write on ``async_engine`` in tasks of the event loop (the call
    returns at once, the writes keep their order); sync handlers, in their thread, on ``sync_engine``.

    Either way each write is its own short transaction, and a failed write is logged, not raised: a
    handler's work does not fail because its progress could not be shown.
    """

    def __init__(self, job_id: uuid.UUID, attempt: int, async_engine: Any, sync_engine: Any,
                 min_interval_s: float = MIN_INTERVAL_S) -> None:
        super().__init__(job_id, attempt, min_interval_s)
        self.async_engine = async_engine
        self.sync_engine = sync_engine
        self._tail: asyncio.Task[None] | None = None

    def _emit(self, report: Report) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a sync handler's thread
            self._write_sync(report)
            return
        self._tail = loop.create_task(self._write_after(self._tail, report))

    async def _write_after(self, previous: asyncio.Task[None] | None, report: Report) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # in order; never raises (each write logs its own failure)
        try:
            async with self.async_engine.begin() as conn:
                await run_async(conn, queries.INSERT_PROGRESS, self.params(report))
        except Exception as exc:  # noqa: BLE001 - progress is shown best effort; the job goes on
            event(log, "progress.write_failed", logging.WARNING, job_id=self.job_id, error=type(exc).__name__)

    def _write_sync(self, report: Report) -> None:
        try:
            with self.sync_engine.begin() as conn:
                run(conn, queries.INSERT_PROGRESS, self.params(report))
        except Exception as exc:  # noqa: BLE001 - progress is shown best effort; the job goes on
            event(log, "progress.write_failed", logging.WARNING, job_id=self.job_id, error=type(exc).__name__)

    async def flush(self) -> None:
        """Write the held call and wait for every write of the attempt (before its outcome is recorded)."""
        held = self.take_held()
        if held is not None:
            self._last_write = time.monotonic()
            self._emit(held)
        if self._tail is not None:
            await asyncio.wait([self._tail])

    def flush_sync(self) -> None:
        """:meth:`flush` for a sync handler's thread."""
        held = self.take_held()
        if held is not None:
            self._last_write = time.monotonic()
            self._write_sync(held)


class BufferedProgress(ProgressWriter):
    """``outbox.testing.drain``'s writer: calls are kept and written through the caller's session when
    the handler returns (before the success, in its savepoint) or raises (after the savepoint's
    rollback, before the failure): the caller's jobs may be uncommitted, invisible to other sessions."""

    def __init__(self, job_id: uuid.UUID, attempt: int, min_interval_s: float = MIN_INTERVAL_S) -> None:
        super().__init__(job_id, attempt, min_interval_s)
        self.reports: list[Report] = []

    def _emit(self, report: Report) -> None:
        self.reports.append(report)

    def flush_to(self, session: Any) -> None:
        """Write every kept call (and the held one) on ``session``."""
        held = self.take_held()
        if held is not None:
            self.reports.append(held)
        for report in self.reports:
            run(session, queries.INSERT_PROGRESS, self.params(report))
        self.reports.clear()


# --- The per-job read capability --------------------------------------------------------------------

#: Prefix of every capability, and the version of its format.
CAPABILITY_VERSION = "v1"
#: Shortest secret accepted, in bytes.
MIN_SECRET_BYTES = 32
_DOMAIN = b"tierbox-job-events"


def _key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise CapabilityError(f"secret: at least {MIN_SECRET_BYTES} bytes, got {len(key)} "
                              "(e.g. secrets.token_urlsafe(32))")
    return key


def _signature(key: bytes, job_hex: str, expires: int) -> str:
    mac = hmac.new(key, b"%s:%s:%s:%d" % (_DOMAIN, CAPABILITY_VERSION.encode(), job_hex.encode(), expires),
                   hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def job_capability(job_id: uuid.UUID | str, secret: str | bytes, ttl_s: float = 3600.0,
                   *, now: float | None = None) -> str:
    """A token letting its holder read one job's events until ``ttl_s`` seconds from now.

    Format: ``v1.<job id, 32 hex>.<expiry, unix seconds>.<HMAC-SHA256, base64url>``, signed with
    ``secret`` (the one the mounted events router verifies with; at least 32 bytes). It grants
    nothing else: not another job, not the admin API.
    """
    if ttl_s <= 0 or not math.isfinite(ttl_s):
        raise CapabilityError(f"ttl_s: must be a positive number of seconds, not {ttl_s!r}")
    job_hex = uuid.UUID(str(job_id)).hex
    expires = int((time.time() if now is None else now) + ttl_s)
    return f"{CAPABILITY_VERSION}.{job_hex}.{expires}.{_signature(_key(secret), job_hex, expires)}"


def verify_capability(token: str, job_id: uuid.UUID, secret: str | bytes, *, now: float | None = None) -> None:
    """Raise :class:`CapabilityError` unless ``token`` is a valid, unexpired capability for ``job_id``."""
    key = _key(secret)
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != CAPABILITY_VERSION or not parts[2].isdigit() or len(parts[2]) > 12:
        raise CapabilityError("malformed capability")
    _, job_hex, expires_text, signature = parts
    expires = int(expires_text)
    # Signature first, in constant time: nothing about the token is told before it is known genuine.
    if not hmac.compare_digest(signature.encode(), _signature(key, job_hex, expires).encode()):
        raise CapabilityError("capability signature does not match")
    if job_hex != job_id.hex:
        raise CapabilityError("capability is for another job")
    if expires <= (time.time() if now is None else now):
        raise CapabilityError("capability expired")
