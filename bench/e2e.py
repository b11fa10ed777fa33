"""Item 3: end-to-end throughput (commit -> executed -> recorded) of no-op jobs vs Celery and procrastinate.

All three systems run at once with 8 worker slots each and idle while
another is measured; repetitions alternate between them. The clock starts
before the first job is produced and stops when the last one is counted:
for Tierbox and procrastinate, its success committed in Postgres; for Celery
(which records nothing), its handler having run. Producing is part of the
figure (it is part of the user's cost); its share is shown separately.

A/B: with ``BENCH_AB_TREE=<dir>`` (as in :mod:`bench.latency`) a second Tierbox, run from that
tree on its own database and queues, takes its turn in every repetition (``tierbox@base``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
import time
from pathlib import Path
from statistics import median

from bench.harness import RESULTS_DIR, Report, fmt, fresh_system, processes, profile, wait_until
from bench.latency import AB_TREE_ENV
from bench.relay import report_profile
from bench.systems import Celery, Procrastinate, System, Tierbox

#: Issue #19's targets (jobs/s against the peer in the same run); the first pass had 1.0x for Celery.
TARGETS = {"procrastinate": 3.0, "celery": 1.5}


def one_run(system: System, n: int) -> tuple[float, float]:
    """(jobs/s end to end, seconds spent producing) for ``n`` no-op jobs."""
    system.reset()
    t0 = time.perf_counter()
    system.produce(n)
    produced_s = time.perf_counter() - t0
    wait_until(lambda: system.completed() >= n, 600, 0.02, f"{system.name} finished {n} jobs")
    return n / (time.perf_counter() - t0), produced_s


def profile_tierbox(system: Tierbox, n: int, seconds: float, report: Report) -> None:
    """py-spy the worker and the relay during one more Tierbox run."""
    outs = {"worker": RESULTS_DIR / "profile-e2e-worker.txt", "relay": RESULTS_DIR / "profile-e2e-relay.txt"}
    spies = [threading.Thread(target=profile, args=(proc.pid, seconds, outs[name]))
             for name, proc in (("worker", system.worker), ("relay", system.relay))]
    for spy in spies:
        spy.start()
    time.sleep(0.5)  # py-spy attaches
    one_run(system, n)
    for spy in spies:
        spy.join()
    for name, out in outs.items():
        report_profile(report, f"the {name} during end-to-end", out)


def run(report: Report, quick: bool) -> None:
    """Measure and report item 3."""
    n, reps = (1_000, 3) if quick else (20_000, 3)
    report.section("3. End-to-end throughput")
    report.note(f"{n:,} no-op jobs, {reps} repetitions per system, 8 worker slots each "
                "(Tierbox: relay + urgent pool, async no-op handler; Celery: threads pool; procrastinate: async).")
    rates: dict[str, list[float]] = {}
    produce_s: dict[str, list[float]] = {}
    ab_tree = os.environ.get(AB_TREE_ENV)
    if ab_tree:
        report.note(f"A/B: `tierbox@base` runs from {ab_tree} (relay + urgent pool, its own database and queues).")
    with fresh_system("e2e") as settings, contextlib.ExitStack() as stack, processes() as procs:
        systems: list[System] = [Tierbox(settings, procs, stack)]
        if ab_tree:
            base_settings = stack.enter_context(fresh_system("e2e_base"))
            base = Tierbox(base_settings, stack.enter_context(processes(Path(ab_tree))), stack)
            base.name = "tierbox@base"
            systems.append(base)
        systems.append(Celery(settings, procs, stack))
        if importlib.util.find_spec("procrastinate") is not None:
            systems.append(Procrastinate(settings, procs, stack))
        else:  # a venv without the bench extra: the Tierbox and Celery figures still stand
            report.note("procrastinate is not installed (`pip install -e .[bench]`): left out of this run.")
        for rep in range(reps):
            # A/B: the two trees swap places every repetition, so neither always runs first.
            for system in ([systems[1], systems[0], *systems[2:]] if ab_tree and rep % 2 else systems):
                rate, produced = one_run(system, n)
                rates.setdefault(system.name, []).append(rate)
                produce_s.setdefault(system.name, []).append(produced)
        tierbox = systems[0]
        if report.profile and isinstance(tierbox, Tierbox):
            profile_tierbox(tierbox, n, n / median(rates["tierbox"]) + 1, report)
    report.table(["system", "jobs/s end to end", "of which producing (s)"],
                 [[name, fmt(rates[name]), fmt(produce_s[name], 2)] for name in rates])
    for peer, target in TARGETS.items():
        if peer not in rates:
            continue
        ratio = [t / p for t, p in zip(rates["tierbox"], rates[peer], strict=True)]
        report.headline(f"end-to-end throughput vs {peer}", ratio, f"≥ {target}x", median(ratio) >= target)
    if "tierbox@base" in rates:
        report.headline("A/B: end-to-end throughput / tierbox@base",
                        [a / b for a, b in zip(rates["tierbox"], rates["tierbox@base"], strict=True)],
                        "report only (> 1: this tree is faster)", None)
