"""A RabbitMQ node of a chaos run's own, for the faults that hit a whole broker (restart, reset).

Those faults never touch the shared node on 127.0.0.1:5672: every test and CI use it.
``scripts/rabbitmq-node`` starts a node from the installed server with its own name, ports, config
and data (about 5 s); :meth:`BrokerNode.stop` stops it and deletes its data. The run uses a vhost and
user of its own on it, so a reset has something for the harness to recreate, as an operator would
(docs/reliability.md, "Broker faults").
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from tests import rabbit_node


@dataclass
class BrokerNode:
    """``name@localhost`` on 127.0.0.1:``port``, with vhost ``vhost`` and user ``user`` for the run."""

    name: str = field(default_factory=lambda: f"tbxchaos{uuid.uuid4().hex[:8]}")
    port: int = 0
    vhost: str = "tierbox-chaos"
    user: str = "tierbox-chaos"
    password: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def url(self) -> str:
        """The AMQP URL of the run's vhost and user."""
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.vhost}"

    @staticmethod
    def available() -> str | None:
        """None when a private node can be started here, else why not."""
        return rabbit_node.unavailable()

    def start(self) -> None:
        """Start the node and create the run's vhost and user."""
        why = self.available()
        if why:
            raise RuntimeError(f"no private RabbitMQ node: {why}")
        if not self.port:
            self.port = rabbit_node.free_port_pair()
        rabbit_node.start(self.name, self.port)
        self.add_vhost_and_user()

    def stop(self) -> None:
        """Stop the node and delete its data."""
        rabbit_node.stop(self.name)

    def ctl(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        """``rabbitmqctl ARGS`` against this node (never the shared one); returns its output."""
        done = rabbit_node.ctl(self.name, *args, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: {done.stdout}{done.stderr}")
        return done.stdout

    def add_vhost_and_user(self) -> None:
        """What an operator does after a reset: the vhost, the user, its permissions on the vhost."""
        self.ctl("add_vhost", self.vhost)
        self.ctl("add_user", self.user, self.password)
        self.ctl("set_permissions", "-p", self.vhost, self.user, ".*", ".*", ".*")

    def restart_app(self) -> None:
        """``stop_app; start_app``: connections drop, durable queues and their messages survive."""
        self.ctl("stop_app")
        self.ctl("start_app")

    def reset(self) -> None:
        """``stop_app; reset; start_app``, then the vhost and user again: every queue, message,
        exchange, policy, vhost and user is gone (the default ``/`` and ``guest`` come back by themselves)."""
        self.ctl("stop_app")
        self.ctl("reset")
        self.ctl("start_app")
        self.add_vhost_and_user()
