"""The public HTTP API of the production queue: enqueue with a client idempotency key, read a job,
list and redrive dead letters.

``POST /jobs`` with an ``Idempotency-Key`` header writes the job through the outbox in one short
transaction. The key is the outbox's own idempotency key (a unique index in Postgres, in the same
transaction as the job), not a Redis ``SETNX`` beside it: a replayed key returns the first job's id
with ``"duplicate": true``, whichever API process or worker crash came in between, and there is no
window where the key is set but the job is not committed (or the reverse). Errors use the admin
API's JSON shape (``{"error": {"code", "message", "field"}}``), by reusing its handlers.

Served by uvicorn: ``python -m uvicorn examples.idempotent_api.app:app`` with the ``TIERBOX_*``
settings in the environment.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Litestar, Request, get, post
from litestar.datastructures import State
from litestar.params import Parameter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import outbox
from examples.idempotent_api import tasks
from outbox.config import Settings
from tierbox.api.errors import HANDLERS
from tierbox.ops import dead_letters
from tierbox.ops.audit import Actor
from tierbox.ops.errors import RequestError, invalid
from tierbox.ops.models import DeadLetterPage, Redriven

#: Longest idempotency key accepted (the story's clients send UUIDs or short composite keys).
MAX_KEY_CHARS = 200


class NewJob(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /jobs`` body."""

    document_id: int


class Accepted(msgspec.Struct, kw_only=True):
    """``POST /jobs`` answer: the job's id, and whether the key had already been used."""

    job_id: uuid.UUID
    duplicate: bool


class JobView(msgspec.Struct, kw_only=True):
    """``GET /jobs/{id}``."""

    job_id: uuid.UUID
    status: str
    tier: str
    attempts: int


def _engine(state: State) -> AsyncEngine:
    engine: AsyncEngine = state.engine
    return engine


@post("/jobs", status_code=202)
async def create_job(state: State, data: NewJob,
                     idempotency_key: Annotated[str | None, Parameter(header="Idempotency-Key")] = None) -> Accepted:
    """Enqueue one render job under the client's idempotency key (required)."""
    if not idempotency_key:
        raise invalid("Idempotency-Key", "this header is required")
    if len(idempotency_key) > MAX_KEY_CHARS:
        raise invalid("Idempotency-Key", f"at most {MAX_KEY_CHARS} characters")
    spec = outbox.job(tasks.render_document, args=[data.document_id], idempotency_key=idempotency_key)
    async with _engine(state).begin() as conn:
        (job_id,) = await outbox.enqueue_many_async(conn, [spec])
    return Accepted(job_id=job_id, duplicate=job_id != spec.id)  # a used key returns the first job's id


@get("/jobs/{job_id:uuid}")
async def read_job(state: State, job_id: uuid.UUID) -> JobView:
    """One job's status in the ledger."""
    async with _engine(state).connect() as conn:
        row = (await conn.execute(text("SELECT status, tier, attempts FROM outbox.jobs WHERE id = :id"),
                                  {"id": job_id})).first()
    if row is None:
        raise RequestError(404, f"no job {job_id}")
    return JobView(job_id=job_id, status=row.status, tier=row.tier, attempts=row.attempts)


@get("/dead-letters")
async def list_dead_letters(state: State) -> DeadLetterPage:
    """Open dead letters, newest first, payloads redacted (the operator services the admin API uses)."""
    async with _engine(state).connect() as conn:
        return await dead_letters.page(conn, dead_letters.DeadLetterFilter(), limit=200)


@post("/dead-letters/{job_id:uuid}/redrive", status_code=200)
async def redrive(state: State, request: Request[Any, Any, Any], job_id: uuid.UUID) -> Redriven:
    """Redrive one dead letter as a new job (audited; 404 if none, 409 if already settled)."""
    actor = Actor("idempotent_api", "token", request.client.host if request.client else None)
    return await dead_letters.redrive(_engine(state), actor, job_id, reason="redriven over the example API")


async def _open(app: Litestar) -> None:
    settings = Settings.from_env()
    outbox.configure(topology=settings.topology, max_payload_bytes=settings.max_payload_bytes)
    app.state.engine = create_async_engine(settings.sqlalchemy_url, pool_size=10, max_overflow=10,
                                           pool_pre_ping=True, pool_timeout=10)


async def _close(app: Litestar) -> None:
    await _engine(app.state).dispose()


app = Litestar([create_job, read_job, list_dead_letters, redrive], on_startup=[_open], on_shutdown=[_close],
               exception_handlers=HANDLERS)
