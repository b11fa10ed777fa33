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
from outbox._sql import Statement
from outbox.enqueue import _statement

ORDERS_DDL = """
CREATE TABLE IF NOT EXISTS public.bench_orders (
    id bigserial PRIMARY KEY, customer int NOT NULL, amount numeric(10, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now())
"""
INSERT_ORDER = "INSERT INTO public.bench_orders (customer, amount) VALUES (%s, %s) RETURNING id"
MODES = ("plain", "plain + SELECT 1", "enqueue+notify", "enqueue, trigger off", "one row (design)")

# The "one row" design of #19 (bench/README.md, "Enqueue at the cost of one row"), measured without
# building it: the caller's transaction writes only a wide pending row (the whole job, two indexes and
# the idempotency key's unique index, the same NOTIFY statement trigger), through the same statement
# shape as ENQUEUE_ONE (tier-override lookup, ON CONFLICT on the key). What the relay would do with it
# later (write the ledger row at claim) is not on the caller's path and is not measured here.
WIDE_DDL = """
CREATE TABLE IF NOT EXISTS outbox.bench_pending_wide (
    id uuid NOT NULL, task text NOT NULL, tier text NOT NULL, weight smallint NOT NULL,
    priority smallint NOT NULL, payload jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key text, max_retries integer NOT NULL, available_at timestamptz NOT NULL,
    expires_at timestamptz, enqueued_at timestamptz NOT NULL DEFAULT now(),
    publish_attempts integer NOT NULL DEFAULT 0, last_publish_error text,
    CONSTRAINT pk_bench_pending_wide PRIMARY KEY (id));
CREATE INDEX IF NOT EXISTS ix_bench_pending_wide_claim ON outbox.bench_pending_wide
    (weight DESC, priority DESC, available_at);
CREATE UNIQUE INDEX IF NOT EXISTS uq_bench_pending_wide_key ON outbox.bench_pending_wide (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
DROP TRIGGER IF EXISTS notify_pending ON outbox.bench_pending_wide;
CREATE TRIGGER notify_pending AFTER INSERT ON outbox.bench_pending_wide REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_pending();
"""
WIDE_ONE = Statement("bench_enqueue_one_row", """
WITH ov AS (
    SELECT o.tier, t.weight FROM outbox.tier_overrides AS o JOIN outbox.tiers AS t ON t.name = o.tier
    WHERE o.task = CAST(:task AS text) AND o.expires_at > now() AND NOT CAST(:explicit AS boolean)
),
ins AS (
    INSERT INTO outbox.bench_pending_wide (id, task, tier, weight, priority, payload, headers, idempotency_key,
                                           max_retries, available_at, expires_at)
    SELECT CAST(:id AS uuid), CAST(:task AS text), COALESCE(ov.tier, CAST(:tier AS text)),
           COALESCE(ov.weight, CAST(:weight AS smallint)),
           CASE WHEN ov.tier IS NULL THEN CAST(:priority AS smallint)
                ELSE LEAST(CAST(:priority AS smallint), ov.weight) END,
           CAST(:payload AS jsonb), CAST(:headers AS jsonb), CAST(:key AS text), CAST(:max_retries AS integer),
           COALESCE(CAST(:run_at AS timestamptz),
                    now() + make_interval(secs => COALESCE(CAST(:delay_s AS float8), 0))),
           COALESCE(CAST(:expires_at AS timestamptz), now() + make_interval(secs => CAST(:expires_s AS float8)))
    FROM (SELECT) AS one LEFT JOIN ov ON true
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
)
SELECT 1, COALESCE((SELECT id FROM ins),
                   (SELECT id FROM outbox.bench_pending_wide WHERE idempotency_key = CAST(:key AS text))),
       EXISTS (SELECT FROM ins)
""")
#: Issue #19's targets for the enqueue transaction against the plain one, by producer count.
TARGET_RATIO = {1: 1.3, 8: 1.5}
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
                elif mode == "one row (design)":
                    _, params, _ = _statement([outbox.job("bench.noop", args=["", order_id])])
                    conn.execute(WIDE_ONE.pg, params, prepare=True).fetchone()
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
        execute(url, WIDE_DDL)
        rates: dict[tuple[int, str], list[float]] = {}
        for producers in (1, 8):
            for _ in range(reps):
                execute(url, "TRUNCATE outbox.jobs CASCADE; TRUNCATE public.bench_orders, outbox.bench_pending_wide")
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
        for mode in ("plain + SELECT 1", "enqueue+notify", "enqueue, trigger off", "one row (design)"):
            ratio = [a / b for a, b in zip(plain, rates[(p, mode)], strict=True)]
            met = median(ratio) <= TARGET_RATIO[p] if mode == "enqueue+notify" else None
            report.headline(f"enqueue time ratio, {p} producer(s), {mode} (tx time vs plain)", ratio,
                            f"≤ {TARGET_RATIO[p]}x (shipped design)" if met is not None else "diagnostic", met)
    many_ratio = [m / s for m, s in zip(manys, singles, strict=True)]
    report.headline(f"enqueue_many vs single enqueues ({n_many:,} jobs)", many_ratio, f"≥ {TARGET_MANY}x",
                    median(many_ratio) >= TARGET_MANY)
