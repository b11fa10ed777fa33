"""A late *failure* of an attempt whose lease was reaped is fenced, and says so.

The host cut-off test's other late completion, on one host: worker A runs a job's first attempt
and is frozen (SIGSTOP: no heartbeat, as if cut off); its lease expires, worker B's reaper retries
the job and B runs it. A is thawed, its handler fails late: the ledger refuses the retry (it moved
on), nothing changes, and A logs ``worker.fenced``, not ``worker.retry_scheduled``.
"""

from __future__ import annotations

import signal

import msgspec
import psycopg
import pytest

import outbox
from tests.cluster import host_tasks
from tests.helpers import wait_until
from tests.system import System

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_late_failure_after_the_lease_was_reaped_is_fenced(system: System) -> None:
    system.settings = msgspec.structs.replace(system.settings, app="tests.cluster.host_tasks")
    url = system.settings.database_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(host_tasks.DDL)
    system.relay()
    # One slot, no prefetch: frozen A holds only the job it runs, so the retry goes to B.
    a = system.worker("--pool", "normal", "--concurrency", "1", "--prefetch", "0")
    with psycopg.connect(url) as conn:
        job_id = outbox.enqueue(conn, host_tasks.late_failure, kwargs={"seconds": 6.0})
        conn.commit()
    wait_until(lambda: system.q("SELECT 1 FROM public.host_runs WHERE job_id = %s AND pid = %s", job_id, a.pid),
               timeout=60, interval=0.1, what="A inside the first attempt")
    a.kill(signal.SIGSTOP)
    try:
        system.worker("--pool", "normal", "--concurrency", "1", "--prefetch", "0")
        system.wait_status(job_id, "succeeded", timeout=60)
    finally:
        a.kill(signal.SIGCONT)
    system.wait(lambda: f"action=worker.fenced job_id={job_id}" in a.output(), timeout=60,
                what="A's late failure fenced")
    assert f"action=worker.retry_scheduled job_id={job_id}" not in a.output()
    assert system.status(job_id) == "succeeded"
    assert system.q("SELECT count(*) FROM public.host_effects WHERE job_id = %s", job_id) == [(1,)]
    assert system.outcomes(job_id) == ["crashed", "succeeded"]
