"""Item 2: relay throughput from a pre-filled outbox vs raw aio-pika pipelined confirmed publishing.

Baseline: one process publishes the same messages (built by the relay's own
``build_message``) to the same exchange and queue with publisher confirms,
``mandatory`` set, pipelined in windows of ``relay_batch_size`` — everything
the relay does on the AMQP side, nothing it does in Postgres.

Tierbox: N already-connected ``tierbox relay`` processes; the rows are
committed in one transaction (its NOTIFY wakes them) and the clock runs from
that commit until ``outbox.pending`` is empty (every row confirmed and
recorded). Baseline and relay alternate within each repetition.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from pathlib import Path
from statistics import median

import aio_pika

from bench.harness import (
    RESULTS_DIR,
    Report,
    execute,
    fmt,
    fresh_system,
    processes,
    profile,
    purge_queues,
    scalar,
    top_frames,
    wait_until,
)
from outbox.config import Settings
from tierbox.relay.relay import build_message

TIER = "high"
#: One statement fills jobs and pending alike, so every row becomes visible at one commit.
FILL = """
WITH j AS (
    INSERT INTO outbox.jobs (id, task, tier, priority, payload, max_retries)
    SELECT gen_random_uuid(), 'bench.noop', 'high', 8,
           jsonb_build_object('args', jsonb_build_array('', g), 'kwargs', '{}'::jsonb), 3
    FROM generate_series(1, %s) AS g
    RETURNING id, tier, priority, available_at
)
INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
SELECT id, tier, 8, priority, available_at FROM j
"""
TARGETS = {1: 0.9, 2: 1.1}


async def raw_publish(settings: Settings, n: int) -> float:
    """Messages/s for ``n`` confirmed, pipelined publishes from one aio-pika channel (the ceiling)."""
    now = dt.datetime.now(dt.UTC)
    rows = [(uuid.uuid4(), "bench.noop", TIER, 8, f'{{"args": ["", {i}], "kwargs": {{}}}}', "{}", 0, now)
            for i in range(n)]
    conn = await aio_pika.connect(settings.amqp_url, client_properties={"connection_name": "bench-raw-publisher"})
    try:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=False)
        exchange = await channel.get_exchange(settings.exchange_name, ensure=False)
        window = settings.relay_batch_size
        t0 = time.perf_counter()
        for start in range(0, n, window):
            await asyncio.gather(*(exchange.publish(build_message(*row), routing_key=TIER, mandatory=True,
                                                    timeout=settings.relay_confirm_timeout_s)
                                   for row in rows[start:start + window]))
        return n / (time.perf_counter() - t0)
    finally:
        await conn.close()


def relay_drain(settings: Settings, n: int) -> float:
    """Rows/s from committing ``n`` pending rows until running relays have emptied ``outbox.pending``."""
    url = settings.psycopg_url
    execute(url, FILL % int(n))
    t0 = time.perf_counter()  # from the commit (inserting the rows is not the relay's work)
    wait_until(lambda: not scalar(url, "SELECT EXISTS (SELECT 1 FROM outbox.pending)"), 300, 0.01, "relay drained")
    return n / (time.perf_counter() - t0)


def reset(settings: Settings) -> None:
    """Empty the ledger and the tier queue between measurements."""
    execute(settings.psycopg_url, "TRUNCATE outbox.jobs CASCADE")
    asyncio.run(purge_queues(settings, [settings.queue_name(TIER)]))


def profile_relay(settings: Settings, pid: int, n: int, seconds: float, report: Report) -> None:
    """py-spy one relay while it drains ``n`` rows; the top frames go into the report."""
    out = RESULTS_DIR / "profile-relay.txt"
    spy = threading.Thread(target=profile, args=(pid, seconds, out))
    spy.start()
    time.sleep(0.5)  # py-spy attaches
    relay_drain(settings, n)
    spy.join()
    reset(settings)
    report_profile(report, "relay (1 process)", out)


def report_profile(report: Report, what: str, out: Path) -> None:
    """The heaviest frames of a py-spy profile as a table."""
    own, inclusive = top_frames(out)
    report.note(f"\npy-spy profile of {what} ({out.name}):")
    report.table(["frame (self time)", "share", "frame (inclusive)", "share"],
                 [[a, f"{x:.0%}", b, f"{y:.0%}"] for (a, x), (b, y) in zip(own, inclusive, strict=False)])


def run(report: Report, quick: bool) -> None:
    """Measure and report item 2."""
    n, reps, counts = (3_000, 3, (1, 2)) if quick else (50_000, 3, (1, 2, 4))
    report.section("2. Relay throughput")
    report.note(f"{n:,} pending rows (tier {TIER}, classic queue, persistent messages), {reps} repetitions; "
                "relays already connected when the rows commit; clock stops when outbox.pending is empty.")
    base: dict[int, list[float]] = {}
    rates: dict[int, list[float]] = {}
    with fresh_system("relay") as settings:
        for k in counts:
            with processes() as procs:
                relays = [procs.tierbox(settings, "relay") for _ in range(k)]
                for _ in range(reps):
                    base.setdefault(k, []).append(asyncio.run(raw_publish(settings, n)))
                    asyncio.run(purge_queues(settings, [settings.queue_name(TIER)]))
                    rates.setdefault(k, []).append(relay_drain(settings, n))
                    reset(settings)
                if k == 1 and report.profile:
                    profile_relay(settings, relays[0].pid, n, n / median(rates[1]) + 1, report)
    report.table(["relay processes", "raw aio-pika msg/s", "relay rows/s", "ratio"],
                 [[k, fmt(base[k]), fmt(rates[k]),
                   fmt([r / b for r, b in zip(rates[k], base[k], strict=True)], 2)] for k in counts])
    for k in counts:
        ratio = [r / b for r, b in zip(rates[k], base[k], strict=True)]
        target = TARGETS.get(k)
        report.headline(f"relay throughput, {k} process(es), vs raw aio-pika", ratio,
                        f"≥ {target}x" if target else "report only", median(ratio) >= target if target else None)
