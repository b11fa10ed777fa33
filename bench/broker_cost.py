"""What many worker processes cost the broker: N Tierbox pools beside N Celery workers (defaults), one run.

Run: ``python -m bench.broker_cost [--workers 50] [--jobs 3000] [--sample-s 20]`` (root; starts a
RabbitMQ node of its own with ``scripts/rabbitmq-node`` and a Postgres instance of its own with
``initdb`` on a free port, so the shared services take none of the load, and deletes both after).

The seeds' field guide ran 100 Celery workers and watched their gossip fan out N x (N - 1) until
RabbitMQ hit its memory watermark. Here, in sequence on the same fresh node (never both at once:
2 cores, and each side is measured against the same empty-node baseline):

* Tierbox: N ``tierbox worker --pool urgent --concurrency 2`` processes, then one relay and
  ``--jobs`` ``bench.noop`` jobs through them.
* Celery 5: N ``celery worker`` processes of an app with nothing configured but the broker URL
  (prefork, concurrency = CPU count, gossip, mingle and heartbeats on: the defaults), then
  ``--jobs`` no-op tasks sent to them.

Per side, idle (after a settle) and under load: broker memory (``rabbitmqctl status``: total
allocated by the VM), connections, channels, consumers, queues, and the background traffic: socket
packets per second in + out summed over every connection (``list_connections recv_cnt send_cnt``,
which ``man rabbitmqctl`` defines as packets received and sent, sampled ``--sample-s`` apart). A
packet is what one read or write of the connection's socket carried: an idle connection's AMQP
heartbeat is one, while a burst of frames may share one. It is neither an AMQP frame count nor a
message rate (the management plugin, which would give message rates, is not enabled here). Per
worker: (side - empty node) / N.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
from celery import Celery

ROOT = Path(__file__).resolve().parent.parent
NODE_SCRIPT = ROOT / "scripts" / "rabbitmq-node"
NODE = f"tbcost{uuid.uuid4().hex[:4]}"

#: The Celery side: an app with nothing set but the broker (the defaults are what is measured).
celery_app = Celery("cost", broker=os.environ.get("COST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"))


@celery_app.task(name="cost.noop")
def noop() -> None:
    """Nothing: the broker's work is what is measured."""


def _free_port() -> int:
    for _ in range(100):
        port = random.randint(20000, 40000)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 20000))  # the node's distribution port
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def ctl(*args: str) -> str:
    """``rabbitmqctl ARGS`` on the bench's node."""
    done = subprocess.run([str(NODE_SCRIPT), "ctl", NODE, *args], capture_output=True, text=True, timeout=300,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}")
    return done.stdout


@contextmanager
def rabbit() -> Iterator[str]:
    """A RabbitMQ node of the bench's own; yields its AMQP URL."""
    port = _free_port()
    try:
        subprocess.run([str(NODE_SCRIPT), "start", NODE, str(port)], check=True, capture_output=True, timeout=300)
        yield f"amqp://guest:guest@127.0.0.1:{port}/"
    finally:
        subprocess.run([str(NODE_SCRIPT), "stop", NODE], capture_output=True, timeout=300, check=False)


@contextmanager
def postgres() -> Iterator[str]:
    """A Postgres instance of the bench's own (N pools open more connections than the shared one
    allows); yields the URL of a migrated database on it."""
    versions = sorted(os.listdir("/usr/lib/postgresql"))
    bindir = Path("/usr/lib/postgresql") / versions[-1] / "bin"
    data = Path(tempfile.mkdtemp(prefix="tierbox-pgcost-"))
    shutil.chown(data, "postgres", "postgres")
    port = _free_port()

    def as_postgres(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=300)
    try:
        as_postgres(str(bindir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust")
        as_postgres(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-w", "-l", str(data / "log"), "-o",
                    f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data} "
                    "-c max_connections=1000 -c shared_buffers=128MB -c fsync=off", "start")
        url = f"postgresql://postgres@127.0.0.1:{port}/cost"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE cost")
        from tierbox import migrations

        migrations.upgrade(url)
        yield url
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m",
                        "immediate", "stop"], capture_output=True, timeout=120, check=False)
        shutil.rmtree(data, ignore_errors=True)


