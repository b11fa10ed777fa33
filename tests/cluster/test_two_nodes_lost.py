"""Two of three nodes lost: the quorum queues stop; jobs wait in Postgres and run once a node returns.

A quorum queue needs a majority of its members (two of three). With two nodes SIGKILLed, a relay
and a pool given all three addresses reconnect to the survivor, which cannot accept publishes to
the tier queues: the jobs committed meanwhile must stay unfinished in Postgres (pending or
published, never dead, never lost). One node back, the quorum is back: every job runs, each
exactly once.

Opt-in (``CLUSTER_LONG=1``): two node restarts take minutes on a loaded 2-core box, more
than ``make test``'s cluster budget. Figures in docs/reliability.md.
"""

from __future__ import annotations

import os
import time

import pytest

from outbox.config import Settings
from tests.cluster.conftest import Cluster
from tests.system import System

pytestmark = [
    pytest.mark.slow, pytest.mark.timeout(600),
    pytest.mark.skipif(not os.environ.get("CLUSTER_LONG"), reason="opt-in: CLUSTER_LONG=1"),
]

#: How long the jobs committed without a quorum are watched staying unfinished.
NO_QUORUM_S = 20.0


def test_two_nodes_lost_jobs_wait_then_run_once(cluster: Cluster, cluster_settings: Settings,
                                                system: System) -> None:
    system.settings = cluster_settings
    survivor, *lost = cluster.names
    killed: list[str] = []
    try:
        system.relay()
        system.worker("--pool", "urgent")
        before = [system.enqueue("sample.effect", f"a{i}") for i in range(5)]
        system.wait(lambda: all(system.status(j) == "succeeded" for j in before), timeout=60, what="warm-up jobs")
        for name in lost:
            cluster.kill(name)
            killed.append(name)
        at = time.monotonic()
        during = [system.enqueue("sample.effect", f"b{i}") for i in range(10)]
        seen: set[str] = set()
        while time.monotonic() - at < NO_QUORUM_S:
            statuses = {system.status(j) for j in during}
            seen |= statuses
            assert statuses <= {"pending", "published"}, f"without a quorum: {statuses}"
            time.sleep(0.5)
        back_at = time.monotonic()
        cluster.restart(lost[0])
        killed.remove(lost[0])
        cluster.wait_running(2)
        restarted_s = time.monotonic() - back_at
        system.wait(lambda: all(system.status(j) == "succeeded" for j in during), timeout=180,
                    what="jobs committed without a quorum, after one node came back")
        served_s = time.monotonic() - back_at
        rows = system.q("SELECT job_id, count(*) FROM public.test_effects GROUP BY job_id")
        assert {r[0] for r in rows} == set(before + during) and all(r[1] == 1 for r in rows), rows
        dead = system.q("SELECT count(*) FROM outbox.dead_letters")[0][0]
        assert dead == 0
        print(f"\ntwo of three nodes killed: {len(during)} jobs committed, statuses seen over {NO_QUORUM_S:.0f} s "
              f"without a quorum {sorted(seen)}; one node back after {restarted_s:.1f} s (start of the node "
              f"included), every job succeeded {served_s:.1f} s after the restart began; lost 0, doubled 0")
    finally:
        for name in killed:
            cluster.restart(name)
        cluster.wait_running(3, timeout=300)
        assert survivor in cluster.running()
