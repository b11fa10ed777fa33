"""Issue #17: ``.delay()`` with publisher confirms vs enqueue through Tierbox to the same kind of Celery worker.

Two systems in the same run, each idle while the other is measured, repetitions alternating:

* ``celery .delay()``: ``bench/celery_app.py`` (threads pool, 8 slots, confirm_publish, acks_late,
  prefetch 1); each job is one ``apply_async`` that waits for its confirm; done = the handler ran
  (Celery records nothing else).
* ``tierbox -> celery``: the same Celery settings plus ``tierbox.celery.install``
  (``bench/celery_bridge_app.py``); each job is one ``outbox.enqueue`` in a committed transaction of its
  own (one job per business transaction, as a request handler enqueues), the relay publishes it in
  Celery's protocol, the worker records the attempt and its success; done = success committed in
  the ledger.

A third system for reference, step 2 of the migration: the same jobs on a Tierbox worker pool
(``tierbox -> tierbox worker``: the relay and the urgent pool, 8 slots).

Throughput: N no-op jobs, clock from the first produce to the last completion. Latency: commit (for
``.delay()``: the call) -> handler start, probes paced at 50/s, the handler's first act writes its
wall-clock start to Redis. Ratios are tierbox->celery over ``.delay()`` per repetition.

Standalone (not in ``python -m bench``): ``python -m bench.celery_bridge [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import uuid
from typing import Any

import psycopg

import outbox
from bench.harness import (
    Proc,
    Procs,
    Report,
    child_env,
    execute,
    fmt,
    fresh_system,
    machine_description,
    percentile,
    processes,
    redis_client,
    scalar,
    wait_until,
)
from bench.latency import paced
from bench.peers import celery_env, celery_queue
from bench.systems import CONCURRENCY, Celery, Tierbox
from outbox.config import Settings
from outbox.registry import Registry

PROBE_RATE_PER_S = 50


def celery_worker(procs: Procs, app: str, queue: str, env: dict[str, str], name: str) -> Proc:
    """A Celery worker as ``bench.peers.start_celery`` starts one, under a node name of its own: two
    workers named ``celery@host`` on one broker (another run's, another engineer's) clash on their
    exclusive pidbox queue and the second never starts."""
    argv = [sys.executable, "-m", "celery", "-A", app, "worker", "--pool", "threads", "--concurrency",
            str(CONCURRENCY), "--queues", queue, "--hostname", f"{name}-{queue}@%h", "--loglevel", "WARNING",
            "--without-heartbeat", "--without-gossip", "--without-mingle"]
    return procs.command(argv, env, name)


class Delay(Celery):
    """``bench.systems.Celery`` (``.delay()`` with confirms), its worker under its own node name."""

    def start(self, procs: Procs, ping: bool = True) -> None:
        """Start the worker and wait until a task has gone round."""
        self.procs.append(celery_worker(procs, "bench.celery_app", celery_queue(self.settings),
                                        celery_env(self.settings), "celery"))
        before = self.completed()
        self.app.noop.apply_async(args=[self.key])
        wait_until(lambda: self.completed() > before, 120, 0.05, "celery worker ready")


class TierboxToCelery:
    """The relay and a Celery worker with ``tierbox.celery`` installed, on a queue of its own."""

    name = "tierbox -> celery"

    def __init__(self, settings: Settings, procs: Procs, stack: Any) -> None:
        self.settings = settings
        self.queue = settings.queue_prefix + "bridge"
        registry = Registry()
        self.noop = outbox.celery_task("bench.bridge.noop", tier="high", queue=self.queue, registry_=registry)
        self.stamp = outbox.celery_task("bench.bridge.stamp", tier="critical", queue=self.queue, registry_=registry)
        self.key = f"bench:{uuid.uuid4().hex}"
        env = child_env(settings, {"BENCH_AMQP_URL": settings.amqp_url, "BENCH_CELERY_QUEUE": self.queue})
        self.worker: Proc = celery_worker(procs, "bench.celery_bridge_app", self.queue, env, "bridge")
        self.relay = procs.tierbox(settings, "relay")
        self.procs = [self.relay, self.worker]
        self.conn = psycopg.connect(settings.psycopg_url)
        stack.callback(self.conn.close)
        self.reset()
        self.produce(1)  # a sign of life: the worker declared its queue and recorded a success
        try:
            wait_until(lambda: self.completed() >= 1, 120, 0.05, "celery bridge worker ready")
        except TimeoutError as exc:
            pending = scalar(settings.psycopg_url, "SELECT string_agg(coalesce(last_publish_error, '-'), '; ') "
                                                   "FROM outbox.pending")
            raise TimeoutError(f"{exc}; pending: {pending}\n--- worker\n{self.worker.output()[-3000:]}\n"
                               f"--- relay\n{self.relay.output()[-2000:]}") from None

    def produce(self, n: int) -> None:
        """One ``outbox.enqueue`` per committed transaction."""
        for _ in range(n):
            with self.conn.transaction():
                outbox.enqueue(self.conn, self.noop, args=[self.key])

    def probe(self, key: str, token: str) -> None:
        """One CRITICAL probe in its own transaction."""
        with self.conn.transaction():
            outbox.enqueue(self.conn, self.stamp, args=[key, token])

    def completed(self) -> int:
        """Successes committed in the ledger by the Celery worker."""
        return int(scalar(self.settings.psycopg_url, "SELECT count(*) FROM outbox.jobs WHERE status = 'succeeded'"))

    def reset(self) -> None:
        """Truncate the ledger (while idle)."""
        execute(self.settings.psycopg_url, "TRUNCATE outbox.jobs CASCADE")


class Native(Tierbox):
    """Step 2 for reference: the same jobs run by a Tierbox worker pool (urgent, 8 slots) instead of
    Celery, one job per committed transaction like the other two."""

    name = "tierbox -> tierbox worker"

    def produce(self, n: int) -> None:
        """One ``outbox.enqueue`` per committed transaction."""
        for i in range(n):
            with self.conn.transaction():
                outbox.enqueue(self.conn, self.task, args=["", i])


def throughput(system: Any, n: int) -> float:
    """Jobs/s from the first produce to the last completion."""
    system.reset()
    t0 = time.perf_counter()
    system.produce(n)
    wait_until(lambda: system.completed() >= n, 600, 0.02, f"{system.name} finished {n} jobs")
    return n / (time.perf_counter() - t0)


def latencies_ms(system: Any, n: int) -> list[float]:
    """commit (``.delay()``: the call) -> handler start, ms, for ``n`` probes at :data:`PROBE_RATE_PER_S`."""
    r = redis_client()
    key = f"bench:{uuid.uuid4().hex}"
    try:
        committed = paced(system, n, PROBE_RATE_PER_S, key)
        wait_until(lambda: r.llen(key) >= n, 120, 0.05, f"{system.name} ran {n} probes")
        started = dict(item.decode().split() for item in r.lrange(key, 0, -1))
        return [(float(started[t]) - c) * 1000 for t, c in committed.items() if t in started]
    finally:
        r.delete(key)


def run(report: Report, quick: bool) -> None:
    """Measure and report both systems, and the ratios."""
    n, probes, reps = (300, 50, 3) if quick else (2_000, 250, 3)
    report.section("Celery adoption (#17): .delay() with confirms vs enqueue through Tierbox to Celery")
    report.note(f"{n:,} no-op jobs one per call / per committed transaction, then {probes} probes at "
                f"{PROBE_RATE_PER_S}/s, {reps} repetitions alternating; Celery threads pool, 8 slots, "
                "confirm_publish, acks_late, prefetch 1 on both sides.")
    rates: dict[str, list[float]] = {}
    p50: dict[str, list[float]] = {}
    p99: dict[str, list[float]] = {}
    with fresh_system("celerybridge") as settings, contextlib.ExitStack() as stack, processes() as procs:
        stack.callback(_delete_queue, settings, settings.queue_prefix + "bridge")
        systems: list[Any] = [Delay(settings, procs, stack), TierboxToCelery(settings, procs, stack),
                              Native(settings, procs, stack)]
        for system in systems:
            latencies_ms(system, 10)  # warm-up
        for _ in range(reps):
            for system in systems:
                rates.setdefault(system.name, []).append(throughput(system, n))
            for system in systems:
                lat = latencies_ms(system, probes)
                p50.setdefault(system.name, []).append(percentile(lat, 50))
                p99.setdefault(system.name, []).append(percentile(lat, 99))
    report.table(["system", "jobs/s end to end", "p50 ms commit->start", "p99 ms"],
                 [[s, fmt(rates[s]), fmt(p50[s], 1), fmt(p99[s], 1)] for s in rates])
    bridged, delay = rates["tierbox -> celery"], rates["celery"]
    report.headline("throughput tierbox->celery / .delay()", [b / d for b, d in zip(bridged, delay, strict=True)],
                    "reported", None)
    report.headline("p50 latency tierbox->celery / .delay()",
                    [b / d for b, d in zip(p50["tierbox -> celery"], p50["celery"], strict=True)], "reported", None)
    report.headline("throughput tierbox->celery / tierbox worker",
                    [b / t for b, t in zip(bridged, rates["tierbox -> tierbox worker"], strict=True)], "reported", None)
    report.note(f"celery queue of this run: {celery_queue(settings)} (deleted)")


def _delete_queue(settings: Settings, queue: str) -> None:
    import asyncio

    from bench.harness import delete_broker_objects

    asyncio.run(delete_broker_objects(settings, [queue]))


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.celery_bridge [--quick]``: run, print, append to bench/results/."""
    parser = argparse.ArgumentParser(prog="python -m bench.celery_bridge", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    header = machine_description(args.quick, sys.argv[1:] if argv is None else argv)
    print(header, flush=True)
    report = Report(quick=args.quick, profile=False)
    run(report, args.quick)
    print(f"\nresults appended to {report.save(header)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