def memory_mib() -> float:
    """Memory the node's VM has allocated (``rabbitmqctl status``), MiB."""
    total = json.loads(ctl("-q", "status", "--formatter", "json"))["memory"]["total"]
    mem = (total.get("allocated") or total.get("erlang") or total.get("rss")) if isinstance(total, dict) else total
    return int(mem or 0) / 2**20


def packets() -> tuple[int, int]:
    """(connections, socket packets in + out so far (``recv_cnt + send_cnt``), summed over them)."""
    conns = json.loads(ctl("-q", "list_connections", "--formatter", "json", "recv_cnt", "send_cnt") or "[]")
    return len(conns), sum(int(c.get("recv_cnt") or 0) + int(c.get("send_cnt") or 0) for c in conns)


def sample(seconds: float, during: Callable[[], None] | None = None) -> dict[str, float]:
    """Socket packets/s over the next ``seconds`` (``during`` runs first, inside them), the peak memory
    meanwhile, then connections, channels, consumers and queues. (Each rabbitmqctl call starts an
    Erlang VM: seconds on a loaded box, so memory is polled as often as that allows.)"""
    _, f0 = packets()
    began = time.monotonic()
    if during:
        during()
    peak = memory_mib()
    while time.monotonic() - began < seconds:
        peak = max(peak, memory_mib())
    conns, f1 = packets()
    elapsed = time.monotonic() - began
    channels = json.loads(ctl("-q", "list_channels", "--formatter", "json", "pid") or "[]")
    consumers = json.loads(ctl("-q", "list_consumers", "--formatter", "json") or "[]")
    queues = json.loads(ctl("-q", "list_queues", "--formatter", "json", "name") or "[]")
    return {"memory_mib": peak, "connections": conns, "channels": len(channels), "consumers": len(consumers),
            "queues": len(queues), "packets_s": (f1 - f0) / elapsed}


