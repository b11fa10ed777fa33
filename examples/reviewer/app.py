"""The reviewer's API: submit a lab, follow its process, and (admin) inspect and replay final failures.

The request path is the same in both dispatch modes: ``submit`` records the process and enqueues
the job in one transaction, and answers with the process id. What differs is who runs the job:

* ``tierbox`` (a broker is configured: ``TIERBOX_AMQP_URL`` is set): the relay publishes it and a
  worker of the ``normal`` pool runs it, in another process;
* ``in_process`` (no broker configured, local development): once the response is sent, the API
  process runs it with :func:`outbox.testing.drain` and commits, as FastAPI's BackgroundTasks did,
  through the same ledger statements as a worker. Postgres is the only service needed.

``REVIEWER_DISPATCHER`` forces one (an unknown value stops the app at startup, naming it). The
process status is the application's table for what the job did, and the job ledger for what became
of it: a dead job's process reads ``failed`` with no hook to call and nothing to keep in sync.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

import msgspec
from litestar import Litestar, get, post
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.response import Response
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

import outbox
import outbox.testing
from examples.reviewer import tasks
from outbox.config import Settings
from tierbox.api.errors import HANDLERS
from tierbox.ops.errors import RequestError, invalid
from tierbox.ops.redaction import redact

DISPATCHERS = ("tierbox", "in_process")
#: Output names are file names in the output storage, never paths.
OUTPUT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def dispatcher() -> str:
    """The dispatch mode: ``REVIEWER_DISPATCHER``, else ``tierbox`` when a broker is configured."""
    chosen = os.environ.get("REVIEWER_DISPATCHER") or ("tierbox" if os.environ.get("TIERBOX_AMQP_URL")
                                                       else "in_process")
    if chosen not in DISPATCHERS:
        raise outbox.ConfigError("REVIEWER_DISPATCHER", f"{chosen!r} is not one of {', '.join(DISPATCHERS)}")
    return chosen


class Lab(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /labs``: the lab's markdown context and the file name to write the review to."""

    context: str
    output_name: str


class Submitted(msgspec.Struct, kw_only=True):
    """``POST /labs`` answer."""

    process_id: uuid.UUID
    dispatcher: str


class Process(msgspec.Struct, kw_only=True):
    """``GET /labs/{id}``: the process as the frontend follows it."""

    process_id: uuid.UUID
    status: str
    result: str | None
    job_status: str
    attempts: int


def submit(session: Session, lab: Lab) -> tuple[uuid.UUID, uuid.UUID]:
    """Record the process and enqueue its job in the caller's transaction; returns (process id, job id)."""
    if not OUTPUT_NAME.fullmatch(lab.output_name):
        raise invalid("output_name", "a file name of letters, digits, '_', '.', '-' (at most 100)")
    process_id = uuid.uuid4()
    job_id = outbox.enqueue(session, tasks.process_markdown, kwargs={
        "context": lab.context, "output_name": lab.output_name, "process_id": str(process_id)})
    session.execute(text(f"INSERT INTO {tasks.PROCESSES} (id, job_id, status) VALUES (:id, :job, 'queued')"),
                    {"id": process_id, "job": job_id})
    return process_id, job_id


def run_in_process(engine: Engine, job_id: uuid.UUID) -> None:
    """Local development: run the job here, after the response, and commit what it did."""
    with Session(engine) as session, session.begin():
        outbox.testing.drain(session, jobs=[job_id])


@post("/labs", status_code=202, sync_to_thread=True)
def create_lab(state: State, data: Lab) -> Response[Submitted]:
    """Submit a lab for review; the answer carries the process id to follow."""
    engine: Engine = state.engine
    with Session(engine) as session, session.begin():
        process_id, job_id = submit(session, data)
    mode: str = state.dispatcher
    background = BackgroundTask(run_in_process, engine, job_id) if mode == "in_process" else None
    return Response(Submitted(process_id=process_id, dispatcher=mode), status_code=202, background=background)


#: The process and the newest job of its lineage (a replay is a new job whose ``redrive_of`` is the dead one).
LATEST_JOB = f"""
WITH RECURSIVE lineage AS (
    SELECT j.id, j.status, j.attempts, 0 AS depth
    FROM {tasks.PROCESSES} p JOIN outbox.jobs j ON j.id = p.job_id WHERE p.id = :id
    UNION ALL
    SELECT j.id, j.status, j.attempts, l.depth + 1 FROM outbox.jobs j JOIN lineage l ON j.redrive_of = l.id
)
SELECT p.status, p.result, l.status AS job_status, l.attempts
FROM {tasks.PROCESSES} p, lineage l WHERE p.id = :id ORDER BY l.depth DESC LIMIT 1
"""


@get("/labs/{process_id:uuid}", sync_to_thread=True)
def read_lab(state: State, process_id: uuid.UUID) -> Process:
    """The process: ``queued``, ``completed``, or ``failed`` once its job is dead-lettered."""
    engine: Engine = state.engine
    with engine.connect() as conn:
        row = conn.execute(text(LATEST_JOB), {"id": process_id}).first()
    if row is None:
        raise RequestError(404, f"no process {process_id}")
    status = "failed" if row.job_status == "dead" else row.status
    return Process(process_id=process_id, status=status, result=row.result, job_status=row.job_status,
                   attempts=row.attempts)


@get("/admin/failed", sync_to_thread=True)
def failed(state: State) -> list[dict[str, Any]]:
    """Open dead letters of the review task, redacted by the task's hook and the default rules."""
    engine: Engine = state.engine
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT job_id, task, reason, error_type, attempts, failed_at, payload "
                                 "FROM outbox.dead_letters WHERE task = :task AND redriven_at IS NULL "
                                 "AND discarded_at IS NULL ORDER BY failed_at DESC LIMIT 100"),
                            {"task": tasks.TASK}).all()
    return [{"job_id": str(r.job_id), "reason": r.reason, "error_type": r.error_type, "attempts": r.attempts,
             "failed_at": r.failed_at.isoformat(), "payload": redact(r.payload, r.task)} for r in rows]


@post("/admin/failed/{job_id:uuid}/replay", status_code=200, sync_to_thread=True)
def replay(state: State, job_id: uuid.UUID) -> dict[str, str]:
    """Redrive a dead job: a new job with the original (unredacted) payload, due at once."""
    engine: Engine = state.engine
    with Session(engine) as session, session.begin():
        new_id = outbox.redrive(session, job_id, by="reviewer admin", reason="output storage restored")
    if state.dispatcher == "in_process":
        run_in_process(engine, new_id)
    return {"job_id": str(job_id), "new_job_id": str(new_id)}


def _open(app: Litestar) -> None:
    settings = Settings.from_env()
    app.state.dispatcher = dispatcher()
    outbox.configure(topology=settings.topology, max_payload_bytes=settings.max_payload_bytes)
    app.state.engine = create_engine(settings.sqlalchemy_url, pool_size=5, pool_pre_ping=True)
    with app.state.engine.begin() as conn:  # the application's own table (its migrations, in a real app)
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {tasks.PROCESSES} (id uuid PRIMARY KEY, job_id uuid NOT NULL, "
                          f"status text NOT NULL, result text, created_at timestamptz NOT NULL DEFAULT now())"))


def _close(app: Litestar) -> None:
    app.state.engine.dispose()


app = Litestar([create_lab, read_lab, failed, replay], on_startup=[_open], on_shutdown=[_close],
               exception_handlers=HANDLERS)
