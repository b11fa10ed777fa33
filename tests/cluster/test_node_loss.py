"""A RabbitMQ node killed under load: real producers, relays and pools on the three-node cluster.

With producers committing jobs of every tier, SIGKILL the node leading the ``bulk`` quorum queue,
let every tier be served again, start the node again; then the same for the node leading
``critical``'s queue. The chaos checker (tests/chaos/harness.py) then counts lost jobs and double
effects (each handler's effect row commits with its job's success). Printed per fault: seconds
until every tier was served again and CRITICAL commit-to-start p99 of the jobs committed from 1 s
before the kill to WINDOW_S after it (docs/reliability.md, "A node lost under load").

The producers are paced at about 20 jobs/s for up to PRODUCE_S and stopped (SIGKILL: a transaction
cut short never commits, so it is no order) once both faults are over, so the load lasts through
both kills and the node restart between them however long that restart takes on a loaded box, and
no longer. ``NODE_LOSS_PROFILE=long`` keeps them going to the end (3,000 jobs over 80 s) and uses
10 s failover windows: the measurement of docs/reliability.md.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from outbox.config import Settings
from tests.chaos.harness import ChaosRun
from tests.cluster.conftest import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

LONG = os.environ.get("NODE_LOSS_PROFILE") == "long"
#: Failover window: CRITICAL jobs committed from 1 s before a kill to this long after it.
WINDOW_S = 10.0 if LONG else 5.0
#: Jobs committed by the producers, over this many seconds.
JOBS, PRODUCE_S = (3000, 80.0) if LONG else (4000, 200.0)


class NodeLossRun(ChaosRun):
    """The chaos run's processes and checker, with node kills on a cluster as its only faults."""

    def __init__(self, settings: Settings, workdir: Path, cluster: Cluster, **kw: Any) -> None:
        super().__init__(settings, workdir, faults=False, **kw)
        self.cluster = cluster
        self.killed: list[tuple[str, str, float]] = []  # (fault, node, when)

    def _kill_host_of(self, tier: str) -> None:
        node = self.cluster.host_of(self.settings.queue_name(tier))
        self._fault_at = self.cluster.kill(node)
        self.killed.append((f"kill {tier} leader", node, self._fault_at))

    def _fault_kill_bulk_leader(self) -> None:
        self._kill_host_of("bulk")

    def _fault_kill_critical_leader(self) -> None:
        self._kill_host_of("critical")

    def _clear_queue_limit(self) -> None:
        """No queue-limit fault here (and the shared node is none of this run's business)."""

    def served_again(self, at: float) -> float | None:
        """Seconds from ``at`` until every tier had run a job again (None: some tier has not yet)."""
        with psycopg.connect(self.settings.database_url) as conn:
            rows = conn.execute("""
                SELECT o.tier, min(e.at) FROM public.chaos_effects e JOIN public.chaos_orders o USING (job_id)
                WHERE e.at > to_timestamp(%s) GROUP BY o.tier""", (at,)).fetchall()
        if len(rows) < len(self.settings.topology.tiers):
            return None
        return max(first.timestamp() for _, first in rows) - at

    def critical_p99(self, at: float) -> tuple[float, int]:
        """CRITICAL commit-to-start p99 (s) of jobs committed in [at - 1 s, at + WINDOW_S], and their count."""
        with psycopg.connect(self.settings.database_url) as conn:
            row = conn.execute("""
                SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM a.started_at - j.enqueued_at)),
                       count(*)
                FROM public.chaos_orders o JOIN outbox.jobs j ON j.id = o.job_id
                JOIN outbox.attempts a ON a.job_id = j.id AND a.attempt = 1
                WHERE o.tier = 'critical' AND j.enqueued_at BETWEEN to_timestamp(%s) AND to_timestamp(%s)""",
                (at - 1, at + WINDOW_S)).fetchone()
        assert row is not None
        return float(row[0] or 0.0), int(row[1])


def test_node_killed_under_load_loses_nothing(cluster: Cluster, cluster_settings: Settings, tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(1_000_000))
    run = NodeLossRun(cluster_settings, tmp_path, cluster, seed=seed, jobs=JOBS, producers=2, relays=2,
                      produce_s=PRODUCE_S, timeout_s=PRODUCE_S + 70)
    began = time.monotonic()
    run.start()
    figures = []
    try:
        time.sleep(8 if LONG else 4)  # load established: every tier flowing
        for kind in ("kill_bulk_leader", "kill_critical_leader"):
            run.inject(kind)
            fault, node, at = run.killed[-1]
            try:
                run._wait(lambda at=at: run.served_again(at) is not None, 60, f"every tier served after {fault}")
                served = run.served_again(at)
            finally:  # the next fault (and the next test) needs all three nodes
                cluster.restart(node)
                cluster.wait_running(3)
            time.sleep(WINDOW_S - min(WINDOW_S, time.time() - at))  # the window's jobs committed
            figures.append((fault, node, served))
        if not LONG:  # enough load: stop producing, drain what committed
            for producer in run.producers:
                producer.kill()
                producer.wait(10)
        run._quiet(began + run.timeout_s)
    finally:
        run.stop()
    run.report.elapsed_s = time.monotonic() - began
    run.check()
    report = run.report
    print(report.table())
    for fault, node, served in figures:
        at = next(w for f, _, w in run.killed if f == fault)
        p99, n = run.critical_p99(at)
        print(f"{fault} ({node}): every tier served again after {served:.2f} s; "
              f"CRITICAL commit-to-start p99 {p99:.2f} s over {n} jobs committed in the failover window")
    assert report.committed > 0
    assert not report.lost, f"lost {len(report.lost)}: {report.lost[:5]}"
    assert not report.double_effects, f"double effects {report.double_effects[:5]}"
    assert report.ok, report.table() + f"\nstranded={report.stranded[:5]} unclean={report.unclean_exits}"
