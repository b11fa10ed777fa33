"""The worker side: render a document through the flaky downstream, behind a cluster-wide breaker.

The breaker lives in Redis (``tierbox.flow``), so every worker process shares it: once failures
within its window reach the threshold, no worker calls the downstream until a probe succeeds; the
jobs that would have called it are deferred through the outbox, not failed. A 422 from the downstream
is the document's fault, not the provider's: ``outbox.Reject`` dead-letters it at once (no retry).
"""

from __future__ import annotations

import os

import httpx

import outbox
from outbox import Tier

#: The downstream's base URL (the runner starts it and passes it to the workers).
DOWNSTREAM_URL = os.environ.get("DOWNSTREAM_URL", "http://127.0.0.1:8765")

#: The breaker's name, shared by every worker process (its state is in Redis).
BREAKER_NAME = "downstream"
#: 10 failures within 5 s open it for 2 s; then one probe at a time (the run bounds the outage's
#: requests with these figures).
BREAKER = outbox.breaker(BREAKER_NAME, threshold=10, window_s=5, open_s=2, probes=1, probe_retry_s=0.5)

# One client per worker process: its connection pool is shared by the pool's handler threads.
_client = httpx.Client(base_url=DOWNSTREAM_URL, timeout=10)


@outbox.task(tier=Tier.NORMAL, name="jobs.render_document", breaker=BREAKER_NAME, max_retries=6,
             retry_backoff_s=0.2, retry_backoff_max_s=2)
def render_document(ctx: outbox.TaskContext, document_id: int) -> None:
    """Render one document; the job id is the downstream's idempotency key, so a re-run applies nothing twice."""
    response = _client.post("/render", json={"document_id": document_id},
                            headers={"Idempotency-Key": str(ctx.job_id)})
    if response.status_code == 422:
        raise outbox.Reject(f"downstream refused document {document_id}")
    response.raise_for_status()
