"""Workers end to end: real relay and worker processes, real RabbitMQ and Postgres."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import aio_pika
import msgspec
import psycopg
import pytest

import outbox
from tests.factories import dead_job, undecodable_message
from tests.helpers import Proc, free_port, scrape
from tests.system import System
from tierbox.relay import Relay

pytestmark = pytest.mark.slow


@outbox.task(tier=outbox.Tier.HIGH, name="tests.only_here")
def only_here() -> None:
    """Registered in the test process but not in the worker's app: the worker cannot run it."""


def test_commit_runs_once_and_ledger_says_succeeded(system: System) -> None:
    system.relay()
    system.worker()
    job = system.enqueue("sample.effect", "hello")
    ajob = system.enqueue("sample.async_effect", "async")
    ping = system.enqueue("sample.async_ping", 1)
    system.wait_status(job, "succeeded")
    system.wait_status(ajob, "succeeded")
    system.wait_status(ping, "succeeded")
    assert system.outcomes(ping) == ["succeeded"]
    assert system.effects(job) == [(1, "hello")]
    assert system.effects(ajob) == [(1, "async")]
    assert system.runs(job) == 1
    assert system.outcomes(job) == ["succeeded"]
    assert system.q("SELECT count(*) FROM outbox.leases") == [(0,)]


async def test_same_message_delivered_twice_runs_once(system: System) -> None:
    job = system.enqueue("sample.effect", "dup")
    relay = await Relay.connect(system.settings)
    try:
        await relay.drain()
        await relay.exchange.publish(relay_message(system, job), routing_key="high", mandatory=True)
    finally:
        await relay.close()
    worker = system.worker("--pool", "urgent", "--burst")  # returns once both copies are handled
    assert worker.wait(60) == 0
    system.wait_status(job, "succeeded")
    out = worker.output()
    assert "skipped_finished=1" in out or "skipped_running=1" in out, out[-2000:]
    assert system.runs(job) == 1 and len(system.effects(job)) == 1


def relay_message(system: System, job: uuid.UUID) -> aio_pika.Message:
    from tierbox.relay.relay import build_message

    row = system.q("SELECT task, tier, priority, payload::text, headers::text, attempts, enqueued_at "
                   "FROM outbox.jobs WHERE id = %s", job)[0]
    return build_message(job, *row)


def stop_and_read(proc: Proc) -> str:
    if proc.alive():
        proc.kill(signal.SIGTERM)
        proc.wait(30)
    return proc.output()


def test_start_does_not_wait_for_the_relay_batch_and_the_republish_is_absorbed(system: System) -> None:
    """A worker runs a job whose relay batch is confirmed but not committed; the relay dies; the copy
    published again is absorbed: one run, one attempt, nothing left pending."""
    held = system.start("relay", env={"TIERBOX_FAULT_RELAY_PAUSE_BEFORE_COMMIT_S": "60"})
    worker = system.worker("--pool", "normal")
    job = system.enqueue("sample.normal_effect", "in flight")
    system.wait_status(job, "succeeded", timeout=15)  # the relay still holds the pending row, uncommitted
    assert system.q("SELECT count(*) FROM outbox.pending WHERE job_id = %s", job) == [(1,)]
    held.kill(signal.SIGKILL)
    held.wait()
    stop_and_read(worker)
    system.relay()  # publishes the row again: its batch was never committed
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.pending") == [(0,)], what="row republished")
    absorber = system.worker("--pool", "normal", "--burst")  # the copy is in the queue (confirmed)
    assert absorber.wait(60) == 0
    assert "skipped_finished=1" in absorber.output()  # counters are printed on stop
    assert system.runs(job) == 1 and system.effects(job) == [(1, "in flight")]
    assert system.outcomes(job) == ["succeeded"] and system.status(job) == "succeeded"


