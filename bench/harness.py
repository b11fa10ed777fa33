"""Shared machinery of the benchmarks: fresh databases, real processes, timing, stats, RSS, reports.

Every benchmark run gets its own freshly created and migrated database and a
unique queue prefix, so it never collides with the test suites other people
run on the same services, and everything it creates is dropped in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import psycopg
import redis

from outbox.config import DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, Settings
from tierbox import migrations

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
ADMIN_DB_URL = os.environ.get("TIERBOX_DATABASE_URL") or DEFAULT_DATABASE_URL
AMQP_URL = os.environ.get("TIERBOX_AMQP_URL") or DEFAULT_AMQP_URL
REDIS_URL = os.environ.get("TIERBOX_REDIS_URL") or DEFAULT_REDIS_URL
#: The Tierbox task module every bench process loads (``--app``).
TASKS_MODULE = "bench.tasks"


# --------------------------------------------------------------------------- timing and stats


def wait_until(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.02, what: str = "") -> Any:
    """Poll ``predicate`` until truthy; raise TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(interval_s)


def fmt(values: Sequence[float], digits: int = 0) -> str:
    """``median (min-max)`` of ``values``."""
    if not values:
        return "n/a"
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# --------------------------------------------------------------------------- the report


@dataclass
class Headline:
    """One target-bearing figure: a ratio (or value) against its same-run baseline."""

    name: str
    values: list[float]
    target: str
    met: bool | None
    digits: int = 2


