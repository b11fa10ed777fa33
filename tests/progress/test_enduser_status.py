"""The end-user router's status resource ``GET {path}/{job_id}`` and its whole stream, in-process:
``JobEvents.asgi_app`` (the ASGI app docs/progress.md offers to any framework) served through
``httpx.ASGITransport``, on a migrated database of this test's own."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

import outbox
from tests.api.test_api import READ
from tests.progress.test_progress_ctx import _drain_with
from tierbox.api.job_events import JobEvents

SECRET = "end-user-status-secret-of-this-test-0123456789abcdef"


def reports(ctx: outbox.TaskContext, **_: Any) -> None:
    """Two progress calls; 1.0 is never held by the throttle, so both are written."""
    ctx.progress(0.5, "half", {"k": 1})
    ctx.progress(1.0, "done", {"k": 2})


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    events = JobEvents(db_url, secret=SECRET, heartbeat_s=0.5)
    transport = httpx.ASGITransport(app=events.asgi_app("/jobs"))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        yield http
    await events.close()


def cap(job_id: uuid.UUID) -> dict[str, str]:
    return {"token": outbox.job_capability(job_id, SECRET, ttl_s=60)}


async def test_the_status_of_a_job_for_the_holder_of_its_capability(db_url: str, client: httpx.AsyncClient) -> None:
    with psycopg.connect(db_url) as conn:
        done, status = _drain_with(conn, reports)
        waiting = outbox.enqueue(conn, "sample.progress")
        conn.commit()
        [(attempts, finished_at, last_progress)] = conn.execute(
            "SELECT j.attempts, j.finished_at, max(e.id) FILTER (WHERE e.kind = 'progress') FROM outbox.jobs j "
            "JOIN outbox.job_events e ON e.job_id = j.id WHERE j.id = %s GROUP BY j.id", (done,)).fetchall()
    assert status == "succeeded"

    answer = await client.get(f"/jobs/{done}", params=cap(done))
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert set(body) == {"job_id", "status", "attempts", "finished_at", "progress"}
    assert (body["job_id"], body["status"], body["attempts"]) == (str(done), "succeeded", attempts)
    assert dt.datetime.fromisoformat(body["finished_at"]) == finished_at
    progress = body["progress"]
    assert (progress["fraction"], progress["message"], progress["data"]) == (1.0, "done", {"k": 2})
    assert progress["event_id"] == last_progress
    bearer = await client.get(f"/jobs/{done}", headers={"Authorization": f"Bearer {cap(done)['token']}"})
    assert bearer.json() == body

    answer = await client.get(f"/jobs/{waiting}", params=cap(waiting))
    assert answer.json() == {"job_id": str(waiting), "status": "pending", "attempts": 0, "finished_at": None,
                             "progress": None}

    # The same job's whole stream through the same app: it ends after the outcome.
    stream = await client.get(f"/jobs/{done}/events", params=cap(done))
    assert stream.headers["content-type"].startswith("text/event-stream")
    kinds = [line.removeprefix("event: ") for line in stream.text.splitlines() if line.startswith("event: ")]
    assert kinds == ["status", "progress", "progress", "outcome"]


async def test_the_status_is_refused_without_the_jobs_capability(db_url: str, client: httpx.AsyncClient) -> None:
    with psycopg.connect(db_url) as conn:
        job, _ = _drain_with(conn, reports)
        other, _ = _drain_with(conn, reports)
        conn.commit()
    refused = {
        "missing": await client.get(f"/jobs/{job}"),
        "another job's": await client.get(f"/jobs/{job}", params=cap(other)),
        "expired": await client.get(f"/jobs/{job}", params={
            "token": outbox.job_capability(job, SECRET, ttl_s=5, now=dt.datetime.now(dt.UTC).timestamp() - 60)}),
        "other secret": await client.get(f"/jobs/{job}", params={"token": outbox.job_capability(job, "x" * 40)}),
        "operator token": await client.get(f"/jobs/{job}", headers=READ),
    }
    for case, answer in refused.items():
        assert answer.status_code == 403, (case, answer.text)
        assert answer.json()["error"]["field"] == "token", case
        assert "succeeded" not in answer.text, case
    nowhere = uuid.uuid4()  # a valid capability for a job the ledger does not hold
    missing = await client.get(f"/jobs/{nowhere}", params=cap(nowhere))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    malformed = await client.get("/jobs/not-a-uuid", params=cap(job))
    assert malformed.status_code == 422 and malformed.json()["error"]["field"] == "job_id"
