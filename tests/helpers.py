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
            [sys.executable, "-m", "api.cli", *args], env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
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
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)
        self._log.close()

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")
