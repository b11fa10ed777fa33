"""``GET /metrics``: Prometheus gauges read from Postgres and RabbitMQ at scrape time.

Nothing is counted in this process: every number is read when Prometheus
scrapes, from the ``outbox.tier_health`` view, the open dead letters,
``pg_stat_user_tables``/``pg_stat_activity`` (bloat and what holds vacuum back,
the classic way a Postgres queue dies), RabbitMQ passive declares and the flow
state in Redis (circuit breakers, the scheduler's leader lock). So any
number of API replicas report the same values, and a restart loses nothing.
Counters that only a process can know (relay confirms/nacks/returns, worker
outcomes, the wait histogram as observed) belong to the relay and worker
``--metrics-port`` endpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox._sql import run_async
from outbox.config import Settings
from tierbox.ops import control, dead_letters, queries
from tierbox.ops import tier_health as tiers
from tierbox.ops.broker import BrokerProbe
from tierbox.ops.models import TierHealth
from tierbox.ops.queries import TableHealthRow

#: The Prometheus text format's content type.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Snapshot(msgspec.Struct, kw_only=True):
    """Everything one scrape reports."""

    tiers: list[TierHealth]
    dlq_open: dict[str, int]
    tables: list[TableHealthRow]
    oldest_xmin_age: int
    oldest_xact_s: float
    #: Redis answered: breakers ``{name: state}`` and whether a scheduler holds the leader lock. None
    #: when Redis did not answer (those gauges are then absent, and ``tierbox_redis_up`` is 0:
    #: "no breaker open" or "no leader" must never be reported during an outage).
    breakers: dict[str, str] | None = None
    scheduler_leader: bool | None = None


async def snapshot(engine: AsyncEngine, settings: Settings, broker: BrokerProbe, redis: Any = None) -> Snapshot:
    """Read every number in one read-only transaction (plus the broker); ``redis``: the app's client (else
    one is opened per read)."""
    async with engine.connect() as conn:
        health = await tiers.health(conn, settings, broker)
        dlq = await dead_letters.open_by_tier(conn)
        tables = [r._replace(live_tuples=int(r.live_tuples), dead_tuples=int(r.dead_tuples))
                  for r in await run_async(conn, queries.TABLE_HEALTH)]
        xmin = (await run_async(conn, queries.OLDEST_XMIN))[0]
    breakers: dict[str, str] | None = None
    leader: bool | None = None
    try:
        breakers = {name: str(b["state"]) for name, b in (await control.breakers(settings, redis)).items()}
        leader = (await control.scheduler_leader(settings, redis))[0] is not None
    except Exception:  # noqa: BLE001 - Redis down: tierbox_redis_up 0, the flow gauges absent
        breakers = leader = None
    return Snapshot(tiers=health, dlq_open=dlq, tables=tables, oldest_xmin_age=int(xmin.xmin_age),
                    oldest_xact_s=float(xmin.xact_s), breakers=breakers, scheduler_leader=leader)


def render(snap: Snapshot) -> bytes:
    """``snap`` in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))
    return generate_latest(registry)


