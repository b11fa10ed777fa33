"""A RabbitMQ node of the tests' own, for faults that hit a whole broker (reset, close_all_connections, alarms).

Those faults must never touch the shared node on 127.0.0.1:5672: every other test (and other
people's runs) use it. ``scripts/rabbitmq-node`` starts a node from the installed server with its
own name, ports, config and data; the session starts one, and stops it (deleting its data) after.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
import pytest

from outbox.config import Settings
from tests.helpers import ROOT

SCRIPT = ROOT / "scripts" / "rabbitmq-node"
#: The script puts the node's Erlang distribution port this far above its AMQP port.
DIST_PORT_OFFSET = 20000


@dataclass(frozen=True)
class PrivateBroker:
    """One RabbitMQ node of this test session's own: ``name@localhost`` on 127.0.0.1:``port``."""

    name: str
    port: int

    @property
    def url(self) -> str:
        """Its AMQP URL (the default user and vhost, which a reset recreates)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl ARGS`` against this node (never the shared one); returns its output."""
        done = subprocess.run([str(SCRIPT), "ctl", self.name, *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
        assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def add_vhost_and_user(self, vhost: str, user: str, password: str) -> str:
        """Create ``vhost`` and ``user`` with every permission on it (what an operator does after a
        reset); returns the AMQP URL that uses them."""
        self.ctl("add_vhost", vhost)
        self.ctl("add_user", user, password)
        self.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/{vhost}"

    def reset(self) -> None:
        """Wipe the node: queues, exchanges, vhosts and users go (the default ones come back)."""
        self.ctl("stop_app")
        self.ctl("reset")
        self.ctl("start_app")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports() -> int:
    """An AMQP port whose distribution port (port + 20000) is free too."""
    for _ in range(100):
        port = random.randint(20000, 40000)
        if _free(port) and _free(port + DIST_PORT_OFFSET):
            return port
    raise AssertionError("no free port pair for a private RabbitMQ node")


@pytest.fixture(scope="session")
def private_broker() -> Iterator[PrivateBroker]:
    """A RabbitMQ node started for this session (about 5 s), stopped and deleted afterwards."""
    if not shutil.which("rabbitmq-server") or os.geteuid() != 0:
        pytest.skip("a private RabbitMQ node needs the installed rabbitmq-server and root (scripts/rabbitmq-node)")
    broker = PrivateBroker(f"tbxtest{uuid.uuid4().hex[:8]}", _ports())
    started = subprocess.run([str(SCRIPT), "start", broker.name, str(broker.port)], capture_output=True,
                             text=True, timeout=120, check=False)
    try:
        assert started.returncode == 0, f"private RabbitMQ node: {started.stdout}{started.stderr}"
        yield broker
    finally:
        subprocess.run([str(SCRIPT), "stop", broker.name], capture_output=True, timeout=120, check=False)


@pytest.fixture
def private_settings(settings: Settings, private_broker: PrivateBroker) -> Settings:
    """The test's settings (own database, own prefix) on the private node."""
    return msgspec.structs.replace(settings, amqp_url=private_broker.url)
