"""Webhook delivery end to end: real relay and worker processes, a real HTTP receiver on loopback,
signatures checked with the ``standardwebhooks`` library (an independent implementation)."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql
from pytest_httpserver import HTTPServer
from standardwebhooks.webhooks import Webhook as Verifier

import outbox
from outbox import webhooks
from tests.api.test_api import READ
from tests.api.test_api_http import start_api
from tests.helpers import Proc, free_port
from tests.system import System
from tests.webhooks import tasks as result_tasks  # noqa: F401 - registers the wh.result_* tasks (enqueued by name)
from tests.webhooks.conftest import NEW_SECRET, OLD_SECRET, WORKER_ENV, Receiver, signed_by_hand

pytestmark = pytest.mark.slow

APP_TIERS = "critical,high"  # sample.otp (critical), sample.reject (high)


def enqueue(system: System, task: str, url: str, *args: object) -> uuid.UUID:
    with psycopg.connect(system.settings.database_url) as conn:
        return outbox.enqueue(conn, task, args=list(args), webhook=outbox.Webhook(url=url, secret="crm"))


def delivery_of(system: System, job: uuid.UUID) -> uuid.UUID | None:
    rows = system.q("SELECT delivery_job_id FROM outbox.webhooks WHERE job_id = %s", job)
    return rows[0][0] if rows else None


def everything_stored(system: System) -> str:
    """Every row of every outbox table, as text (where a secret must never be)."""
    with psycopg.connect(system.settings.database_url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'outbox'")]
        return "\n".join(str(conn.execute(sql.SQL("SELECT t::text FROM {} AS t").format(
            sql.Identifier("outbox", table))).fetchall()) for table in tables)


def test_signed_delivery_survives_a_worker_killed_after_the_outcome(system: System, receiver: Receiver,
                                                                      allow_loopback: None) -> None:
    system.relay()
    # This worker runs the application's tier only: it records the outcome and never delivers.
    app_worker = system.worker("--queues", APP_TIERS, env=WORKER_ENV)
    job = enqueue(system, "sample.otp", receiver.url(), "+4912345")
    system.wait_status(job, "succeeded")
    app_worker.kill(signal.SIGKILL)
    delivery = delivery_of(system, job)
    assert delivery is not None, "the delivery job was committed with the outcome"
    assert system.status(delivery) in ("pending", "published")

    system.worker("--queues", "normal", env=WORKER_ENV)
    system.wait_status(delivery, "succeeded")
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    headers, raw = request["headers"], request["body"]
    # Verified by the reference library with either value of the rotating secret: two v1 signatures.
    assert Verifier(OLD_SECRET).verify(raw, headers) == Verifier(NEW_SECRET).verify(raw, headers)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(s.startswith("v1,") for s in headers["webhook-signature"].split(" "))
    # And by the specification computed by hand on the bytes received (not by the library that signed).
    assert headers["webhook-signature"].split(" ") == [
        signed_by_hand(s, headers["webhook-id"], headers["webhook-timestamp"], raw) for s in (OLD_SECRET, NEW_SECRET)]
    assert headers["webhook-id"] == f"msg_{job.hex}"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 120
    assert headers["content-type"] == "application/json"
    doc = json.loads(raw)
    assert doc["type"] == "job.succeeded"
    data = doc["data"]
    assert data["job_id"] == str(job) and data["task"] == "sample.otp" and data["tier"] == "critical"
    assert data["status"] == "succeeded" and data["attempts"] == 1 and data["error"] is None
    assert data["finished_at"] and data["enqueued_at"] and "result" not in data
    delivered = system.q("SELECT delivered_at IS NOT NULL, response_status FROM outbox.webhooks WHERE job_id = %s", job)
    assert delivered == [(True, 204)]
    # The secret's values are nowhere but in the workers' environment.
    stored, logs = everything_stored(system), system.logs()
    for value in (OLD_SECRET, NEW_SECRET, OLD_SECRET.removeprefix("whsec_")):
        assert value not in stored and value not in logs


def test_the_handlers_return_value_is_sent_from_every_kind_of_handler(system: System, receiver: Receiver,
                                                                      allow_loopback: None) -> None:
    system.relay()
    system.worker("--queues", f"{APP_TIERS},normal", env={**WORKER_ENV, "TIERBOX_APP": "sample_tasks,tests.webhooks.tasks"})
    jobs = {task: enqueue(system, task, receiver.url(), 5) for task in
            ("wh.result_async", "wh.result_sync", "wh.result_sessionless", "wh.result_odd")}
    system.wait(lambda: len(receiver.processed) == 4, timeout=40, what="four deliveries")
    results = {task: receiver.processed[f"msg_{job.hex}"]["data"]["result"] for task, job in jobs.items()}
    assert results == {"wh.result_async": {"n": 5, "path": "async", "attempt": 1},
                       "wh.result_sync": {"n": 5, "path": "sync"}, "wh.result_sessionless": [5, "sessionless"],
                       "wh.result_odd": {"unencodable": "object"}}


def test_receiver_down_then_up_is_delivered_exactly_once(system: System, allow_loopback: None) -> None:
    port = free_port()  # nothing listens there yet: connection refused
    url = f"http://127.0.0.1:{port}/hooks"
    system.relay()
    system.worker("--queues", f"{APP_TIERS},normal", env=WORKER_ENV)
    job = enqueue(system, "sample.otp", url, "+4912345")
    system.wait_status(job, "succeeded")
    delivery = delivery_of(system, job)
    assert delivery is not None
    system.wait(lambda: system.q("SELECT attempts FROM outbox.jobs WHERE id = %s", delivery)[0][0] >= 2,
                timeout=30, what="two refused attempts")
    errors = system.q("SELECT error_type FROM outbox.attempts WHERE job_id = %s AND outcome = 'failed'", delivery)
    assert {e for (e,) in errors} == {"DeliveryError"}, errors

    server = HTTPServer(host="127.0.0.1", port=port)
    server.start()
    try:
        # Up, but busy at first: 429 with Retry-After: 3 (the default back-off would retry within 0..2 s).
        receiver = Receiver(server, status=lambda n: 429 if n == 1 else 204, retry_after="3")
        server.expect_request("/hooks", method="POST").respond_with_handler(receiver.handle)
        system.wait_status(delivery, "succeeded", timeout=40)
        time.sleep(1.0)  # nothing more arrives after the success
        assert list(receiver.processed) == [f"msg_{job.hex}"], "processed once (idempotency on webhook-id)"
        assert len(receiver.requests) == 2, "one 429, then the delivery"
        gap = receiver.requests[1]["at"] - receiver.requests[0]["at"]
        assert gap >= 2.9, f"Retry-After: 3 obeyed, retried after {gap:.2f} s"
        assert {r["headers"]["webhook-id"] for r in receiver.requests} == {f"msg_{job.hex}"}
    finally:
        server.clear()
        server.stop()


def test_a_permanent_refusal_is_dead_lettered_and_visible_in_triage(system: System, receiver: Receiver,
                                                                     allow_loopback: None, procs: list[Proc],
                                                                     tmp_path: Path) -> None:
    receiver.status = lambda n: 410
    system.relay()
    system.worker("--queues", f"{APP_TIERS},normal", env=WORKER_ENV)
    job = enqueue(system, "sample.reject", receiver.url())
    system.wait_status(job, "dead")
    delivery = delivery_of(system, job)
    assert delivery is not None
    system.wait_status(delivery, "dead")
    assert system.outcomes(delivery)[-1] == "failed" and system.outcomes(delivery).count("failed") == 1, \
        "4xx: no retry"
    assert len(receiver.requests) == len(system.outcomes(delivery))
    doc = json.loads(receiver.requests[0]["body"])
    assert doc["type"] == "job.dead" and doc["data"]["status"] == "dead"
    assert doc["data"]["error"]["type"] == "Reject" and doc["data"]["error"]["message"]
    letter = system.dead_letter(delivery)
    assert letter["reason"] == "non_retryable" and letter["task"] == webhooks.DELIVERY_TASK
    assert "answered 410" in letter["error_message"] and letter["fingerprint"] == "webhook-http-410"
    assert letter["payload"] == {"args": [str(job)], "kwargs": {}}
    groups = system.q("SELECT tasks, dead_letters, status FROM outbox.failure_groups WHERE fingerprint = %s",
                      "webhook-http-410")
    assert groups == [([webhooks.DELIVERY_TASK], 1, "open")], groups

    # What operators see through the admin API: the dead letter and both jobs, no secret value.
    base = start_api(system.settings, procs, tmp_path)
    http = httpx.Client(base_url=base, timeout=10)
    seen = [http.get(path, headers=READ) for path in
            (f"/admin/dlq/{delivery}", f"/admin/jobs/{delivery}", f"/admin/jobs/{job}", "/admin/dlq")]
    assert [r.status_code for r in seen] == [200] * 4
    assert seen[0].json()["dead_letter"]["task"] == webhooks.DELIVERY_TASK
    for value in (OLD_SECRET, NEW_SECRET):
        assert all(value not in r.text for r in seen)
        assert value not in everything_stored(system) and value not in system.logs()

    # Fixed on the receiver's side: the redriven delivery is the same message (same webhook-id).
    receiver.status = lambda n: 204
    with psycopg.connect(system.settings.database_url) as conn:
        again = outbox.redrive(conn, delivery, by="test")
        conn.commit()
    system.wait_status(again, "succeeded")
    assert [r["headers"]["webhook-id"] for r in receiver.requests] == [f"msg_{job.hex}"] * 2
    assert list(receiver.processed) == [f"msg_{job.hex}"]


def test_the_receivers_breaker_opens_and_stops_the_calls(system: System, receiver: Receiver,
                                                         allow_loopback: None) -> None:
    receiver.status = lambda n: 503
    system.relay()
    system.worker("--queues", f"{APP_TIERS},normal", env=WORKER_ENV)
    jobs = [enqueue(system, "sample.otp", receiver.url(), str(i)) for i in range(7)]
    host = f"webhook:127.0.0.1:{receiver.server.port}"
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.breaker_events WHERE breaker = %s AND to_state = 'open'",
                                 host)[0][0] >= 1, timeout=40, what="breaker opened")
    deliveries = [delivery_of(system, j) for j in jobs]
    system.wait(lambda: system.q(
        "SELECT count(*) FROM outbox.attempts WHERE job_id = ANY(%s) AND error_type = 'HostCircuitOpenError'",
        deliveries)[0][0] >= 1, timeout=40, what="an attempt refused by the open breaker")
    opened_at = system.q("SELECT extract(epoch FROM min(at)) FROM outbox.breaker_events WHERE breaker = %s "
                         "AND to_state = 'open'", host)[0][0]
    # While it is open (30 s) the receiver gets no call: only requests already on their way (1 s) arrive.
    during = [r["wall"] for r in receiver.requests if r["wall"] > float(opened_at) + 1.0]
    assert during == [], (float(opened_at), during)
    assert len([r for r in receiver.requests if r["wall"] <= float(opened_at)]) >= 5, "5 failures opened it"
    assert all(system.status(d) != "succeeded" for d in deliveries if d)


def test_a_worker_killed_mid_delivery_still_delivers_once(system: System, receiver: Receiver,
                                                          allow_loopback: None) -> None:
    """One worker serves the job's tier and the delivery tier: it records the outcome, starts the
    delivery and is SIGKILLed while the receiver is still answering. The receiver processes that
    first request (its 2xx never reaches the dead worker); the restarted worker delivers again, and
    the receiver's idempotency on ``webhook-id`` absorbs the duplicate."""
    def slow_first(n: int) -> int:
        if n == 1:
            time.sleep(4.0)  # the worker is killed during this answer
        return 204

    receiver.status = slow_first
    system.relay()
    worker = system.worker("--queues", f"{APP_TIERS},normal", env=WORKER_ENV)
    job = enqueue(system, "sample.otp", receiver.url(), "+4912345")
    system.wait_status(job, "succeeded")
    system.wait(lambda: len(receiver.requests) >= 1, timeout=30, what="the delivery reached the receiver")
    worker.kill(signal.SIGKILL)
    worker.wait(10)
    delivery = delivery_of(system, job)
    assert delivery is not None
    assert system.status(delivery) == "running", "killed mid-delivery: not recorded as delivered"

    system.worker("--queues", f"{APP_TIERS},normal", env=WORKER_ENV)
    system.wait_status(delivery, "succeeded", timeout=60)
    assert [r["headers"]["webhook-id"] for r in receiver.requests] == [f"msg_{job.hex}"] * 2
    assert list(receiver.processed) == [f"msg_{job.hex}"], "processed once"
    # The first attempt's lease expired with its worker: recovered as crashed by the new worker's reaper.
    assert system.outcomes(delivery) == ["crashed", "succeeded"]
    assert system.q("SELECT response_status FROM outbox.webhooks WHERE job_id = %s", job) == [(204,)]