def test_sigkill_mid_handler_is_recovered_with_one_crashed_attempt(system: System) -> None:
    system.relay()
    first = system.worker()
    job = system.enqueue("sample.sleep", 30)
    system.wait(lambda: system.runs(job) == 1, timeout=20, what="handler started")
    first.kill(signal.SIGKILL)
    first.wait()
    system.worker()
    # The lease (2 s in tests) expires, the reaper makes the job due again, it runs to completion.
    with psycopg.connect(system.settings.database_url, autocommit=True) as conn:
        conn.execute("UPDATE outbox.jobs SET payload = '{\"args\": [0.1], \"kwargs\": {}}' WHERE id = %s", (job,))
    system.wait_status(job, "succeeded", timeout=40)
    assert system.outcomes(job) == ["crashed", "succeeded"]
    assert len(system.effects(job)) == 1


def test_sigkill_with_sessionless_jobs_in_flight_loses_none(system: System) -> None:
    """Async handlers without ctx (batched successes): a worker SIGKILLed mid-flight loses nothing."""
    system.relay()
    first = system.worker()
    with psycopg.connect(system.settings.database_url) as conn:
        jobs = outbox.enqueue_many(conn, [outbox.job("sample.async_nap", args=[0.05 * (i % 5), i])
                                          for i in range(300)])
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.jobs WHERE status = 'succeeded'")[0][0] >= 30,
                what="some succeeded")
    first.kill(signal.SIGKILL)
    first.wait()
    system.worker()
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.jobs WHERE status = 'succeeded'") == [(300,)],
                timeout=60, what="every job succeeded after the kill")
    assert system.q("SELECT count(*) FROM outbox.pending") == [(0,)]
    assert system.q("SELECT count(*) FROM outbox.leases") == [(0,)]
    # Each job ended with exactly one succeeded attempt; attempts cut short by the kill say crashed.
    assert system.q("SELECT count(*) FROM outbox.attempts WHERE outcome = 'succeeded'") == [(300,)]
    assert system.q("SELECT count(*) FROM outbox.attempts WHERE outcome IS NULL") == [(0,)]
    assert system.q("SELECT count(*) > 0 FROM outbox.attempts WHERE outcome = 'crashed'") == [(True,)]  # it bit
    assert len(jobs) == 300


def test_sigkill_with_outcomes_waiting_in_the_finishing_stage_ends_each_job_once(system: System) -> None:
    """Slots are free once their handler returns; the outcomes (a batched success, a retry) wait in the
    finishing stage while a held row lock makes Postgres slow to take them, and the worker is SIGKILLed
    there: the messages are unacked, so nothing is lost, and every job ends exactly once."""
    system.relay()
    # prefetch 4: a delivery in the finishing stage holds its unacked message, so the broker hands the
    # pool one more only while fewer than QoS (concurrency + prefetch) are unacked.
    first = system.worker("--pool", "urgent", "--concurrency", "4", "--prefetch", "4")
    with psycopg.connect(system.settings.database_url) as conn:
        held = outbox.enqueue_many(conn, [outbox.job("sample.async_nap", args=[2.0, 0]),
                                          outbox.job("sample.async_nap", args=[2.0, 1]),
                                          outbox.job("sample.nap_then_fail", args=[2.0, 2]),
                                          outbox.job("sample.nap_then_fail", args=[2.0, 3])])
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.attempts WHERE outcome IS NULL") == [(4,)],
                what="the four handlers started (every slot busy)")
    with psycopg.connect(system.settings.database_url) as lock:
        # Their job rows locked (as SUCCEED_MANY and RETRY lock them): their outcomes cannot commit.
        lock.execute("SELECT id FROM outbox.jobs WHERE id = ANY(%s) FOR NO KEY UPDATE", (held,))
        with psycopg.connect(system.settings.database_url) as conn:
            more = outbox.enqueue_many(conn, [outbox.job("sample.async_nap", args=[0.0, 10 + i]) for i in range(4)])
        # The handlers return after 2 s; with their outcomes waiting, the four slots start four more jobs.
        system.wait(lambda: system.q("SELECT count(DISTINCT job_id) FROM outbox.attempts WHERE job_id = ANY(%s)",
                                     more) == [(4,)], timeout=20, what="slots free while the outcomes wait")
        assert system.q("SELECT count(*) FROM outbox.jobs WHERE id = ANY(%s) AND status = 'running'", held) == [(4,)]
        first.kill(signal.SIGKILL)
        first.wait()
        # The killed worker's statements still wait for the lock in their backends: ended as Postgres ends
        # a dead client's, so nothing of theirs commits (the other case, commit after the kill, is the
        # success recorded: ends once as well).
        blocked = system.q("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND wait_event_type = 'Lock'")
        assert len(blocked) >= 1, "no outcome was waiting for the lock"
        lock.rollback()
    system.worker("--pool", "urgent", "--concurrency", "4", "--prefetch", "4")
    naps, fails = [*held[:2], *more], held[2:]
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.jobs WHERE id = ANY(%s) AND status = 'succeeded'",
                                 naps) == [(6,)], timeout=60, what="every nap succeeded")
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.jobs WHERE id = ANY(%s) AND status = 'dead'",
                                 fails) == [(2,)], timeout=60, what="every failing job dead-lettered")
    for job in naps:  # one success each; an attempt whose outcome was lost with the worker says crashed
        assert system.outcomes(job).count("succeeded") == 1 and set(system.outcomes(job)) <= {"crashed", "succeeded"}
    for job in held[:2]:
        assert system.outcomes(job) == ["crashed", "succeeded"]
    for job in fails:  # max_retries=1: two attempts, the first crashed (its retry was lost), one dead letter
        assert system.outcomes(job) == ["crashed", "failed"]
        assert system.q("SELECT count(*) FROM outbox.dead_letters WHERE job_id = %s", job) == [(1,)]
    assert system.q("SELECT count(*) FROM outbox.attempts WHERE outcome IS NULL") == [(0,)]
    assert system.q("SELECT count(*) FROM outbox.pending") == [(0,)]
    assert system.q("SELECT count(*) FROM outbox.leases") == [(0,)]


