"""Faults of a whole broker (on the private node): every process recovers by itself, every job runs once.

Relay, worker and API run as real processes against the private node; after the fault, jobs
committed afterwards must each run exactly once and the API must answer ready again. Jobs
published before a reset are lost with the broker's queues: bringing those back is reconciliation's
(relay/reconcile.py), so here every job published before the fault has finished before it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import msgspec
import pytest

from outbox.config import Settings
from tests.api.test_api_http import start_api
from tests.broker.conftest import PrivateBroker
from tests.broker.helpers import (
    assert_each_ran_once,
    broker_errors,
    broker_up,
    enqueue_effects,
    queue_stats,
    readyz,
)
from tests.helpers import Proc
from tests.system import System

pytestmark = pytest.mark.slow


@pytest.fixture
def private_system(private_settings: Settings, procs: list[Proc], tmp_path: Path) -> System:
    return System(private_settings, procs, tmp_path)


def start_all(system: System, procs: list[Proc], tmp_path: Path) -> tuple[Proc, Proc, str]:
    """Relay, worker and API on the private node, and one round of jobs through them."""
    relay = system.relay()
    worker = system.worker("--pool", "urgent")
    base = start_api(system.settings, procs, tmp_path)
    assert_each_ran_once(system, enqueue_effects(system, 5, "before"))
    return relay, worker, base


def assert_recovered(system: System, relay: Proc, worker: Proc, base: str, before: int) -> None:
    """New jobs run exactly once (relay and worker are back), the API answers ready, each process lives."""
    jobs = enqueue_effects(system, 10, "after")
    assert_each_ran_once(system, jobs, timeout=90)
    system.wait(lambda: readyz(base)[0] == 200, timeout=20, what="/readyz 200")
    assert broker_up(base) == "tierbox_broker_up 1.0"
    assert broker_errors(base) and not any(broker_errors(base))
    assert system.q("SELECT count(*) FROM public.test_runs") == [(before + len(jobs),)]
    assert relay.alive() and worker.alive()
    assert worker.output().count("worker.started") >= 2, "the pool subscribed again"
    assert queue_stats(system.settings.amqp_url, system.settings.queue_name("high")) == (0, 1)


def test_every_process_recovers_after_the_broker_closes_all_connections(
        private_system: System, private_broker: PrivateBroker, procs: list[Proc], tmp_path: Path) -> None:
    relay, worker, base = start_all(private_system, procs, tmp_path)
    private_broker.ctl("close_all_connections", "tierbox broker fault test")
    assert_recovered(private_system, relay, worker, base, before=5)
    assert "relay.disconnected" in relay.output()
    assert "worker.disconnected" in worker.output()


def test_every_process_recovers_after_a_broker_reset(
        private_system: System, private_broker: PrivateBroker, procs: list[Proc], tmp_path: Path) -> None:
    relay, worker, base = start_all(private_system, procs, tmp_path)
    private_broker.reset()  # queues, exchanges, vhosts and users wiped; the default vhost and user come back
    assert_recovered(private_system, relay, worker, base, before=5)
    assert "relay.disconnected" in relay.output()
    assert "worker.disconnected" in worker.output()


def test_after_a_reset_recreating_the_vhost_and_user_is_all_an_operator_does(
        private_settings: Settings, private_broker: PrivateBroker, procs: list[Proc], tmp_path: Path) -> None:
    vhost, user, password = f"tierbox-{uuid.uuid4().hex[:6]}", "tierbox-app", "app-secret"
    url = private_broker.add_vhost_and_user(vhost, user, password)
    system = System(msgspec.structs.replace(private_settings, amqp_url=url), procs, tmp_path)
    relay, worker, base = start_all(system, procs, tmp_path)
    private_broker.reset()
    # Without their vhost and user the processes cannot connect: they say so and keep trying.
    system.wait(lambda: "relay.connect_failed" in relay.output() and "worker.connect_failed" in worker.output()
                and readyz(base)[0] == 503, timeout=30, what="every process failing to connect")
    private_broker.add_vhost_and_user(vhost, user, password)  # the documented steps, nothing else
    assert_recovered(system, relay, worker, base, before=5)


@pytest.mark.timeout(300)  # a reset is three rabbitmqctl calls (about 6 s each here), then 1 s reconcile rounds
def test_jobs_queued_at_a_reset_run_once(private_settings: Settings, private_broker: PrivateBroker,
                                         procs: list[Proc], tmp_path: Path) -> None:
    """Published jobs still queued when the broker is reset are lost with its queues: reconciliation (every
    second, 1 s grace) republishes each once, and a worker started afterwards runs each exactly once."""
    n = 12
    system = System(msgspec.structs.replace(private_settings, reconcile_interval_s=1.0, reconcile_grace_s=1.0),
                    procs, tmp_path)
    relay = system.relay()  # no worker yet: every message waits in the queue
    jobs = enqueue_effects(system, n, "queued at reset ")
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.jobs WHERE status = 'published' AND id = ANY(%s)",
                                 jobs)[0][0] == n, what="all published")
    assert queue_stats(system.settings.amqp_url, system.settings.queue_name("high")) == (n, 0)
    private_broker.reset()  # the queue and its n messages are gone
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.republished")[0][0] >= n, timeout=60,
                what=f"{n} republished")
    worker = system.worker("--pool", "urgent")
    assert_each_ran_once(system, jobs, timeout=90)
    again = [r[0] for r in system.q("SELECT job_id FROM outbox.republished")]
    assert sorted(again) == sorted(jobs), "each lost job republished exactly once, and no other"
    assert "relay.republished" in relay.output() and relay.alive() and worker.alive()
