"""A RabbitMQ node of the tests' own, through ``scripts/rabbitmq-node``: ports, start, stop, rabbitmqctl.

Faults that hit a whole broker (reset, close_all_connections, alarms, restarts) run only on such a
node, never on the shared one on 127.0.0.1:5672 that every test and CI use. Used by the broker-fault
tests (tests/broker/conftest.py) and the chaos harness (tests/chaos/node.py).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess

from tests.helpers import ROOT

SCRIPT = ROOT / "scripts" / "rabbitmq-node"
#: The script puts the node's Erlang distribution port this far above its AMQP port.
DIST_PORT_OFFSET = 20000


def unavailable() -> str | None:
    """None when a private node can be started here, else why not."""
    if not shutil.which("rabbitmq-server"):
        return "rabbitmq-server is not installed"
    if os.geteuid() != 0:
        return "scripts/rabbitmq-node needs root (it runs the node as the rabbitmq user)"
    return None


def free_port_pair() -> int:
    """An AMQP port whose distribution port (port + 20000) is free too."""
    for _ in range(100):
        port = random.randint(20000, 40000)
        if _free(port) and _free(port + DIST_PORT_OFFSET):
            return port
    raise RuntimeError("no free port pair for a private RabbitMQ node")


def start(name: str, port: int) -> None:
    """Start ``name@localhost`` on 127.0.0.1:``port`` and wait until it answers (about 5 s)."""
    done = subprocess.run([str(SCRIPT), "start", name, str(port)], capture_output=True, text=True,
                          timeout=180, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"private RabbitMQ node {name}: {done.stdout}{done.stderr}")


def stop(name: str) -> None:
    """Stop the node and delete its data (a node that is not running is fine)."""
    subprocess.run([str(SCRIPT), "stop", name], capture_output=True, timeout=180, check=False)


def ctl(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``rabbitmqctl ARGS`` against node ``name`` (the script refuses the shared node)."""
    return subprocess.run([str(SCRIPT), "ctl", name, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