def test_db_effect_exactly_once_when_killed_before_commit(system: System) -> None:
    system.relay()
    system.worker()
    job = system.enqueue("sample.effect_then_die")
    system.wait(lambda: system.runs(job) == 1, timeout=20, what="first attempt ran")
    system.wait(lambda: not system.procs[1].alive(), timeout=10, what="worker died")
    system.worker()
    system.wait_status(job, "succeeded", timeout=40)
    assert system.effects(job) == [(2, "x")]  # the first attempt's insert died with its transaction
    assert system.outcomes(job) == ["crashed", "succeeded"]


def test_job_that_always_kills_its_worker_is_dead_lettered_crashed(system: System) -> None:
    system.relay()
    job = system.enqueue("sample.always_die")  # max_retries=1: two attempts
    for _ in range(4):
        if system.status(job) == "dead":
            break
        w = system.worker()
        system.wait(lambda w=w: not w.alive() or system.status(job) == "dead", timeout=30, what="worker died")
        w.stop()
    if system.status(job) != "dead":
        system.worker()  # its reaper dead-letters the spent job
    system.wait_status(job, "dead", timeout=30)
    assert system.runs(job) == 2
    dl = system.dead_letter(job)
    assert dl["reason"] == "crashed" and dl["attempts"] == 2
    assert system.outcomes(job) == ["crashed", "crashed"]


def test_failing_handler_retries_with_backoff_then_dead_letter_with_payload(system: System) -> None:
    system.relay()
    system.worker()
    job = system.enqueue("sample.flaky", kwargs={"fail_times": 99}, headers={"tenant": "acme"})
    system.wait_status(job, "dead", timeout=30)
    assert system.outcomes(job) == ["failed", "failed", "failed"]  # 1 + max_retries(2)
    gaps = system.q("""SELECT EXTRACT(EPOCH FROM (b.started_at - a.finished_at)) FROM outbox.attempts a
                       JOIN outbox.attempts b ON b.job_id = a.job_id AND b.attempt = a.attempt + 1
                       WHERE a.job_id = %s ORDER BY a.attempt""", job)
    caps = [0.2, 0.4]  # full jitter: uniform(0, base * 2**(n-1)), plus relay/worker latency
    assert len(gaps) == 2 and all(float(g[0]) <= cap + 1.5 for g, cap in zip(gaps, caps, strict=True))
    dl = system.dead_letter(job)
    assert dl["reason"] == "failed" and dl["task"] == "sample.flaky"
    assert dl["payload"] == {"args": [], "kwargs": {"fail_times": 99}}
    assert dl["headers"] == {"tenant": "acme"}
    assert dl["error_type"] == "RuntimeError" and "attempt 3" in dl["error_message"]
    assert "Traceback" in dl["traceback"]


