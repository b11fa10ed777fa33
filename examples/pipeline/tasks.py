"""The pipeline job: transcription (mandatory), four analysis steps (optional), storage, with progress.

One task runs the whole pipeline, as the story's ``process_job`` does. Transcription failing fails
the attempt: a 503 from the provider raises and the job is retried with Tierbox's default
exponential back-off (``max_retries=3``, full jitter under ``1 s * 2**(attempt-1)``, capped at
600 s: ``outbox/registry.py`` ``DEFAULT_*``, ``workers/outcomes.py`` ``retry_delay_s``); unreadable
audio (422) raises :class:`outbox.Reject`, a dead letter at once. The analysis steps catch their
own failures: the meeting is stored without that part and ``degraded`` names it.

Storage is written through ``ctx.session``: it commits with the job's success, in the transaction
that also writes the completion webhook's delivery job (docs/webhooks.md), so a stored meeting and
its webhook exist together or not at all. The message is acknowledged only after that commit
(late acknowledgement is the worker's default: ``workers/delivery.py``), so a worker killed
mid-job leaves the message to be delivered again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

import outbox
from outbox import Tier

#: The application's meetings table (the story's ``meetings``/``jobs`` tables, folded into one).
MEETINGS = "public.pipeline_meetings"
TASK = "meetings.process"
OPTIONAL_STEPS = ("speakers", "summary", "action_items", "decisions")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {MEETINGS} (
    id           uuid PRIMARY KEY,
    job_id       uuid NOT NULL,
    title        text NOT NULL,
    audio_file   text NOT NULL,
    uploaded_at  timestamptz NOT NULL DEFAULT now(),
    status       text NOT NULL DEFAULT 'queued',
    transcript   text,
    speakers     jsonb,
    summary      text,
    action_items jsonb,
    decisions    jsonb,
    degraded     text[],
    stored_at    timestamptz
)
"""

#: Where the API keeps uploaded recordings and the workers read them (the story's ``upload_dir``).
UPLOAD_DIR = Path(os.environ.get("PIPELINE_UPLOAD_DIR", "pipeline-uploads"))

#: The providers' base URL (the runner starts the fake providers and passes it to the workers).
PROVIDERS_URL = os.environ.get("PIPELINE_PROVIDERS_URL", "http://127.0.0.1:8766")

# One client per worker process, shared by the pool's handler threads. 30 s per call, as the story.
_client = httpx.Client(base_url=PROVIDERS_URL, timeout=30)


class TranscriptionError(Exception):
    """The speech-to-text provider answered with an error: the attempt fails and is retried."""


def _transcribe(meeting_id: str, audio: bytes) -> str:
    import base64

    response = _client.post("/transcribe", json={"meeting_id": meeting_id,
                                                 "audio_b64": base64.b64encode(audio).decode()})
    if response.status_code == 422:
        raise outbox.Reject(f"transcription refused the audio of meeting {meeting_id}: "
                            f"{response.json().get('error')}")
    if response.status_code != 200:
        raise TranscriptionError(f"transcription answered {response.status_code}")
    transcript = str(response.json()["transcript"])
    if len(transcript.strip()) < 10:
        raise TranscriptionError("transcription produced insufficient content")
    return transcript


def _analyse(step: str, meeting_id: str, transcript: str) -> Any:
    response = _client.post(f"/{step}", json={"meeting_id": meeting_id, "transcript": transcript})
    response.raise_for_status()
    return response.json()["result"]


@outbox.task(tier=Tier.NORMAL, name=TASK, webhook_result=True)
def process_meeting(ctx: outbox.TaskContext, *, meeting_id: str) -> dict[str, Any]:
    """Transcribe, analyse, store one meeting; the return value is the completion webhook's ``result``."""
    ctx.progress(0.1, "transcribing")
    audio = (UPLOAD_DIR / f"{meeting_id}.wav").read_bytes()  # a missing file raises: retried, then dead
    transcript = _transcribe(meeting_id, audio)  # mandatory: raises, the attempt fails
    ctx.progress(0.4, "transcribed", {"chars": len(transcript)})
    results: dict[str, Any] = {}
    degraded: list[str] = []
    for i, step in enumerate(OPTIONAL_STEPS, 1):
        try:
            results[step] = _analyse(step, meeting_id, transcript)
        except httpx.HTTPError:  # optional: record the gap and go on (the story's graceful degradation)
            results[step] = None
            degraded.append(step)
        ctx.progress(0.4 + 0.1 * i, f"{step}: {'skipped' if step in degraded else 'done'}",
                     {"step": step, "ok": step not in degraded})
    # The last progress is reported with fraction 1.0 (never held back by the 0.5 s throttle, so
    # written now), before the storage statement on ctx.session.
    ctx.progress(1.0, "storing", {"degraded": degraded})
    ctx.session.execute(text(
        f"UPDATE {MEETINGS} SET status = 'completed', transcript = :t, speakers = CAST(:s AS jsonb), "
        "summary = :sum, action_items = CAST(:a AS jsonb), decisions = CAST(:d AS jsonb), degraded = :deg, "
        "stored_at = now() WHERE id = :id"), {
        "id": meeting_id, "t": transcript, "s": json.dumps(results["speakers"]), "sum": results["summary"],
        "a": json.dumps(results["action_items"]), "d": json.dumps(results["decisions"]), "deg": degraded})
    return {"meeting_id": meeting_id, "degraded": degraded, "summary": results["summary"]}
