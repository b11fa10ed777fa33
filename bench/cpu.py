"""CPU seconds per 1,000 jobs end to end, summed over every process involved: the figure that travels.

Throughput on a 2-core box shared with other test suites says little about a 64-core one; the CPU
a job costs, process by process, does. For each system the same no-op jobs are produced and run to
completion (as in ``e2e``), and ``utime + stime`` of every process on the way is read from
``/proc/<pid>/stat`` before and after:

* Python: the relay and worker processes (Tierbox), the Celery worker, the procrastinate worker,
  and the producer (this process: its CPU while producing and waiting, polling included);
* Postgres: the backends of the run's database (``pg_stat_activity``), except the bench's own
  polling connection;
* RabbitMQ: a node of the benchmark's own (``scripts/rabbitmq-node``, as the broker-fault tests
  use), so its ``beam.smp`` serves nothing else; its idle CPU (Erlang schedulers) is subtracted;
* shared services: ``redis-server`` and Postgres's background processes (WAL writer,
  checkpointer, ...). Other test suites use them at the same time, so their figure is net of an
  idle window measured just before the run, floored at 0: an estimate, printed apart.

Tierbox also runs with 1, 2 and 4 relay + worker processes (each worker the urgent pool, 8 slots),
to show how the cost per job moves when work is spread over more processes.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import outbox
from bench import tasks  # noqa: F401 - registers the task names enqueue resolves
from bench.harness import Procs, Report, WalMeter, fresh_system, processes, scalar, wait_until
from bench.systems import BATCH, Celery, Procrastinate

TICKS = os.sysconf("SC_CLK_TCK")
#: Ports of the shared services whose listening process is charged (net of idle).
SERVICE_PORTS = {"redis": 6379}
NODE_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "rabbitmq-node"


@contextlib.contextmanager
def private_rabbit() -> Iterator[tuple[str, int]]:
    """A RabbitMQ node of this run's own: yields (its AMQP URL, its beam pid); stopped and deleted after."""
    name = f"benchcpu{uuid.uuid4().hex[:6]}"
    port = random.randint(21000, 24000)
    done = subprocess.run([str(NODE_SCRIPT), "start", name, str(port)], capture_output=True, text=True,
                          timeout=240, check=False)
    try:
        if done.returncode != 0:
            raise RuntimeError(f"private RabbitMQ node: {done.stdout}{done.stderr}")
        pid = listener_pid(port)
        if pid is None:
            raise RuntimeError(f"nothing listens on {port}")
        yield f"amqp://guest:guest@127.0.0.1:{port}/", pid
    finally:
        subprocess.run([str(NODE_SCRIPT), "stop", name], capture_output=True, timeout=120, check=False)


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), seconds; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def listener_pid(port: int) -> int | None:
    """The pid listening on 127.0.0.1:``port`` (``ss -ltnp``), or None."""
    out = subprocess.run(["ss", "-ltnp", f"sport = :{port}"], capture_output=True, text=True, check=False).stdout
    for part in out.split("pid=")[1:]:
        return int(part.split(",")[0])
    return None


def postgres_aux_pids() -> list[int]:
    """Postgres's background processes (no client backend): WAL writer, checkpointer, bgwriter, ..."""
    postmaster = listener_pid(5432)
    if postmaster is None:
        return []
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if ppid == postmaster and any(w in cmd for w in ("writer", "checkpointer", "autovacuum launcher",
                                                             "stats", "logical replication launcher")):
                pids.append(int(entry.name))
    return pids


def shared_pids() -> dict[str, list[int]]:
    """The shared services' processes, by name."""
    out = {name: [pid] for name, port in SERVICE_PORTS.items() if (pid := listener_pid(port)) is not None}
    out["postgres aux"] = postgres_aux_pids()
    return out


def backend_pids(url: str) -> set[int]:
    """Postgres backends of ``url``'s database, except the bench's polling connection."""
    rows = scalar(url, "SELECT array_agg(pid) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid()")
    return set(rows or [])


