"""A tier queue deleted under running processes (on the shared node, under the test's own prefix)."""

from __future__ import annotations

import msgspec
import pytest

from tests.broker.helpers import assert_each_ran_once, delete_queue, enqueue_effects, queue_stats
from tests.system import System

pytestmark = pytest.mark.slow


def test_worker_redeclares_and_resubscribes_when_the_broker_cancels_its_consumer(system: System) -> None:
    worker = system.worker("--pool", "urgent")
    queue = system.settings.queue_name("high")  # sample.effect's tier
    assert queue_stats(system.settings.amqp_url, queue) == (0, 1)
    delete_queue(system.settings.amqp_url, queue)  # RabbitMQ cancels the consumer (basic.cancel)
    # The worker alone (no relay yet, which would re-declare too) brings its queue back and consumes it.
    system.wait(lambda: queue_stats(system.settings.amqp_url, queue) == (0, 1), timeout=20,
                what="queue re-declared and consumed again")
    assert "worker.consumer_cancelled" in worker.output()
    dlq = system.settings.dlq_name("high")  # the dead-letter sweeper's consumer: the same
    delete_queue(system.settings.amqp_url, dlq)
    system.wait(lambda: queue_stats(system.settings.amqp_url, dlq) == (0, 1), timeout=20,
                what="dlq re-declared and swept again")
    system.relay()
    assert_each_ran_once(system, enqueue_effects(system, 5, "after"))
    assert worker.alive()


def test_relay_redeclares_a_queue_deleted_under_it_and_keeps_the_rows_pending_meanwhile(system: System) -> None:
    # Reconciliation (relay/reconcile.py) declares a missing queue too, on its own round: off here.
    relay = system.start("relay", settings=msgspec.structs.replace(system.settings, reconcile_interval_s=0.0))
    system.wait(lambda: "relay.connected" in relay.output(), what="relay connected")
    queue = system.settings.queue_name("high")
    assert queue_stats(system.settings.amqp_url, queue) == (0, 0)
    delete_queue(system.settings.amqp_url, queue)
    jobs = enqueue_effects(system, 3, "returned")  # routed nowhere: the broker returns them
    system.wait(lambda: queue_stats(system.settings.amqp_url, queue) == (3, 0), timeout=20,
                what="queue re-declared by the relay and the rows published into it")
    assert system.q("SELECT count(*) FROM outbox.pending") == [(0,)]
    assert "relay.topology_redeclared" in relay.output()
    system.worker("--pool", "urgent")
    assert_each_ran_once(system, jobs)
