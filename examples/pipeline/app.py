"""The meeting pipeline's API: upload a meeting, follow its job over SSE, read its results.

``POST /meetings`` records the meeting and enqueues its processing job **in one transaction**,
with the customer's completion webhook declared on the job: both are written or neither is, so an
upload is never recorded without its job (the story committed the job row, then called
``.delay()``: a crash in between left a meeting nobody would process). The answer hands the
uploader a per-job capability (``outbox.job_capability``) for the job's event stream at
``GET /jobs/{job_id}/events?token=...``, the end-user router of ``tierbox.api.job_events``: the
browser's ``EventSource`` reads it, and it grants nothing else. Errors use the admin API's JSON
shape (``{"error": {"code", "message", "field"}}``).

Served by uvicorn: ``python -m uvicorn --factory examples.pipeline.app:create_app`` with the ``TIERBOX_*`` settings
and ``PIPELINE_EVENTS_SECRET`` (at least 32 bytes) in the environment.
"""

from __future__ import annotations

import base64
import binascii
import os
import uuid
from typing import Any

import msgspec
from litestar import Litestar, get, post
from litestar.datastructures import State
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

import outbox
from examples.pipeline import tasks
from outbox import webhooks
from outbox.config import Settings
from tierbox.api.errors import HANDLERS
from tierbox.api.job_events import JobEvents
from tierbox.ops.errors import RequestError, invalid

#: Largest upload accepted here (the example's fake recordings are a few hundred bytes).
MAX_AUDIO_BYTES = 1024 * 1024
#: How long a capability for a job's event stream lasts (keep it short: URLs reach access logs).
CAPABILITY_TTL_S = 900
#: The name of the secret completion webhooks are signed with (its value is in the workers' environment).
WEBHOOK_SECRET_NAME = "cms"


class Upload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /meetings``: the recording (base64), its title, and where to announce completion."""

    title: str
    audio_b64: str
    webhook_url: str


class Uploaded(msgspec.Struct, kw_only=True):
    """``POST /meetings`` answer: ids, and the capability the browser follows the job with."""

    meeting_id: uuid.UUID
    job_id: uuid.UUID
    events_url: str
    token: str


class MeetingView(msgspec.Struct, kw_only=True):
    """``GET /meetings/{id}``: the stored results and what became of the job."""

    meeting_id: uuid.UUID
    status: str
    job_status: str
    summary: str | None
    degraded: list[str] | None


def _secret() -> str:
    secret = os.environ.get("PIPELINE_EVENTS_SECRET", "")
    if len(secret.encode()) < 32:
        raise outbox.ConfigError("PIPELINE_EVENTS_SECRET", "set it to a secret of at least 32 bytes")
    return secret


def upload(session: Session, data: Upload) -> tuple[uuid.UUID, uuid.UUID]:
    """Record the meeting and enqueue its job with its completion webhook, in the caller's transaction."""
    if not 1 <= len(data.title) <= 200:
        raise invalid("title", "1 to 200 characters")
    try:
        audio = base64.b64decode(data.audio_b64, validate=True)
    except binascii.Error:
        raise invalid("audio_b64", "not base64") from None
    if not 0 < len(audio) <= MAX_AUDIO_BYTES:
        raise invalid("audio_b64", f"1 to {MAX_AUDIO_BYTES} bytes once decoded")
    meeting_id = uuid.uuid4()
    try:
        job_id = outbox.enqueue(session, tasks.process_meeting, kwargs={"meeting_id": str(meeting_id)},
                                webhook=outbox.Webhook(url=data.webhook_url, secret=WEBHOOK_SECRET_NAME))
    except outbox.WebhookError as exc:  # refused before anything was written; the field is named
        raise invalid("webhook_url", str(exc).split(": ", 1)[-1]) from None
    session.execute(text(f"INSERT INTO {tasks.MEETINGS} (id, job_id, title, audio_file) VALUES (:id, :job, :t, :f)"),
                    {"id": meeting_id, "job": job_id, "t": data.title, "f": f"{meeting_id}.wav"})
    # The recording is written before the commit: a rolled-back upload leaves an orphan file (swept
    # by age), never a job without its recording.
    tasks.UPLOAD_DIR.mkdir(parents=True, exist_ok=True)
    (tasks.UPLOAD_DIR / f"{meeting_id}.wav").write_bytes(audio)
    return meeting_id, job_id


@post("/meetings", status_code=202, sync_to_thread=True)
def create_meeting(state: State, data: Upload) -> Uploaded:
    """Upload a meeting: recorded and enqueued together; the answer says how to follow it."""
    engine: Engine = state.engine
    with Session(engine) as session, session.begin():
        meeting_id, job_id = upload(session, data)
    token = outbox.job_capability(job_id, _secret(), ttl_s=CAPABILITY_TTL_S)
    return Uploaded(meeting_id=meeting_id, job_id=job_id, events_url=f"/jobs/{job_id}/events", token=token)


@get("/meetings/{meeting_id:uuid}", sync_to_thread=True)
def read_meeting(state: State, meeting_id: uuid.UUID) -> MeetingView:
    """The meeting's stored results, and its job's status in the ledger."""
    engine: Engine = state.engine
    with engine.connect() as conn:
        row = conn.execute(text(f"SELECT m.status, j.status AS job_status, m.summary, m.degraded "
                                f"FROM {tasks.MEETINGS} m JOIN outbox.jobs j ON j.id = m.job_id WHERE m.id = :id"),
                           {"id": meeting_id}).first()
    if row is None:
        raise RequestError(404, f"no meeting {meeting_id}")
    status = "failed" if row.job_status in ("dead", "discarded", "expired") else row.status
    return MeetingView(meeting_id=meeting_id, status=status, job_status=row.job_status, summary=row.summary,
                       degraded=row.degraded)


def create_app() -> Litestar:
    """The API: uploads, meetings, and the end-user job event stream."""
    settings = Settings.from_env()
    outbox.configure(topology=settings.topology, max_payload_bytes=settings.max_payload_bytes)
    webhooks.configure(allow=settings.webhook_allow, tier=settings.webhook_tier)
    events = JobEvents(settings.database_url, secret=_secret())

    async def open_engine(app: Litestar) -> None:
        app.state.engine = create_engine(settings.sqlalchemy_url, pool_size=5, max_overflow=5, pool_pre_ping=True)

    async def close(app: Litestar) -> None:
        await events.close()
        engine: Engine = app.state.engine
        engine.dispose()

    handlers: list[Any] = [create_meeting, read_meeting, events.router("/jobs")]
    return Litestar(handlers, on_startup=[open_engine], on_shutdown=[close], exception_handlers=HANDLERS)

