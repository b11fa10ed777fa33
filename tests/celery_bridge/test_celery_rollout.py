"""Step 1's rollout states on real Celery 5 workers: what runs while the ledger is away, and on a worker
that never installed ``tierbox.celery``.

Each test starts a worker of its own on a queue of its own beside the module's (``Bridge.start_worker``
with a label); the relay is the module's. Effects are written to the test database directly, so a
worker whose ledger is unreachable still reports what it ran.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from celery import Celery  # type: ignore[import-untyped]

from tests.celery_bridge.conftest import Bridge, TcpGate
from tests.helpers import wait_until

pytestmark = [pytest.mark.xdist_group("celery_bridge"), pytest.mark.timeout(240)]


@pytest.fixture
def gate(bridge: Bridge) -> Iterator[TcpGate]:
    """The module's database behind a TCP hop, shut: a ledger that cannot be reached."""
    g = TcpGate(bridge.settings.psycopg_url)
    try:
        yield g
    finally:
        g.shut()


def send_plain(bridge: Bridge, queue: str, note: str) -> str:
    """What ``effect.delay(note)`` publishes (Celery's own producer, UUID task id, no marker); the task id."""
    producer = Celery("tbtest-producer", broker=bridge.settings.amqp_url)
    producer.conf.broker_transport_options = {"confirm_publish": True}
    try:
        return str(producer.send_task("tbtest.effect", args=[note], queue=queue).id)
    finally:
        producer.close()


def test_with_the_ledger_unreachable_a_delay_task_runs_and_a_tierbox_job_waits_then_runs_once(
        bridge: Bridge, gate: TcpGate) -> None:
    worker = bridge.start_worker("noledger", env={"TB_LEDGER_URL": gate.url})

    # A plain .delay(): no word to the ledger, so nothing to wait for.
    plain = send_plain(bridge, worker.queue, "plain")
    wait_until(lambda: bridge.q("SELECT note, retries FROM public.celery_effects WHERE task_id = %s", plain)
               == [("plain", 0)], timeout=45, what="the .delay() task ran with its ledger unreachable")
    assert bridge.outcomes(uuid.UUID(plain)) == []  # not a Tierbox job: unrecorded
    assert f"job_id={plain}" not in worker.output()

    # A job through the outbox: published, then sent again every 5 s while the ledger cannot start it.
    job = bridge.enqueue(bridge.declare("tbtest.effect", worker.queue), "late")
    wait_until(lambda: worker.output().count(f"action=celery.ledger_unavailable job_id={job}") >= 2, timeout=45,
               what="the job delivered twice (the second a re-send), the ledger unreachable both times")
    assert bridge.effects(job) == []  # the re-sent copy still carries the marker: not run unrecorded
    assert bridge.status(job) == "published" and bridge.outcomes(job) == []

    gate.open()
    bridge.wait_status(job, "succeeded", timeout=45)
    assert bridge.effects(job) == [("late", 0)]  # once, and as a first run: the re-sends did not count as retries
    assert bridge.outcomes(job) == [(1, "succeeded", None, "celery")]
    assert bridge.q("SELECT count(*) FROM outbox.pending WHERE job_id = %s", job) == [(0,)]


def test_a_worker_without_install_runs_a_relay_published_job_which_stays_published(bridge: Bridge) -> None:
    """The rollout's in-between state: the job runs (an unchanged Celery 5 worker reads the relay's
    message), the ledger never hears of it, and nothing in Tierbox moves it on."""
    worker = bridge.start_worker("unchanged", env={"TB_CELERY_INSTALL": "0"})
    job = bridge.enqueue(bridge.declare("tbtest.effect", worker.queue), "unrecorded")
    wait_until(lambda: bridge.effects(job) == [("unrecorded", 0)], timeout=45, what="the job ran on Celery")
    assert "action=celery." not in worker.output()  # no tierbox.celery in that worker
    assert bridge.status(job) == "published" and bridge.outcomes(job) == []
    assert bridge.q("SELECT count(*) FROM outbox.pending WHERE job_id = %s", job) == [(0,)]
    assert bridge.q("SELECT count(*) FROM outbox.leases WHERE job_id = %s", job) == [(0,)]  # nothing to reap
    # It counts as published and not started in tier_health (the TierboxPublishedNotStartedGrowing alert's input).
    [(published,)] = bridge.q("SELECT published FROM outbox.tier_health WHERE tier = 'normal'")
    assert published >= 1
