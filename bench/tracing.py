"""The cost of tracing (docs/tracing.md): enqueue and end-to-end throughput, tracing off, API-only and on.

Three modes, measured in the same run, interleaved within each repetition:

* ``off``: opentelemetry is not importable at all (a meta-path blocker on PYTHONPATH), as
  without the ``otel`` extra: the baseline;
* ``api``: opentelemetry installed, no SDK set up (the API's no-op provider), as in an
  application that has the extra but exports nothing;
* ``on``: the SDK set up from OTEL_* (batch span processor, OTLP/HTTP exporter) exporting to a
  receiver this benchmark runs on the loopback interface, in the enqueuing process, the relay
  and the worker.

Rates on a shared 2-core machine move with the other processes' load; the CPU each measured
process uses per job (the producer's own, the relay's and worker's from /proc) moves much less,
and is what tracing adds work to. Modes run in a shuffled order in each repetition.

Enqueue: one producer process per mode and repetition, committing one job per transaction for a
fixed time (jobs/s; ``synchronous_commit = off``: the fsync, the same in every mode, is only
noise here). A micro-figure: the nanoseconds of the check the hot path makes with tracing
off (``outbox._tracing.enabled()``, cached). End to end: a relay and an urgent-pool worker per
mode (each on a database and queue prefix of its own, idle while another is measured); the clock
runs from the first produced job (``enqueue_many`` batches, in a producer process of the same
mode) to the last success committed.

``python -m bench.tracing [--quick]`` (a few minutes; ``--quick`` well under one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from statistics import median
from typing import Any

from bench.harness import (
    ROOT,
    Report,
    child_env,
    execute,
    fmt,
    fresh_system,
    machine_description,
    processes,
    scalar,
    wait_until,
)
from outbox.config import Settings

MODES = ("off", "api", "on")
#: Jobs per enqueue_many call and transaction in the end-to-end producer (as bench/systems.py).
BATCH = 500

BLOCKER = '''
import sys
from importlib.abc import MetaPathFinder


class _NoOpenTelemetry(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoOpenTelemetry())
'''


class Receiver:
    """An OTLP/HTTP endpoint on the loopback interface that takes every export and counts the bytes."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests += 1
                receiver.bytes += len(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        """The base URL to set as OTEL_EXPORTER_OTLP_ENDPOINT."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def mode_env(mode: str, blocker_dir: str, endpoint: str) -> dict[str, str]:
    """What a process of ``mode`` gets on top of the settings' environment (bench.harness.child_env)."""
    if mode == "off":  # the blocker's sitecustomize first on the path, then what child_env puts there
        return {"PYTHONPATH": os.pathsep.join([blocker_dir, str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if mode == "on":
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "bench",
                "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
    return {}


def _child(settings: Settings, mode: str, blocker_dir: str, endpoint: str, *args: str) -> dict[str, Any]:
    env = child_env(settings, mode_env(mode, blocker_dir, endpoint))
    done = subprocess.run([sys.executable, "-m", "bench.tracing", "--child", mode, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["tracing"] != (mode == "on") or result["otel_importable"] != (mode != "off"):
        raise RuntimeError(f"{mode} child: tracing {result['tracing']}, importable {result['otel_importable']}")
    return result


# --------------------------------------------------------------------------- in the child processes


def child(mode: str, what: str, arg: str) -> None:
    """Run one measurement in this process (``--child``), print its result as one JSON line."""
    import psycopg

    import outbox
    from bench import tasks  # noqa: F401 - registers bench.noop
    from outbox import _tracing as tracing
    from outbox.config import Settings

    provider = None
    if mode == "on":  # as an application sets its SDK up: the same OTEL_* environment as the processes
        tracing.configure_from_env("bench-producer")
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
    url = Settings.from_env().psycopg_url
    out: dict[str, Any] = {"tracing": tracing.enabled(), "otel_importable": _importable()}
    with psycopg.connect(url) as conn:
        # No fsync wait per commit: on a shared 2-core box it is most of a commit and all of its noise,
        # and the same for every mode; what is left is the enqueue's own cost.
        conn.execute("SET synchronous_commit = off")
        conn.commit()
        if what == "enqueue":
            duration = float(arg)
            # Due in a day: the relay leaves them alone, so the worker does not run them during the
            # end-to-end figure that follows (the parent truncates them).
            for i in range(200):  # warm up: prepared statements, the tracing check
                with conn.transaction():
                    outbox.enqueue(conn, "bench.noop", args=["", i], delay=86_400)
            n, t0, cpu0 = 0, time.perf_counter(), time.process_time()
            deadline = t0 + duration
            while time.perf_counter() < deadline:
                with conn.transaction():
                    outbox.enqueue(conn, "bench.noop", args=["", n], delay=86_400)
                n += 1
            out["jobs_per_s"] = n / (time.perf_counter() - t0)
            # This process's CPU per enqueue (Postgres excluded): what tracing adds, little moved by the
            # other processes of a shared machine, unlike the rate.
            out["cpu_us"] = (time.process_time() - cpu0) / n * 1e6
            out["check_ns"] = _check_ns(tracing.enabled)
        else:  # produce: n jobs in enqueue_many batches
            n = int(arg)
            out["started_at"] = time.time()  # the clock starts here, not at this process's start-up
            for start in range(0, n, BATCH):
                with conn.transaction():
                    outbox.enqueue_many(conn, [outbox.job("bench.noop", args=["", i])
                                               for i in range(start, min(n, start + BATCH))])
    if provider is not None:
        getattr(provider, "shutdown", lambda: None)()
    print(json.dumps(out))


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes ``pids`` have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def _check_ns(check: Any, n: int = 1_000_000) -> float:
    """Nanoseconds one call of ``check`` costs beyond a call of an empty function (same loop)."""
    def empty() -> bool:
        return False

    def loop(fn: Any) -> float:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        return (time.perf_counter_ns() - t0) / n

    return min(loop(check) for _ in range(3)) - min(loop(empty) for _ in range(3))


def _importable() -> bool:
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- the benchmark


def run(report: Report, quick: bool) -> None:
    """Measure and report the cost of tracing."""
    reps, duration_s, n = (2, 1.0, 500) if quick else (6, 2.0, 1_000)
    report.section("Tracing overhead (off / API only / on)")
    report.note(f"{reps} repetitions, modes interleaved; enqueue: one producer process committing one job per "
                f"transaction (synchronous_commit off) for {duration_s:g} s; end to end: {n:,} no-op jobs "
                f"(enqueue_many batches of {BATCH}) "
                "through a relay and an urgent-pool worker per mode. off = opentelemetry not importable; "
                "api = installed, no SDK; on = SDK + batch processor + OTLP/HTTP to a loopback receiver.")
    receiver = Receiver()
    blocker_dir = tempfile.mkdtemp(prefix="bench-no-otel-")
    Path(blocker_dir, "sitecustomize.py").write_text(BLOCKER)
    enqueue: dict[str, list[float]] = {m: [] for m in MODES}
    e2e: dict[str, list[float]] = {m: [] for m in MODES}
    check_ns: dict[str, list[float]] = {m: [] for m in MODES}
    enqueue_cpu: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        with contextlib.ExitStack() as stack, processes() as procs:
            systems = {m: stack.enter_context(fresh_system(f"trace{m}")) for m in MODES}
            for mode, settings in systems.items():
                env = mode_env(mode, blocker_dir, receiver.endpoint)
                procs.tierbox(settings, "worker", "--pool", "urgent", extra_env=env)
                procs.tierbox(settings, "relay", extra_env=env)
            pids = {m: [p.pid for p in procs.procs[2 * i:2 * i + 2]] for i, m in enumerate(MODES)}
            order = list(MODES)
            for rep in range(reps):
                random.Random(rep).shuffle(order)  # no mode always first (drift, caches, the others' load)
                for mode in order:
                    settings = systems[mode]
                    url = settings.psycopg_url
                    result = _child(settings, mode, blocker_dir, receiver.endpoint, "enqueue", str(duration_s))
                    enqueue[mode].append(result["jobs_per_s"])
                    check_ns[mode].append(result["check_ns"])
                    execute(url, "TRUNCATE outbox.jobs CASCADE")
                    cpu0 = _cpu_s(pids[mode])
                    started_at = _child(settings, mode, blocker_dir, receiver.endpoint, "produce", str(n))["started_at"]
                    wait_until(lambda u=url: scalar(
                        u, "SELECT count(*) FROM outbox.jobs WHERE status = 'succeeded'") >= n,
                        600, 0.02, f"{mode}: {n} jobs done")
                    e2e[mode].append(n / (time.time() - started_at))
                    cpu[mode].append((_cpu_s(pids[mode]) - cpu0) / n * 1e6)
                    enqueue_cpu[mode].append(result["cpu_us"])
                    execute(url, "TRUNCATE outbox.jobs CASCADE")
                    print(f"  rep {rep + 1} {mode}: enqueue {enqueue[mode][-1]:,.0f} jobs/s, "
                          f"end to end {e2e[mode][-1]:,.0f} jobs/s; CPU per job: enqueue {result['cpu_us']:,.0f} us, "
                          f"relay+worker {cpu[mode][-1]:,.0f} us", flush=True)
    finally:
        receiver.close()
    report.table(["mode", "enqueue jobs/s (1 per tx)", "enqueue CPU µs/job (client)", "end-to-end jobs/s",
                  "relay+worker CPU µs/job", "tracing check, ns beyond an empty call"],
                 [[m, fmt(enqueue[m]), fmt(enqueue_cpu[m]), fmt(e2e[m]), fmt(cpu[m]), fmt(check_ns[m], 1)]
                  for m in MODES])
    report.note(f"spans exported to the receiver: {receiver.requests:,} OTLP requests, {receiver.bytes:,} bytes")
    figures = (("enqueue CPU per job (client)", enqueue_cpu, False), ("relay+worker CPU per job", cpu, False),
               ("enqueue throughput", enqueue, True), ("end-to-end throughput", e2e, True))
    for mode in ("api", "on"):
        for name, values, higher_is_better in figures:
            ratios = [a / b for a, b in zip(values[mode], values["off"], strict=True)]
            if mode == "on":
                report.headline(f"tracing on: {name} vs off", ratios, "diagnostic", None)
                continue
            # API only runs the very code of off (one cached check): any gap is the machine's noise.
            met = median(ratios) >= 0.97 if higher_is_better else median(ratios) <= 1.03
            report.headline(f"tracing api: {name} vs off", ratios,
                            "≥ 0.97x" if higher_is_better else "≤ 1.03x", met)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.tracing [--quick]``; ``--child MODE WHAT ARG`` is the measuring process."""
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "WHAT", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    raw = sys.argv[1:] if argv is None else argv
    header = machine_description(args.quick, ["tracing", *raw])
    print(header, flush=True)
    report = Report(quick=args.quick)
    run(report, args.quick)
    print(f"\nresults appended to {report.save(header)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
