"""The production queue under a real load generator: loss, duplicates and API latency measured.

Processes: the flaky downstream and the API (each served by uvicorn), the relay and two worker
processes of the ``normal`` pool, all real. The load generator is an httpx async client with
``--concurrency`` connections that POSTs documents, each under its own idempotency key.

First the API alone: before the relay and the workers start, the load generator sends up to
``API_ALONE_MAX`` requests with the same concurrency, so the API's latency is measured without the
rest of the system competing for the same cores; then the relay and workers start and run those
jobs to the end (nothing is left pending), and the run proper begins. ``--api-only`` stops there.

The run proper: ``--jobs`` documents. While they are sent, one worker is SIGKILLed and restarted,
the downstream goes down for 3 s (the Redis breaker opens for every worker), and the other worker
is SIGKILLed and restarted. Then every key is replayed (a worker is SIGKILLed again meanwhile). The
run waits for every accepted job to finish, inspects the dead letters over the API, fixes their
cause and redrives them over the API.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from examples.idempotent_api import tasks
from examples.support import (
    Claim,
    Processes,
    conclude,
    example_settings,
    percentile,
    print_claims,
    tear_down,
    wait_for,
    wait_for_consumers,
)
from outbox.config import Settings
from tierbox import migrations

#: The story's outcome: p99 API latency under concurrent load.
P99_BUDGET_MS = 50.0
#: One document in this many is one the downstream refuses (422): those jobs are dead-lettered.
REFUSED_EVERY = 100
WORKERS = ("worker-1", "worker-2")
#: uvicorn processes serving the API (one per core of this 2-core box).
API_PROCESSES = 2
FINAL = ("succeeded", "dead")
#: Most requests of the API-alone phase: 2,000 latencies give a p99 from 20 samples above it, and
#: the phase's jobs must then be run to the end before the run proper, so more would only add time.
API_ALONE_MAX = 2_000
#: Document ids of the API-alone phase start above this, far from the run proper's (1..jobs), so
#: none of them is one the downstream refuses.
API_ALONE_DOCUMENTS = 10_000_000
#: How long the downstream is down, and when it goes down (fraction of the requests sent).
OUTAGE_S = 3.0


@dataclass
class Sent:
    """What the load generator saw."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    job_ids: dict[str, uuid.UUID] = field(default_factory=dict)  # idempotency key -> job id
    duplicates: int = 0
    errors: int = 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _load(api: str, keys: list[tuple[str, int]], concurrency: int, sent: Sent,
                milestones: dict[float, Callable[[], Coroutine[Any, Any, None]]]) -> float:
    """POST every key with ``concurrency`` connections; run each milestone when that fraction is sent."""
    queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    for item in keys:
        queue.put_nowait(item)
    done = 0
    pending = dict(sorted(milestones.items()))
    chaos: list[asyncio.Task[None]] = []

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal done
        while not queue.empty():
            key, document = queue.get_nowait()
            t0 = time.perf_counter()
            try:
                response = await http.post("/jobs", json={"document_id": document}, headers={"Idempotency-Key": key})
            except httpx.HTTPError:
                sent.errors += 1
                continue
            sent.latencies_ms.append((time.perf_counter() - t0) * 1000)
            sent.statuses[response.status_code] = sent.statuses.get(response.status_code, 0) + 1
            if response.status_code == 202:
                body = response.json()
                job_id = uuid.UUID(body["job_id"])
                if body["duplicate"]:
                    sent.duplicates += 1
                if sent.job_ids.setdefault(key, job_id) != job_id:
                    sent.errors += 1  # a key answered with two different jobs: a duplicate let through
            done += 1
            for fraction in [f for f in pending if done >= f * len(keys)]:
                chaos.append(asyncio.create_task(pending.pop(fraction)()))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=api, limits=limits, timeout=30) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await asyncio.gather(*chaos)
    return elapsed