def test_redrive_via_sql_function_runs_and_succeeds(system: System) -> None:
    system.relay()
    system.worker()
    job = system.enqueue("sample.needs_flag")
    system.wait_status(job, "dead")
    with psycopg.connect(system.settings.database_url) as conn:
        conn.execute("INSERT INTO public.test_flags VALUES (1)")
        new_id = conn.execute("SELECT outbox.redrive(%s)", (job,)).fetchone()[0]  # type: ignore[index]
    system.wait_status(new_id, "succeeded")
    assert len(system.effects(new_id)) == 1
    dl = system.dead_letter(job)
    assert dl["new_job_id"] == new_id and dl["redriven_at"] is not None
    assert system.q("SELECT redrive_of, redrive_count FROM outbox.jobs WHERE id = %s", new_id) == [(job, 1)]
    with psycopg.connect(system.settings.database_url) as conn, pytest.raises(outbox.RedriveError, match="already"):
        outbox.redrive(conn, job)


def test_timeout_and_non_retryable_are_dead_lettered(system: System) -> None:
    system.relay()
    system.worker()
    slow = system.enqueue("sample.slow_async")
    rejected = system.enqueue("sample.reject")
    system.wait_status(slow, "dead")
    system.wait_status(rejected, "dead")
    assert system.dead_letter(slow)["reason"] == "timeout"
    assert system.outcomes(slow) == ["timeout"]
    assert system.dead_letter(rejected)["reason"] == "non_retryable"
    assert system.runs(rejected) == 1
    # tests.factories.dead_job(reason="timeout") stands in for this run in the ledger tests: same dead letter.
    fields = "reason, error_type, error_message, attempts"
    real = system.q(f"SELECT {fields} FROM outbox.dead_letters WHERE job_id = %s", slow)
    with psycopg.connect(system.settings.database_url) as conn:
        made = dead_job(conn, "sample.slow_async", reason="timeout")
        assert conn.execute(f"SELECT {fields} FROM outbox.dead_letters WHERE job_id = %s", (made,)).fetchall() == real
        conn.rollback()


async def test_poison_message_is_dead_lettered_and_worker_keeps_going(system: System) -> None:
    system.relay()
    system.worker()
    await system.publish_raw("high", b"\x00\xffnot json at all", content_type="text/plain")
    await system.publish_raw("high", b'{"v": 1, "id": "not-a-uuid"}')
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.dead_letters WHERE reason = 'undecodable'") == [(2,)],
               timeout=20, what="poison dead-lettered")
    raw = {bytes(r[0]) for r in system.q("SELECT raw_body FROM outbox.dead_letters WHERE reason = 'undecodable'")}
    assert raw == {b"\x00\xffnot json at all", b'{"v": 1, "id": "not-a-uuid"}'}
    # tests.factories.undecodable_message stands in for this in the ledger tests: same dead letters.
    fields = "reason, tier, error_type, error_message, raw_body, job_id"
    real = system.q(f"SELECT {fields} FROM outbox.dead_letters WHERE reason = 'undecodable' ORDER BY raw_body")
    with psycopg.connect(system.settings.database_url) as conn:
        conn.execute("DELETE FROM outbox.dead_letters")
        for body in raw:
            undecodable_message(conn, body, tier="high")
        made = conn.execute(f"SELECT {fields} FROM outbox.dead_letters ORDER BY raw_body").fetchall()
        conn.rollback()
    assert made == real and len(made) == 2
    job = system.enqueue("sample.effect", "after poison")
    system.wait_status(job, "succeeded")


def test_unknown_task_is_dead_lettered(system: System) -> None:
    system.relay()
    system.worker()
    job = system.enqueue("tests.only_here")
    system.wait_status(job, "dead")
    assert system.dead_letter(job)["reason"] == "unknown_task"


