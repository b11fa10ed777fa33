"""Item 1: transactional enqueue overhead, the NOTIFY trigger's cost, and enqueue_many vs single enqueues.

A business transaction inserts one order row and commits (the raw Postgres
single-row-commit INSERT: the ceiling). The same transaction with one
``outbox.enqueue`` is measured with the ``notify_pending`` statement trigger
enabled (the shipped wake-up design) and disabled (what a polling relay would
cost), at 1 and 8 concurrent producer processes, each on its own connection.
Modes are interleaved within each repetition so drift hits them alike.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from statistics import median
from typing import Any

import psycopg

import outbox
from bench import tasks  # noqa: F401 - registers the bench tasks enqueue resolves by name
from bench.harness import Report, execute, fmt, fresh_system

ORDERS_DDL = """
CREATE TABLE IF NOT EXISTS public.bench_orders (
    id bigserial PRIMARY KEY, customer int NOT NULL, amount numeric(10, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now())
"""
INSERT_ORDER = "INSERT INTO public.bench_orders (customer, amount) VALUES (%s, %s) RETURNING id"
MODES = ("plain", "plain + SELECT 1", "enqueue+notify", "enqueue, trigger off")
TARGET_RATIO = 1.3
TARGET_MANY = 5.0


def _producer(url: str, mode: str, start_at: float, duration_s: float, out: Any) -> None:
    """One producer process: business transactions until the deadline; puts its count on ``out``."""
    with psycopg.connect(url) as conn:
        conn.execute("SELECT 1")  # connect and warm up before the shared start
        conn.commit()
        time.sleep(max(0.0, start_at - time.time()))
        n, deadline = 0, start_at + duration_s
        while time.time() < deadline:
            with conn.transaction():
                order_id = conn.execute(INSERT_ORDER, (n % 1000, 12.5)).fetchone()[0]  # type: ignore[index]
                if mode == "plain + SELECT 1":
                    # The floor of any enqueue that is its own statement: one more round trip.
                    conn.execute("SELECT 1", prepare=True)
                elif mode != "plain":
                    outbox.enqueue(conn, "bench.noop", args=["", order_id])
            n += 1
        out.put(n)


def throughput(url: str, mode: str, producers: int, duration_s: float) -> float:
    """Committed business transactions per second with ``producers`` concurrent processes."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start_at = time.time() + 0.3 + 0.05 * producers  # every process connected before the clock starts
    procs = [ctx.Process(target=_producer, args=(url, mode, start_at, duration_s, out)) for _ in range(producers)]
    for p in procs:
        p.start()
    try:
        total = sum(out.get(timeout=duration_s + 30) for _ in procs)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return total / duration_s


def set_trigger(url: str, enabled: bool) -> None:
    """Enable or disable the NOTIFY trigger on this bench database only."""
    execute(url, f"ALTER TABLE outbox.pending {'ENABLE' if enabled else 'DISABLE'} TRIGGER notify_pending")


def many_vs_single(url: str, n: int) -> tuple[float, float]:
    """(jobs/s with n single enqueue calls, jobs/s with one enqueue_many of n), each in one committed transaction."""
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        with conn.transaction():
            for i in range(n):
                outbox.enqueue(conn, "bench.noop", args=["", i])
        single = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        with conn.transaction():
            outbox.enqueue_many(conn, [outbox.job("bench.noop", args=["", i]) for i in range(n)])
        many = n / (time.perf_counter() - t0)
    execute(url, "TRUNCATE outbox.jobs CASCADE")
    return single, many


def run(report: Report, quick: bool) -> None:
    """Measure and report item 1."""
    reps, duration_s, n_many = (3, 0.4, 2_000) if quick else (5, 4.0, 10_000)
    report.section("1. Transactional enqueue overhead")
    report.note(f"{reps} repetitions of {duration_s:g} s per mode; producers are separate processes, "
                "one connection each; no relay runs (pending rows accumulate, truncated per repetition).")
    with fresh_system("enqueue") as settings:
        url = settings.psycopg_url
        execute(url, ORDERS_DDL)
        rates: dict[tuple[int, str], list[float]] = {}
        for producers in (1, 8):
            for _ in range(reps):
                execute(url, "TRUNCATE outbox.jobs CASCADE; TRUNCATE public.bench_orders")
                for mode in MODES:
                    set_trigger(url, mode != "enqueue, trigger off")
                    rates.setdefault((producers, mode), []).append(throughput(url, mode, producers, duration_s))
        set_trigger(url, True)
        singles, manys = zip(*(many_vs_single(url, n_many) for _ in range(3)), strict=True)
    rows = [[p, mode, fmt(rates[(p, mode)])] for p in (1, 8) for mode in MODES]
    report.table(["producers", "transaction", "tx/s median (min-max)"], rows)
    report.table(["enqueue path", f"jobs/s for {n_many:,} jobs in one transaction"],
                 [["single enqueue() calls", fmt(singles)], ["one enqueue_many()", fmt(manys)]])
    for p in (1, 8):
        plain = rates[(p, "plain")]
        for mode in ("plain + SELECT 1", "enqueue+notify", "enqueue, trigger off"):
            ratio = [a / b for a, b in zip(plain, rates[(p, mode)], strict=True)]
            met = median(ratio) <= TARGET_RATIO if mode == "enqueue+notify" else None
            report.headline(f"enqueue time ratio, {p} producer(s), {mode} (tx time vs plain)", ratio,
                            f"≤ {TARGET_RATIO}x (shipped design)" if met is not None else "diagnostic", met)
    many_ratio = [m / s for m, s in zip(manys, singles, strict=True)]
    report.headline(f"enqueue_many vs single enqueues ({n_many:,} jobs)", many_ratio, f"≥ {TARGET_MANY}x",
                    median(many_ratio) >= TARGET_MANY)
