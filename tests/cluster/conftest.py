"""A three-node RabbitMQ cluster of the tests' own, through ``scripts/rabbitmq-cluster``.

Started once per session (about 30-60 s on a loaded 2-core box), always stopped and deleted after.
Its nodes are private ones (``scripts/rabbitmq-node``): the shared node on 127.0.0.1:5672, which
every other test and CI use, is never joined, reset or stopped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from outbox.config import Settings
from tests import rabbit_node
from tests.helpers import ROOT

SCRIPT = ROOT / "scripts" / "rabbitmq-cluster"
RABBIT_DIR = Path(os.environ.get("TIERBOX_RABBIT_DIR", "/tmp/tierbox-rabbit"))
#: The cluster topology of docs/cluster.md: every tier on a quorum queue.
CLUSTER_TOPOLOGY = ROOT / "examples" / "cluster" / "topology.json"


@dataclass(frozen=True)
class Cluster:
    """Nodes ``<prefix>1..3@localhost`` on 127.0.0.1:``base_port``..``base_port + 2``."""

    prefix: str
    base_port: int

    @property
    def names(self) -> list[str]:
        """The three node names (without ``@localhost``)."""
        return [f"{self.prefix}{i}" for i in (1, 2, 3)]

    def url(self, name: str) -> str:
        """The AMQP URL of one node."""
        return f"amqp://guest:guest@127.0.0.1:{self.base_port + self.names.index(name)}/"

    @property
    def urls(self) -> str:
        """All three, comma-separated: what ``TIERBOX_AMQP_URL`` says for a cluster."""
        return ",".join(self.url(n) for n in self.names)

    def ctl(self, name: str, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl ARGS`` against node ``name``; returns its output."""
        done = rabbit_node.ctl(name, *args, timeout=timeout)
        assert done.returncode == 0, f"rabbitmqctl {' '.join(args)} on {name}: {done.stdout}{done.stderr}"
        return done.stdout

    def running(self, via: str | None = None) -> list[str]:
        """Node names ``cluster_status`` shows running (asked of ``via``, default any running node)."""
        for name in [via] if via else self.names:
            done = rabbit_node.ctl(name, "-q", "cluster_status", "--formatter", "json", timeout=30)
            if done.returncode == 0:
                return [n.split("@")[0] for n in json.loads(done.stdout)["running_nodes"]]
        return []

    def queues(self, via: str | None = None) -> dict[str, dict[str, str]]:
        """Per queue name: its ``type``, ``leader`` (quorum) and the node of its process (``node``)."""
        for name in [via] if via else self.running():
            # The table format, not JSON: JSON shows a pid without its node (#PID<12313.1158.0>).
            done = rabbit_node.ctl(name, "-q", "--no-table-headers", "list_queues", "name", "type", "leader", "pid",
                                   timeout=30)
            if done.returncode == 0:
                out = {}
                for line in done.stdout.splitlines():
                    qname, qtype, leader, pid = [*line.split("\t"), "", "", ""][:4]
                    out[qname] = {"type": qtype, "leader": leader.split("@")[0],
                                  "node": pid.strip("<>").split("@")[0] if "@" in pid else ""}
                return out
        raise AssertionError("no running node answered list_queues")

    def node_of_port(self, port: int) -> str:
        """The node listening on AMQP ``port``."""
        return self.names[port - self.base_port]

    def connected_node(self, connection_name: str) -> str:
        """The node a client connection whose name starts with ``connection_name`` is connected to."""
        for name in self.running():
            done = rabbit_node.ctl(name, "-q", "list_connections", "--formatter", "json", "port", "client_properties",
                                   timeout=30)
            if done.returncode != 0:
                continue
            for conn in json.loads(done.stdout):
                props = {p[0]: p[2] for p in conn["client_properties"]}
                if str(props.get("connection_name", "")).startswith(connection_name):
                    return self.node_of_port(int(conn["port"]))
            raise AssertionError(f"no connection named {connection_name!r}: {done.stdout}")
        raise AssertionError("no running node answered list_connections")

    def host_of(self, queue: str) -> str:
        """The node serving ``queue``: a quorum queue's leader, a classic queue's home node."""
        q = self.queues()[queue]
        return q["leader"] or q["node"]

    def kill(self, name: str) -> float:
        """SIGKILL node ``name``'s Erlang VM (no goodbye to clients or peers); returns when (time.time())."""
        pid = int((RABBIT_DIR / name / "pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        at = time.time()
        for _ in range(100):  # gone from the process table
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        return at

    def restart(self, name: str) -> None:
        """Start a killed node again from its data: it rejoins the cluster by itself."""
        rabbit_node.start(name, self.base_port + self.names.index(name))

    def wait_running(self, count: int = 3, timeout: float = 120) -> None:
        """Until ``cluster_status`` shows ``count`` running nodes."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len(self.running()) == count:
                return
            time.sleep(0.5)
        raise AssertionError(f"cluster never showed {count} running nodes: {self.running()}")


def node_processes(prefix: str) -> list[int]:
    """Pids of the live processes of the nodes ``<prefix>1..3`` (the Erlang VM and its helpers), found by
    the ``RABBITMQ_NODENAME`` their environment carries: a node whose data directory (and pid file) is
    gone is still found."""
    wanted = re.compile(rb"RABBITMQ_NODENAME=" + re.escape(prefix.encode()) + rb"[123]@localhost")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()  # empty for a zombie: exited, not running
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if any(wanted.fullmatch(var) for var in environ.split(b"\0")):
            pids.append(int(proc.name))
    return pids


def leftovers(c: Cluster, timeout: float = 30) -> list[str]:
    """What of cluster ``c`` is still there: node processes, data directories. Processes get
    ``timeout`` seconds to finish exiting (``rabbitmqctl stop`` may return before the VM's helpers end)."""
    end = time.monotonic() + timeout
    while node_processes(c.prefix) and time.monotonic() < end:
        time.sleep(0.5)
    return ([f"process {pid}" for pid in node_processes(c.prefix)]
            + [f"directory {RABBIT_DIR / n}" for n in c.names if (RABBIT_DIR / n).exists()])


def _base_port() -> int:
    for _ in range(20):
        base = rabbit_node.free_port_pair()
        if all(rabbit_node._free(p) and rabbit_node._free(p + rabbit_node.DIST_PORT_OFFSET)
               for p in (base + 1, base + 2)):
            return base
    raise RuntimeError("no three free port pairs in a row for the cluster")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A three-node cluster for this session, stopped and deleted afterwards (even on failure); what
    survives the stop is removed and fails the session's last cluster test (at its teardown)."""
    why = rabbit_node.unavailable()
    if why:
        pytest.skip(f"no private RabbitMQ cluster: {why}")
    if os.environ.get("TIERBOX_TEST_CLUSTER"):  # PREFIX:BASE_PORT of one already running (left running)
        prefix, port = os.environ["TIERBOX_TEST_CLUSTER"].split(":")
        yield Cluster(prefix, int(port))
        return
    c = Cluster(f"tbc{uuid.uuid4().hex[:6]}", _base_port())
    env = {**os.environ, "CLUSTER_NAME": c.prefix}
    try:
        done = subprocess.run([str(SCRIPT), "start", str(c.base_port)], env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, f"rabbitmq-cluster start: {done.stdout}{done.stderr}"
        assert done.stdout.strip() == c.urls
        yield c
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=300, check=False)
        left = leftovers(c)
        # The script's stop is `rabbitmqctl stop`, then the data is deleted: a node that did not answer
        # would keep running (and its ports taken) for every later run. Remove it here, and say so.
        for pid in node_processes(c.prefix):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for n in c.names:
            shutil.rmtree(RABBIT_DIR / n, ignore_errors=True)
        if sys.exc_info()[0] is None:  # a failed start's own error says more than this
            assert not left, f"cluster {c.prefix} left after its stop: {left}"


@pytest.fixture
def cluster_settings(settings: Settings, cluster: Cluster) -> Settings:
    """The test's settings (own database, own prefix) on all three nodes, with the cluster topology."""
    return msgspec.structs.replace(settings, amqp_url=cluster.urls, topology_file=str(CLUSTER_TOPOLOGY))
