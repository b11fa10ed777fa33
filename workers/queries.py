"""The workers' reads, each with what it is for (what they write is in ``outbox._transitions``)."""

from __future__ import annotations

from outbox._sql import Statement

__all__ = ["JOB_EXISTS", "PAUSES"]

# Does the ledger hold this job (a dlq copy of a job that finished elsewhere is not a failure)?
JOB_EXISTS = Statement("worker.job_exists", """
SELECT 1 FROM outbox.jobs WHERE id = CAST(:job_id AS uuid)
""")


# The pauses in force (the workers' cache is refreshed from this every second).
PAUSES = Statement("worker.pauses", """
SELECT scope, name FROM outbox.pauses
""")
