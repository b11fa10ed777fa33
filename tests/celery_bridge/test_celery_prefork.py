"""The same bridge on Celery's prefork pool (``-P prefork -c 2``), the pool the seeds run: each task runs
in a forked child, with its own ledger connection, and Celery's time limits are enforced for real
(the soft one by a signal inside the task, the hard one by killing the child).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.celery_bridge.conftest import Bridge, open_bridge

pytestmark = [pytest.mark.xdist_group("celery_bridge"), pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def bridge(service_urls: dict[str, str], template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    """The module's bridge with a prefork worker of two children."""
    with open_bridge(service_urls, template_db, tmp_path_factory, pool="prefork", concurrency=2) as b:
        yield b


def test_a_committed_job_runs_once_in_a_forked_child(bridge: Bridge) -> None:
    job = bridge.enqueue("tbtest.effect", "forked")
    bridge.wait_status(job, "succeeded")
    assert bridge.effects(job) == [("forked", 0)]
    assert bridge.outcomes(job) == [(1, "succeeded", None, "celery")]
    [(worker_id,)] = bridge.q("SELECT worker_id FROM outbox.attempts WHERE job_id = %s", job)
    assert bridge.worker is not None and int(worker_id.rsplit(":", 1)[1]) != bridge.worker.popen.pid  # a child


def test_self_retry_in_a_child_is_recorded_attempt_by_attempt(bridge: Bridge) -> None:
    job = bridge.enqueue("tbtest.retry_twice", "again")
    bridge.wait_status(job, "succeeded")
    assert bridge.effects(job) == [("again", 0), ("again", 1), ("again", 2)]
    assert bridge.outcomes(job) == [(1, "failed", "ConnectionError", "celery"),
                                    (2, "failed", "ConnectionError", "celery"),
                                    (3, "succeeded", None, "celery")]


def test_the_soft_time_limit_raised_in_the_child_is_a_timeout_dead_letter(bridge: Bridge) -> None:
    task = bridge.declare("tbtest.sleepy", bridge.queue, soft_time_limit=1, time_limit=20)
    job = bridge.enqueue(task, "soft-never-on")
    bridge.wait_status(job, "dead")
    assert bridge.outcomes(job) == [(1, "timeout", "SoftTimeLimitExceeded", "celery")]
    assert bridge.q("SELECT reason, error_type FROM outbox.dead_letters WHERE job_id = %s", job) == [
        ("timeout", "SoftTimeLimitExceeded")]
    assert bridge.effects(job) == [("start", 0)]


def test_the_hard_time_limit_kills_the_child_and_the_lease_retries_the_job_through_the_outbox(bridge: Bridge) -> None:
    """Celery kills the child at ``time_limit`` and acks the message (it would not run it again); the
    task's code never learns, so the attempt stays open until its lease (1 s + the 1 s margin here)
    expires. The reaper (the worker's main process runs one) records it ``crashed`` and, attempts
    left, makes the job due again through the outbox: a task that always overruns runs
    ``max_retries + 1`` times, then is a dead letter ``crashed``."""
    task = bridge.declare("tbtest.sleepy", bridge.queue, time_limit=1, max_retries=1)
    job = bridge.enqueue(task, "hard-never-on")
    bridge.wait_status(job, "dead", timeout=60)
    assert [o[:3] for o in bridge.outcomes(job)] == [(1, "crashed", "WorkerLost"), (2, "crashed", "WorkerLost")]
    assert bridge.q("SELECT reason, error_type, attempts FROM outbox.dead_letters WHERE job_id = %s", job) == [
        ("crashed", "WorkerLost", 2)]
    assert bridge.effects(job) == [("start", 0), ("start", 1)]  # the second run is the outbox's: retries = 1
    assert bridge.worker is not None
    kills = re.findall(rf"Hard time limit \(1(?:\.0)?s\) exceeded for tbtest\.sleepy\[{job}\]", bridge.worker.output())
    assert len(kills) == 2
