"""Sample ledger rows for the SQL examples: what an operator's database holds after a bad night.

Every row is written the way Tierbox writes it (``enqueue_many``, the ledger statements
through ``outbox.testing.drain``, ``outbox.start_attempt``), never by hand. The job ids
the docs quote (``\\set job_id ...``, ``outbox.discard(...)``) are real dead jobs here, and
the dead letters fall inside the outage window the redrive examples use.
"""

from __future__ import annotations

import uuid

import msgspec
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

import outbox
import outbox.testing
from outbox import Tier
from outbox.enqueue import JobSpec

#: The job docs/failures-in-sql.md shows the timeline of (dead, reason ``failed``).
TIMELINE_JOB = uuid.UUID("bbea1e88-fc5b-4d0e-b1cc-fa6b608b4a20")
#: The dead job docs/failures-in-sql.md discards.
DISCARD_JOB = uuid.UUID("66288772-698e-4aee-ae28-42837ac17090")
#: Inside the outage window (02:00-03:30 UTC) of the redrive examples.
OUTAGE_FAILED_AT = "2026-11-24 02:30+00"


@outbox.task(tier=Tier.NORMAL, name="docs.ok")
def ok(n: int) -> None:
    """Succeeds."""


@outbox.task(tier=Tier.HIGH, name="docs.flaky", max_retries=3)
def flaky(n: int) -> None:
    """Fails; has retries left, so it ends ``retrying``."""
    raise TimeoutError("provider timed out")


@outbox.task(tier=Tier.NORMAL, name="docs.broken", max_retries=0)
def broken(n: int) -> None:
    """Fails on its only attempt: a dead letter ``failed``."""
    raise ValueError(f"tax service refused order {n}")


@outbox.task(tier=Tier.LOW, name="docs.rejected")
def rejected(n: int) -> None:
    """Rejects: a dead letter ``non_retryable``."""
    raise outbox.Reject("customer deleted")


def _with_id(spec: JobSpec, job_id: uuid.UUID) -> JobSpec:
    return msgspec.structs.replace(spec, id=job_id)


def seed(sqlalchemy_url: str) -> None:
    """Succeeded, retrying, dead, pending, delayed and running jobs, committed."""
    engine = create_engine(sqlalchemy_url)
    with Session(engine) as session, session.begin():
        specs = [outbox.job(ok, args=[i]) for i in range(3)] + [outbox.job(flaky, args=[1])]
        specs += [_with_id(outbox.job(broken, args=[1]), TIMELINE_JOB), _with_id(outbox.job(broken, args=[2]), DISCARD_JOB),
                  outbox.job(broken, args=[3]), outbox.job(rejected, args=[4])]
        outbox.enqueue_many(session, specs)
        outbox.testing.drain(session)
        session.execute(text("UPDATE outbox.dead_letters SET failed_at = CAST(:at AS timestamptz)"),
                        {"at": OUTAGE_FAILED_AT})
    with Session(engine) as session, session.begin():
        outbox.enqueue(session, ok, args=[10])
        outbox.enqueue(session, ok, Tier.BULK, args=[11], delay=3600)
        running = outbox.enqueue(session, ok, Tier.CRITICAL, args=[12])
        session.execute(text("SELECT * FROM outbox.start_attempt(:id, 'docs-worker', 30.0)"), {"id": running})
    engine.dispose()
