"""Item 4: latency from commit to handler start at a light steady rate (200 jobs/s), beside the peers.

The producer commits one probe job at a time, paced to the rate, and notes
the wall-clock time right after each commit returns (for Celery: after the
confirmed publish returns). The handler's first act is to push its own
wall-clock start time to Redis (``bench.tasks.stamp_now``): same machine,
same clock. For Celery the clock starts when ``apply_async`` is called
(its handler often starts before the publisher confirm returns, so "after
the call" gives negative figures). Tierbox probes are CRITICAL jobs through the relay and the
urgent pool.

Per hop: the Tierbox processes run with ``TIERBOX_BENCH_HOPS=1``, so the relay logs one
``relay.hop`` line per published job (when its wake-up arrived, when the batch began, when the
claim returned, when the confirms were in, when the batch committed) and the worker one
``worker.hop`` line per start (when the pool's receiver got the message, when a slot took the
delivery, when its start had committed); the handler's Redis stamp is the last. The table gives
the median and p99 of each hop over every probe.

A/B: with ``BENCH_AB_TREE=<dir>`` (a checkout of another commit, e.g. ``git archive <commit> |
tar -x -C <dir>``) a second Tierbox, run from that tree on its own database and queues, takes
part in every repetition beside this one (``tierbox@base``): same moment, same load.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from statistics import median

import outbox
from bench.harness import Proc, Report, fmt, fresh_system, percentile, processes, redis_client, wait_until
from bench.systems import Celery, Procrastinate, System, Tierbox

RATE_PER_S = 200
TARGET_P50_MS = 3.0
TARGET_P99_MS = 10.0
#: The issue's same-run targets against Celery's figures.
TARGET_P50_VS_CELERY = 1.5
TARGET_P99_VS_CELERY = 2.0
HOPS_ENV = "TIERBOX_BENCH_HOPS"
AB_TREE_ENV = "BENCH_AB_TREE"

#: (label, from event, to event): the hops of the table, in path order. Events: commit (producer),
#: woken (the relay's NOTIFY arrived), began (the lane's batch began), claimed (CLAIM returned),
#: confirmed (every confirm of the batch in), committed (the relay's commit returned: the outbox row
#: released), received (the pool's receiver got the message: it waits in the pool's buffer for a
#: free slot from then on), taken (a worker slot took the delivery), started (the start committed),
#: handler. A tree without the ``received`` stamp shows its two hops with 0 probes.
HOPS = (
    ("commit -> relay woken (NOTIFY)", "commit", "woken"),
    ("relay woken -> batch began", "woken", "began"),
    ("batch began -> claimed (BEGIN + CLAIM)", "began", "claimed"),
    ("claimed -> delivered to a worker slot", "claimed", "taken"),
    ("  of which: claimed -> received by the pool", "claimed", "received"),
    ("  of which: received -> taken by a slot", "received", "taken"),
    ("delivered -> start committed", "taken", "started"),
    ("start committed -> handler running", "started", "handler"),
    ("commit -> handler running (total)", "commit", "handler"),
    ("(side) claimed -> confirmed", "claimed", "confirmed"),
    ("(side) confirmed -> relay committed", "confirmed", "committed"),
    ("(side) relay committed - start committed", "started", "committed"),
)
_LINE = re.compile(r"action=(relay\.hop|worker\.hop) (.*)")


class TierboxProbe:
    """Tierbox probes whose job ids are kept, so the relay's and worker's hop lines can be joined."""

    def __init__(self, system: Tierbox, name: str = "tierbox") -> None:
        self.system = system
        self.name = name
        self.procs: list[Proc] = system.procs
        self.jobs: dict[str, uuid.UUID] = {}

    def probe(self, key: str, token: str) -> None:
        """One CRITICAL job in its own transaction (as Tierbox.probe), its id noted."""
        conn = self.system.conn
        with conn.transaction():
            self.jobs[token] = outbox.enqueue(conn, "bench.stamp_critical", args=[key, token])


def paced(system: System | TierboxProbe, n: int, rate_per_s: float, key: str) -> dict[str, float]:
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


def probe_times(system: System | TierboxProbe, n: int, rate_per_s: float) -> dict[str, tuple[float, float]]:
    """token -> (commit time, handler start time) for ``n`` probes at ``rate_per_s``."""
    r = redis_client()
    key = f"bench:{uuid.uuid4().hex}"
    try:
        committed = paced(system, n, rate_per_s, key)
        wait_until(lambda: r.llen(key) >= n, 120, 0.05, f"{system.name} ran {n} probes")
        started: dict[str, float] = {}
        for item in r.lrange(key, 0, -1):
            token, at = bytes(item).decode().split()
            started[token] = float(at)
        return {t: (c, started[t]) for t, c in committed.items() if t in started}
    finally:
        r.delete(key)


def latencies_ms(system: System | TierboxProbe, n: int, rate_per_s: float) -> list[float]:
    """commit -> handler start, in ms, for ``n`` probes at ``rate_per_s``."""
    return [(h - c) * 1000 for c, h in probe_times(system, n, rate_per_s).values()]


def hop_lines(procs: list[Proc]) -> dict[str, dict[str, float]]:
    """job id -> event -> wall-clock time, from the ``relay.hop`` and ``worker.hop`` lines of ``procs``."""
    out: dict[str, dict[str, float]] = {}
    for proc in procs:
        for match in _LINE.finditer(proc.output()):
            fields = dict(part.split("=", 1) for part in match.group(2).split() if "=" in part)
            stamps = out.setdefault(fields.pop("job_id"), {})
            for name, value in fields.items():
                with contextlib.suppress(ValueError):
                    stamps.setdefault(name, float(value))  # a redelivery's line does not replace the first
    return out


def hop_table(samples: list[dict[str, float]]) -> list[list[str]]:
    """Rows of (hop, p50 ms, p99 ms, probes) over every probe that has both ends of the hop."""
    rows = []
    for label, start, end in HOPS:
        deltas = [(s[end] - s[start]) * 1000 for s in samples if s.get(start) and s.get(end)]
        rows.append([label, f"{percentile(deltas, 50):.2f}", f"{percentile(deltas, 99):.2f}", str(len(deltas))])
    return rows


def qos_window(samples: list[dict[str, float]]) -> str:
    """How full the pool's QoS window was when the probes arrived (``held`` of ``qos`` in ``worker.hop``):
    a probe that arrived with ``qos - 1`` held came in the moment the window opened, so it may have
    waited in the broker for it. Empty for a tree without these fields."""
    held = [(s["held"], s["qos"]) for s in samples if s.get("qos")]
    if not held:
        return ""
    full = sum(1 for h, q in held if h >= q - 1)
    counts = sorted(h for h, _ in held)
    return (f"Unacked messages of the tier the pool held when a probe arrived (QoS {int(held[0][1])}): "
            f"p50 {percentile(counts, 50):.0f}, p99 {percentile(counts, 99):.0f}, max {counts[-1]:.0f}; "
            f"arrived as the window opened (held = QoS - 1): {full} of {len(held)} probes.")


@contextlib.contextmanager
def hops_on() -> Iterator[None]:
    """Start the Tierbox processes of the block with the hop lines on."""
    before = os.environ.get(HOPS_ENV)
    os.environ[HOPS_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(HOPS_ENV, None)
        else:
            os.environ[HOPS_ENV] = before


def run(report: Report, quick: bool) -> None:
    """Measure and report item 4."""
    seconds, reps = (1, 3) if quick else (10, 3)
    n = RATE_PER_S * seconds
    ab_tree = os.environ.get(AB_TREE_ENV)
    report.section("4. Latency commit -> handler start at 200 jobs/s")
    report.note(f"{n} probes per repetition ({seconds} s at {RATE_PER_S}/s), {reps} repetitions per system, "
                "after 20 warm-up probes. p50/p99 are per repetition; the table shows their median (min-max). "
                f"Load average at start: {open('/proc/loadavg').read().split()[0]}."
                + (f" A/B: `tierbox@base` runs from {ab_tree}." if ab_tree else ""))
    p50: dict[str, list[float]] = {}
    p99: dict[str, list[float]] = {}
    samples: dict[str, list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        with hops_on():
            settings = stack.enter_context(fresh_system("latency"))
            procs = stack.enter_context(processes())
            probes = [TierboxProbe(Tierbox(settings, procs, stack))]
            if ab_tree:
                base_settings = stack.enter_context(fresh_system("latency_base"))
                base_procs = stack.enter_context(processes(Path(ab_tree)))
                probes.append(TierboxProbe(Tierbox(base_settings, base_procs, stack), "tierbox@base"))
        systems: list[System | TierboxProbe] = [*probes, Celery(settings, procs, stack)]
        if importlib.util.find_spec("procrastinate") is not None:
            systems.append(Procrastinate(settings, procs, stack))
        else:  # a venv without the bench extra: the Tierbox and Celery figures still stand
            report.note("procrastinate is not installed (`pip install -e .[bench]`): left out of this run.")
        for system in systems:
            latencies_ms(system, 20, RATE_PER_S)  # warm-up: connections, prepared statements
        for rep in range(reps):
            # A/B: the two trees swap places every repetition, so neither always follows the peers' runs.
            order = [systems[1], systems[0], *systems[2:]] if ab_tree and rep % 2 else systems
            for system in order:
                times = probe_times(system, n, RATE_PER_S)
                lat = [(h - c) * 1000 for c, h in times.values()]
                p50.setdefault(system.name, []).append(percentile(lat, 50))
                p99.setdefault(system.name, []).append(percentile(lat, 99))
                if isinstance(system, TierboxProbe):
                    stamps = hop_lines(system.procs)
                    for token, (c, h) in times.items():
                        job = stamps.get(str(system.jobs.get(token)), {})
                        samples.setdefault(system.name, []).append({**job, "commit": c, "handler": h})
    report.table(["system", "p50 ms", "p99 ms"], [[s, fmt(p50[s], 1), fmt(p99[s], 1)] for s in p50])
    for name, rows in samples.items():
        report.note(f"\nPer hop, {name} ({len(rows)} probes over all repetitions; ms):\n")
        report.table(["hop", "p50", "p99", "probes"], hop_table(rows))
        window = qos_window(rows)
        if window:
            report.note(window)
    report.headline("Tierbox latency p50 (ms)", p50["tierbox"], f"≤ {TARGET_P50_MS} ms",
                    median(p50["tierbox"]) <= TARGET_P50_MS, 1)
    report.headline("Tierbox latency p99 (ms)", p99["tierbox"], f"≤ {TARGET_P99_MS} ms",
                    median(p99["tierbox"]) <= TARGET_P99_MS, 1)
    for which, values, target in (("p50", p50, TARGET_P50_VS_CELERY), ("p99", p99, TARGET_P99_VS_CELERY)):
        ratio = [a / b for a, b in zip(values["tierbox"], values["celery"], strict=True)]
        report.headline(f"Tierbox {which} / celery {which}", ratio, f"≤ {target}x", median(ratio) <= target)
    if "procrastinate" in p50:
        report.headline("Tierbox p50 / procrastinate p50",
                        [a / b for a, b in zip(p50["tierbox"], p50["procrastinate"], strict=True)], "report only",
                        None)
    if "tierbox@base" in p50:
        for which, values in (("p50", p50), ("p99", p99)):
            report.headline(f"A/B: Tierbox {which} / tierbox@base {which}",
                            [a / b for a, b in zip(values["tierbox"], values["tierbox@base"], strict=True)],
                            "report only (< 1: this tree is faster)", None)
