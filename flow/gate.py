"""The flow gate: cluster-wide rate limits, concurrency limits and circuit breakers in Redis.

The pool asks :meth:`Gate.admit` before starting a job. A refused job is not
failed: the :class:`Decision` says how long to defer it (``delay_s``) and why,
and the pool defers it durably through the outbox without consuming a retry.
Checks run in this order, cheapest refusal first: breaker → tier rate limit →
task rate limit → concurrency limit. A slot taken by an earlier check (a
half-open probe) is handed back when a later check refuses.

**Rate limits: GCRA.** The Generic Cell Rate Algorithm keeps one number per
bucket, the *theoretical arrival time* (TAT) of the next job at the limit. With
emission interval ``T = period / count`` a job arriving at ``now`` is admitted
if ``now >= TAT - tolerance`` and then ``TAT = max(TAT, now) + T``; otherwise it
may retry after ``TAT - tolerance - now``. The tolerance is ``min(T / 2,
RATE_TOLERANCE_S)``: a caller that comes back a little late (timer and network
jitter) keeps its slot instead of losing it, so the limit is actually reached;
the price is that one start may come up to the tolerance early, never two back to
back and never a sustained excess. All buckets of one job
(tier, task or task-per-key) are checked and advanced in ONE Lua script
(:data:`workers.gate_scripts.GCRA`), atomically and on the Redis clock, so any
number of workers share the limit exactly and a job refused by one bucket does
not spend another's capacity. With ``rate_key``, the task's limit applies per
value of ``kwargs[rate_key]``; a job without that kwarg uses the task-wide bucket.

**Concurrency limits.** A sorted set per task of holders scored by lease expiry.
Acquiring drops expired holders first, so a worker that dies never leaks a slot
for longer than its lease (:data:`DEFAULT_LEASE_S`); the pool renews the leases
of running jobs from its heartbeat (:meth:`Gate.renew`) and releases them when
the job ends (:meth:`Gate.release`).

**Circuit breakers.** One per name, shared by every task that names it::

    closed ──(threshold failures within window_s)──▶ open
    open ──(open_s elapsed; seen lazily by the next admit/record)──▶ half_open
    half_open ──(probe succeeds)──▶ closed
    half_open ──(probe fails)──▶ open

While open, jobs are deferred until the breaker half-opens; half-open admits
``probes`` jobs at a time (each holds a lease like a concurrency slot) and
defers the rest by ``probe_retry_s``. Transitions happen inside Lua scripts, so
two workers can never both make the same one; the script returns the change and
the gate then inserts it into ``outbox.breaker_events`` (stamped with the Redis
time of the transition). A failed insert is logged, never raised: the history
is for people, the state in Redis is what the workers obey.

**Fail-open.** Flow control protects downstreams; it must not become an outage
of its own. If Redis is unreachable or slow (every call is bounded by
:data:`CALL_TIMEOUT_S`), ``admit`` returns ``run=True`` and ``record``,
``release`` and ``renew`` do nothing, with a WARNING ``action=gate.redis_unavailable``
logged at most once per :data:`WARN_INTERVAL_S` per gate.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import Settings
from outbox.errors import FlowStateUnavailableError
from outbox.flow import DEFAULT_BREAKER_POLICY, BreakerPolicy, RateLimit, parse_rate
from outbox.registry import Task
from tierbox.flow import scripts as gate_scripts
from tierbox.flow.breakers import BreakerEvent, EventSink, engine_sink, state_view, text, transitions

log = logging.getLogger("tierbox.worker")

#: Lease of a concurrency slot or breaker probe: how long a dead worker can hold one.
DEFAULT_LEASE_S = 60.0
#: Socket timeout of the gate's Redis client (:func:`connect`), seconds.
REDIS_TIMEOUT_S = 0.5
#: Bound on one gate call (admit makes up to three round trips), seconds.
CALL_TIMEOUT_S = 1.0
#: At most one ``gate.redis_unavailable`` warning per this many seconds, per gate.
WARN_INTERVAL_S = 10.0
#: Lateness a rate-limited caller is forgiven (capped at half an emission interval), seconds.
#: Without it every late retry loses its slot and the achieved rate falls ~5-10% short.
RATE_TOLERANCE_S = 0.05
#: Longest deferral for a job refused by a concurrency limit (the earliest lease expiry is
#: only the worst case; slots are usually released long before it).
CONCURRENCY_RETRY_S = 1.0

_US = 1_000_000
# Everything that means "Redis is not answering": client errors, sockets, our own time bound.
_REDIS_DOWN = (RedisError, OSError, TimeoutError)


class Hold(msgspec.Struct, frozen=True):
    """Slots a running job holds (concurrency, breaker probe): give back with ``release``."""

    member: str
    keys: tuple[str, ...]


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Whether to start the job now; if not, how long to defer it and why."""

    run: bool
    #: Seconds to defer the job when ``run`` is false.
    delay_s: float = 0.0
    #: ``rate_limited``, ``concurrency``, ``breaker_open``; empty when ``run``.
    reason: str = ""
    #: Slots to release when the job ends (None: nothing held).
    token: Hold | None = None


