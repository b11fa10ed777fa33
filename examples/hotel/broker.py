"""A RabbitMQ node of the example's own (``scripts/rabbitmq-node``), so it can be restarted mid-run.

The shared node on 127.0.0.1:5672 serves everyone else on the machine; restarting it would break
their work. This node has its own name, port and data, and is deleted when the run ends.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass, field

from examples.support import ROOT

SCRIPT = ROOT / "scripts" / "rabbitmq-node"


def unavailable() -> str | None:
    """None when a node of our own can be started here, else why not."""
    if not shutil.which("rabbitmq-server"):
        return "rabbitmq-server is not installed"
    if os.geteuid() != 0:
        return "scripts/rabbitmq-node needs root (it runs the node as the rabbitmq user)"
    return None


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class PrivateNode:
    """``name@localhost`` on 127.0.0.1:``port`` (its distribution port is ``port + 20000``)."""

    name: str = field(default_factory=lambda: f"hotel{uuid.uuid4().hex[:8]}")
    port: int = 0

    @property
    def url(self) -> str:
        """The node's AMQP URL."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> None:
        """Start the node and wait until it answers (about 5 s, more on a loaded box)."""
        for _ in range(100):
            port = random.randint(20000, 40000)
            if _free(port) and _free(port + 20000):
                self.port = port
                break
        self._script("start", self.name, str(self.port))

    def stop_app(self) -> None:
        """``rabbitmqctl stop_app``: every connection drops, the node stops serving AMQP."""
        self._script("ctl", self.name, "stop_app")

    def start_app(self) -> None:
        """``rabbitmqctl start_app``: the broker is back, with its durable queues and their messages."""
        self._script("ctl", self.name, "start_app")

    def stop(self) -> None:
        """Stop the node and delete its data."""
        subprocess.run([str(SCRIPT), "stop", self.name], capture_output=True, timeout=180, check=False)

    def _script(self, *args: str) -> None:
        done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=180, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmq-node {' '.join(args)}: {done.stdout}{done.stderr}")
