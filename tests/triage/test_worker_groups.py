"""Failure groups from real worker processes: a timeout, a Reject and poison messages, end to end."""

from __future__ import annotations

import psycopg
import pytest

from tests.system import System
from tierbox.ops import triage

pytestmark = pytest.mark.slow


async def test_a_worker_files_failures_into_groups(system: System) -> None:
    system.relay()
    system.worker()
    slow = [system.enqueue("sample.slow_async") for _ in range(2)]
    rejected = system.enqueue("sample.reject")
    await system.publish_raw("high", b"\x00\xffnot json at all", content_type="text/plain")
    await system.publish_raw("high", b"\x01\xfealso not json", content_type="text/plain")
    for job in [*slow, rejected]:
        system.wait_status(job, "dead")
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.dead_letters WHERE reason = 'undecodable'") == [(2,)],
                timeout=20, what="poison dead-lettered")
    with psycopg.connect(system.settings.database_url) as conn:
        found = {g.group.fingerprint: g for g in triage.groups(conn)}
        by_task = {t: g for g in found.values() for t in g.group.tasks}
    timeout = by_task["sample.slow_async"]
    assert timeout.group.dead_letters == 2 and timeout.group.outcomes == ["timeout"]
    assert set(timeout.group.sample_job_ids) == set(slow)
    assert timeout.verdict.cause == "timeout"
    refused = by_task["sample.reject"]
    assert refused.group.reasons == ["non_retryable"] and refused.verdict.cause == "data error"
    [poison] = [g for g in found.values() if "undecodable" in g.group.reasons]
    assert poison.group.dead_letters == 2 and poison.verdict.cause == "poison message"  # two bodies, one group
    # The dead letters carry the fingerprint of their group.
    assert system.q("SELECT count(*) FROM outbox.dead_letters WHERE fingerprint = %s",
                    poison.group.fingerprint) == [(2,)]
