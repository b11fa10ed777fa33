"""Item 5: a CRITICAL probe's commit -> start latency while a BULK backlog drains and HIGH work fills the urgent pool.

Tierbox: relay + urgent pool + deferred pool; the BULK backlog is committed
in one statement, HIGH jobs that each hold a slot for 50 ms are enqueued
ahead of the probes so all 8 urgent slots stay busy, then CRITICAL probes
arrive at 10/s. Celery, the usual single-queue deployment: one queue, one
8-thread worker, the same backlog shape (fewer BULK jobs: Celery's confirmed
publishing fills at ~1k/s), then the probes behind it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from statistics import median

import outbox
from bench.harness import Report, execute, fmt, fresh_system, percentile, processes, redis_client, wait_until
from bench.latency import paced
from bench.systems import Celery, Tierbox

PROBE_RATE_PER_S = 10
BUSY_S = 0.05
TARGET_P99_MS = 100.0
FILL_BULK = """
WITH j AS (
    INSERT INTO outbox.jobs (id, task, tier, priority, payload, max_retries)
    SELECT gen_random_uuid(), 'bench.bulk', 'bulk', 1,
           jsonb_build_object('args', jsonb_build_array('', g), 'kwargs', '{}'::jsonb), 3
    FROM generate_series(1, %s) AS g
    RETURNING id, tier, priority, available_at
)
INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
SELECT id, tier, 1, priority, available_at FROM j
"""


def probe_latencies(system: Tierbox | Celery, probes: int) -> list[float]:
    """Send ``probes`` probes at 10/s and return their commit -> start latencies in ms."""
    r = redis_client()
    key = f"bench:{uuid.uuid4().hex}"
    try:
        committed = paced(system, probes, PROBE_RATE_PER_S, key)
        wait_until(lambda: r.llen(key) >= probes, 600, 0.1, f"{system.name} ran {probes} probes")
        started = dict(item.decode().split() for item in r.lrange(key, 0, -1))
        return [(float(started[t]) - c) * 1000 for t, c in committed.items() if t in started]
    finally:
        r.delete(key)


def tierbox_run(report: Report, backlog: int, probes: int) -> list[float]:
    """Probe latencies of Tierbox under the loaded scenario."""
    high_jobs = int(probes / PROBE_RATE_PER_S * 8 / BUSY_S * 1.5)  # keeps 8 slots busy past the last probe
    with fresh_system("urgency") as settings, contextlib.ExitStack() as stack, processes() as procs:
        tierbox = Tierbox(settings, procs, stack)
        procs.tierbox(settings, "worker", "--pool", "deferred")
        execute(settings.psycopg_url, FILL_BULK % backlog)
        with tierbox.conn.transaction():
            outbox.enqueue_many(tierbox.conn, [outbox.job("bench.busy_high", args=[BUSY_S])
                                               for _ in range(high_jobs)])
        time.sleep(1.0)  # the relay is into the backlog and the urgent slots are busy
        lat = probe_latencies(tierbox, probes)
        left = tierbox.completed()
        report.note(f"Tierbox: {backlog:,} BULK + {high_jobs:,} HIGH ({BUSY_S * 1000:.0f} ms each) jobs; "
                    f"{left:,} jobs had finished when the last probe ran.")
    return lat


def celery_run(report: Report, backlog: int, probes: int) -> list[float]:
    """Probe latencies of Celery with one shared queue."""
    with fresh_system("urgency_celery") as settings, contextlib.ExitStack() as stack, processes() as procs:
        # Fill the queue before the worker starts, so the backlog is still there when the probes arrive.
        celery = Celery(settings, procs, stack, start=False)
        busy = int(probes / PROBE_RATE_PER_S * 8 / BUSY_S * 1.5)
        for _ in range(backlog):
            celery.app.noop.apply_async(args=[celery.key])
        for _ in range(busy):
            celery.app.busy.apply_async(args=[BUSY_S])
        celery.start(procs, ping=False)
        lat = probe_latencies(celery, probes)
        report.note(f"Celery: {backlog:,} no-op + {busy:,} busy ({BUSY_S * 1000:.0f} ms) tasks ahead of the probes "
                    "in its one queue (filled before the worker started).")
    return lat


def run(report: Report, quick: bool) -> None:
    """Measure and report item 5."""
    backlog, celery_backlog, probes = (5_000, 1_000, 20) if quick else (100_000, 10_000, 200)
    report.section("5. Urgency under load")
    report.note(f"{probes} CRITICAL probes at {PROBE_RATE_PER_S}/s, one run per system (the probes are the samples).")
    tb = tierbox_run(report, backlog, probes)
    cel = celery_run(report, celery_backlog, probes)
    report.table(["system", "probes", "p50 ms", "p99 ms", "max ms"],
                 [[name, len(lat), f"{percentile(lat, 50):.1f}", f"{percentile(lat, 99):.1f}", f"{max(lat):.1f}"]
                  for name, lat in (("tierbox", tb), ("celery, one queue", cel))])
    report.headline("Tierbox CRITICAL p99 under load (ms)", [percentile(tb, 99)], f"≤ {TARGET_P99_MS:.0f} ms",
                    percentile(tb, 99) <= TARGET_P99_MS, 1)
    report.headline("Celery p50 / Tierbox p50 under load", [median(cel) / max(median(tb), 1e-3)], "report only",
                    None, 1)
    report.note(f"Tierbox probe latencies ms: {fmt(tb, 1)}")
