"""Test hosts on this machine: network namespaces joined to the root namespace by veth pairs.

Each host is a network namespace with one veth link to the root namespace on a /30 of its own
(``10.231.N.4i+1`` on the root side, ``.4i+2`` in the host) and its loopback: no default route, so a
process in it reaches only its own addresses and the root side of its link, never any other network.
Postgres, Redis and the RabbitMQ nodes listen on 127.0.0.1 only and their configuration is shared
(never changed by a test), so the root namespace forwards each service port from the link's root-side
address to the service with ``socat`` (one listener per address and port, started and stopped here).
Cutting a host is ``ip link set <root side> down``: its TCP connections go silent (no reset), as in a
network partition; ``restore`` brings the link back and those connections resume.

Everything is removed at exit, even on failure: the processes left in the namespaces, the forwarders,
the namespaces (deleting one deletes its veth pair).
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec

from outbox import _keepalive as keepalive
from outbox.config import Settings
from tests.helpers import ROOT, Proc, settings_env

#: The private /16 the test hosts' links are carved from (a random /24 of it per run).
NET = "10.231"


def unavailable() -> str | None:
    """None when test hosts can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "socat"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class TestHost:
    """One namespace: ``address`` is the host's own, ``gateway`` the root side where services answer."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    ns: str
    veth: str
    gateway: str
    address: str
    forwarders: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def settings(self, settings: Settings) -> Settings:
        """``settings`` with every service address seen from this host (the forwarders on ``gateway``)."""
        def move(url: str) -> str:
            return ",".join(_rehost(u.strip(), self.gateway) for u in url.split(","))
        return msgspec.structs.replace(settings, database_url=move(settings.database_url),
                                       amqp_url=move(settings.amqp_url), redis_url=move(settings.redis_url))

    def cut(self) -> None:
        """Take the link down: the host's connections go silent, as in a network partition."""
        _ip("link", "set", self.veth, "down")

    def restore(self) -> None:
        """Bring the link back up (the root-side address comes back with it)."""
        _ip("link", "set", self.veth, "up")

    def pids(self) -> list[int]:
        """Processes running in this host's namespace."""
        done = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True, timeout=30,
                              check=False)
        return [int(p) for p in done.stdout.split()]


class HostProc(Proc):
    """A real tierbox process (relay, worker) run inside a test host (``ip netns exec``)."""

    def __init__(self, host: TestHost, args: list[str], settings: Settings, log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self.host = host
        self._log = open(log_path, "ab")
        # ip netns exec execs the command: the pid is the Python process's own.
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", host.ns, sys.executable, "-m", "tierbox.cli", *args],
            env=settings_env(host.settings(settings)), cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)


def _rehost(url: str, host: str) -> str:
    """``url`` with its host replaced (the port and everything else kept)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}{netloc[1]}{host}{port}"))


def _targets(settings: Settings) -> list[tuple[str, int]]:
    """(host, port) of every service ``settings`` names, in the root namespace."""
    out = []
    for url in [settings.database_url, settings.redis_url, *settings.amqp_url.split(",")]:
        parts = urlsplit(url.strip())
        default = {"postgresql": 5432, "redis": 6379, "amqp": 5672}
        port = parts.port or next(v for k, v in default.items() if parts.scheme.startswith(k))
        out.append((parts.hostname or "127.0.0.1", port))
    return out


def _free_subnet() -> int:
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=False).stdout
    for _ in range(50):
        n = random.randrange(256)
        if f" {NET}.{n}." not in used:
            return n
    raise RuntimeError(f"no free {NET}.N.0/24 for test hosts")


@contextmanager
def test_hosts(count: int, settings: Settings, log_dir: Path | None = None) -> Iterator[list[TestHost]]:
    """``count`` test hosts that reach the services of ``settings``; all removed on exit.

    With ``log_dir``, each forwarder logs its connections there (``socat -d -d``)."""
    tag = uuid.uuid4().hex[:6]
    subnet = _free_subnet()
    hosts: list[TestHost] = []
    try:
        for i in range(count):
            net = ipaddress.ip_network(f"{NET}.{subnet}.{4 * i}/30")
            gateway, address = (str(a) for a in list(net.hosts())[:2])
            host = TestHost(ns=f"tbh-{tag}-{i}", veth=f"tbh{tag}{i}", gateway=gateway, address=address)
            hosts.append(host)
            _ip("netns", "add", host.ns)
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
            _ip("addr", "add", f"{gateway}/30", "dev", host.veth)
            _ip("link", "set", host.veth, "up")
            _ip("-n", host.ns, "addr", "add", f"{address}/30", "dev", "eth0")
            _ip("-n", host.ns, "link", "set", "eth0", "up")
            _ip("-n", host.ns, "link", "set", "lo", "up")
            for n, (target, port) in enumerate(_targets(settings)):
                upstream = f"[{target}]" if ":" in target else target
                log = open(log_dir / f"socat-{host.ns}-{port}.log", "ab") if log_dir else subprocess.DEVNULL
                # Postgres (the first target) sees the forwarder, not the host, as its client, so the
                # keepalives Tierbox asks its backends for (outbox._keepalive) would probe a live
                # loopback socket. The forwarder probes the host's side with the same timing instead and
                # closes both sides when it goes unanswered, as the backend would close its own.
                alive = (f",keepalive,keepidle={keepalive.IDLE_S},keepintvl={keepalive.INTERVAL_S},"
                         f"keepcnt={keepalive.COUNT}") if n == 0 else ""
                host.forwarders.append(subprocess.Popen(
                    ["socat", *(["-d", "-d"] if log_dir else []),
                     f"TCP-LISTEN:{port},bind={gateway},reuseaddr,fork{alive}",
                     f"TCP:{upstream}:{port}"], stdout=subprocess.DEVNULL, stderr=log, start_new_session=True))
        yield hosts
    finally:
        for host in hosts:
            for pid in host.pids():  # only processes this run started in its own namespaces
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for fwd in host.forwarders:  # socat and the children it forked per connection
                try:
                    os.killpg(fwd.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                fwd.wait(10)
            subprocess.run(["ip", "netns", "del", host.ns], capture_output=True, timeout=30, check=False)
            subprocess.run(["ip", "link", "del", host.veth], capture_output=True, timeout=30, check=False)