async def test_message_rejected_into_dlq_is_swept_into_dead_letters(system: System) -> None:
    job = system.enqueue("sample.effect", "to reject")
    relay = await Relay.connect(system.settings)
    try:
        await relay.drain()
    finally:
        await relay.close()
    conn = await aio_pika.connect(system.settings.amqp_url)
    async with conn:
        ch = await conn.channel()
        queue = await ch.get_queue(system.settings.queue_name("high"))
        msg = await queue.get(timeout=5)
        await msg.reject(requeue=False)
    system.worker()
    system.wait_status(job, "dead")
    dl = system.dead_letter(job)
    assert dl["reason"] == "rejected" and dl["task"] == "sample.effect"
    assert system.runs(job) == 0


def test_sigterm_with_in_flight_work_loses_nothing(system: System) -> None:
    system.relay()
    worker = system.worker("--pool", "urgent", "--concurrency", "2")
    jobs = [system.enqueue("sample.sleep", 1.0, str(i)) for i in range(6)]
    system.wait(lambda: sum(system.runs(j) for j in jobs) >= 2, timeout=20, what="two jobs running")
    worker.kill(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert "worker.stopped" in worker.output()
    system.worker()
    for j in jobs:
        system.wait_status(j, "succeeded", timeout=40)
    assert all(len(system.effects(j)) == 1 for j in jobs)


def test_sigterm_waits_for_outcomes_in_the_finishing_stage_before_closing(system: System) -> None:
    """Handlers returned, their successes held back by a row lock: a SIGTERM stops the worker only
    once they are recorded and acked (not released as crashed, not left to the lease)."""
    system.relay()
    worker = system.worker("--pool", "urgent", "--concurrency", "2")
    with psycopg.connect(system.settings.database_url) as conn:
        jobs = outbox.enqueue_many(conn, [outbox.job("sample.async_nap", args=[1.0, i]) for i in range(2)])
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.attempts WHERE outcome IS NULL") == [(2,)],
                what="both handlers started")
    with psycopg.connect(system.settings.database_url) as lock:
        lock.execute("SELECT id FROM outbox.jobs WHERE id = ANY(%s) FOR NO KEY UPDATE", (jobs,))
        system.wait(lambda: system.q("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND wait_event_type = 'Lock'") >= [(1,)], what="the successes wait for the lock")
        worker.kill(signal.SIGTERM)
        time.sleep(2)
        assert worker.alive()  # still recording its outcomes
        lock.rollback()
    assert worker.wait(30) == 0
    out = worker.output()
    assert "worker.stopped" in out and "worker.released" not in out, out[-2000:]
    assert "released=0" in out and "finished_outside_slots=2" in out, out[-2000:]
    for job in jobs:
        assert system.status(job) == "succeeded" and system.outcomes(job) == ["succeeded"]
    assert system.q("SELECT count(*) FROM outbox.leases") == [(0,)]