def _statuses(conn: psycopg.Connection[Any], ids: list[uuid.UUID]) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) FROM outbox.jobs WHERE id = ANY(%s) GROUP BY status",
                        (ids,)).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def _count(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> int:
    row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


@dataclass
class Run:
    """One run's processes and addresses, and when each worker process and the outage lived."""

    settings: Settings
    procs: Processes
    api: str
    downstream: str
    kills: int = 0
    #: (started, ended) of every worker process, by ``time.monotonic()``; ``ended`` None while it runs.
    worker_lives: dict[str, list[tuple[float, float | None]]] = field(default_factory=dict)
    #: (start, end) enclosing the downstream's outage, by ``time.monotonic()``.
    outage_window: tuple[float, float] | None = None

    def start_worker(self, label: str) -> None:
        """Start one worker process of the ``normal`` pool under ``label``."""
        self.procs.start(label, ["worker", "--pool", "normal"], extra_env={"DOWNSTREAM_URL": self.downstream})
        self.worker_lives.setdefault(label, []).append((time.monotonic(), None))

    async def kill_and_restart(self, label: str) -> None:
        """SIGKILL one worker (its in-flight jobs die with it), start a new one a second later."""
        await asyncio.to_thread(self.procs.kill, label, signal.SIGKILL)
        started, _ = self.worker_lives[label][-1]
        self.worker_lives[label][-1] = (started, time.monotonic())
        self.kills += 1
        await asyncio.sleep(1)
        self.start_worker(label)

    async def outage(self, seconds: float) -> None:
        """The downstream answers 503 to everything for ``seconds``."""
        async with httpx.AsyncClient(base_url=self.downstream) as http:
            began = time.monotonic()  # before the switch: the window encloses the outage
            await http.post("/control", json={"outage": True})
            await asyncio.sleep(seconds)
            await http.post("/control", json={"outage": False})
            self.outage_window = (began, time.monotonic())

    def workers_during_outage(self) -> int:
        """Worker processes alive at some moment of the outage (a restarted one counts twice)."""
        if self.outage_window is None:
            return 0
        start, end = self.outage_window
        return sum(1 for lives in self.worker_lives.values() for born, died in lives
                   if born < end and (died is None or died > start))

    def breaker_bound(self) -> tuple[int, str]:
        """Most requests the breaker may let reach the downstream during the outage, and why.

        Before it opens: the failures that open it (``threshold``) plus every request already under
        way whose failure is not yet counted. A worker counts a failure before it acks the message
        (``Delivery.finish``), so those are among its unacked deliveries: at most the pool's QoS
        (concurrency + prefetch) per worker process. While open: nothing. Each time it half-opens:
        ``probes`` requests, and a failed probe re-opens it for ``open_s``.
        """
        policy = tasks.BREAKER
        pool = self.settings.topology.pools["normal"]
        unacked = pool.slots + pool.prefetch
        workers = self.workers_during_outage()
        half_opens = int(OUTAGE_S // policy.open_s) + 1
        bound = policy.threshold + unacked * workers + policy.probes * half_opens
        return bound, (f"threshold {policy.threshold} + {unacked} unacked deliveries x {workers} worker processes "
                       f"+ {policy.probes} probe x {half_opens} half-opens")


def run(jobs: int, concurrency: int, label: str, *, api_only: bool = False) -> int:
    """One run; returns 0 when zero loss and full duplicate elimination held (latency is reported).

    ``api_only``: only the API-alone phase (its jobs still run to the end); 0 when none was lost.
    """
    settings = example_settings("examples.idempotent_api.tasks", "idem", lease_s=5.0, reaper_interval_s=1.0)
    migrations.upgrade(settings.database_url)
    procs = Processes(settings)
    api_port, downstream_port = _free_port(), _free_port()
    r = Run(settings, procs, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{downstream_port}")
    run_id = uuid.uuid4().hex[:8]
    try:
        procs.start("downstream", ["examples.idempotent_api.downstream:app", "--port", str(downstream_port),
                                   "--log-level", "warning"], module="uvicorn")
        procs.start("api", ["examples.idempotent_api.app:app", "--port", str(api_port), "--log-level", "warning",
                            "--no-access-log", "--workers", str(API_PROCESSES)], module="uvicorn")
        wait_for(lambda: _answers(f"{r.api}/dead-letters") and _answers(f"{r.downstream}/stats"), 60,
                 "the API and the downstream")
        alone = _api_alone(r, min(jobs, API_ALONE_MAX), concurrency, run_id)
        procs.start("relay", ["relay"])
        for worker in WORKERS:
            r.start_worker(worker)
        wait_for_consumers(settings, ["normal"])
        alone.run_to_the_end(r)
        if api_only:
            print_claims(f"production queue, API alone, {label}", [alone.claim(concurrency)])
            return conclude(procs, 0 if alone.lost == 0 else 1)
        return conclude(procs, _scenario(r, jobs, concurrency, label, run_id, alone))
    finally:
        tear_down(settings, procs)


@dataclass
class Alone:
    """The API-alone phase: what the load generator saw, and what became of its jobs."""

    sent: Sent
    seconds: float
    succeeded: int = 0
    lost: int = 0
    #: The downstream's counts once the phase's jobs have run (the run proper's are counted from here).
    baseline: dict[str, Any] = field(default_factory=dict)

    def run_to_the_end(self, r: Run) -> None:
        """Wait until the relay and workers have finished every job the phase enqueued, then take the
        downstream's counts as the run proper's baseline."""
        ids = sorted(set(self.sent.job_ids.values()))
        with psycopg.connect(r.settings.psycopg_url, autocommit=True) as conn:
            try:
                wait_for(lambda: sum(_statuses(conn, ids).get(s, 0) for s in FINAL) == len(ids),
                         max(120.0, len(ids) / 10), "the API-alone phase's jobs to finish", interval_s=1.0)
            except TimeoutError as exc:
                print(f"{exc}: {_statuses(conn, ids)}", file=sys.stderr)
            self.succeeded = _statuses(conn, ids).get("succeeded", 0)
        self.lost = len(ids) - self.succeeded + self.sent.errors
        self.baseline = httpx.get(f"{r.downstream}/stats", timeout=10).json()

    def claim(self, concurrency: int) -> Claim:
        """The latency row for the API alone."""
        latencies = self.sent.latencies_ms
        return Claim(f"API p99 < {P99_BUDGET_MS:.0f} ms under concurrent load: the API alone",
                     f"p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms over "
                     f"{len(latencies):,} POST /jobs, {concurrency} connections, {API_PROCESSES} API processes, "
                     f"{len(latencies) / self.seconds:.0f} requests/s, no relay or worker running; its jobs then "
                     f"ran: {self.succeeded:,} succeeded, lost {self.lost}",
                     percentile(latencies, 99) < P99_BUDGET_MS)


def _api_alone(r: Run, requests: int, concurrency: int, run_id: str) -> Alone:
    """Time ``requests`` POST /jobs while only the API (and the idle downstream) run beside Postgres."""
    keys = [(f"{run_id}.alone-{i}", API_ALONE_DOCUMENTS + i) for i in range(1, requests + 1)]
    print(f"the API alone: {requests:,} requests over {concurrency} connections, before the relay and the "
          f"workers start ...", flush=True)
    sent = Sent()
    seconds = asyncio.run(_load(r.api, keys, concurrency, sent, {}))
    return Alone(sent, seconds)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _scenario(r: Run, jobs: int, concurrency: int, label: str, run_id: str, alone: Alone) -> int:
    keys = [(f"{run_id}-{i}", i) for i in range(1, jobs + 1)]
    refused = [doc for _, doc in keys if doc % REFUSED_EVERY == 0]
    httpx.post(f"{r.downstream}/control", json={"refused": refused}, timeout=10)
    print(f"{jobs:,} jobs over {concurrency} connections; SIGKILL a worker at 25 %, downstream outage at 50 %, "
          f"SIGKILL the other at 75 %; then every key again ...", flush=True)
    with psycopg.connect(r.settings.psycopg_url, autocommit=True) as conn:
        began = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    first = Sent()
    first_s = asyncio.run(_load(r.api, keys, concurrency, first, {
        0.25: lambda: r.kill_and_restart(WORKERS[0]),
        0.5: lambda: r.outage(OUTAGE_S),
        0.75: lambda: r.kill_and_restart(WORKERS[1]),
    }))
    replay = Sent()
    replay_s = asyncio.run(_load(r.api, keys, concurrency, replay, {0.5: lambda: r.kill_and_restart(WORKERS[0])}))
    accepted = sorted(set(first.job_ids.values()))
    with psycopg.connect(r.settings.psycopg_url, autocommit=True) as conn:
        try:
            wait_for(lambda: sum(_statuses(conn, accepted).get(s, 0) for s in FINAL) == len(accepted),
                     max(120.0, jobs / 10), "every accepted job to finish", interval_s=1.0)
        except TimeoutError as exc:
            print(f"{exc}: {_statuses(conn, accepted)}", file=sys.stderr)
        listed = httpx.get(f"{r.api}/dead-letters", timeout=30).json()["items"]
        dead_ids = [uuid.UUID(item["job_id"]) for item in listed if uuid.UUID(item["job_id"]) in set(accepted)]
        httpx.post(f"{r.downstream}/control", json={"refused": []}, timeout=10)  # the cause, fixed
        redriven = []
        for job_id in dead_ids:
            answer = httpx.post(f"{r.api}/dead-letters/{job_id}/redrive", timeout=30)
            if answer.status_code == 200:
                redriven.append(uuid.UUID(answer.json()["new_job_id"]))
        try:
            wait_for(lambda: _statuses(conn, redriven).get("succeeded", 0) == len(redriven), 120,
                     "the redriven jobs to succeed")
        except TimeoutError as exc:
            print(f"{exc}: {_statuses(conn, redriven)}", file=sys.stderr)
        return _report(conn, r, label, jobs=jobs, concurrency=concurrency, keys=[k for k, _ in keys], run_id=run_id,
                       first=first, replay=replay, first_s=first_s, replay_s=replay_s, accepted=accepted,
                       refused=refused, dead_ids=dead_ids, redriven=redriven, alone=alone, began=began)


def _report(conn: psycopg.Connection[Any], r: Run, label: str, *, jobs: int, concurrency: int, keys: list[str],
            run_id: str, first: Sent, replay: Sent, first_s: float, replay_s: float, accepted: list[uuid.UUID],
            refused: list[int], dead_ids: list[uuid.UUID], redriven: list[uuid.UUID], alone: Alone,
            began: Any) -> int:
    statuses = _statuses(conn, accepted)
    finished = statuses.get("succeeded", 0) + len([j for j in dead_ids if j in set(accepted)])
    redriven_ok = _statuses(conn, redriven).get("succeeded", 0)
    lost = len(accepted) - statuses.get("succeeded", 0) - redriven_ok
    rows_for_keys = _count(conn, "SELECT count(*) FROM outbox.jobs WHERE idempotency_key LIKE %s", (f"{run_id}-%",))
    twice = _count(conn, "SELECT count(*) FROM (SELECT job_id FROM outbox.attempts WHERE job_id = ANY(%s) AND "
                   "outcome = 'succeeded' GROUP BY job_id HAVING count(*) > 1) d", ([*accepted, *redriven],))
    outcomes = dict(conn.execute("SELECT coalesce(outcome, 'running'), count(*) FROM outbox.attempts "
                                 "WHERE job_id = ANY(%s) GROUP BY 1", (accepted,)).fetchall())
    # Breaker history is not per queue prefix: count only this run's transitions (a run before it on
    # the same database left its own).
    opened = _count(conn, "SELECT count(*) FROM outbox.breaker_events WHERE breaker = %s "
                    "AND to_state = 'open' AND at >= %s", (tasks.BREAKER_NAME, began))
    down = _since(httpx.get(f"{r.downstream}/stats", timeout=10).json(), alone.baseline)
    bound, why = r.breaker_bound()
    latencies = first.latencies_ms + replay.latencies_ms
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    same_ids = sum(1 for k in keys if k in replay.job_ids and replay.job_ids[k] == first.job_ids.get(k))
    rate = len(first.latencies_ms) / first_s
    print(f"\nphase 1: {len(first.latencies_ms):,} requests in {first_s:.1f} s ({rate:.0f}/s), "
          f"answers {first.statuses}; replay: {len(replay.latencies_ms):,} in {replay_s:.1f} s, answers "
          f"{replay.statuses}; attempts by outcome {outcomes}; downstream {down}")
    claims = [
        Claim(f"zero message loss across {jobs:,} jobs, workers SIGKILLed during the run",
              f"{len(accepted):,} accepted, {statuses.get('succeeded', 0):,} succeeded, {len(dead_ids)} dead-lettered "
              f"(refused by the downstream) and redriven: {redriven_ok} succeeded; lost {lost}; {r.kills} SIGKILLs; "
              f"transport errors {first.errors + replay.errors}",
              lost == 0 and len(accepted) == jobs and first.errors + replay.errors == 0
              and len(dead_ids) == len(refused) and finished == len(accepted)),
        Claim("the DLQ caught every failure that would have been silent",
              f"{len(dead_ids)} of {len(refused)} refused documents listed by GET /dead-letters, "
              f"{len(redriven)} redriven by POST /dead-letters/{{id}}/redrive", len(dead_ids) == len(refused)),
        Claim("100 % duplicate elimination replaying the keys across worker crashes",
              f"replay: {replay.duplicates:,}/{jobs:,} answered duplicate, {same_ids:,} with the first job's id; "
              f"{rows_for_keys:,} jobs for {jobs:,} keys; jobs succeeded twice {twice}; downstream applied "
              f"{down['applied']:,} documents, {down['repeated_keys']} re-sent keys answered without re-applying",
              replay.duplicates == jobs and same_ids == jobs and rows_for_keys == jobs and twice == 0),
        Claim("a Redis breaker shared by every worker stops hammering a sick downstream",
              f"{OUTAGE_S:.0f} s outage: breaker opened {opened} times, {down['during_outage']} requests reached the "
              f"downstream while it was down (at most {bound}: {why}; {jobs:,} jobs queued)",
              opened > 0 and 0 < down["during_outage"] <= bound),
        alone.claim(concurrency),
        Claim(f"API p99 < {P99_BUDGET_MS:.0f} ms under concurrent load: the whole system running",
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(latencies):,} POST /jobs, {concurrency} connections, "
              f"{API_PROCESSES} API processes, {rate:.0f} requests/s",
              p99 < P99_BUDGET_MS),
    ]
    print_claims(f"production queue, {label}", claims)
    return 0 if all(c.held for c in claims[:4]) and alone.lost == 0 else 1


def _since(now: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """The downstream's counters minus ``baseline``'s (what the run proper caused)."""
    return {k: v - baseline.get(k, 0) if isinstance(v, int) and not isinstance(v, bool) else v
            for k, v in now.items()}


SIZES = {"small": 600, "full": 10_000}


def main(argv: list[str] | None = None) -> int:
    """``python -m examples.idempotent_api [--size small|full] [--jobs N] [--concurrency C] [--api-only]``."""
    parser = argparse.ArgumentParser(prog="python -m examples.idempotent_api",
                                     description="The production queue on Tierbox, its outcomes measured.")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--jobs", type=int, help="jobs to send (overrides --size)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent connections of the load generator")
    parser.add_argument("--api-only", action="store_true",
                        help=f"only time the API alone (min(jobs, {API_ALONE_MAX:,}) requests, no relay or worker "
                             "running), then run those jobs to the end; no faults, no replay")
    args = parser.parse_args(argv)
    jobs = args.jobs or SIZES[args.size]
    return run(jobs, args.concurrency, f"{jobs:,} jobs" if args.jobs else f"size {args.size}, {jobs:,} jobs",
               api_only=args.api_only)