def _gauge(name: str, doc: str, labels: list[str], samples: Iterable[tuple[list[str], float | None]]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        if value is not None:
            family.add_metric(values, float(value))
    return family


_TIER_GAUGES: list[tuple[str, str, str]] = [
    ("tierbox_outbox_pending", "pending", "Jobs in outbox.pending (waiting to be published, scheduled included)."),
    ("tierbox_outbox_due", "due", "Jobs in outbox.pending that are due now."),
    ("tierbox_relay_lag_seconds", "oldest_due_age_s", "Age of the oldest due, unpublished job (0 when none)."),
    ("tierbox_jobs_published_unstarted", "published", "Jobs published to RabbitMQ and not yet started."),
    ("tierbox_jobs_running", "running", "Jobs running now."),
    ("tierbox_jobs_retrying", "retrying", "Jobs waiting for a retry."),
    ("tierbox_jobs_stuck", "stuck", "Running jobs whose lease expired (the reaper will recover them)."),
    ("tierbox_slo_breached", "slo_breached", "1 when the tier's oldest due job or p99 wait exceeds its SLO."),
    ("tierbox_jobs_published_oldest_age_seconds", "published_oldest_age_s", "Age of the oldest job published and "
     "not started (0 when none); far above the tier's wait, RabbitMQ may have lost it (reconciliation)."),
    ("tierbox_jobs_republished_1h", "republished_1h", "Jobs republished in the last hour because RabbitMQ no "
     "longer held their message (outbox.republished)."),
]


class _SnapshotCollector(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        yield from self._tiers()
        yield from self._broker()
        yield from self._postgres()
        yield from self._flow()

    def _flow(self) -> Iterator[Metric]:
        snap = self.snap
        yield _gauge("tierbox_redis_up", "1 when Redis answered this scrape (the breaker and leader gauges "
                     "are absent otherwise).", [], [([], 0.0 if snap.breakers is None else 1.0)])
        if snap.breakers is not None:
            yield _gauge("tierbox_breaker_open", "1 while the circuit breaker is open (0: closed or half-open).",
                         ["breaker"], (([name], 1.0 if state == "open" else 0.0)
                                       for name, state in sorted(snap.breakers.items())))
        if snap.scheduler_leader is not None:
            yield _gauge("tierbox_scheduler_leader", "1 while a scheduler holds the leader lock in Redis.", [],
                         [([], 1.0 if snap.scheduler_leader else 0.0)])

    def _tiers(self) -> Iterator[Metric]:
        rows = self.snap.tiers
        for name, field, doc in _TIER_GAUGES:
            yield _gauge(name, doc, ["tier"], (([t.tier], _num(getattr(t, field), field)) for t in rows))
        yield _gauge("tierbox_jobs_outcomes_window", "Outcomes in a recent window: succeeded and dead jobs, "
                     "failed attempts (retried or final).", ["tier", "outcome", "window"],
                     (([t.tier, outcome, window], getattr(t, f"{outcome}_{window}"))
                      for t in rows for outcome in ("succeeded", "failed", "dead") for window in ("5m", "1h")))
        # The 0.99 quantile is the one the SLO is judged on (tier_health.slo_breached, migration 0016).
        yield _gauge("tierbox_wait_seconds", "Enqueue (or due time) to first start over the last 15 min; the "
                     "SLO is judged on quantile 0.99.", ["tier", "quantile"],
                     (([t.tier, q], getattr(t, f"wait_{name}_s"))
                      for t in rows for q, name in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))))
        yield _gauge("tierbox_dlq_open", "Dead letters neither redriven nor discarded.", ["tier"],
                     (([t], float(n)) for t, n in self.snap.dlq_open.items()))

    def _broker(self) -> Iterator[Metric]:
        rows = self.snap.tiers
        yield _gauge("tierbox_broker_up", "1 when RabbitMQ answered this scrape.", [],
                     [([], 0.0 if any(t.broker_error for t in rows) else 1.0)])
        # Unlabelled: tier_health gives every tier the same value (a block is per connection).
        yield _gauge("tierbox_publishing_blocked", "1 while RabbitMQ blocks some relay's publishing connection "
                     "(a memory or disk alarm): its rows stay pending until the alarm clears.", [],
                     [([], 1.0 if any(t.publishing_blocked for t in rows) else 0.0)])
        yield _gauge("tierbox_queue_messages", "Messages ready in the tier's queue (main) and dead-letter queue.",
                     ["tier", "queue"], (s for t in rows for s in (([t.tier, "main"], t.queue_depth),
                                                                    ([t.tier, "dlq"], t.dlq_depth))))
        yield _gauge("tierbox_queue_consumers", "Consumers on the tier's queue (main) and dead-letter queue.",
                     ["tier", "queue"], (s for t in rows for s in (([t.tier, "main"], t.queue_consumers),
                                                                    ([t.tier, "dlq"], t.dlq_consumers))))

    def _postgres(self) -> Iterator[Metric]:
        tables = self.snap.tables
        yield _gauge("tierbox_pg_live_tuples", "Live tuples per outbox table.", ["table"],
                     (([t.relname], t.live_tuples) for t in tables))
        yield _gauge("tierbox_pg_dead_tuples", "Dead tuples per outbox table (bloat waiting for vacuum).",
                     ["table"], (([t.relname], t.dead_tuples) for t in tables))
        yield _gauge("tierbox_pg_since_vacuum_seconds", "Seconds since the table was last vacuumed.", ["table"],
                     (([t.relname], t.since_vacuum_s) for t in tables))
        yield _gauge("tierbox_pg_oldest_xmin_age", "Age in transactions of the oldest xmin held by a session "
                     "(what keeps vacuum from removing dead tuples).", [], [([], self.snap.oldest_xmin_age)])
        yield _gauge("tierbox_pg_oldest_transaction_seconds", "Duration of the oldest open transaction.", [],
                     [([], self.snap.oldest_xact_s)])


def _num(value: Any, field: str) -> float:
    if value is None:
        return 0.0  # no due job: no lag
    return float(value)
