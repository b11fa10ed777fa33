"""Connections cut from the server side, leases longer than jobs, the broker's consumer timeout."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import msgspec
import psycopg
import pytest

import outbox
from tests.system import System

pytestmark = pytest.mark.slow


def enqueue_batch(system: System, n: int, note: str) -> list:
    with psycopg.connect(system.settings.database_url) as conn:
        return outbox.enqueue_many(conn, [outbox.job("sample.effect", args=[f"{note}{i}"]) for i in range(n)])


def test_relay_and_worker_survive_postgres_and_broker_connection_loss(system: System) -> None:
    system.relay()
    system.worker("--pool", "urgent", "--concurrency", "4")
    jobs = enqueue_batch(system, 150, "a")
    system.wait(lambda: system.q("SELECT count(*) FROM public.test_effects")[0][0] >= 30, timeout=30,
                what="work under way")
    killed = system.q("""SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                         WHERE datname = current_database() AND pid <> pg_backend_pid()""")[0][0]
    assert killed >= 2
    subprocess.run(["rabbitmqctl", "close_all_connections", "resilience test"], check=True, capture_output=True,
                   timeout=60)
    jobs += enqueue_batch(system, 100, "b")
    for job in jobs:
        system.wait_status(job, "succeeded", timeout=90)
    per_job = dict(system.q("SELECT job_id, count(*) FROM public.test_effects GROUP BY job_id"))
    assert all(per_job.get(j) == 1 for j in jobs), "every job has exactly one effect"
    assert system.q("SELECT count(*) FROM outbox.pending") == [(0,)]
    assert system.q("SELECT count(*) FROM outbox.leases") == [(0,)]


def test_lease_is_renewed_while_a_job_outlives_it(system: System) -> None:
    system.relay()
    system.worker()
    job = system.enqueue("sample.sleep", 5.0)  # lease_s is 2 s in tests
    system.wait_status(job, "succeeded", timeout=30)
    assert system.outcomes(job) == ["succeeded"]
    assert system.runs(job) == 1


@pytest.fixture
def short_consumer_timeout() -> Iterator[None]:
    def set_env(expr: str) -> None:
        subprocess.run(["rabbitmqctl", "eval", expr], check=True, capture_output=True, timeout=60)

    set_env("application:set_env(rabbit, consumer_timeout, 1000).")
    yield
    set_env("application:set_env(rabbit, consumer_timeout, 1800000).")


def test_long_job_outlives_the_brokers_consumer_timeout(system: System, short_consumer_timeout: None) -> None:
    # RabbitMQ checks consumer timeouts on its channel tick (every 60 s on 3.10), so the job must span one.
    system.relay()
    slow = msgspec.structs.replace(system.settings, lease_s=5.0, reaper_interval_s=1.0)
    worker = system.worker("--pool", "deferred", settings=slow)
    job = system.enqueue("sample.long", 65.0)
    system.wait_status(job, "succeeded", timeout=100)
    assert system.outcomes(job) == ["succeeded"]
    assert len(system.effects(job)) == 1
    assert worker.alive()
    # Acked once its lease was recorded, the message never sat unacked past the timeout: no channel was closed.
    assert "worker.disconnected" not in worker.output()
