"""The tier topology: the one place that says what each tier is.

Every other part of Tierbox reads this data (the relay's claim order, the
queue declarations, the worker pools, ``tierbox check``, the README table),
so changing a tier here changes it everywhere. A deployment overrides it with
a JSON file named by ``TIERBOX_TOPOLOGY_FILE`` (see :func:`load_topology`).

Why these shapes:

* ``weight`` orders tiers everywhere: the relay claims higher weights first and
  a pool's local buffer starts higher weights first. It is also the AMQP
  message priority on classic priority queues.
* Classic queues with ``x-max-priority`` where in-queue ordering matters
  (critical, high, calls); quorum queues, which ignore priority but replicate,
  where it does not (normal, low, bulk). On a RabbitMQ cluster every tier queue and every
  ``.dlq`` should be quorum (``dlq_queue_type``; examples/cluster/topology.json): a classic queue
  on a dead node blocks publishing to it and every process's topology declaration until the node
  returns (measured in docs/cluster.md).
* A tier is *urgent* when its SLO is at most ``URGENT_SLO_S`` (critical, high,
  calls by default). Inserting an urgent row NOTIFYs the relay, whose urgent
  lane publishes it at once, beside whatever batch the main lane is in; other
  tiers are found by the main lane's short poll. Measured on 2 cores, a NOTIFY
  in every committing transaction cost ~10 % of 8-producer enqueue throughput
  (bench/README.md), which non-urgent producers no longer pay.
* ``min_share`` on a pool queue is the anti-starvation floor: strict priority
  otherwise, but that queue gets at least this fraction of recent starts while
  it has work waiting.
* ``reserved`` slots of a pool run only their tier, on top of ``concurrency``:
  strict priority decides which message a *free* slot starts, but a CRITICAL
  job arriving while every slot runs a 50 ms HIGH job still waits for one of
  them to finish (and record its outcome); a reserved slot starts it at once.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Literal

import msgspec

from outbox.errors import ConfigError

QueueType = Literal["classic", "quorum"]

#: A tier whose SLO is at most this many seconds is urgent: NOTIFY wake-up and the relay's urgent lane.
URGENT_SLO_S = 30.0

#: What a tier's name may hold. The name is written into queue names, Redis keys (``...:inflight:<tier>:
#: <worker>``, read back by splitting at ``:``), SQL rows and metric labels: no ``:``, no glob or
#: whitespace characters, so a tier's keys can never be mistaken for another's.
TIER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

#: How long RabbitMQ keeps a message in a ``<tier>.dlq`` queue (30 days).
DLQ_MESSAGE_TTL_MS = 30 * 24 * 3600 * 1000


class Tier(enum.StrEnum):
    """The urgency tiers. The value is the tier's name in SQL, AMQP and config."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"
    BULK = "bulk"
    CALLS = "calls"


class TierSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One tier: its weight, SLO, queue shape and the pool that consumes it."""

    weight: int
    slo_s: float | None
    queue_type: QueueType
    max_priority: int | None = None
    #: Type of the tier's ``<queue>.dlq``. Classic by default; on a cluster, quorum, or a node that
    #: dies with the dead-letter queue on it stops every process from declaring the topology
    #: (docs/cluster.md).
    dlq_queue_type: QueueType = "classic"
    pool: str
    queue: str | None = None
    #: Cluster-wide start rate for the whole tier, e.g. "200/s" (None: unlimited).
    rate_limit: str | None = None

    @property
    def urgent(self) -> bool:
        """True when the SLO is at most ``URGENT_SLO_S``: NOTIFY on insert, published by the urgent lane."""
        return self.slo_s is not None and self.slo_s <= URGENT_SLO_S

    def queue_name(self, tier: str) -> str:
        """The queue's base name (before any deployment prefix)."""
        return self.queue or tier


class PoolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A worker pool: which tiers it consumes and how hard.

    ``prefetch`` is how many messages per queue may wait in the pool's local
    buffer on top of those running, so the channel QoS is
    ``concurrency + reserved[tier] + prefetch``. ``reserved`` maps a tier of
    the pool to slots that start only that tier's messages, in addition to
    the ``concurrency`` slots that start any.
    """

    tiers: tuple[str, ...]
    concurrency: int = 4
    prefetch: int = 1
    min_share: dict[str, float] = msgspec.field(default_factory=dict)
    reserved: dict[str, int] = msgspec.field(default_factory=dict)

    @property
    def slots(self) -> int:
        """Every slot of the pool: ``concurrency`` plus the reserved ones."""
        return self.concurrency + sum(self.reserved.values())


class Topology(msgspec.Struct, frozen=True, kw_only=True):
    """All tiers and pools. Built once per process; validated on construction."""

    tiers: dict[str, TierSpec]
    pools: dict[str, PoolSpec]

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("topology", "; ".join(problems))

    def problems(self) -> list[str]:
        """Every inconsistency in the topology, as readable sentences."""
        out: list[str] = []
        for name, spec in self.tiers.items():
            if not TIER_NAME.fullmatch(name):
                out.append(f"tier {name!r}: a name is 1-64 letters, digits, '_', '.' or '-'")
            if spec.weight < 0 or spec.weight > 255:
                out.append(f"tier {name!r}: weight {spec.weight} is outside 0..255")
            if spec.pool not in self.pools:
                out.append(f"tier {name!r}: pool {spec.pool!r} is not defined")
            if spec.queue_type == "classic" and spec.max_priority is not None and not (
                1 <= spec.max_priority <= 255
            ):
                out.append(f"tier {name!r}: max_priority must be within 1..255")
        for name, pool in self.pools.items():
            for tier in pool.tiers:
                if tier not in self.tiers:
                    out.append(f"pool {name!r}: unknown tier {tier!r}")
            if pool.concurrency < 1 or pool.prefetch < 0:
                out.append(f"pool {name!r}: concurrency must be >= 1 and prefetch >= 0")
            for tier, share in pool.min_share.items():
                if tier not in pool.tiers or not 0 <= share < 1:
                    out.append(f"pool {name!r}: min_share for {tier!r} must name its tier, 0 <= share < 1")
            for tier, count in pool.reserved.items():
                if tier not in pool.tiers or count < 0:
                    out.append(f"pool {name!r}: reserved for {tier!r} must name its tier, >= 0 slots")
        return out

    def spec(self, tier: str) -> TierSpec:
        """The spec of ``tier``; raises KeyError for an unknown tier."""
        return self.tiers[tier]

    def ordered(self) -> list[str]:
        """Tier names, most urgent (highest weight) first."""
        return sorted(self.tiers, key=lambda t: -self.tiers[t].weight)

    def urgent_weight(self) -> int | None:
        """The lowest weight of an urgent tier (the relay's urgent lane claims rows at or above it); None if none."""
        weights = [spec.weight for spec in self.tiers.values() if spec.urgent]
        return min(weights) if weights else None

    def consumed_tiers(self) -> set[str]:
        """Tiers that at least one pool consumes."""
        return {t for pool in self.pools.values() for t in pool.tiers}


DEFAULT_TOPOLOGY = Topology(
    tiers={
        Tier.CRITICAL: TierSpec(weight=10, slo_s=5, queue_type="classic", max_priority=10, pool="urgent"),
        Tier.HIGH: TierSpec(weight=8, slo_s=30, queue_type="classic", max_priority=10, pool="urgent"),
        Tier.NORMAL: TierSpec(weight=5, slo_s=120, queue_type="quorum", pool="normal"),
        Tier.LOW: TierSpec(weight=3, slo_s=600, queue_type="quorum", pool="deferred"),
        Tier.BULK: TierSpec(weight=1, slo_s=None, queue_type="quorum", pool="deferred"),
        Tier.CALLS: TierSpec(weight=9, slo_s=30, queue_type="classic", max_priority=10, pool="calls"),
    },
    pools={
        "urgent": PoolSpec(tiers=("critical", "high"), concurrency=8, prefetch=1, min_share={"high": 0.1},
                           reserved={"critical": 2}),
        "normal": PoolSpec(tiers=("normal",), concurrency=4, prefetch=4),
        "deferred": PoolSpec(tiers=("low", "bulk"), concurrency=4, prefetch=4, min_share={"bulk": 0.1}),
        "calls": PoolSpec(tiers=("calls",), concurrency=4, prefetch=1),
    },
)


def load_topology(path: str | None) -> Topology:
    """The default topology, or the one in the JSON file at ``path``.

    The file holds ``{"tiers": {...}, "pools": {...}}`` in the shape of
    :class:`Topology`; either key may be omitted to keep the default.
    """
    if not path:
        return DEFAULT_TOPOLOGY
    try:
        raw = msgspec.json.decode(Path(path).read_bytes())
        merged = {
            "tiers": {**msgspec.to_builtins(DEFAULT_TOPOLOGY.tiers), **raw.get("tiers", {})},
            "pools": {**msgspec.to_builtins(DEFAULT_TOPOLOGY.pools), **raw.get("pools", {})},
        }
        return msgspec.convert(merged, Topology)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, AttributeError) as exc:
        raise ConfigError("TIERBOX_TOPOLOGY_FILE", f"cannot load {path}: {exc}") from exc
