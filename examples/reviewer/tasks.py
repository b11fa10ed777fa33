"""The reviewer's one long job: organise a lab's markdown with the (faked) agents and save it.

The job carries the user's whole ``context`` (notes, uploaded text): the worker needs it to run and
a redrive needs it to run again, so the outbox keeps it, in Postgres beside the application's own
data. What operators *see* is redacted: the hook below replaces it with its length and SHA-256 in
every dead-letter view built on :func:`tierbox.ops.redaction.redact` (the reviewer's admin routes,
the admin API and CLI once they import this module), which is enough to tell whether two failures
had the same input without showing it.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

import outbox
from outbox import Tier
from tierbox.ops.redaction import redactor

#: The application's process-status table (the story kept it in MongoDB; here it is a Postgres table).
PROCESSES = "public.reviewer_processes"
TASK = "reviewer.process_markdown"


def output_dir() -> Path:
    """Where reviewed markdown is written (``REVIEWER_OUTPUT_DIR``; a storage mount in production)."""
    return Path(os.environ.get("REVIEWER_OUTPUT_DIR", "reviewer-output"))


def describe(value: str) -> dict[str, Any]:
    """What a dead letter shows of a private text: that it was omitted, its length and its SHA-256."""
    return {"omitted": True, "length": len(value), "sha256": hashlib.sha256(value.encode()).hexdigest()}


@redactor(TASK)
def _redact_context(payload: Any) -> Any:
    """Hide the user's context in every operator view of this task's jobs and dead letters."""
    kwargs = payload.get("kwargs") if isinstance(payload, dict) else None
    if isinstance(kwargs, dict) and isinstance(kwargs.get("context"), str):
        kwargs["context"] = describe(kwargs["context"])
    return payload


def _organise(context: str) -> str:
    """The writer, translator and metadata agents, faked: a heading, the text, a word count."""
    time.sleep(0.05)  # a model call
    return f"# Reviewed lab\n\n{context.strip()}\n\n<!-- {len(context.split())} words -->\n"


@outbox.task(tier=Tier.NORMAL, name=TASK, max_retries=3, retry_backoff_s=0.2, retry_backoff_max_s=1, long=True)
def process_markdown(ctx: outbox.TaskContext, *, context: str, output_name: str, process_id: str) -> None:
    """Organise the markdown, write it to the output storage, mark the process completed.

    The status update commits with the job's success (``ctx.session``): the process is completed
    exactly when the ledger says the job succeeded. A missing output storage raises, is retried,
    and after the last retry the job is dead-lettered; the status route then reports ``failed``.
    """
    target = output_dir() / output_name
    if not target.parent.is_dir():
        raise FileNotFoundError(f"output storage {target.parent} is not mounted")
    target.write_text(_organise(context))
    ctx.session.execute(text(f"UPDATE {PROCESSES} SET status = 'completed', result = :result WHERE id = :id"),
                        {"id": process_id, "result": str(target.name)})