@dataclass
class Report:
    """Collects tables, headlines and notes; printed as it goes and saved as markdown."""

    quick: bool
    profile: bool = False
    parts: list[str] = field(default_factory=list)
    headlines: list[Headline] = field(default_factory=list)

    def section(self, title: str) -> None:
        """Start a benchmark's section."""
        self._emit(f"\n## {title}\n")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A markdown table (also printed)."""
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        self._emit("\n".join(lines) + "\n")

    def headline(self, name: str, values: Sequence[float], target: str, met: bool | None, digits: int = 2) -> None:
        """A headline figure: median (min-max) over the repetitions, its target and whether it was met."""
        h = Headline(name, list(values), target, met, digits)
        self.headlines.append(h)
        verdict = {True: "MET", False: "MISSED", None: "(no target)"}[met]
        self._emit(f"- **{name}**: {fmt(values, digits)} — target {target}: {verdict}")

    def note(self, text: str) -> None:
        """A line of prose (what was measured, what could not be)."""
        self._emit(text)

    def _emit(self, text: str) -> None:
        print(text, flush=True)
        self.parts.append(text)

    def save(self, header: str) -> Path:
        """Append this run to ``bench/results/<date>.md``; returns the file."""
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{dt.date.today().isoformat()}.md"
        summary = ["\n### Headlines\n", "| figure | median (min-max) | target | verdict |", "|---|---|---|---|"]
        for h in self.headlines:
            verdict = {True: "met", False: "missed", None: "—"}[h.met]
            summary.append(f"| {h.name} | {fmt(h.values, h.digits)} | {h.target} | {verdict} |")
        with path.open("a") as out:
            out.write(header + "\n" + "\n".join(self.parts) + "\n" + "\n".join(summary) + "\n\n")
        return path


def machine_description(quick: bool, argv: Sequence[str]) -> str:
    """The markdown header of one run: when, what machine, which service versions, how loaded."""
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    with psycopg.connect(ADMIN_DB_URL) as conn:
        pg = conn.execute("SHOW server_version").fetchone()
    rabbit = asyncio.run(_rabbit_version())
    load = os.getloadavg()
    return "\n".join([
        f"# Run {dt.datetime.now().isoformat(timespec='seconds')} ({'--quick' if quick else 'full'}: "
        f"`python -m bench {' '.join(argv)}`)",
        "",
        f"- machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
        f"{mem_kib / 1024 / 1024:.1f} GiB RAM, {platform.platform()}",
        f"- PostgreSQL {pg[0] if pg else '?'}, RabbitMQ {rabbit}, Python {platform.python_version()}",
        f"- load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine: other test suites run)",
    ])


async def _rabbit_version() -> str:
    conn = await aio_pika.connect(AMQP_URL)
    try:
        props = conn.transport.connection.server_properties if conn.transport else {}
        version = props.get("version", "?")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        await conn.close()


# --------------------------------------------------------------------------- databases and queues


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name``."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@contextlib.contextmanager
def migrated_database(label: str) -> Iterator[str]:
    """A freshly created and migrated database ``bench_<label>_<hex>``; its URL; dropped on exit."""
    name = f"bench_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DB_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(ADMIN_DB_URL, name)
    try:
        migrations.upgrade(url)
        yield url
    finally:
        with psycopg.connect(ADMIN_DB_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def fresh_system(label: str, **overrides: Any) -> Iterator[Settings]:
    """A new migrated database and a unique queue prefix; both removed afterwards.

    Yields the Settings every process of this run uses (``app`` is the bench
    task module). Queues and exchanges with the prefix are deleted at the end.
    """
    token = uuid.uuid4().hex[:8]
    name = f"bench_{label}_{token}"
    with psycopg.connect(ADMIN_DB_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    amqp_url = overrides.pop("amqp_url", AMQP_URL)  # a private node (bench.cpu) instead of the shared one
    settings = Settings(database_url=with_database(ADMIN_DB_URL, name), amqp_url=amqp_url, redis_url=REDIS_URL,
                        queue_prefix=f"bench-{label}-{token}-", app=TASKS_MODULE, **overrides)
    try:
        migrations.upgrade(settings.database_url)
        yield settings
    finally:
        _close_poll_connection(settings.psycopg_url)
        asyncio.run(delete_broker_objects(settings))
        with psycopg.connect(ADMIN_DB_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def delete_broker_objects(settings: Settings, extra_queues: Sequence[str] = ()) -> None:
    """Delete every queue and exchange the run declared (tier queues, their DLQs, exchanges, extras)."""
    conn = await aio_pika.connect(settings.amqp_url)
    try:
        for tier in settings.topology.tiers:
            for queue in (settings.queue_name(tier), settings.dlq_name(tier), *extra_queues):
                channel = await conn.channel()  # a failed delete closes its channel: one channel each
                with contextlib.suppress(Exception):
                    await channel.queue_delete(queue)
        for exchange in (settings.exchange_name, settings.dlx_name):
            channel = await conn.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(exchange)
    finally:
        await conn.close()


async def purge_queues(settings: Settings, queues: Sequence[str]) -> None:
    """Empty ``queues`` (messages a benchmark published without consumers)."""
    conn = await aio_pika.connect(settings.amqp_url)
    try:
        for queue in queues:
            channel = await conn.channel()
            with contextlib.suppress(Exception):
                await channel.queue_purge(queue)
    finally:
        await conn.close()


_POLL_CONNECTIONS: dict[str, psycopg.Connection[Any]] = {}


def scalar(url: str, sql: str, *params: Any) -> Any:
    """The first column of the first row of ``sql``, on one kept connection per database.

    Benchmarks poll with this every 10-50 ms; a new connection per poll (a Postgres backend
    forked each time) cost the 2-core box CPU that the systems under test were measured with.
    """
    conn = _POLL_CONNECTIONS.get(url)
    if conn is None or conn.closed or conn.broken:
        conn = _POLL_CONNECTIONS[url] = psycopg.connect(url, autocommit=True)
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def _close_poll_connection(url: str) -> None:
    conn = _POLL_CONNECTIONS.pop(url, None)
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def execute(url: str, sql: str) -> None:
    """Run ``sql`` in autocommit mode (DDL, TRUNCATE, trigger switches)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def redis_client() -> redis.Redis:
    """A Redis client on the shared service (benchmarks use keys under ``bench:<uuid>``)."""
    return redis.Redis.from_url(REDIS_URL)


# --------------------------------------------------------------------------- processes


