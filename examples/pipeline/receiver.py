"""The customer's webhook receiver (the story's CMS): verifies each delivery, processes each ``webhook-id`` once.

Verification is the ``standardwebhooks`` library's (the reference implementation of the scheme
Tierbox signs with), not hand-written HMAC code. A delivery whose signature or timestamp does not
verify is answered 400 and counted. Deliveries are at least once, so a ``webhook-id`` already
processed is answered 2xx again and counted as a duplicate, not processed twice.

To exercise the sender's retries it misbehaves on purpose, as receivers do, and deterministically so
that a run's counts can be checked: the first delivery of every ``RECEIVER_DOWN_EVERY``-th new
``webhook-id`` (default 4) is answered 503 before anything is processed (the sender must retry),
and every ``RECEIVER_LOST_ACK_EVERY``-th id processed (default 5) is answered 500 after processing,
as if the 2xx had been lost (the sender retries; the receiver must absorb the copy). 0 turns either off.

Served by uvicorn: ``python -m uvicorn examples.pipeline.receiver:app``; ``PIPELINE_CMS_SECRET``
holds the shared secret (``whsec_...``). ``GET /stats`` returns what it received.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from standardwebhooks.webhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError

DOWN_EVERY = int(os.environ.get("RECEIVER_DOWN_EVERY", "4"))
LOST_ACK_EVERY = int(os.environ.get("RECEIVER_LOST_ACK_EVERY", "5"))

#: webhook-id -> the event processed for it (the first verified delivery).
PROCESSED: dict[str, dict[str, Any]] = {}
COUNTS: Counter[str] = Counter()
_SEEN_ONCE: set[str] = set()  # every webhook-id delivered at least once


def _verifier() -> Verifier:
    return Verifier(os.environ["PIPELINE_CMS_SECRET"])


@post("/hooks/meetings", status_code=204)
async def receive(request: Request[Any, Any, Any]) -> Response[None]:
    """One delivery: verify, then process its ``webhook-id`` once."""
    raw = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    COUNTS["deliveries"] += 1
    webhook_id = headers.get("webhook-id", "")
    if webhook_id not in PROCESSED and webhook_id not in _SEEN_ONCE:
        _SEEN_ONCE.add(webhook_id)
        if DOWN_EVERY and len(_SEEN_ONCE) % DOWN_EVERY == 0:
            COUNTS["answered_503"] += 1
            return Response(None, status_code=503)
    try:
        event = _verifier().verify(raw, headers)
    except WebhookVerificationError:
        COUNTS["signature_rejected"] += 1
        return Response(None, status_code=400)
    COUNTS["verified"] += 1
    if webhook_id in PROCESSED:
        COUNTS["duplicates_absorbed"] += 1
        return Response(None, status_code=204)
    PROCESSED[webhook_id] = event
    if LOST_ACK_EVERY and len(PROCESSED) % LOST_ACK_EVERY == 0:
        COUNTS["answered_500_after_processing"] += 1
        return Response(None, status_code=500)
    return Response(None, status_code=204)


class Stats(msgspec.Struct, kw_only=True):
    """``GET /stats``: counters and every processed event by ``webhook-id``."""

    counts: dict[str, int]
    processed: dict[str, dict[str, Any]]


@get("/stats")
async def stats() -> Stats:
    """What the receiver has seen since it started."""
    return Stats(counts=dict(COUNTS), processed=PROCESSED)


app = Litestar([receive, stats])