def test_grace_period_over_releases_job_back_to_outbox(system: System) -> None:
    system.relay()
    short = msgspec.structs.replace(system.settings, shutdown_grace_s=0.5)
    worker = system.worker(settings=short)
    job = system.enqueue("sample.sleep", 3.0)
    system.wait(lambda: system.runs(job) == 1, timeout=20, what="job running")
    worker.kill(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert "worker.released" in worker.output()
    assert system.status(job) in ("retrying", "published")
    with psycopg.connect(system.settings.database_url, autocommit=True) as conn:
        conn.execute("UPDATE outbox.jobs SET payload = '{\"args\": [0.1], \"kwargs\": {}}' WHERE id = %s", (job,))
    system.worker()
    system.wait_status(job, "succeeded", timeout=30)
    assert system.outcomes(job) == ["crashed", "succeeded"]


def test_critical_starts_in_next_free_slot_during_high_flood(system: System) -> None:
    system.relay()
    system.worker("--pool", "urgent", "--concurrency", "2")
    flood = [system.enqueue("sample.sleep", 0.4, "high") for _ in range(20)]
    system.wait(lambda: sum(system.runs(j) for j in flood) >= 2, timeout=20, what="flood running")
    critical = system.enqueue("sample.critical_effect", "critical")
    system.wait_status(critical, "succeeded", timeout=20)
    started = system.q("SELECT started_at FROM outbox.attempts WHERE job_id = %s", critical)[0][0]
    enqueued = system.q("SELECT enqueued_at FROM outbox.jobs WHERE id = %s", critical)[0][0]
    high_between = system.q("""SELECT count(*) FROM outbox.attempts a JOIN outbox.jobs j ON j.id = a.job_id
                               WHERE j.task = 'sample.sleep' AND a.started_at > %s AND a.started_at < %s""",
                            enqueued, started)[0][0]
    # Two slots were busy; at most those two finishing HIGH jobs' successors could slip in while the
    # critical message travelled relay -> broker -> buffer.
    assert high_between <= 2, high_between
    assert sum(1 for j in flood if system.status(j) != "succeeded") > 5  # the flood was still going


def test_reserved_slot_starts_critical_while_every_slot_runs_high(system: System) -> None:
    """The urgent pool reserves slots for critical: a critical job starts before any busy slot frees,
    and the reserved slots never run high work."""
    system.relay()
    system.worker("--pool", "urgent", "--concurrency", "2")  # 2 general slots + the topology's reserved critical
    flood = [system.enqueue("sample.sleep", 1.5, "high") for _ in range(8)]
    system.wait(lambda: sum(system.runs(j) for j in flood) >= 2, timeout=20, what="both general slots busy")
    critical = system.enqueue("sample.critical_effect", "critical")
    system.wait_status(critical, "succeeded", timeout=20)
    started = system.q("SELECT started_at FROM outbox.attempts WHERE job_id = %s", critical)[0][0]
    first_high_done = system.q("""SELECT min(a.finished_at) FROM outbox.attempts a JOIN outbox.jobs j ON j.id = a.job_id
                                  WHERE j.task = 'sample.sleep'""")[0][0]
    assert first_high_done is None or started < first_high_done, (started, first_high_done)
    system.wait(lambda: all(system.status(j) == "succeeded" for j in flood), timeout=30, what="flood done")
    overlap = system.q("""SELECT max(n) FROM (
                              SELECT (SELECT count(*) FROM outbox.attempts b JOIN outbox.jobs jb ON jb.id = b.job_id
                                      WHERE jb.task = 'sample.sleep' AND b.started_at <= a.started_at
                                        AND b.finished_at > a.started_at) AS n
                              FROM outbox.attempts a JOIN outbox.jobs j ON j.id = a.job_id
                              WHERE j.task = 'sample.sleep') AS s""")[0][0]
    assert overlap == 2, overlap  # high never ran in a reserved slot: at most the 2 general slots at once


def test_pipeline_step_enqueues_next_atomically(system: System) -> None:
    system.relay()
    system.worker("--pool", "normal")
    first = system.enqueue("sample.chain_first", 1)
    system.wait_status(first, "succeeded")
    system.wait(lambda: system.q("SELECT count(*) FROM public.test_effects WHERE note = 'chain 2'") == [(1,)],
               timeout=20, what="second step ran")


def run(coro: Callable[[], Any]) -> Any:
    return asyncio.run(coro())


async def test_oversize_garbage_is_dead_lettered_truncated(system: System) -> None:
    system.relay()
    system.worker()
    await system.publish_raw("critical", b"\xff" * 300_000)
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.dead_letters") == [(1,)], what="dead-lettered")
    [(size, headers)] = system.q("SELECT length(raw_body), headers FROM outbox.dead_letters")
    assert size == 64 * 1024 and headers["body_bytes"] == 300_000 and headers["body_truncated"] is True
    job = system.enqueue("sample.critical_effect", "still running")
    system.wait_status(job, "succeeded")


def test_worker_serves_its_counters_on_metrics_port(system: System) -> None:
    port = free_port()
    system.relay()
    system.worker("--pool", "urgent", "--metrics-port", str(port))
    job = system.enqueue("sample.effect", "metrics")
    system.wait_status(job, "succeeded")
    body = scrape(port) or ""
    assert 'tierbox_worker_events_total{event="succeeded",pool="urgent"} 1.0' in body
    assert 'tierbox_job_wait_seconds_count{tier="high"} 1.0' in body
