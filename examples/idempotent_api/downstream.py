"""The flaky downstream the workers call: a local HTTP service with latency, failures and an outage switch.

It plays the provider the story's workers render documents with (an image or PDF service). Like
such providers it honours an ``Idempotency-Key`` header: a repeated key is answered without being
applied again, so the run can count how many documents were *applied* as well as how many requests
came. ``POST /control`` switches an outage on or off (every request answers 503 while it lasts),
sets the random failure rate and the document ids it refuses (422). ``GET /stats`` returns the counts.

Served by uvicorn as its own process: ``python -m uvicorn examples.idempotent_api.downstream:app``;
``DOWNSTREAM_LATENCY_MS`` (default 20) and ``DOWNSTREAM_FAILURE_RATE`` (default 0.02) set it up.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post


@dataclass
class State:
    """What the downstream has seen since it started."""

    latency_s: float = float(os.environ.get("DOWNSTREAM_LATENCY_MS", "20")) / 1000
    failure_rate: float = float(os.environ.get("DOWNSTREAM_FAILURE_RATE", "0.02"))
    outage: bool = False
    refused: set[int] = field(default_factory=set)
    requests: int = 0
    during_outage: int = 0
    random_failures: int = 0
    refusals: int = 0
    applied: dict[str, int] = field(default_factory=dict)  # idempotency key -> document id
    repeated_keys: int = 0


STATE = State()


class Control(msgspec.Struct, kw_only=True):
    """``POST /control``: any field given replaces the current setting."""

    outage: bool | None = None
    failure_rate: float | None = None
    refused: list[int] | None = None


class Render(msgspec.Struct, kw_only=True):
    """``POST /render``: the document to render."""

    document_id: int


@post("/render", status_code=200)
async def render(request: Request[Any, Any, Any], data: Render) -> Response[dict[str, Any]]:
    """Render one document, or fail the way a sick provider does."""
    STATE.requests += 1
    await asyncio.sleep(STATE.latency_s)
    if STATE.outage:
        STATE.during_outage += 1
        return Response({"error": "outage"}, status_code=503)
    if data.document_id in STATE.refused:
        STATE.refusals += 1
        return Response({"error": f"document {data.document_id} cannot be rendered"}, status_code=422)
    if random.random() < STATE.failure_rate:
        STATE.random_failures += 1
        return Response({"error": "transient"}, status_code=502)
    key = request.headers.get("idempotency-key", "")
    if key in STATE.applied:
        STATE.repeated_keys += 1  # a retry of a request we already applied: answer, do not apply again
    else:
        STATE.applied[key] = data.document_id
    return Response({"document_id": data.document_id, "rendered": True})


@post("/control", status_code=200)
async def control(data: Control) -> dict[str, Any]:
    """Change the outage switch, the failure rate or the refused documents."""
    if data.outage is not None:
        STATE.outage = data.outage
    if data.failure_rate is not None:
        STATE.failure_rate = data.failure_rate
    if data.refused is not None:
        STATE.refused = set(data.refused)
    return _counts()


@get("/stats")
async def stats() -> dict[str, Any]:
    """Counts since start; ``applied`` is how many distinct idempotency keys were applied."""
    return _counts()


def _counts() -> dict[str, Any]:
    return {"requests": STATE.requests, "during_outage": STATE.during_outage, "random_failures": STATE.random_failures,
            "refusals": STATE.refusals, "applied": len(STATE.applied), "repeated_keys": STATE.repeated_keys,
            "outage": STATE.outage}


app = Litestar([render, control, stats])