def test_a_delivery_that_spends_its_retries_is_a_dead_letter(system: System, receiver: Receiver,
                                                            allow_loopback: None) -> None:
    receiver.status = lambda n: 503
    system.relay()
    system.worker("--queues", f"{APP_TIERS},normal", env=WORKER_ENV)
    with psycopg.connect(system.settings.database_url) as conn:
        job = outbox.enqueue(conn, "sample.otp", args=["+4912345"],
                             webhook=outbox.Webhook(url=receiver.url(), secret="crm"))
        # One retry instead of ten, set in the enqueuing transaction so it is in force at the outcome;
        # two failed contacts, fewer than the five that would open the receiver's breaker.
        conn.execute("UPDATE outbox.webhooks SET max_retries = 1 WHERE job_id = %s", (job,))
    system.wait_status(job, "succeeded")
    delivery = delivery_of(system, job)
    assert delivery is not None
    system.wait_status(delivery, "dead", timeout=40)
    assert system.outcomes(delivery) == ["failed", "failed"]
    assert len(receiver.requests) == 2 and receiver.processed == {}
    assert {r["headers"]["webhook-id"] for r in receiver.requests} == {f"msg_{job.hex}"}
    letter = system.dead_letter(delivery)
    assert letter["task"] == webhooks.DELIVERY_TASK and letter["fingerprint"] == "webhook-retries-spent"
    assert letter["reason"] == "non_retryable", letter
    assert "answered 503" in letter["error_message"]
    assert "gave up after 2 failed contacts (0 attempts found the breaker open)" in letter["error_message"]
    groups = system.q("SELECT tasks, dead_letters FROM outbox.failure_groups WHERE fingerprint = %s",
                      "webhook-retries-spent")
    assert groups == [([webhooks.DELIVERY_TASK], 1)], groups
    assert system.q("SELECT delivered_at, outcome FROM outbox.webhooks WHERE job_id = %s", job) == [(None, "succeeded")]
    assert system.q("SELECT count(*) FROM outbox.breaker_events WHERE breaker = %s",
                    f"webhook:127.0.0.1:{receiver.server.port}")[0][0] == 0, "the breaker stayed closed"
