"""The fake AI providers: a local HTTP service playing the speech-to-text service and the language model.

One endpoint per pipeline step (``/transcribe``, ``/speakers``, ``/summary``, ``/action_items``,
``/decisions``), each with the same latency and its own random failure rate (a 503, as a provider
that is overloaded or rate-limiting answers). ``/transcribe`` refuses with 422 audio that is not a
WAV file (it does not start with ``RIFF``): a permanent failure, as an unreadable recording is.
``GET /stats`` returns, per step, the requests and the failures it served.

Served by uvicorn as its own process: ``python -m uvicorn examples.pipeline.providers:app``.
``PROVIDER_LATENCY_MS`` (default 200) and ``PROVIDER_FAILURE_RATES`` (``step=rate`` pairs, comma
separated, e.g. ``summary=0.5,transcribe=0.05``; steps not named never fail) set it up, and
``PROVIDER_FLAKY_EVERY`` (default 0: off): the first two transcription requests of every n-th
meeting it sees answer 503, a deterministic transient failure whose retries a run can count.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import random
from collections import Counter

import msgspec
from litestar import Litestar, Response, get, post

STEPS = ("transcribe", "speakers", "summary", "action_items", "decisions")
LATENCY_S = float(os.environ.get("PROVIDER_LATENCY_MS", "200")) / 1000


def parse_rates(raw: str) -> dict[str, float]:
    """``"summary=0.5,transcribe=0.05"`` -> ``{"summary": 0.5, "transcribe": 0.05}``; unknown steps refused."""
    rates: dict[str, float] = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        step, _, value = pair.partition("=")
        if step not in STEPS or not 0 <= float(value) <= 1:
            raise ValueError(f"PROVIDER_FAILURE_RATES: {pair!r} is not <step>=<rate 0..1> (steps: {STEPS})")
        rates[step] = float(value)
    return rates


FAILURE_RATES = parse_rates(os.environ.get("PROVIDER_FAILURE_RATES", ""))
FLAKY_EVERY = int(os.environ.get("PROVIDER_FLAKY_EVERY", "0"))
REQUESTS: Counter[str] = Counter()
_TRANSCRIBED: Counter[str] = Counter()  # transcription requests per meeting
_MEETINGS: dict[str, int] = {}  # meeting -> the order it was first seen in
FAILURES: Counter[str] = Counter()


class StepRequest(msgspec.Struct, kw_only=True):
    """What every step receives: the meeting, and the audio (transcription) or the transcript (analysis)."""

    meeting_id: str
    audio_b64: str | None = None
    transcript: str | None = None


def _fails(step: str) -> Response[dict[str, str]] | None:
    REQUESTS[step] += 1
    if random.random() < FAILURE_RATES.get(step, 0.0):
        FAILURES[step] += 1
        return Response({"error": f"{step}: provider overloaded"}, status_code=503)
    return None


@post("/transcribe", status_code=200)
async def transcribe(data: StepRequest) -> Response[dict[str, object]]:
    """Speech to text with diarisation (speakers as ``A``, ``B``)."""
    await asyncio.sleep(LATENCY_S)
    try:
        audio = base64.b64decode(data.audio_b64 or "", validate=True)
    except binascii.Error:
        audio = b""
    if not audio.startswith(b"RIFF"):
        REQUESTS["transcribe"] += 1
        FAILURES["transcribe_unreadable"] += 1
        return Response({"error": "audio track unreadable"}, status_code=422)
    _TRANSCRIBED[data.meeting_id] += 1
    order = _MEETINGS.setdefault(data.meeting_id, len(_MEETINGS) + 1)
    if FLAKY_EVERY and order % FLAKY_EVERY == 0 and _TRANSCRIBED[data.meeting_id] <= 2:
        REQUESTS["transcribe"] += 1
        FAILURES["transcribe_flaky"] += 1
        return Response({"error": "transcribe: provider overloaded"}, status_code=503)
    failed = _fails("transcribe")
    if failed:
        return failed  # type: ignore[return-value]
    text = f"A: meeting {data.meeting_id} starts. B: we ship on Friday. A: Bo writes the release notes."
    return Response({"transcript": text, "speakers": ["A", "B"], "language": "en"})


def _analysis(step: str, data: StepRequest) -> Response[dict[str, object]]:
    failed = _fails(step)
    if failed:
        return failed  # type: ignore[return-value]
    results: dict[str, object] = {
        "speakers": {"A": "Ana", "B": "Bo"},
        "summary": f"The team agreed to ship on Friday ({len(data.transcript or '')} characters transcribed).",
        "action_items": [{"owner": "Bo", "item": "write the release notes"}],
        "decisions": ["ship on Friday"],
    }
    return Response({"result": results[step]})


@post("/speakers", status_code=200)
async def speakers(data: StepRequest) -> Response[dict[str, object]]:
    """Speaker names from the transcript."""
    await asyncio.sleep(LATENCY_S)
    return _analysis("speakers", data)


@post("/summary", status_code=200)
async def summary(data: StepRequest) -> Response[dict[str, object]]:
    """A summary of the transcript."""
    await asyncio.sleep(LATENCY_S)
    return _analysis("summary", data)


@post("/action_items", status_code=200)
async def action_items(data: StepRequest) -> Response[dict[str, object]]:
    """Action items from the transcript."""
    await asyncio.sleep(LATENCY_S)
    return _analysis("action_items", data)


@post("/decisions", status_code=200)
async def decisions(data: StepRequest) -> Response[dict[str, object]]:
    """Decisions from the transcript."""
    await asyncio.sleep(LATENCY_S)
    return _analysis("decisions", data)


@get("/stats")
async def stats() -> dict[str, object]:
    """Requests and failures per step since start, and the failure rates in force."""
    return {"requests": dict(REQUESTS), "failures": dict(FAILURES), "failure_rates": FAILURE_RATES}


app = Litestar([transcribe, speakers, summary, action_items, decisions, stats])