class Meter:
    """CPU of named process groups between :meth:`start` and :meth:`stop`, plus the shared services net of idle."""

    def __init__(self, python: dict[str, list[int]], url: str, beam: int) -> None:
        self.python = python
        self.url = url
        self.shared = shared_pids()
        self.shared["rabbitmq (own node)"] = [beam]
        self.idle: dict[str, float] = {}
        self.result: dict[str, float] = {}
        self.wal: int | None = 0

    def _sum(self, pids: list[int]) -> float:
        return sum(cpu_s(p) for p in pids)

    def idle_rate(self, seconds: float) -> None:
        """CPU per second of the shared services with none of this run's jobs in flight."""
        before = {n: self._sum(p) for n, p in self.shared.items()}
        time.sleep(seconds)
        self.idle = {n: max(0.0, self._sum(p) - before[n]) / seconds for n, p in self.shared.items()}

    def measure(self, work: Callable[[], None]) -> float:
        """Run ``work`` and charge every group's CPU meanwhile; returns the wall time."""
        backends0 = backend_pids(self.url)
        py0 = {n: self._sum(p) for n, p in self.python.items()}
        pg0 = {p: cpu_s(p) for p in backends0}
        sh0 = {n: self._sum(p) for n, p in self.shared.items()}
        me0 = time.thread_time()  # the producing thread: not the WalMeter thread parsing pg_waldump
        t0 = time.perf_counter()
        with WalMeter(self.url) as wal:
            work()
        wall = time.perf_counter() - t0
        #: WAL bytes this run's database wrote meanwhile (pg_waldump; None: pg_wal not readable).
        self.wal = wal.bytes
        self.result = {n: self._sum(p) - py0[n] for n, p in self.python.items()}
        self.result["python: producer (bench process)"] = time.thread_time() - me0
        backends1 = backend_pids(self.url)
        self.result["postgres backends"] = sum(cpu_s(p) - pg0.get(p, 0.0) for p in backends0 | backends1)
        for n, p in self.shared.items():
            net = max(0.0, self._sum(p) - sh0[n] - self.idle.get(n, 0.0) * wall)
            self.result[n if "own node" in n else f"{n} (net of idle)"] = net
        return wall


def per_1000(meter: Meter, n: int) -> dict[str, float]:
    """Each group's CPU seconds per 1,000 jobs (and, apart, ``WAL KiB/job``)."""
    out = {name: s * 1000 / n for name, s in meter.result.items()}
    out[WAL_KEY] = meter.wal / 1024 / n if meter.wal is not None else float("nan")
    return out


WAL_KEY = "WAL KiB per job (this run's database, pg_waldump)"


def tierbox_run(settings: Any, procs: Procs, k: int, n: int, beam: int) -> tuple[float, dict[str, float]]:
    """(jobs/s, CPU s per 1,000 jobs by group) for ``n`` no-op jobs with ``k`` relays and ``k`` workers."""
    workers = [procs.tierbox(settings, "worker", "--pool", "urgent") for _ in range(k)]
    relays = [procs.tierbox(settings, "relay") for _ in range(k)]
    url = settings.psycopg_url
    import psycopg

    with psycopg.connect(url) as conn:
        def produce(count: int, task: str = "bench.noop") -> None:
            for start in range(0, count, BATCH):
                with conn.transaction():
                    outbox.enqueue_many(conn, [outbox.job(task, args=["", i])
                                               for i in range(start, min(count, start + BATCH))])

        def done() -> int:
            return int(scalar(url, "SELECT count(*) FROM outbox.jobs WHERE status = 'succeeded'"))

        produce(200)  # warm-up: connections, prepared statements, the pools' engines
        wait_until(lambda: done() >= 200, 120, 0.05, "tierbox warm-up")
        meter = Meter({"python: relays": [p.pid for p in relays], "python: workers": [p.pid for p in workers]},
                      url, beam)
        meter.idle_rate(2.0)
        wall = meter.measure(lambda: (produce(n), wait_until(lambda: done() >= n + 200, 600, 0.05, "tierbox run")))
    for proc in relays + workers:
        proc.stop()
        procs.procs.remove(proc)
    return n / wall, per_1000(meter, n)


