"""The production queue under a real load generator: loss, duplicates and API latency measured.

Processes: the flaky downstream and the API (each served by uvicorn), the relay and two worker
processes of the ``normal`` pool, all real. The load generator is an httpx async client with
``--concurrency`` connections that POSTs ``--jobs`` documents, each under its own idempotency key.
While it runs, one worker is SIGKILLed and restarted, the downstream goes down for 3 s (the Redis
breaker opens for every worker), and the other worker is SIGKILLed and restarted. Then every key is
replayed (a worker is SIGKILLed again meanwhile). The run waits for every accepted job to finish,
inspects the dead letters over the API, fixes their cause and redrives them over the API.
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
    """One run's processes and addresses."""

    settings: Settings
    procs: Processes
    api: str
    downstream: str
    kills: int = 0

    def start_worker(self, label: str) -> None:
        self.procs.start(label, ["worker", "--pool", "normal"], extra_env={"DOWNSTREAM_URL": self.downstream})

    async def kill_and_restart(self, label: str) -> None:
        """SIGKILL one worker (its in-flight jobs die with it), start a new one a second later."""
        await asyncio.to_thread(self.procs.kill, label, signal.SIGKILL)
        self.kills += 1
        await asyncio.sleep(1)
        self.start_worker(label)

    async def outage(self, seconds: float) -> None:
        """The downstream answers 503 to everything for ``seconds``."""
        async with httpx.AsyncClient(base_url=self.downstream) as http:
            await http.post("/control", json={"outage": True})
            await asyncio.sleep(seconds)
            await http.post("/control", json={"outage": False})


def run(jobs: int, concurrency: int, label: str) -> int:
    """One run; returns 0 when zero loss and full duplicate elimination held (latency is reported)."""
    settings = example_settings("examples.idempotent_api.tasks", "idem", lease_s=5.0, reaper_interval_s=1.0)
    migrations.upgrade(settings.database_url)
    procs = Processes(settings)
    api_port, downstream_port = _free_port(), _free_port()
    r = Run(settings, procs, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{downstream_port}")
    try:
        procs.start("downstream", ["examples.idempotent_api.downstream:app", "--port", str(downstream_port),
                                   "--log-level", "warning"], module="uvicorn")
        procs.start("api", ["examples.idempotent_api.app:app", "--port", str(api_port), "--log-level", "warning",
                            "--no-access-log", "--workers", str(API_PROCESSES)], module="uvicorn")
        procs.start("relay", ["relay"])
        for worker in WORKERS:
            r.start_worker(worker)
        wait_for_consumers(settings, ["normal"])
        wait_for(lambda: _answers(f"{r.api}/dead-letters") and _answers(f"{r.downstream}/stats"), 60,
                 "the API and the downstream")
        return conclude(procs, _scenario(r, jobs, concurrency, label))
    finally:
        tear_down(settings, procs)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _scenario(r: Run, jobs: int, concurrency: int, label: str) -> int:
    run_id = uuid.uuid4().hex[:8]
    keys = [(f"{run_id}-{i}", i) for i in range(1, jobs + 1)]
    refused = [doc for _, doc in keys if doc % REFUSED_EVERY == 0]
    httpx.post(f"{r.downstream}/control", json={"refused": refused}, timeout=10)
    print(f"{jobs:,} jobs over {concurrency} connections; SIGKILL a worker at 25 %, downstream outage at 50 %, "
          f"SIGKILL the other at 75 %; then every key again ...", flush=True)
    first = Sent()
    first_s = asyncio.run(_load(r.api, keys, concurrency, first, {
        0.25: lambda: r.kill_and_restart(WORKERS[0]),
        0.5: lambda: r.outage(3.0),
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
                       refused=refused, dead_ids=dead_ids, redriven=redriven)


def _report(conn: psycopg.Connection[Any], r: Run, label: str, *, jobs: int, concurrency: int, keys: list[str],
            run_id: str, first: Sent, replay: Sent, first_s: float, replay_s: float, accepted: list[uuid.UUID],
            refused: list[int], dead_ids: list[uuid.UUID], redriven: list[uuid.UUID]) -> int:
    statuses = _statuses(conn, accepted)
    finished = statuses.get("succeeded", 0) + len([j for j in dead_ids if j in set(accepted)])
    redriven_ok = _statuses(conn, redriven).get("succeeded", 0)
    lost = len(accepted) - statuses.get("succeeded", 0) - redriven_ok
    rows_for_keys = _count(conn, "SELECT count(*) FROM outbox.jobs WHERE idempotency_key LIKE %s", (f"{run_id}-%",))
    twice = _count(conn, "SELECT count(*) FROM (SELECT job_id FROM outbox.attempts WHERE job_id = ANY(%s) AND "
                   "outcome = 'succeeded' GROUP BY job_id HAVING count(*) > 1) d", ([*accepted, *redriven],))
    outcomes = dict(conn.execute("SELECT coalesce(outcome, 'running'), count(*) FROM outbox.attempts "
                                 "WHERE job_id = ANY(%s) GROUP BY 1", (accepted,)).fetchall())
    opened = _count(conn, "SELECT count(*) FROM outbox.breaker_events WHERE breaker = 'downstream' "
                    "AND to_state = 'open'", ())
    down = httpx.get(f"{r.downstream}/stats", timeout=10).json()
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
              f"3 s outage: breaker opened {opened} times, {down['during_outage']} requests reached the downstream "
              f"while it was down (2 worker processes, {jobs:,} jobs queued)", opened > 0),
        Claim(f"API p99 < {P99_BUDGET_MS:.0f} ms under concurrent load",
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(latencies):,} POST /jobs, {concurrency} connections, "
              f"{API_PROCESSES} API processes, {rate:.0f} requests/s",
              p99 < P99_BUDGET_MS),
    ]
    print_claims(f"production queue, {label}", claims)
    return 0 if all(c.held for c in claims[:4]) else 1


SIZES = {"small": 600, "full": 10_000}


def main(argv: list[str] | None = None) -> int:
    """``python -m examples.idempotent_api [--size small|full] [--jobs N] [--concurrency C]``."""
    parser = argparse.ArgumentParser(prog="python -m examples.idempotent_api",
                                     description="The production queue on Tierbox, its outcomes measured.")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--jobs", type=int, help="jobs to send (overrides --size)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent connections of the load generator")
    args = parser.parse_args(argv)
    jobs = args.jobs or SIZES[args.size]
    return run(jobs, args.concurrency, f"{jobs:,} jobs" if args.jobs else f"size {args.size}, {jobs:,} jobs")