class LimitState(msgspec.Struct, frozen=True, kw_only=True):
    """A tier's or task's limits as Redis holds them now (:meth:`Gate.limit_states`)."""

    #: Seconds until its rate bucket admits the next start (0: a job arriving now would start); None when
    #: it has no rate limit, or (``rate_key``) its buckets are per kwarg value and not read.
    next_start_in_s: float | None = None
    #: Concurrency slots held now (leases not yet expired); None without a concurrency limit.
    held: int | None = None


def connect(settings: Settings, name: str | None = None) -> aioredis.Redis:
    """A Redis client for the gate: short timeouts and no retries, so a dead Redis costs ~0.5 s.

    ``name``: set on each of its connections (``CLIENT SETNAME``), so ``CLIENT LIST`` says whose they are."""
    return aioredis.Redis.from_url(
        settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0), client_name=name,
    )


class Gate:
    """Admission control shared by every worker of a cluster (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        events: AsyncEngine | EventSink | None,
        *,
        key_prefix: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        policies: Mapping[str, BreakerPolicy] | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.prefix = (key_prefix if key_prefix is not None else f"tierbox:{settings.queue_prefix}").rstrip(":")
        self.lease_s = lease_s
        self.policies = dict(policies or {})
        self._sink: EventSink | None = engine_sink(events) if isinstance(events, AsyncEngine) else events
        self._tier_rates: dict[str, RateLimit | None] = {}
        self._warned_at: float | None = None
        self._gcra = redis.register_script(gate_scripts.GCRA)
        self._acquire = redis.register_script(gate_scripts.ACQUIRE)
        self._renew = redis.register_script(gate_scripts.RENEW)
        self._breaker_admit = redis.register_script(gate_scripts.BREAKER_ADMIT)
        self._breaker_record = redis.register_script(gate_scripts.BREAKER_RECORD)

    # -- public API -------------------------------------------------------------------------

    async def admit(self, task: Task, tier: str, kwargs: Mapping[str, Any]) -> Decision:
        """Decide whether ``task`` may start now; fails open (``run=True``) if Redis is down."""
        events: list[BreakerEvent] = []
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return await self._admit(task, tier, kwargs, events)
        except _REDIS_DOWN as exc:
            self._redis_down("admit", exc)
            return Decision(run=True)
        finally:
            await self._publish(events)  # outside the time bound: Postgres is not Redis

    async def record(self, task: Task, ok: bool) -> None:
        """Count a finished job of a task with a breaker (no-op without one)."""
        if task.breaker is None:
            return
        name, policy = task.breaker, self.policy(task.breaker)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                reply = await self._breaker_record(keys=self._breaker_keys(name), args=[
                    "1" if ok else "0", uuid.uuid4().hex, _us(policy.window_s), policy.threshold,
                    _us(policy.open_s), name])
        except _REDIS_DOWN as exc:
            self._redis_down("record", exc)
            return
        await self._publish(transitions(name, reply[0], reply[1:]))

    async def release(self, token: Hold | None) -> None:
        """Give back the slots of a finished (or deferred) job; safe to call twice."""
        if token is None or not token.keys:
            return
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key in token.keys:
                        pipe.zrem(key, token.member)
                    await pipe.execute()
        except _REDIS_DOWN as exc:
            self._redis_down("release", exc)

    async def renew(self, tokens: Iterable[Hold | None]) -> int:
        """Extend the leases of running jobs by ``lease_s`` from now; returns how many were renewed."""
        keys: list[str] = []
        members: list[str] = []
        for token in filter(None, tokens):
            keys += token.keys
            members += [token.member] * len(token.keys)
        if not keys:
            return 0
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return int(await self._renew(keys=keys, args=[_us(self.lease_s), *members]))
        except _REDIS_DOWN as exc:
            self._redis_down("renew", exc)
            return 0

    async def breaker_states(self) -> dict[str, dict[str, Any]]:
        """Every breaker seen so far: ``{name: {state, failures, threshold, window_s, half_opens_in_s}}``.

        Raises :class:`~outbox.errors.FlowStateUnavailableError` when Redis does not answer:
        ``{}`` would tell an operator "no breaker tripped" during the outage.

        ``state`` is the effective one: an open breaker whose open period is over reads
        ``half_open`` even before a job has made (and recorded) that transition. ``failures``
        counts the failures within the window the workers last recorded with (their declared
        policy), whatever this process has imported.
        """
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S * 2):
                return await self._breaker_states()
        except _REDIS_DOWN as exc:
            self._redis_down("breaker_states", exc)
            raise FlowStateUnavailableError(f"Redis did not answer: {type(exc).__name__}: {exc}") from exc

    async def limit_states(self, tasks: Iterable[Task]) -> dict[tuple[str, str], LimitState]:
        """Now, for every rate-limited tier of the topology and every task of ``tasks`` with a rate or
        concurrency limit: ``{("tier"|"task", name): LimitState}``. One pipeline: a GET per rate bucket
        and a ZCOUNT per concurrency set, so it costs O(limits), never a scan of the keyspace (which is
        why a ``rate_key`` task's per-value buckets are not read).

        Raises :class:`~outbox.errors.FlowStateUnavailableError` when Redis does not answer (an empty
        state would read as "idle" during the outage)."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S * 2):
                return await self._limit_states(list(tasks))
        except _REDIS_DOWN as exc:
            self._redis_down("limit_states", exc)
            raise FlowStateUnavailableError(f"Redis did not answer: {type(exc).__name__}: {exc}") from exc

    def policy(self, breaker: str) -> BreakerPolicy:
        """The policy of ``breaker`` (the default unless configured)."""
        return self.policies.get(breaker, DEFAULT_BREAKER_POLICY)

    # -- admission steps --------------------------------------------------------------------

    async def _admit(self, task: Task, tier: str, kwargs: Mapping[str, Any], events: list[BreakerEvent]) -> Decision:
        hold = Hold(uuid.uuid4().hex, ())
        if task.breaker is not None:
            refused, hold = await self._check_breaker(task.breaker, hold, events)
            if refused is not None:
                return refused
        buckets = self._buckets(task, tier, kwargs)
        if buckets:
            allowed, wait_us = await self._gcra(keys=[k for k, _ in buckets], args=_gcra_args(buckets))
            if not allowed:
                await self.release(hold)
                return Decision(run=False, delay_s=wait_us / _US, reason="rate_limited")
        if task.concurrency is not None:
            key = f"{self.prefix}:conc:{task.name}"
            allowed, wait_us = await self._acquire(keys=[key], args=[hold.member, task.concurrency, _us(self.lease_s)])
            if not allowed:
                await self.release(hold)
                return Decision(run=False, delay_s=min(wait_us / _US, CONCURRENCY_RETRY_S), reason="concurrency")
            hold = Hold(hold.member, (*hold.keys, key))
        return Decision(run=True, token=hold if hold.keys else None)

    async def _check_breaker(
        self, name: str, hold: Hold, events: list[BreakerEvent]
    ) -> tuple[Decision | None, Hold]:
        policy = self.policy(name)
        keys = self._breaker_keys(name)
        reply = await self._breaker_admit(keys=keys[:2], args=[
            hold.member, _us(self.lease_s), policy.probes, _us(policy.probe_retry_s)])
        code, delay_us, now_us = int(reply[0]), int(reply[1]), reply[2]
        events.extend(transitions(name, now_us, reply[3:]))
        if code == 0:
            return Decision(run=False, delay_s=delay_us / _US, reason="breaker_open"), hold
        if code == 2:  # a half-open probe: its slot is released with the job's other slots
            hold = Hold(hold.member, (*hold.keys, keys[1]))
        return None, hold

    def _buckets(self, task: Task, tier: str, kwargs: Mapping[str, Any]) -> list[tuple[str, RateLimit]]:
        """(Redis key, limit) of every rate limit that applies, tier first."""
        out = []
        tier_rate = self._tier_rate(tier)
        if tier_rate is not None:
            out.append((f"{self.prefix}:rate:tier:{tier}", tier_rate))
        if task.rate_limit is not None:
            key = f"{self.prefix}:rate:task:{task.name}"
            if task.rate_key is not None and task.rate_key in kwargs:
                key += f":key:{kwargs[task.rate_key]}"
            out.append((key, task.rate_limit))
        return out

    def _tier_rate(self, tier: str) -> RateLimit | None:
        if tier not in self._tier_rates:
            spec = self.settings.topology.tiers.get(tier)
            text = spec.rate_limit if spec is not None else None
            self._tier_rates[tier] = parse_rate(text, f"tier {tier} rate_limit") if text else None
        return self._tier_rates[tier]

    async def _limit_states(self, tasks: list[Task]) -> dict[tuple[str, str], LimitState]:
        rated: list[tuple[tuple[str, str], str, RateLimit]] = []
        for tier in self.settings.topology.tiers:
            rate = self._tier_rate(tier)
            if rate is not None:
                rated.append((("tier", tier), f"{self.prefix}:rate:tier:{tier}", rate))
        bounded: list[tuple[tuple[str, str], str]] = []
        for task in tasks:
            if task.rate_limit is not None and task.rate_key is None:
                rated.append((("task", task.name), f"{self.prefix}:rate:task:{task.name}", task.rate_limit))
            if task.concurrency is not None:
                bounded.append((("task", task.name), f"{self.prefix}:conc:{task.name}"))
        out = {("task", t.name): LimitState() for t in tasks if t.limited}
        if not rated and not bounded:
            return out
        seconds, micros = await self.redis.time()
        now_us = seconds * _US + micros
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, key, _ in rated:
                pipe.get(key)
            for _, key in bounded:
                pipe.zcount(key, f"({now_us}", "+inf")  # leases expiring after now: held
            replies = await pipe.execute()
        for (name, _, rate), tat in zip(rated, replies[:len(rated)], strict=True):
            # The GCRA script admits a job once now >= TAT - tolerance (an absent key: now).
            interval = _us(rate.interval_s)
            wait_us = max(int(tat or now_us) - min(interval // 2, _us(RATE_TOLERANCE_S)) - now_us, 0)
            out[name] = LimitState(next_start_in_s=wait_us / _US)
        for (name, _), held in zip(bounded, replies[len(rated):], strict=True):
            out[name] = msgspec.structs.replace(out.get(name, LimitState()), held=int(held))
        return out

    # -- breakers -----------------------------------------------------------------------------

    def _breaker_keys(self, name: str) -> list[str]:
        """State hash, probe zset, failure zset, set of all breaker names (the scripts' KEYS order)."""
        base = f"{self.prefix}:breaker:{name}"
        return [base, f"{base}:probes", f"{base}:failures", f"{self.prefix}:breakers"]

    async def _breaker_states(self) -> dict[str, dict[str, Any]]:
        names = sorted(text(n) for n in await self.redis.smembers(f"{self.prefix}:breakers"))
        seconds, micros = await self.redis.time()
        now_us = seconds * _US + micros
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self._breaker_keys(name)[0])
            states: list[dict[bytes, bytes]] = await pipe.execute()
        # The window the workers recorded with (kept in the state hash), not this process's idea of
        # the policy: the API need not import the module that declared the breaker.
        pairs = list(zip(names, states, strict=True))
        windows_us = [int(s.get(b"window_us", 0)) or _us(self.policy(n).window_s) for n, s in pairs]
        thresholds = [int(s.get(b"threshold", 0)) or self.policy(n).threshold for n, s in pairs]
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, window_us in zip(names, windows_us, strict=True):
                pipe.zcount(self._breaker_keys(name)[2], now_us - window_us, "+inf")
            failures = await pipe.execute()
        return {name: state_view(states[i], failures[i], now_us, windows_us[i], thresholds[i])
                for i, name in enumerate(names)}

    async def _publish(self, events: list[BreakerEvent]) -> None:
        """Record transitions in order; a failed insert is logged, never raised to the pool."""
        for event in events:
            log.warning("action=gate.breaker_%s breaker=%s from=%s failures=%d",
                        event.to_state, event.breaker, event.from_state, event.failures)
            if self._sink is None:
                continue
            try:
                await self._sink(event)
            except Exception as exc:  # noqa: BLE001 - history must not stop jobs
                log.error("action=gate.breaker_event_unrecorded breaker=%s to=%s error=%r",
                          event.breaker, event.to_state, exc)

    def _redis_down(self, op: str, exc: BaseException) -> None:
        """Log the fail-open loudly, but at most once per WARN_INTERVAL_S."""
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < WARN_INTERVAL_S:
            return
        self._warned_at = now
        log.warning("action=gate.redis_unavailable op=%s error=%s: %s fail_open=true "
                    "(rate limits, concurrency limits and breakers are NOT enforced)",
                    op, type(exc).__name__, exc)


def _us(seconds: float) -> int:
    return round(seconds * _US)


def _gcra_args(buckets: list[tuple[str, RateLimit]]) -> list[int]:
    args = []
    for _, rate in buckets:
        interval = _us(rate.interval_s)
        args += [interval, min(interval // 2, _us(RATE_TOLERANCE_S))]
    return args