class Fleet:
    """Child processes started by the bench, all stopped by :meth:`stop` (SIGTERM, then SIGKILL)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, argv: list[str], env: dict[str, str], name: str) -> None:
        log = self.logdir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append((proc, log))

    def wait_logs(self, marker: str, timeout_s: float, since: int = 0) -> None:
        """Until every process from the ``since``-th started on has logged ``marker``."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            missing = [log for p, log in self.procs[since:] if marker not in log.read_text(errors="replace")]
            dead = [log for p, log in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited:\n{dead[0].read_text(errors='replace')[-2000:]}")
            if not missing:
                return
            time.sleep(1)
        raise TimeoutError(f"{len(missing)} processes never logged {marker!r}, e.g. {missing[0]}")

    def stop(self) -> None:
        for proc, _ in self.procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        end = time.monotonic() + 60
        for proc, _ in self.procs:
            try:
                proc.wait(max(end - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.procs.clear()


def wait_quiet(check: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until ``check()`` holds (or ``timeout_s``)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s and not check():
        time.sleep(0.5)
    return time.monotonic() - began


def tierbox_side(n: int, jobs: int, sample_s: float, amqp: str, db: str, logdir: Path) -> dict[str, Any]:
    import outbox
    from bench import tasks  # noqa: F401 - registers bench.noop for enqueue_many
    from outbox.config import Settings

    settings = Settings(database_url=db, amqp_url=amqp, redis_url=os.environ.get("TIERBOX_REDIS_URL",
                        "redis://127.0.0.1:6379/0"), queue_prefix=f"cost{uuid.uuid4().hex[:6]}.", app="bench.tasks")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERBOX_")}
    env.update({f"TIERBOX_{f.upper()}": str(getattr(settings, f)) for f in settings.__struct_fields__
                if getattr(settings, f) is not None})
    env["PYTHONPATH"] = str(ROOT)
    fleet = Fleet(logdir)
    try:
        for i in range(n):
            fleet.start([sys.executable, "-m", "tierbox.cli", "worker", "--pool", "urgent", "--concurrency", "2"],
                        env, f"tierbox-{i}")
        fleet.wait_logs("worker.started", 1200)
        time.sleep(10)  # settle: every pool's timers running
        idle = sample(sample_s)
        fleet.start([sys.executable, "-m", "tierbox.cli", "relay"], env, "tierbox-relay")
        fleet.wait_logs("relay.connected", 300, since=n)

        def enqueue() -> None:
            with psycopg.connect(db) as conn:
                outbox.enqueue_many(conn, [outbox.job("bench.noop") for _ in range(jobs)])
                conn.commit()

        def done() -> bool:
            with psycopg.connect(db) as conn:
                row = conn.execute("SELECT count(*) FROM outbox.jobs WHERE status <> 'succeeded'").fetchone()
            return bool(row and row[0] == 0)
        began = time.monotonic()
        load = sample(sample_s, enqueue)
        wait_quiet(done, 600)
        return {"idle": idle, "load": load, "drain_s": time.monotonic() - began}
    finally:
        fleet.stop()


def celery_side(n: int, jobs: int, sample_s: float, amqp: str, logdir: Path) -> dict[str, Any]:
    env = {**os.environ, "COST_AMQP_URL": amqp, "PYTHONPATH": str(ROOT)}
    fleet = Fleet(logdir)
    try:
        for i in range(n):
            fleet.start([sys.executable, "-m", "celery", "-A", "bench.broker_cost:celery_app", "worker",
                         "-n", f"cost{i}@%h", "--loglevel", "INFO"], env, f"celery-{i}")
        fleet.wait_logs(" ready.", 1200)
        time.sleep(10)
        idle = sample(sample_s)
        def send() -> None:
            with celery_app.connection_for_write(amqp) as conn:
                for _ in range(jobs):
                    noop.apply_async(connection=conn)

        def drained() -> bool:
            rows = json.loads(ctl("-q", "list_queues", "--formatter", "json", "name", "messages") or "[]")
            return all(int(r["messages"]) == 0 for r in rows if r["name"] == "celery")
        began = time.monotonic()
        load = sample(sample_s, send)
        wait_quiet(drained, 600)
        return {"idle": idle, "load": load, "drain_s": time.monotonic() - began}
    finally:
        fleet.stop()


def table(n: int, base: dict[str, float], sides: dict[str, dict[str, Any]]) -> str:
    keys = [("memory_mib", "broker memory (MiB)", 1), ("connections", "connections", 0), ("channels", "channels", 0),
            ("consumers", "consumers", 0), ("queues", "queues", 0),
            ("packets_s", "socket packets/s in+out (recv_cnt+send_cnt)", 1)]
    head = "| | empty node | " + " | ".join(f"{s} idle | {s} under load | {s} idle, per worker" for s in sides) + " |"
    lines = [head, "|" + "---|" * (2 + 3 * len(sides))]
    for key, label, digits in keys:
        cells = [f"{base[key]:.{digits}f}"]
        for side in sides.values():
            idle, load = side["idle"][key], side["load"][key]
            cells += [f"{idle:.{digits}f}", f"{load:.{digits}f}", f"{(idle - base[key]) / n:.{max(digits, 2)}f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--sample-s", type=float, default=20.0)
    parser.add_argument("--only", choices=["tierbox", "celery"], help="measure one side only")
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="tierbox-broker-cost-"))
    print(f"logs in {logdir}", flush=True)
    with rabbit() as amqp, postgres() as db:
        base = sample(args.sample_s)
        print("empty node:", base, flush=True)
        sides: dict[str, dict[str, Any]] = {}
        if args.only != "celery":
            sides["Tierbox"] = tierbox_side(args.workers, args.jobs, args.sample_s, amqp, db, logdir)
            print("Tierbox:", sides["Tierbox"], flush=True)
            time.sleep(5)
        if args.only != "tierbox":
            sides["Celery"] = celery_side(args.workers, args.jobs, args.sample_s, amqp, logdir)
            print("Celery:", sides["Celery"], flush=True)
    print(f"\n{args.workers} workers each; {args.jobs} no-op jobs under load; samples {args.sample_s:.0f} s\n")
    print(table(args.workers, base, sides))
    for name, side in sides.items():
        print(f"{name}: {args.jobs} jobs drained in {side['drain_s']:.1f} s")


if __name__ == "__main__":
    main()
