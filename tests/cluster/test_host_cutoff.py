"""A worker host cut off the network while it runs jobs (two test hosts, tests/cluster/hosts.py).

Hosts A and B each run a relay and a ``normal`` pool against the three-node cluster, Postgres and
Redis, all reached over their own veth link. Once B runs jobs, its link goes down: its leases stop
being renewed and expire, A's reaper retries those jobs and A runs them, and jobs committed meanwhile
are served by A. Then the link comes back: B's handlers, which finished while cut off, try to commit
their effects with their success, are fenced on the attempt and commit nothing. Asserted from the
ledger and the tasks' own tables: every job has exactly one effect (0 lost, 0 doubled), and B's jobs
ran twice (raw executions) but took effect once.
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from pathlib import Path

import msgspec
import psycopg
import pytest

import outbox
from outbox.config import Settings
from tests.cluster import host_tasks, hosts
from tests.cluster.conftest import Cluster
from tests.helpers import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: Seconds the first attempt of each of the first jobs works: it must outlast the outage (lease
#: expiry, reaping and the run elsewhere: about 5 s), so the cut-off host completes after the link
#: is back and its late success meets the fence.
SLOW_S = 15.0


def _running_on(conn: psycopg.Connection, worker_id: str, pid: int) -> list[uuid.UUID]:
    """Jobs whose handler is running on the worker ``worker_id`` (process ``pid``): its attempt is
    open and the handler has recorded its start (past start_attempt's commit, inside the work)."""
    rows = conn.execute("""
        SELECT a.job_id FROM outbox.attempts a
        WHERE a.worker_id = %s AND a.outcome IS NULL
          AND EXISTS (SELECT 1 FROM public.host_runs r WHERE r.job_id = a.job_id AND r.attempt = a.attempt
                      AND r.pid = %s)""", (worker_id, pid)).fetchall()
    return [r[0] for r in rows]


def _enqueue(url: str, n: int, seconds: float) -> list[uuid.UUID]:
    with psycopg.connect(url) as conn:
        ids = [outbox.enqueue(conn, host_tasks.effect, kwargs={"seconds": seconds}) for _ in range(n)]
        conn.commit()
    return ids


def test_host_cut_off_while_running_jobs_loses_and_doubles_nothing(
        cluster: Cluster, cluster_settings: Settings, tmp_path: Path) -> None:
    why = hosts.unavailable()
    if why:
        pytest.skip(f"no test hosts: {why}")
    settings = msgspec.structs.replace(cluster_settings, app="tests.cluster.host_tasks")
    url = settings.database_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(host_tasks.DDL)
    procs: list[hosts.HostProc] = []
    began = time.monotonic()
    with hosts.test_hosts(2, settings, tmp_path) as (a, b):
        def start(host: hosts.TestHost, *args: str) -> hosts.HostProc:
            proc = hosts.HostProc(host, list(args), settings, tmp_path / f"{args[0]}-{host.ns}.log")
            procs.append(proc)
            return proc
        try:
            for host in (a, b):
                start(host, "relay")
            # No prefetch: B holds only the jobs it runs. A has slots to spare for B's jobs once reaped.
            worker_a = start(a, "worker", "--pool", "normal", "--concurrency", "4", "--prefetch", "0")
            worker_b = start(b, "worker", "--pool", "normal", "--concurrency", "2", "--prefetch", "0")
            wait_until(lambda: all("worker.started" in w.output() for w in (worker_a, worker_b)), timeout=90,
                       interval=0.2, what="both pools started on their hosts")
            match = re.search(r"worker_id=(\S+)", worker_b.output())
            assert match, worker_b.output()
            b_id = match.group(1)

            jobs = _enqueue(url, 4, SLOW_S)
            with psycopg.connect(url, autocommit=True) as conn:
                held = wait_until(lambda: _running_on(conn, b_id, worker_b.pid), timeout=60, interval=0.1,
                                  what="host B running jobs")
            b.cut()
            cut_at = time.monotonic()
            during = _enqueue(url, 20, 0.0)  # committed while B is cut off: A must serve them

            def succeeded(ids: list[uuid.UUID]) -> int:
                with psycopg.connect(url) as conn:
                    row = conn.execute("SELECT count(*) FROM outbox.jobs WHERE id = ANY(%s) AND status = 'succeeded'",
                                       (ids,)).fetchone()
                return int(row[0]) if row else 0
            wait_until(lambda: succeeded(held) == len(held), timeout=90, interval=0.2,
                       what=f"B's {len(held)} jobs recovered and run on A while B is cut off")
            recovered_s = time.monotonic() - cut_at
            wait_until(lambda: succeeded(during) > 0, timeout=60, interval=0.2,
                       what="jobs committed during the cut served")
            b.restore()
            restored_at = time.monotonic()
            # B's handlers finished while cut off; their late successes reach Postgres now and are fenced.
            def fenced() -> list[uuid.UUID]:
                lines = [x for x in worker_b.output().splitlines() if "action=worker.fenced" in x]
                return [j for j in held if any(f"job_id={j}" in x for x in lines)]
            try:
                wait_until(lambda: len(fenced()) == len(held), timeout=60, interval=0.2,
                           what="B's late completions fenced")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; fenced {fenced()} of {held}; B's log ends:\n"
                                     + "\n".join(worker_b.output().splitlines()[-30:])) from None
            fenced_s = time.monotonic() - restored_at
            wait_until(lambda: succeeded(jobs + during) == len(jobs + during), timeout=120, interval=0.2,
                       what="every job succeeded")
            for proc in procs:
                proc.kill(signal.SIGTERM)
            codes = [proc.wait(60) for proc in procs]
        finally:
            for proc in procs:
                proc.stop()
    assert codes == [0] * len(procs), [p.output()[-2000:] for p in procs]

    with psycopg.connect(url) as conn:
        effects: dict[uuid.UUID, int] = dict(conn.execute("SELECT job_id, count(*) FROM public.host_effects GROUP BY job_id").fetchall())
        runs: dict[uuid.UUID, int] = dict(conn.execute("SELECT job_id, count(*) FROM public.host_runs GROUP BY job_id").fetchall())
        late = conn.execute("""
            SELECT a.job_id, a.outcome, s.worker_id FROM outbox.attempts a
            JOIN outbox.attempts s ON s.job_id = a.job_id AND s.outcome = 'succeeded'
            WHERE a.worker_id = %s AND a.job_id = ANY(%s)""", (b_id, held)).fetchall()
        b_effects = conn.execute("SELECT count(*) FROM public.host_effects WHERE pid = %s AND job_id = ANY(%s)",
                                 (worker_b.pid, held)).fetchone()
    lost = [j for j in jobs + during if j not in effects]
    doubled = [j for j, n in effects.items() if n > 1]
    print(f"\nhost cut off holding {len(held)} running jobs: recovered on the other host after {recovered_s:.1f} s; "
          f"late completions fenced {fenced_s:.1f} s after the link came back; {len(during)} jobs committed during "
          f"the cut; lost {len(lost)}, doubled {len(doubled)}; test {time.monotonic() - began:.0f} s")
    assert not lost, f"lost {lost}"
    assert not doubled, f"doubled {doubled}"
    assert set(effects) == set(jobs + during)
    # B's jobs ran on B (cut off mid-handler) and again on A; the lease expiry crashed B's attempt and
    # A's attempt succeeded: B's late completion changed nothing.
    assert all(runs[j] >= 2 for j in held), runs
    assert sorted(r[0] for r in late) == sorted(held)
    assert all(outcome == "crashed" and winner != b_id for _, outcome, winner in late), late
    assert b_effects == (0,), "an effect of B's late completion committed"
