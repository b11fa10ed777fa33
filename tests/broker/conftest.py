"""A RabbitMQ node of the tests' own, for faults that hit a whole broker (reset, close_all_connections, alarms).

Those faults must never touch the shared node on 127.0.0.1:5672: every other test (and other
people's runs) use it. ``scripts/rabbitmq-node`` starts a node from the installed server with its
own name, ports, config and data; the session starts one, and stops it (deleting its data) after.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
import pytest

from outbox.config import Settings
from tests import rabbit_node


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
        done = rabbit_node.ctl(self.name, *args, timeout=timeout)
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



@pytest.fixture(scope="session")
def private_broker() -> Iterator[PrivateBroker]:
    """A RabbitMQ node started for this session (about 5 s), stopped and deleted afterwards."""
    why = rabbit_node.unavailable()
    if why:
        pytest.skip(f"no private RabbitMQ node: {why}")
    broker = PrivateBroker(f"tbxtest{uuid.uuid4().hex[:8]}", rabbit_node.free_port_pair())
    try:
        rabbit_node.start(broker.name, broker.port)
        yield broker
    finally:
        rabbit_node.stop(broker.name)


@pytest.fixture
def private_settings(settings: Settings, private_broker: PrivateBroker) -> Settings:
    """The test's settings (own database, own prefix) on the private node."""
    return msgspec.structs.replace(settings, amqp_url=private_broker.url)
