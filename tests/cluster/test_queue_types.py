"""The cluster topology (examples/cluster/topology.json) declares every tier queue and dead-letter queue as a quorum queue."""

from __future__ import annotations

from outbox._amqp import declare_topology
from outbox._brokers import connect
from outbox.config import Settings
from outbox.tiers import DEFAULT_TOPOLOGY
from tests.cluster.conftest import Cluster


async def test_cluster_topology_declares_quorum_queues_replicated_on_three_nodes(
        cluster: Cluster, cluster_settings: Settings) -> None:
    conn = await connect(cluster_settings.amqp_url)
    async with conn:
        await declare_topology(conn, cluster_settings)
    queues = cluster.queues()
    tiers = list(cluster_settings.topology.tiers)
    assert set(tiers) == set(DEFAULT_TOPOLOGY.tiers)  # the file covers every default tier
    for tier in tiers:
        for name in (cluster_settings.queue_name(tier), cluster_settings.dlq_name(tier)):
            assert queues[name]["type"] == "quorum", (name, queues[name])
            assert queues[name]["leader"] in cluster.names
    members = cluster.ctl(cluster.names[0], "-q", "list_queues", "name", "members")
    critical = next(line for line in members.splitlines() if line.startswith(cluster_settings.queue_name("critical")))
    assert all(f"{n}@localhost" in critical for n in cluster.names), critical
