"""Item 4: latency from commit to handler start at a light steady rate (200 jobs/s), beside the peers.

The producer commits one probe job at a time, paced to the rate, and notes
the wall-clock time right after each commit returns (for Celery: after the
confirmed publish returns). The handler's first act is to push its own
wall-clock start time to Redis (``bench.tasks.stamp_now``): same machine,
same clock. For Celery the clock starts when ``apply_async`` is called
(its handler often starts before the publisher confirm returns, so "after
the call" gives negative figures). Tierbox probes are CRITICAL jobs through the relay and the
urgent pool.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from statistics import median

from bench.harness import Report, fmt, fresh_system, percentile, processes, redis_client, wait_until
from bench.systems import Celery, Procrastinate, System, Tierbox

RATE_PER_S = 200
TARGET_P50_MS = 3.0
TARGET_P99_MS = 10.0


def paced(system: System, n: int, rate_per_s: float, key: str) -> dict[str, float]:
    """Send ``n`` probes at ``rate_per_s``; returns token -> commit time."""
    committed: dict[str, float] = {}
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate_per_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        token = uuid.uuid4().hex[:12]
        before = time.time()
        system.probe(key, token)
        # Celery's worker can start the task before the confirm reaches the producer: count from the call.
        committed[token] = before if system.name == "celery" else time.time()
    return committed


def latencies_ms(system: System, n: int, rate_per_s: float) -> list[float]:
    """commit -> handler start, in ms, for ``n`` probes at ``rate_per_s``."""
    r = redis_client()
    key = f"bench:{uuid.uuid4().hex}"
    try:
        committed = paced(system, n, rate_per_s, key)
        wait_until(lambda: r.llen(key) >= n, 120, 0.05, f"{system.name} ran {n} probes")
        started = dict(item.decode().split() for item in r.lrange(key, 0, -1))
        return [(float(started[t]) - c) * 1000 for t, c in committed.items() if t in started]
    finally:
        r.delete(key)


def run(report: Report, quick: bool) -> None:
    """Measure and report item 4."""
    seconds, reps = (1, 3) if quick else (10, 3)
    n = RATE_PER_S * seconds
    report.section("4. Latency commit -> handler start at 200 jobs/s")
    report.note(f"{n} probes per repetition ({seconds} s at {RATE_PER_S}/s), {reps} repetitions per system, "
                "after 20 warm-up probes. p50/p99 are per repetition; the table shows their median (min-max).")
    p50: dict[str, list[float]] = {}
    p99: dict[str, list[float]] = {}
    with fresh_system("latency") as settings, contextlib.ExitStack() as stack, processes() as procs:
        systems: list[System] = [Tierbox(settings, procs, stack), Celery(settings, procs, stack),
                                 Procrastinate(settings, procs, stack)]
        for system in systems:
            latencies_ms(system, 20, RATE_PER_S)  # warm-up: connections, prepared statements
        for _ in range(reps):
            for system in systems:
                lat = latencies_ms(system, n, RATE_PER_S)
                p50.setdefault(system.name, []).append(percentile(lat, 50))
                p99.setdefault(system.name, []).append(percentile(lat, 99))
    report.table(["system", "p50 ms", "p99 ms"], [[s, fmt(p50[s], 1), fmt(p99[s], 1)] for s in p50])
    report.headline("Tierbox latency p50 (ms)", p50["tierbox"], f"≤ {TARGET_P50_MS} ms",
                    median(p50["tierbox"]) <= TARGET_P50_MS, 1)
    report.headline("Tierbox latency p99 (ms)", p99["tierbox"], f"≤ {TARGET_P99_MS} ms",
                    median(p99["tierbox"]) <= TARGET_P99_MS, 1)
    for peer in ("celery", "procrastinate"):
        report.headline(f"Tierbox p50 / {peer} p50", [a / b for a, b in zip(p50["tierbox"], p50[peer], strict=True)],
                        "report only", None)
