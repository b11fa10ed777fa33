"""The ``tierbox relay`` process: run the relay forever, reconnecting, until SIGTERM/SIGINT.

Each connection state change is one log line. On SIGTERM the batch in flight
finishes (its confirms are awaited and committed), then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Coroutine
from typing import Any

from outbox import _tracing as tracing
from outbox._logs import event
from outbox._runtime import serve_until_signalled, wait_any
from outbox.config import Settings, redact_url
from outbox.errors import ConfigError
from outbox.tiers import URGENT_SLO_S
from tierbox.relay import counters as metrics
from tierbox.relay.reconcile import Reconciler
from tierbox.relay.relay import PAUSE_URGENT_ONCE_ENV, Relay
from tierbox.relay.wakeup import LaneGroup, Waker, Wakeup

log = logging.getLogger("tierbox.relay")

#: Reconnect back-off: first wait and cap, seconds.
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 30.0
#: Wait of a lane that found due rows it could not claim (held by another batch), seconds: not 0,
#: which would spin on the claim for the whole of the other batch's confirms.
CONTENDED_WAIT_S = 0.05
#: How often the relay logs its lag per tier, seconds.
LAG_LOG_INTERVAL_S = 30.0


#: What one relay process runs: the main lane and the urgent lanes, or one kind (see :func:`serve`).
LANES = ("all", "main", "urgent")


async def serve(settings: Settings, stop: asyncio.Event, lane: str = "all") -> None:
    """Relay until ``stop`` is set; reconnects with capped back-off on any connection loss.

    ``lane``: ``all`` (the default) runs the main lane (every tier) and, if the topology has urgent
    tiers, ``relay_urgent_lanes`` urgent lanes in this process; ``main`` runs only the main lane and
    ``urgent`` only the urgent lanes, for deployments that give them a process (or a machine) of their own.
    """
    check_lane(settings, lane)
    urgent_weight = settings.topology.urgent_weight()
    waker = Waker(settings.psycopg_url)
    if lane != "main" or urgent_weight is None:
        waker.start()  # a main-only lane of a topology with urgent tiers polls: the urgent lane takes NOTIFYs
    delay = RECONNECT_FIRST_S
    # Beside the main lane, in a task of its own: a round waits for the pools' in-flight sets
    # (reconcile.INFLIGHT_SETTLE_S), which must not hold up publishing.
    reconciling = (asyncio.create_task(reconcile_forever(settings, stop), name="reconcile")
                   if lane != "urgent" and settings.reconcile_interval_s > 0 else None)
    try:
        while not stop.is_set():
            try:
                if lane == "urgent":
                    relay = await Relay.connect(settings, min_weight=urgent_weight or 0, lane="urgent", declare=True)
                else:
                    relay = await Relay.connect(settings)
            except Exception as exc:  # noqa: BLE001 - logged as one line, then retried
                event(log, "relay.connect_failed", logging.WARNING, error=exc, retry_in_s=delay, lane=lane,
                      database=redact_url(settings.database_url), amqp=redact_url(settings.amqp_url))
                await wait_any(stop, timeout_s=delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            event(log, "relay.connected", lane=lane)
            delay = RECONNECT_FIRST_S
            try:
                await _loop(relay, waker, settings, stop, lane, urgent_weight)
            except Exception as exc:  # noqa: BLE001 - connection lost mid-batch: rows stay pending
                metrics.RECONNECTS.inc()
                event(log, "relay.disconnected", logging.WARNING, lane=lane, error=f"{type(exc).__name__}: {exc}")
            finally:
                await relay.close()
    finally:
        if reconciling is not None:
            reconciling.cancel()
            await asyncio.gather(reconciling, return_exceptions=True)
        await waker.stop()
    event(log, "relay.stopped", lane=lane)


async def reconcile_forever(settings: Settings, stop: asyncio.Event) -> None:
    """A reconciliation round every ``reconcile_interval_s`` until ``stop`` (see :mod:`tierbox.relay.reconcile`).

    A round that fails (Postgres, RabbitMQ or Redis trouble) is logged and counted; the connections
    are opened again for the next round.
    """
    reconciler: Reconciler | None = None
    try:
        while not stop.is_set():
            await wait_any(stop, timeout_s=settings.reconcile_interval_s)
            if stop.is_set():
                break
            try:
                reconciler = reconciler or await Reconciler.connect(settings)
                await reconciler.run_once()
            except Exception as exc:  # noqa: BLE001 - logged, counted; the next round reconnects
                metrics.RECONCILE_SKIPPED.inc()
                event(log, "relay.reconcile_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")
                if reconciler is not None:
                    with contextlib.suppress(Exception):
                        await reconciler.close()
                reconciler = None
    finally:
        if reconciler is not None:
            await reconciler.close()


def check_lane(settings: Settings, lane: str) -> None:
    """Refuse a lane this process cannot run, with ConfigError naming ``--lane``."""
    if lane not in LANES:
        raise ConfigError("--lane", f"must be one of {', '.join(LANES)}, not {lane!r}")
    if lane == "urgent" and settings.topology.urgent_weight() is None:
        raise ConfigError("--lane", f"urgent: the topology has no urgent tier (SLO of at most {URGENT_SLO_S:g} s)")


async def _loop(relay: Relay, waker: Waker, settings: Settings, stop: asyncio.Event, lane: str,
                urgent_weight: int | None) -> None:
    """Run this process's lanes until stop or an error."""
    if urgent_weight is None:  # no urgent tier: no row notifies, and the one lane polls every tier
        await _lane(relay, waker.subscribe(), waker, settings, stop, log_lag=True, notified=False)
        return
    if lane == "main":  # NOTIFYs come only from urgent rows, which the urgent process takes
        await _lane(relay, Wakeup(), waker, settings, stop, log_lag=True, notified=False)
        return
    # The urgent lanes share one wake-up (LaneGroup): each NOTIFY wakes one idle lane. In an
    # urgent-only process ``relay`` is the first of them; beside the main lane all are opened here.
    urgent = [relay] if lane == "urgent" else []
    opened: list[Relay] = []
    group = waker.group()
    try:
        while len(urgent) < settings.relay_urgent_lanes:
            opened.append(await relay.lane(urgent_weight))
            urgent.append(opened[-1])
        pause = os.environ.get(PAUSE_URGENT_ONCE_ENV)  # tests: one urgent batch held in flight
        shared_pause = [float(pause)] if pause else []
        for r in urgent:
            r.pause_once = shared_pause
        lanes = [_lane(r, Wakeup(), waker, settings, stop, log_lag=False, group=group) for r in urgent]
        if lane == "all":  # the main lane polls: NOTIFYs come only from urgent rows, which the urgent lanes take
            lanes.insert(0, _lane(relay, Wakeup(), waker, settings, stop, log_lag=True, notified=False))
        await _first_error(*lanes)
    finally:
        waker.unsubscribe(group)
        for r in opened:
            await r.close()


