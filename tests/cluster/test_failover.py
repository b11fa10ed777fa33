"""Several broker addresses: processes connect to a node that answers and fail over when theirs dies."""

from __future__ import annotations

import pytest

from outbox._brokers import BrokersUnreachableError, address, connect, order, split_urls
from outbox.config import Settings
from outbox.errors import ConfigError
from tests.cluster.conftest import Cluster
from tests.helpers import free_port
from tests.system import System

# Generous: on a loaded 2-core box restarting the killed node in the cleanup alone took minutes.
pytestmark = pytest.mark.timeout(480)


def test_amqp_url_lists_are_validated_per_item() -> None:
    ok = Settings(amqp_url="amqp://a:pw@h1:1/, amqp://a:pw@h2:2/")
    assert split_urls(ok.amqp_url) == ["amqp://a:pw@h1:1/", "amqp://a:pw@h2:2/"]
    for bad, says in [("amqp://h1/,,amqp://h2/", "item 2"), ("amqp://h1/,http://h2/", "must start with"),
                      (" , ", "names no AMQP URL"), ("amqp://h1/,amqp:///", "names no host")]:
        with pytest.raises(ConfigError, match=says) as info:
            Settings.from_env({"TIERBOX_AMQP_URL": bad})
        assert "TIERBOX_AMQP_URL" in str(info.value)


def test_order_rotates_after_the_address_last_used() -> None:
    urls = [f"amqp://h{i}/" for i in range(3)]
    first = order(urls)
    assert sorted(first) == sorted(urls) and first == urls[urls.index(first[0]):] + urls[:urls.index(first[0])]


async def test_no_address_answering_names_every_address_tried() -> None:
    ports = [free_port(), free_port()]
    urls = ",".join(f"amqp://guest:guest@127.0.0.1:{p}/" for p in ports)
    with pytest.raises(BrokersUnreachableError) as info:
        await connect(urls, timeout=5)
    for p in ports:
        assert f"127.0.0.1:{p}" in str(info.value)
    assert len(info.value.errors) == 2 and "guest" not in str(info.value)


async def test_connect_skips_a_stopped_node(cluster: Cluster) -> None:
    down = cluster.names[0]
    cluster.ctl(down, "stop_app")
    try:
        for _ in range(4):  # every starting point of the rotation, the stopped node's included
            conn = await connect(cluster.urls, timeout=10)
            assert address(str(conn.url)) != f"127.0.0.1:{cluster.base_port}"
            await conn.close()
    finally:
        cluster.ctl(down, "start_app")
        cluster.wait_running(3)


def test_relay_and_worker_fail_over_between_nodes(cluster: Cluster, cluster_settings: Settings,
                                                  system: System) -> None:
    """Node 1 stopped: a relay and a worker given all three addresses still run jobs. Node 1 back, the
    worker's node SIGKILLed: the worker reconnects to another node and every job runs exactly once."""
    system.settings = cluster_settings
    first = cluster.names[0]
    cluster.ctl(first, "stop_app")
    killed = None
    try:
        system.relay()
        system.worker("--pool", "urgent")
        before = [system.enqueue("sample.effect", f"a{i}") for i in range(20)]
        system.wait(lambda: all(system.status(j) == "succeeded" for j in before), timeout=60, what="jobs, node 1 down")
        cluster.ctl(first, "start_app")
        cluster.wait_running(3)
        killed = cluster.connected_node(f"tierbox-worker {cluster_settings.queue_prefix}")
        cluster.kill(killed)
        after = [system.enqueue("sample.effect", f"b{i}") for i in range(20)]
        system.wait(lambda: all(system.status(j) == "succeeded" for j in after), timeout=90,
                    what=f"jobs after {killed} was killed")
        assert cluster.connected_node(f"tierbox-worker {cluster_settings.queue_prefix}") != killed
        rows = system.q("SELECT job_id, count(*) FROM public.test_effects GROUP BY job_id")
        assert {r[0] for r in rows} == set(before + after) and all(r[1] == 1 for r in rows)
    finally:
        if killed:
            cluster.restart(killed)
        running = set(cluster.running())
        if first not in running:
            cluster.ctl(first, "start_app")
        cluster.wait_running(3)


def test_relay_reconnects_to_another_node_when_its_own_dies(cluster: Cluster, cluster_settings: Settings,
                                                             system: System) -> None:
    """The one relay's node SIGKILLed: the relay reconnects to a surviving node and publishes what is
    committed after the kill. ``--lane main`` so that one connection publishes every tier (the default
    relay also runs the urgent lane on a connection of its own, which may sit on another node and
    would publish these jobs whether the main lane came back or not)."""
    system.settings = cluster_settings
    name = f"tierbox-relay {cluster_settings.queue_prefix}"
    killed = None
    try:
        relay = system.start("relay", "--lane", "main")
        system.wait(lambda: "relay.connected" in relay.output(), timeout=60, what="relay connected")
        system.worker("--pool", "urgent")
        before = [system.enqueue("sample.effect", f"a{i}") for i in range(5)]
        system.wait(lambda: all(system.status(j) == "succeeded" for j in before), timeout=60, what="jobs before")
        killed = cluster.connected_node(name)
        cluster.kill(killed)
        after = [system.enqueue("sample.effect", f"b{i}") for i in range(20)]
        system.wait(lambda: all(system.status(j) == "succeeded" for j in after), timeout=90,
                    what=f"jobs committed after the relay's node {killed} was killed")
        now = cluster.connected_node(name)  # raises if the relay has no connection at all
        assert now != killed and now in cluster.names
        assert relay.alive(), relay.output()[-3000:]
        rows = system.q("SELECT job_id, count(*) FROM public.test_effects GROUP BY job_id")
        assert {r[0] for r in rows} == set(before + after) and all(r[1] == 1 for r in rows)
    finally:
        if killed:
            cluster.restart(killed)
        cluster.wait_running(3)
