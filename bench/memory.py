"""Item 7: peak RSS of the relay and each worker pool while a backlog drains (it must stay flat).

A backlog spread over every tier is committed at once; the relay and the
four pools drain it while /proc/<pid>/status is sampled every 0.2 s. Flat
means: RSS in the last quarter of the drain is not above the first quarter
by more than a few MiB, and peak (VmHWM) does not scale with the backlog.
"""

from __future__ import annotations

import contextlib
import time
from statistics import median

from bench.harness import Report, RssSampler, execute, fresh_system, processes, rss_kib, scalar, wait_until
from bench.systems import Tierbox

#: One statement spreads the backlog over every tier's no-op task (pools consume disjoint tiers).
FILL_ALL_TIERS = """
WITH t(tier, weight, task) AS (VALUES ('critical', 10, 'bench.noop'), ('high', 8, 'bench.noop'),
                                      ('normal', 5, 'bench.noop'), ('low', 3, 'bench.noop'),
                                      ('bulk', 1, 'bench.bulk'), ('calls', 9, 'bench.noop')),
j AS (
    INSERT INTO outbox.jobs (id, task, tier, priority, payload, max_retries)
    SELECT gen_random_uuid(), t.task, t.tier, 0, jsonb_build_object('args', jsonb_build_array('', g), 'kwargs',
           '{}'::jsonb), 3
    FROM generate_series(1, %s) AS g JOIN t ON t.weight = (ARRAY[10, 8, 5, 3, 1, 9])[1 + g %% 6]
    RETURNING id, tier, priority, available_at
)
INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
SELECT j.id, j.tier, t.weight, j.priority, j.available_at FROM j JOIN t USING (tier)
"""
POOLS = ("normal", "deferred", "calls")


def quarter_mib(samples: list[tuple[float, int]], which: int) -> float:
    """Median RSS (MiB) of the ``which``-th quarter (0..3) of the samples."""
    if not samples:
        return 0.0
    q = max(1, len(samples) // 4)
    chunk = samples[which * q:(which + 1) * q] or samples[-q:]
    return median(kib for _, kib in chunk) / 1024


def run(report: Report, quick: bool) -> None:
    """Measure and report item 7."""
    backlog = 3_000 if quick else 100_000
    report.section("7. Memory while a backlog drains")
    with fresh_system("memory") as settings, contextlib.ExitStack() as stack, processes() as procs:
        tierbox = Tierbox(settings, procs, stack)
        pids = {"relay": tierbox.relay.pid, "worker urgent": tierbox.worker.pid}
        for pool in POOLS:
            pids[f"worker {pool}"] = procs.tierbox(settings, "worker", "--pool", pool).pid
        idle = {name: rss_kib(pid)[0] / 1024 for name, pid in pids.items()}
        sampler = RssSampler(pids)
        sampler.start()
        t0 = time.perf_counter()
        try:
            execute(settings.psycopg_url, FILL_ALL_TIERS % backlog)
            done = "SELECT count(*) FROM outbox.jobs WHERE status = 'succeeded'"
            wait_until(lambda: scalar(settings.psycopg_url, done) >= backlog, 900, 0.2, "backlog drained")
        finally:
            sampler.stop()
        seconds = time.perf_counter() - t0
        peaks = {name: rss_kib(pid)[1] / 1024 for name, pid in pids.items()}
    report.note(f"{backlog:,} jobs over all six tiers drained in {seconds:.0f} s by the relay and four pools; "
                "RSS sampled every 0.2 s.")
    rows, growth = [], []
    for name, samples in sampler.samples.items():
        first, last = quarter_mib(samples, 0), quarter_mib(samples, 3)
        growth.append(last - first)
        rows.append([name, f"{idle[name]:.1f}", f"{first:.1f}", f"{last:.1f}", f"{peaks[name]:.1f}"])
    report.table(["process", "idle RSS MiB", "RSS 1st quarter MiB", "RSS last quarter MiB", "peak (VmHWM) MiB"], rows)
    report.headline("largest RSS growth, first to last quarter of the drain (MiB)", [max(growth)],
                    "flat (≤ 5 MiB)", max(growth) <= 5, 1)
