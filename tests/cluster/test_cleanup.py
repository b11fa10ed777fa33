"""Nothing of a test host outlives ``hosts.test_hosts``; the cluster's leftover check sees its nodes.

The test hosts are made and removed around a process left running in a host and a connection
through a forwarder (``socat`` forks a child per connection), on a normal exit and on a failure
inside the block. The cluster fixture's own teardown asserts that no node process or data directory
of it survives its stop (``conftest.leftovers``); here, that the check finds the running nodes, so
that an empty answer after the stop means something.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from outbox.config import Settings
from tests.cluster import hosts
from tests.cluster.conftest import RABBIT_DIR, Cluster, leftovers, node_processes

pytestmark = pytest.mark.timeout(120)


def _running(pid: int) -> bool:
    """The process exists and has not exited (a zombie has exited: only its parent's wait is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


class BlockFailedError(Exception):
    """The failure raised inside the block."""


@pytest.mark.parametrize("fails", [False, True], ids=["exits", "fails"])
def test_test_hosts_leave_no_namespace_link_or_process(settings: Settings, fails: bool) -> None:
    why = hosts.unavailable()
    if why:
        pytest.skip(f"no test hosts: {why}")
    seen: dict[str, list[str] | list[int]] = {}
    conn = None
    try:
        with hosts.test_hosts(2, settings) as made:
            namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
            assert all(h.ns in namespaces for h in made), namespaces
            # A process left running in a host (as a relay or pool killed with its test would be),
            # and a connection through the first host's Postgres forwarder: socat forks it a child.
            sleeper = subprocess.Popen(["ip", "netns", "exec", made[0].ns, "sleep", "300"])
            conn = psycopg.connect(made[0].settings(settings).database_url, connect_timeout=10)
            forwarders = [f.pid for h in made for f in h.forwarders]
            forked = [c for pid in forwarders for c in _children(pid)]
            assert forked, "no forwarder forked a child for the connection"
            assert sleeper.pid in made[0].pids() or _running(sleeper.pid)
            seen = {"ns": [h.ns for h in made], "veth": [h.veth for h in made],
                    "pids": [sleeper.pid, *forwarders, *forked]}
            if fails:
                raise BlockFailedError
    except BlockFailedError:
        assert fails
    finally:
        if conn is not None:
            conn.close()
    assert seen, "the block did not run"
    sleeper.wait(10)  # killed in the namespace by test_hosts: reap it (it is this process's child)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [ns for ns in seen["ns"] if str(ns) in namespaces], namespaces
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert not [v for v in seen["veth"] if f" {v}@" in links or f" {v}:" in links], links
    end = time.monotonic() + 10  # the forwarders' forked children are reaped by init, a moment later
    while any(_running(int(p)) for p in seen["pids"]) and time.monotonic() < end:
        time.sleep(0.2)
    assert not [p for p in seen["pids"] if _running(int(p))], seen


def test_the_leftover_check_finds_the_running_cluster(cluster: Cluster) -> None:
    vms = [int((RABBIT_DIR / n / "pid").read_text().strip()) for n in cluster.names]
    found = node_processes(cluster.prefix)
    assert set(vms) <= set(found), (vms, found)
    assert not node_processes(cluster.prefix + "x")  # another cluster's name, never a prefix match
    left = leftovers(cluster, timeout=0)
    assert {f"process {pid}" for pid in vms} <= set(left)
    assert {f"directory {RABBIT_DIR / n}" for n in cluster.names} <= set(left)