def child_env(settings: Settings, extra: dict[str, str] | None = None, root: Path = ROOT) -> dict[str, str]:
    """The environment reproducing ``settings`` in a child process (TIERBOX_* variables).

    ``TIERBOX_BENCH_*`` switches of the bench's own environment (instrumentation) are passed on;
    ``root``: the source tree the child imports ``tierbox`` from (an A/B run's baseline tree).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERBOX_") or k.startswith("TIERBOX_BENCH_")}
    for name in settings.__struct_fields__:
        value = getattr(settings, name)
        if value is not None:
            env[f"TIERBOX_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Proc:
    """A real child process whose output goes to a temporary log file."""

    def __init__(self, argv: list[str], env: dict[str, str], name: str, cwd: Path = ROOT) -> None:
        self.name = name
        self._log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.log_path = Path(self._log.name)
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.popen.poll() is None

    def output(self) -> str:
        """Everything it has logged so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for(self, marker: str, timeout_s: float = 30) -> None:
        """Wait until ``marker`` appears in its log; fail with the log's tail if it dies first."""
        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.output()[-3000:]}")
            return marker in self.output()
        try:
            wait_until(ready, timeout_s, 0.05, f"{self.name}: {marker}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.output()[-3000:]}") from None

    def stop(self, grace_s: float = 10) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; removes the log."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()
        with contextlib.suppress(OSError):
            self.log_path.unlink()


class Procs:
    """Every process a benchmark starts; :meth:`stop_all` runs in the caller's ``finally``."""

    def __init__(self, root: Path = ROOT) -> None:
        self.procs: list[Proc] = []
        #: The source tree ``tierbox`` processes run from (another checkout: an A/B run's baseline).
        self.root = root

    def tierbox(self, settings: Settings, *args: str, extra_env: dict[str, str] | None = None) -> Proc:
        """Start ``tierbox <args>`` (relay, worker) and wait until it says it is ready."""
        proc = Proc([sys.executable, "-m", "tierbox.cli", *args], child_env(settings, extra_env, self.root), args[0],
                    self.root)
        self.procs.append(proc)
        proc.wait_for("relay.connected" if args[0] == "relay" else "worker.started")
        return proc

    def command(self, argv: list[str], env: dict[str, str], name: str) -> Proc:
        """Start any command (Celery, procrastinate workers)."""
        proc = Proc(argv, env, name)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """Terminate every started process (in parallel, so a slow one does not serialise the rest)."""
        for proc in self.procs:
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.stop()
        self.procs.clear()


@contextlib.contextmanager
def processes(root: Path = ROOT) -> Iterator[Procs]:
    """A :class:`Procs` whose processes are all stopped when the block exits, however it exits."""
    procs = Procs(root)
    try:
        yield procs
    finally:
        procs.stop_all()


# --------------------------------------------------------------------------- memory and profiles


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB, from /proc/<pid>/status; (0, 0) once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
    except OSError:
        return 0, 0
    return int(fields.get("VmRSS", "0 kB").split()[0]), int(fields.get("VmHWM", "0 kB").split()[0])


class RssSampler:
    """Samples VmRSS of some pids every ``interval_s`` in a thread (start/stop around a drain)."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.2) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.samples: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        """Begin sampling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                self.samples[name].append((time.monotonic() - t0, rss_kib(pid)[0]))
            self._stop.wait(self.interval_s)


#: Inclusive shares are listed for these packages only (the roots, click and asyncio, are ~100% and say nothing).
INTERESTING = ("relay/relay.py", "relay/wakeup.py", "workers/pool.py", "workers/execute.py", "workers/ledger.py",
               "workers/buffer.py", "outbox/", "aio_pika/", "aiormq/", "psycopg/", "sqlalchemy/", "pamqp/")


def profile(pid: int, duration_s: float, out: Path) -> Path:
    """Sample ``pid`` with py-spy for ``duration_s`` into collapsed stacks at ``out``."""
    spy = Path(sys.executable).parent / "py-spy"
    subprocess.run([str(spy), "record", "--pid", str(pid), "--duration", str(max(1, round(duration_s))),
                    "--rate", "250", "--format", "raw", "--nonblocking", "-o", str(out)],
                   check=False, capture_output=True, timeout=duration_s + 30)
    return out