def celery_run(settings: Any, procs: Procs, stack: Any, n: int, beam: int) -> tuple[float, dict[str, float]]:
    """(jobs/s, CPU s per 1,000 jobs by group) for Celery (threads pool, 8, confirms, acks late)."""
    from bench import celery_app

    # An earlier benchmark of this process left the app's connection and producer pools open on the
    # shared broker (kombu keeps them); this run's broker is the private node: start them afresh.
    celery_app.app.close()
    celery_app.app.amqp._producer_pool = None
    celery = Celery(settings, procs, stack)
    celery.reset()
    celery.produce(100)
    wait_until(lambda: celery.completed() >= 100, 120, 0.05, "celery warm-up")
    celery.reset()
    meter = Meter({"python: celery worker": [p.pid for p in celery.procs]}, settings.psycopg_url, beam)
    meter.idle_rate(2.0)
    wall = meter.measure(lambda: (celery.produce(n), wait_until(lambda: celery.completed() >= n, 600, 0.05,
                                                                "celery run")))
    return n / wall, per_1000(meter, n)


def procrastinate_run(settings: Any, procs: Procs, stack: Any, n: int, beam: int) -> tuple[float, dict[str, float]]:
    """(jobs/s, CPU s per 1,000 jobs by group) for procrastinate (8 slots)."""
    system = Procrastinate(settings, procs, stack)
    system.reset()
    meter = Meter({"python: procrastinate worker": [p.pid for p in system.procs]}, settings.psycopg_url, beam)
    meter.idle_rate(2.0)
    wall = meter.measure(lambda: (system.produce(n), wait_until(lambda: system.completed() >= n, 600, 0.05,
                                                                "procrastinate run")))
    return n / wall, per_1000(meter, n)


def run(report: Report, quick: bool) -> None:
    """Measure and report CPU per 1,000 jobs."""
    n = 2_000 if quick else 10_000
    report.section("CPU seconds per 1,000 jobs end to end (every process on the way, from /proc)")
    report.note(f"{n:,} no-op jobs per run after a warm-up; load average at start: "
                f"{open('/proc/loadavg').read().split()[0]}. Shared services (Redis, Postgres's background "
                "processes) are charged net of an idle window of 2 s measured just before each run; RabbitMQ is a "
                "node of the run's own, net of its own idle CPU.")
    rows: dict[str, tuple[float, dict[str, float]]] = {}
    with private_rabbit() as (amqp_url, beam):
        for k in (1, 2, 4):
            with fresh_system(f"cpu{k}", amqp_url=amqp_url) as settings, processes() as procs:
                rows[f"tierbox, {k} relay + {k} worker"] = tierbox_run(settings, procs, k, n, beam)
        with (fresh_system("cpu_peers", amqp_url=amqp_url) as settings, contextlib.ExitStack() as stack,
              processes() as procs):
            rows["celery"] = celery_run(settings, procs, stack, n, beam)
            rows["procrastinate"] = procrastinate_run(settings, procs, stack, n, beam)
    wal = {name: by.pop(WAL_KEY) for name, (_, by) in rows.items()}
    groups = sorted({g for _, by in rows.values() for g in by})
    table = []
    for name, (rate, by) in rows.items():
        own = sum(v for g, v in by.items() if "net of idle" not in g)  # our processes and our own broker
        shared = sum(v for g, v in by.items() if "net of idle" in g)
        table.append([name, f"{rate:,.0f}", f"{own:.2f}", f"{shared:.2f}", f"{own + shared:.2f}", f"{wal[name]:.1f}"])
    report.table(["system", "jobs/s", "CPU s / 1k jobs: own processes", "shared services (net)", "total",
                  "WAL KiB/job (run's database)"], table)
    report.note("\nBy process group, CPU seconds per 1,000 jobs:\n")
    report.table(["group", *rows], [[g, *(f"{by.get(g, 0.0):.3f}" for _, by in rows.values())] for g in groups])
    base = rows["tierbox, 1 relay + 1 worker"][1]
    total = sum(base.values())
    for peer in ("celery", "procrastinate"):
        report.headline(f"CPU per job: tierbox / {peer}", [total / sum(rows[peer][1].values())], "report only", None)
