"""``python -m examples.pipeline``: the meeting pipeline's claims on the real processes, at a small size.

The example serves its API, the fake AI providers and the customer's webhook receiver with uvicorn,
runs the relay and two workers, uploads meetings over HTTP with the summary provider failing half the
time, follows a sample of jobs over SSE, and SIGKILLs a worker mid-run. Asserted exactly: every
readable meeting's job succeeded, those whose summary failed were stored without it (and said so in
their webhook), the unreadable recording's job is dead with a ``job.dead`` webhook, no upload lost
its job, the receiver processed exactly one verified webhook per job, and every sampled SSE stream
saw its progress in order and then its outcome.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from outbox.config import Settings
from tests.examples.claims import claims, number
from tests.helpers import ROOT, settings_env

pytestmark = [pytest.mark.timeout(450)]

MEETINGS = 12


@pytest.mark.slow
def test_the_meeting_pipeline_completes_every_job_with_partial_results_and_one_webhook_each(
        settings: Settings) -> None:
    env = settings_env(settings)
    env.pop("TIERBOX_APP")  # the example names its own task module
    done = subprocess.run([sys.executable, "-m", "examples.pipeline", "--meetings", str(MEETINGS), "--sample", "3"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    table = claims(done.stdout)
    assert len(table) == 7 and all(held for held, _ in table.values()), out
    completes = table["every job completes despite a summary provider failing 50 % of the time"][1]
    assert f"{MEETINGS}/{MEETINGS} readable meetings succeeded" in completes, out
    partial = table["partial results beat total failure: the transcript is saved without the summary"][1]
    assert number(r"(\d+) meetings stored without a summary", partial) >= 1, out
    assert "store matches each webhook's result: True" in partial, out
    mandatory = table["transcription is mandatory: its final failure fails the job"][1]
    # one attempt, or two if the SIGKILLed worker was running it: either way no retry of a Reject
    assert number(r"job dead after (\d+) attempt", mandatory) <= 2, out
    assert "dead letter True, webhook job.dead" in mandatory, out
    lost = table["none is lost (late ack; a worker SIGKILLed mid-run)"][1]
    assert f"{MEETINGS + 1} uploads, {MEETINGS + 1} terminal jobs, lost 0;" in lost and "1 SIGKILL" in lost, out
    backoff = table["transient provider failures are retried with exponential back-off"][1]
    assert number(r"(\d+) jobs succeeded after failed attempts", backoff) >= MEETINGS // 5, out  # every 5th: 2
    assert "after attempt 1:" in backoff, out
    hooks = table["every completion webhook is delivered, signed, exactly once to the receiver"][1]
    assert f"{MEETINGS + 1} distinct webhook-ids for {MEETINGS + 1} jobs, all ours: True" in hooks, out
    assert "0 signatures rejected" in hooks and "3 answered 503 and retried" in hooks, out  # every 4th of 13
    assert "2 2xx lost (500 after processing) and 2 re-deliveries absorbed" in hooks, out  # every 5th of 13
    sse = table["the browser sees the job's progress over SSE, then its outcome"][1]
    assert sse.startswith("3/3 streams"), out


def test_an_upload_refused_names_its_field_and_writes_nothing(settings: Settings, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from litestar.testing import TestClient

    from examples.pipeline import app, tasks

    for name, value in settings_env(settings).items():
        if name.startswith("TIERBOX_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("PIPELINE_EVENTS_SECRET", "s" * 32)
    monkeypatch.setattr(tasks, "UPLOAD_DIR", tmp_path)
    with psycopg.connect(settings.psycopg_url, autocommit=True) as conn:
        conn.execute(tasks.SCHEMA)  # type: ignore[arg-type]
    good = {"title": "weekly sync", "audio_b64": base64.b64encode(b"RIFF....WAVE").decode(),
            "webhook_url": "https://169.254.169.254/latest"}
    with TestClient(app.create_app()) as client:
        refused = [(client.post("/meetings", json={**good, **change}), field) for change, field in [
            ({}, "webhook_url"),  # the cloud metadata address: the SSRF guard refuses it
            ({"audio_b64": "not base64!"}, "audio_b64"),
            ({"title": ""}, "title"),
        ]]
    for answer, field in refused:
        assert answer.status_code == 422 and answer.json()["error"]["field"] == field, answer.text
    with psycopg.connect(settings.psycopg_url) as conn:
        written = conn.execute(f"SELECT (SELECT count(*) FROM {tasks.MEETINGS}), "  # type: ignore[arg-type]
                               "(SELECT count(*) FROM outbox.jobs)").fetchone()
    assert written == (0, 0) and not list(tmp_path.iterdir())