def top_frames(collapsed: Path, n: int = 12) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(self, inclusive) shares of the ``n`` heaviest frames in a py-spy raw (collapsed) profile."""
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    if not collapsed.exists():
        return [], []
    for line in collapsed.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = [_short(f) for f in stack.split(";")]
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            if any(part in frame for part in INTERESTING):
                incl_counts[frame] = incl_counts.get(frame, 0) + count
    if not total:
        return [], []
    def top(counts: dict[str, int]) -> list[tuple[str, float]]:
        return [(f, c / total) for f, c in sorted(counts.items(), key=lambda kv: -kv[1])[:n]]
    return top(self_counts), top(incl_counts)


def _short(frame: str) -> str:
    """``func (path/to/module.py:12)`` -> ``func (module.py)``: shorter, and stable across lines."""
    name, _, where = frame.partition(" (")
    file = where.split(":")[0].rstrip(")")
    parts = Path(file).parts
    return f"{name} ({'/'.join(parts[-2:])})"


# --------------------------------------------------------------------------- WAL of one database

PG_WALDUMP = Path("/usr/lib/postgresql") / "15" / "bin" / "pg_waldump"


class WalMeter:
    """WAL bytes written for one database, from ``pg_waldump`` over the window (Postgres 15 counts WAL
    only cluster-wide, and the cluster is shared with other test suites).

    A record counts if it names a relation of the database (``rel <tablespace>/<db oid>/...``) or
    belongs to a transaction that wrote one (its commit record). The WAL is read every
    ``interval_s`` in a thread, so segments recycled by a checkpoint meanwhile are read before they
    go. Needs read access to the server's ``pg_wal`` (the benchmark runs as root beside it); if it
    has none, :attr:`bytes` stays None and the figure is reported as not measured.
    """

    def __init__(self, url: str, interval_s: float = 3.0) -> None:
        self.url = url
        self.interval_s = interval_s
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT oid, current_setting('data_directory') FROM pg_database "
                               "WHERE datname = current_database()").fetchone()
        assert row is not None
        self._oid, self._wal_dir = str(row[0]), Path(row[1]) / "pg_wal"
        self.bytes: int | None = 0 if PG_WALDUMP.exists() and os.access(self._wal_dir, os.R_OK) else None
        self._txs: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._last = ""
        self._seen = 0

    def _lsn(self) -> str:
        # Flushed, not merely inserted: pg_waldump reads the segment files.
        return str(scalar(self.url, "SELECT pg_current_wal_flush_lsn()"))

    def __enter__(self) -> WalMeter:
        self._last = self._lsn()
        self._seen = _lsn_int(self._last) - 1
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read(self._lsn())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._read(self._lsn())

    def _read(self, upto: str) -> None:
        """Count the records from the last one read up to ``upto``. pg_waldump may stop early (a
        record still being written): the next read starts again at the last record it printed, and
        records already counted are skipped by their LSN."""
        if self.bytes is None or upto == self._last:
            return
        out = subprocess.run([str(PG_WALDUMP), "-p", str(self._wal_dir), "-s", self._last, "-e", upto],
                             capture_output=True, text=True, check=False).stdout
        mine = f"/{self._oid}/"
        for line in out.splitlines():
            try:
                tot = int(line.split("len (rec/tot):", 1)[1].split("/", 1)[1].split(",", 1)[0])
                tx = line.split("tx:", 1)[1].split(",", 1)[0].strip()
                lsn_text = line.split("lsn:", 1)[1].split(",", 1)[0].strip()
            except (IndexError, ValueError):
                continue
            lsn = _lsn_int(lsn_text)
            if lsn <= self._seen:
                continue
            self._seen, self._last = lsn, lsn_text
            if mine in line:
                self._txs.add(tx)
                self.bytes += tot
            elif tx != "0" and tx in self._txs:
                self.bytes += tot  # the commit record of a transaction that wrote here


def _lsn_int(text: str) -> int:
    """``'3/E7A88040'`` as an integer."""
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)