async def _first_error(*lanes: Coroutine[Any, Any, None]) -> None:
    """Run the lanes until all return; the first to fail stops the others and its error is raised."""
    tasks = [asyncio.create_task(lane) for lane in lanes]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()  # a no-op for finished ones; a failed lane's sibling is mid-batch: it rolls back
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def _lane(relay: Relay, wakeup: Wakeup, waker: Waker, settings: Settings, stop: asyncio.Event,
                log_lag: bool, notified: bool = True, group: LaneGroup | None = None) -> None:
    """One lane's claim-publish-commit loop; ``group``: the urgent lanes' shared wake-up, which this
    lane joins while it waits."""
    next_lag_log = time.monotonic()
    stopper = asyncio.create_task(_poke_on_stop(stop, wakeup))
    try:
        while not stop.is_set():
            if not relay.healthy:
                raise ConnectionError("a connection closed")
            if relay.blocked:  # a broker alarm: claiming would only time out and retry
                await relay.hold_while_blocked(stop)
                continue
            relay.woken_at = wakeup.poked_at
            wakeup.clear()
            handled = await relay.run_once()
            if log_lag and time.monotonic() >= next_lag_log:
                await _log_lag(relay)
                next_lag_log = time.monotonic() + LAG_LOG_INTERVAL_S
            # After a batch that was not full, a lane woken by NOTIFY (every row it claims notifies)
            # has claimed all that was due: a row committed since has woken it again, so it waits
            # instead of claiming again for nothing (measured: that empty claim delayed the next
            # wake-up's claim by 2 ms at the median at 200 jobs/s). A polling lane claims again at once.
            if handled and (relay.full or not (notified and waker.listening)):
                continue
            due_in = relay.next_due_s  # read in the batch's own transaction: no round trip of its own
            if due_in is None:
                timeout = settings.relay_poll_interval_s
            elif due_in <= 0:  # due rows, none claimable: another lane or relay holds them mid-batch
                timeout = min(CONTENDED_WAIT_S, settings.relay_poll_interval_s)
            else:
                timeout = min(due_in, settings.relay_poll_interval_s)
            if group is not None:
                group.idle(wakeup)
            await wakeup.wait(timeout)
            if group is not None:
                group.busy(wakeup)
    finally:
        stopper.cancel()
        waker.unsubscribe(wakeup)


async def _poke_on_stop(stop: asyncio.Event, wakeup: Wakeup) -> None:
    await stop.wait()
    wakeup.poke()


async def _log_lag(relay: Relay) -> None:
    lags = await relay.lag()
    for tier in relay.settings.topology.tiers:
        metrics.LAG.labels(tier).set(lags[tier].oldest_s if tier in lags else 0.0)
    for tier, lag in sorted(lags.items()):
        event(log, "relay.lag", tier=tier, due=lag.due, oldest_age_s=round(lag.oldest_s, 3))


def main(settings: Settings, metrics_port: int | None = None, lane: str = "all") -> int:
    """Run the relay process (counters on ``metrics_port`` if given); returns the exit code."""
    if metrics_port:
        metrics.serve(metrics_port)
    tracing.configure_from_env("tierbox-relay")  # only if OTEL_* asks (docs/tracing.md)
    try:
        serve_until_signalled(lambda stop: serve(settings, stop, lane))
    finally:
        tracing.shutdown()
    return 0
