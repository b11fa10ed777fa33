"""Test helpers: waiting without sleeps, real processes, broker-side inspection."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from outbox.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until truthy; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


async def wait_until_async(predicate: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.05,
                           what: str = "") -> Any:
    """Async :func:`wait_until` for coroutine predicates."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


def settings_env(settings: Settings) -> dict[str, str]:
    """The TIERBOX_* environment that reproduces ``settings`` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERBOX_")}
    for name in settings.__struct_fields__:
        value = getattr(settings, name)
        if value is not None:
            env[f"TIERBOX_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    """A real tierbox process (relay, worker) whose output goes to a log file."""

    def __init__(self, args: list[str], settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None):
        self.args = args
        self.log_path = log_path
        env = settings_env(settings)
        env.update(extra_env or {})
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tierbox.cli", *args], env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        """The exit code; a process still running after ``timeout`` fails the test with its stacks and log.

        On a timeout the process gets SIGUSR1 first (``outbox._runtime.dump_stacks``), so the
        failure report shows where it hung, not only that it did.
        """
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            if self.alive():
                os.kill(self.popen.pid, signal.SIGUSR1)
                time.sleep(2)
            tail = "\n".join(self.output().splitlines()[-200:])
            raise AssertionError(f"{' '.join(self.args)} still running after {timeout}s; its log ends:\n{tail}") from None

    def stop(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)
        self._log.close()

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


def delete_broker_objects(settings: Settings, connection_name: str = "tierbox test cleanup") -> None:
    """Delete every queue and exchange ``settings`` names (its prefix); absent ones are fine."""
    import aio_pika

    async def clean() -> None:
        conn = await aio_pika.connect(settings.amqp_url, client_properties={"connection_name": connection_name})
        async with conn:
            names = [(n, "queue") for t in settings.topology.tiers
                     for n in (settings.queue_name(t), settings.dlq_name(t))]
            names += [(settings.exchange_name, "exchange"), (settings.dlx_name, "exchange")]
            for name, kind in names:
                ch = await conn.channel()  # a failed delete closes its channel: one channel each
                try:
                    await (ch.queue_delete(name) if kind == "queue" else ch.exchange_delete(name))
                except Exception:  # noqa: BLE001 - already gone is what we want
                    pass
                if not ch.is_closed:
                    await ch.close()

    asyncio.run(clean())


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str | None:
    """The Prometheus text served on 127.0.0.1:``port``, or None while nothing answers."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None
