"""Jobs enqueued through the outbox run on a real, unchanged Celery 5 worker and are recorded in the ledger.

One Celery worker process and one relay serve the module (``conftest.bridge``); every assertion
compares the ledger (``outbox.jobs``, ``outbox.attempts``, ``outbox.dead_letters``) with what the
Celery worker really ran (``public.celery_effects``, one row per run, written by the task itself).
"""

from __future__ import annotations

import signal
import uuid

import psycopg
import pytest

import outbox
from tests.celery_bridge.conftest import Bridge
from tests.helpers import wait_until

pytestmark = [pytest.mark.xdist_group("celery_bridge"), pytest.mark.timeout(240)]


def test_a_committed_enqueue_runs_once_on_celery_under_its_job_id(bridge: Bridge) -> None:
    job = bridge.enqueue("tbtest.effect", "hello")
    bridge.wait_status(job, "succeeded")
    assert bridge.effects(job) == [("hello", 0)]  # Celery's task id is the job id; one run
    assert bridge.outcomes(job) == [(1, "succeeded", None, "celery")]
    assert bridge.q("SELECT count(*) FROM outbox.pending WHERE job_id = %s", job) == [(0,)]


def test_a_rolled_back_enqueue_never_runs(bridge: Bridge) -> None:
    with psycopg.connect(bridge.settings.database_url) as conn:
        rolled_back = outbox.enqueue(conn, bridge.tasks["tbtest.effect"], args=["never"])
        conn.rollback()
    after = bridge.enqueue("tbtest.effect", "after")  # enqueued later: once it ran, the other would have too
    bridge.wait_status(after, "succeeded")
    assert bridge.status(rolled_back) == "missing"
    assert bridge.effects(rolled_back) == []
    assert bridge.q("SELECT count(*) FROM public.celery_effects WHERE note = 'never'") == [(0,)]


def test_celery_self_retry_is_recorded_attempt_by_attempt(bridge: Bridge) -> None:
    job = bridge.enqueue("tbtest.retry_twice", "again")
    bridge.wait_status(job, "succeeded")
    # Three runs, and request.retries counted 0, 1, 2: the relay re-sent the job with retries = attempts.
    assert bridge.effects(job) == [("again", 0), ("again", 1), ("again", 2)]
    assert bridge.outcomes(job) == [(1, "failed", "ConnectionError", "celery"),
                                    (2, "failed", "ConnectionError", "celery"),
                                    (3, "succeeded", None, "celery")]


def test_final_failure_is_a_dead_letter_that_redrive_sends_back_to_celery(bridge: Bridge) -> None:
    job = bridge.enqueue("tbtest.flaky", "switch-a")
    bridge.wait_status(job, "dead", timeout=60)
    # autoretry_for with max_retries=2: three runs on Celery, three failed attempts in the ledger.
    assert bridge.effects(job) == [("try", 0), ("try", 1), ("try", 2)]
    assert [o[:3] for o in bridge.outcomes(job)] == [(n, "failed", "RuntimeError") for n in (1, 2, 3)]
    [(reason, error_type, message, attempts)] = bridge.q(
        "SELECT reason, error_type, error_message, attempts FROM outbox.dead_letters WHERE job_id = %s", job)
    assert (reason, error_type, attempts) == ("failed", "RuntimeError", 3) and "switch-a" in message

    with psycopg.connect(bridge.settings.database_url) as conn:  # the downstream is fixed; the operator redrives
        conn.execute("INSERT INTO public.celery_switches (key) VALUES ('switch-a')")
        new_job = outbox.redrive(conn, job, by="test")
        conn.commit()
    bridge.wait_status(new_job, "succeeded")
    assert bridge.effects(new_job) == [("try", 0)]
    assert bridge.outcomes(new_job) == [(1, "succeeded", None, "celery")]
    assert bridge.q("SELECT redriven_at IS NOT NULL FROM outbox.dead_letters WHERE job_id = %s", job) == [(True,)]


