"""What the example applications share: real Tierbox processes, waiting on the ledger, the claim table.

Every example starts the real processes (``python -m tierbox.cli relay|worker|scheduler``) with
the settings it was given through ``TIERBOX_*`` variables, so what it measures is what a deployment
runs. Nothing here fakes a service: the fakes are the external providers inside each example.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from outbox.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def example_settings(app: str, prefix_stem: str, **overrides: Any) -> Settings:
    """Settings from ``TIERBOX_*``, with the example's task module and a queue prefix of its own.

    A prefix already set in the environment (a test's) is kept; otherwise each run gets a fresh one,
    so two runs never share queues, Redis keys or leftover messages.
    """
    settings = Settings.from_env()
    prefix = settings.queue_prefix or f"{prefix_stem}{uuid.uuid4().hex[:6]}."
    return msgspec.structs.replace(settings, app=app, queue_prefix=prefix, **overrides)


def child_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that gives a child process exactly ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERBOX_")}
    for name in settings.__struct_fields__:
        value = getattr(settings, name)
        if value is not None:
            env[f"TIERBOX_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TIERBOX_LOG_LEVEL", "WARNING")
    env.update(extra or {})
    return env


@dataclass
class Processes:
    """Child processes of one run, each logging to a file; :meth:`stop_all` ends them."""

    settings: Settings
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tierbox-example-")))
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, label: str, argv: Sequence[str], *, module: str = "tierbox.cli",
              extra_env: dict[str, str] | None = None, unset: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start ``python -m module argv`` under ``label``, without the variables named in ``unset``."""
        log = open(self.log_dir / f"{label}.log", "ab")
        env = {k: v for k, v in child_env(self.settings, extra_env).items() if k not in unset}
        proc = subprocess.Popen([sys.executable, "-m", module, *argv], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        log.close()  # the child keeps its own descriptor
        self.running[label] = proc
        return proc

    def kill(self, label: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one process and reap it."""
        proc = self.running.pop(label)
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        proc.wait(60)

    def stop_all(self, grace_s: float = 20.0) -> None:
        """SIGTERM every process, then SIGKILL whichever is still running after ``grace_s``."""
        for proc in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.running.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.running.clear()

    def discard_logs(self) -> None:
        """Delete the log directory (a run that went as expected needs no post-mortem)."""
        import shutil

        shutil.rmtree(self.log_dir, ignore_errors=True)

    def log_tail(self, label: str, lines: int = 30) -> str:
        """The end of one process's log (for a failure report)."""
        path = self.log_dir / f"{label}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def conclude(procs: Processes, code: int) -> int:
    """Return a run's exit code: its process logs are deleted when every claim held, kept (and their
    directory printed) when one did not."""
    if code == 0:
        procs.discard_logs()
    else:
        print(f"process logs kept in {procs.log_dir}", file=sys.stderr)
    return code


def tear_down(settings: Settings, procs: Processes) -> None:
    """Stop every process of a run, then delete its queues, exchanges and Redis keys."""
    procs.stop_all()
    delete_broker_objects(settings)
    delete_redis_keys(settings)


def wait_for_consumers(settings: Settings, tiers: Iterable[str], timeout_s: float = 90.0) -> None:
    """Block until each of ``tiers``' queues has a consumer (its pool is up); raise after ``timeout_s``."""
    import aio_pika
    import aiormq

    from outbox._brokers import connect  # every node of a comma-separated TIERBOX_AMQP_URL, as the processes

    wanted = list(tiers)

    async def ready() -> bool:
        conn = await connect(settings.amqp_url, timeout=5)
        async with conn:
            for tier in wanted:
                channel = await conn.channel()
                try:
                    queue = await channel.declare_queue(settings.queue_name(tier), passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    return False
                if not queue.declaration_result.consumer_count:
                    return False
        return True

    def probe() -> bool:
        try:
            return asyncio.run(ready())
        except (OSError, aio_pika.exceptions.AMQPError, TimeoutError):
            return False

    wait_for(probe, timeout_s, f"consumers on {', '.join(wanted)}")


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll ``predicate`` until truthy; raise ``TimeoutError`` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def delete_broker_objects(settings: Settings) -> None:
    """Delete the queues and exchanges of ``settings``' prefix (absent ones are fine)."""
    import aio_pika

    from outbox._brokers import connect  # every node of a comma-separated TIERBOX_AMQP_URL, as the processes

    async def clean() -> None:
        conn = await connect(settings.amqp_url, timeout=5)
        async with conn:
            names = [(n, "queue") for t in settings.topology.tiers
                     for n in (settings.queue_name(t), settings.dlq_name(t))]
            names += [(settings.exchange_name, "exchange"), (settings.dlx_name, "exchange")]
            for name, kind in names:
                channel = await conn.channel()  # a failed delete closes its channel: one channel each
                try:
                    await (channel.queue_delete(name) if kind == "queue" else channel.exchange_delete(name))
                except aio_pika.exceptions.AMQPError:
                    pass
                if not channel.is_closed:
                    await channel.close()

    try:
        asyncio.run(clean())
    except (OSError, aio_pika.exceptions.AMQPError, TimeoutError):
        pass  # cleanup only: a broker that is gone holds nothing of ours worth deleting


def delete_redis_keys(settings: Settings) -> None:
    """Delete the flow-control and scheduler keys of ``settings``' queue prefix (breakers, in-flight slots, lock).

    The prefix is this run's own (see :func:`example_settings`), so nobody else's keys match.
    """
    import redis

    if not settings.queue_prefix:
        return  # never sweep the unprefixed keys a deployment shares
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3)
    try:
        for pattern in (f"tierbox:{settings.queue_prefix}*", f"{settings.queue_prefix}tierbox:*"):
            for key in client.scan_iter(match=pattern, count=500):
                client.delete(key)
    except redis.RedisError:
        pass  # cleanup only
    finally:
        client.close()


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Claim:
    """One published claim and what this run measured for it.

    ``held`` is None for a claim this run was asked not to test (printed ``not run``); a runner's
    exit code counts such a row as neither held nor failed.
    """

    claim: str
    measured: str
    held: bool | None

    @property
    def verdict(self) -> str:
        """The table's held column: ``yes``, ``NO`` or ``not run``."""
        return "not run" if self.held is None else "yes" if self.held else "NO"


def print_claims(title: str, claims: Sequence[Claim], context: str = "") -> None:
    """The closing table: claim | measured | held, plus the run's date and load average."""
    width = max(len(c.claim) for c in claims)
    # As wide as the widest verdict, so a table of yes/NO only looks as it always has.
    held_width = max(4, *(len(c.verdict) for c in claims))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n{title} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {load}{context})")
    print(f"{'claim':<{width}} | {'held':<{held_width}} | measured")
    print(f"{'-' * width}-+-{'-' * held_width}-+-{'-' * 40}")
    for c in claims:
        print(f"{c.claim:<{width}} | {c.verdict:<{held_width}} | {c.measured}")