def test_a_celery_dead_letter_is_read_triaged_and_redriven_through_the_admin_api(bridge: Bridge) -> None:
    """The admin API (Litestar's test client, as tests/api) serves a Celery job's dead letter, its
    attempts and its failure group like any other, and its redrive runs on Celery again."""
    from tests.api.test_api import OPERATE, READ, make_client

    job = bridge.enqueue("tbtest.flaky", "switch-api")
    bridge.wait_status(job, "dead", timeout=60)
    [(fingerprint,)] = bridge.q("SELECT fingerprint FROM outbox.dead_letters WHERE job_id = %s", job)
    [(tasks, failed_attempts, dead_letters)] = bridge.q(
        "SELECT tasks, failed_attempts, dead_letters FROM outbox.failure_groups WHERE fingerprint = %s", fingerprint)
    assert "tbtest.flaky" in tasks and failed_attempts >= 3 and dead_letters >= 1

    with make_client(bridge.settings.database_url, bridge.settings.queue_prefix) as client:
        shown = client.get(f"/admin/dlq/{job}", headers=READ)
        assert shown.status_code == 200, shown.text
        letter = shown.json()["dead_letter"]
        assert (letter["task"], letter["tier"], letter["reason"], letter["error_type"], letter["state"]) == (
            "tbtest.flaky", "normal", "failed", "RuntimeError", "open")
        assert [(a["attempt"], a["outcome"]) for a in shown.json()["attempts"]] == [(1, "failed"), (2, "failed"),
                                                                                   (3, "failed")]
        listed = client.get("/admin/dlq", params={"task": "tbtest.flaky"}, headers=READ).json()["items"]
        assert str(job) in [item["job_id"] for item in listed]
        group = client.get(f"/admin/failure-groups/{fingerprint}", headers=READ)
        assert group.status_code == 200, group.text
        assert "tbtest.flaky" in group.json()["group"]["tasks"] and group.json()["group"]["open_dead_letters"] >= 1
        assert str(job) in [sample["job_id"] for sample in group.json()["sample_jobs"]]
        assert group.json()["verdict"]["cause"]  # triage answered for a Celery task's group

        with psycopg.connect(bridge.settings.database_url) as conn:
            conn.execute("INSERT INTO public.celery_switches (key) VALUES ('switch-api')")
        redriven = client.post(f"/admin/dlq/{job}/redrive", json={"reason": "downstream fixed"}, headers=OPERATE)
        assert redriven.status_code == 200, redriven.text
        new_job = uuid.UUID(redriven.json()["new_job_id"])
    bridge.wait_status(new_job, "succeeded")
    assert bridge.effects(new_job) == [("try", 0)]
    assert bridge.outcomes(new_job) == [(1, "succeeded", None, "celery")]


def test_reject_and_time_limit_are_dead_letters_with_their_reason(bridge: Bridge) -> None:
    rejected = bridge.enqueue("tbtest.refuse", "reject")
    timed_out = bridge.enqueue("tbtest.refuse", "soft-limit")
    bridge.wait_status(rejected, "dead")
    bridge.wait_status(timed_out, "dead")
    found = {job: bridge.q("SELECT reason, error_type FROM outbox.dead_letters WHERE job_id = %s", job)[0]
             for job in (rejected, timed_out)}
    assert found == {rejected: ("non_retryable", "Reject"), timed_out: ("timeout", "SoftTimeLimitExceeded")}
    assert bridge.outcomes(rejected) == [(1, "failed", "Reject", "celery")]
    assert bridge.outcomes(timed_out) == [(1, "timeout", "SoftTimeLimitExceeded", "celery")]
    assert bridge.effects(rejected) == [("reject", 0)] and bridge.effects(timed_out) == [("soft-limit", 0)]


@pytest.mark.slow
def test_relay_killed_between_confirm_and_commit_the_ledger_absorbs_the_duplicate(bridge: Bridge) -> None:
    assert bridge.relay is not None
    bridge.relay.kill(signal.SIGKILL)
    bridge.relay.wait()
    held = bridge.start_relay({"TIERBOX_FAULT_RELAY_PAUSE_BEFORE_COMMIT_S": "60"})
    job = bridge.enqueue("tbtest.effect", "in flight")
    bridge.wait_status(job, "succeeded")  # confirmed and run on Celery; the relay's batch is not committed
    assert bridge.q("SELECT count(*) FROM outbox.pending WHERE job_id = %s", job) == [(1,)]
    held.kill(signal.SIGKILL)
    held.wait()
    bridge.relay = bridge.start_relay()  # publishes the row again: its batch never committed
    worker = bridge.worker
    assert worker is not None
    wait_until(lambda: f"action=celery.skipped job_id={job}" in worker.output(), timeout=45,
               what="the duplicate delivered to Celery and skipped")
    assert "decision=finished" in next(line for line in worker.output().splitlines()
                                       if f"action=celery.skipped job_id={job}" in line)
    assert bridge.q("SELECT count(*) FROM outbox.pending WHERE job_id = %s", job) == [(0,)]
    assert bridge.effects(job) == [("in flight", 0)]  # two deliveries, one run
    assert bridge.outcomes(job) == [(1, "succeeded", None, "celery")]


@pytest.mark.slow
def test_a_celery_worker_killed_mid_task_leaves_the_job_to_the_lease_and_it_runs_again(bridge: Bridge) -> None:
    """SIGKILL the worker (solo pool: the task runs in that process) during a run; its lease expires,
    the new worker's reaper retries the job through the outbox, and one copy runs attempt 2: the
    message RabbitMQ redelivers (acks_late; its ``retries`` still 0) or the relay's (``retries`` 1)."""
    worker = bridge.worker
    assert worker is not None
    job = bridge.enqueue("tbtest.sleepy", "wake-up")
    wait_until(lambda: bridge.effects(job) == [("start", 0)], timeout=45, what="the task started on Celery")
    worker.popen.kill()
    worker.popen.wait(10)
    worker.stop()
    with psycopg.connect(bridge.settings.database_url) as conn:
        conn.execute("INSERT INTO public.celery_switches (key) VALUES ('wake-up')")
    bridge.start_worker()
    bridge.wait_status(job, "succeeded", timeout=60)
    assert [(o[0], o[1], o[2]) for o in bridge.outcomes(job)] == [(1, "crashed", "WorkerLost"), (2, "succeeded", None)]
    effects = bridge.effects(job)
    assert effects[0] == ("start", 0) and effects[1] in (("start", 0), ("start", 1)) and len(effects) == 2
    assert bridge.q("SELECT count(*) FROM outbox.pending WHERE job_id = %s", job) == [(0,)]
