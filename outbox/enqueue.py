"""Transactional enqueue: write jobs through the caller's transaction.

``enqueue`` never commits, never flushes the caller's ORM objects and never
opens a transaction of its own: the job exists if and only if the caller's
transaction commits. Every argument is validated before anything is sent to
Postgres, so a bad call raises an :class:`~outbox.errors.EnqueueError` naming
the field and leaves the transaction as it was.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

import msgspec
from typing_extensions import Unpack

from outbox import _queries as queries
from outbox import _tracing as tracing
from outbox import _transitions as transitions
from outbox import webhooks
from outbox._encoding import encode_headers, encode_payload
from outbox._ids import new_job_id
from outbox._queries import KeyedJobRow
from outbox._rows import EnqueuedRow
from outbox._sql import AsyncSessionLike, Statement, SyncSession, run, run_async
from outbox.config import DEFAULT_MAX_PAYLOAD_BYTES
from outbox.errors import (
    ConfigError,
    InvalidOptionError,
    InvalidScheduleError,
    UnknownTaskError,
    UnknownTierError,
)
from outbox.registry import Registry, Task, registry
from outbox.tiers import DEFAULT_TOPOLOGY, Tier, Topology

log = logging.getLogger("tierbox.enqueue")

MAX_IDEMPOTENCY_KEY_CHARS = 512
#: Longest delay or expiry accepted (100 years): beyond it Postgres' timestamp arithmetic overflows.
MAX_DURATION_S = 100 * 365.25 * 86400
#: Largest max_retries accepted (``outbox.jobs.max_retries`` is an int4 column).
MAX_RETRIES_LIMIT = 2**31 - 1


class EnqueueOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Process-wide enqueue settings; :func:`configure` replaces them."""

    topology: Topology = DEFAULT_TOPOLOGY
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    registry: Registry | None = None


_options = EnqueueOptions()


def configure(*, topology: Topology | None = None, max_payload_bytes: int | None = None,
              registry_: Registry | None = None) -> None:
    """Set the topology and payload limit enqueue uses (entry points call this from Settings)."""
    global _options
    if max_payload_bytes is not None and (isinstance(max_payload_bytes, bool) or max_payload_bytes <= 0):
        raise ConfigError("max_payload_bytes", f"must be > 0, got {max_payload_bytes!r}")
    # "is not None", not "or": an empty Registry is falsy (it has __len__) but is a valid choice.
    _options = EnqueueOptions(
        topology=topology if topology is not None else _options.topology,
        max_payload_bytes=max_payload_bytes if max_payload_bytes is not None else _options.max_payload_bytes,
        registry=registry_ if registry_ is not None else _options.registry,
    )


class JobSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One validated job, ready to insert. Build with :func:`job` for ``enqueue_many``."""

    id: uuid.UUID
    task: str
    tier: str
    weight: int
    priority: int
    payload: str
    headers: str
    idempotency_key: str | None
    max_retries: int
    run_at: dt.datetime | None
    delay_s: float | None
    expires_at: dt.datetime | None
    expires_s: float | None
    #: The caller named the tier: a tier override (outbox.tier_overrides) does not apply.
    explicit_tier: bool = False
    #: Its completion webhook (``webhook=`` or the task's ``on_complete``), checked; docs/webhooks.md.
    webhook: webhooks.Declared | None = None


class JobOptions(TypedDict, total=False):
    """The options of one job, the keyword arguments of :func:`job`, :func:`enqueue` and :func:`enqueue_async`.

    Spelled once here; each function takes them as ``**options``. An unknown name
    raises :class:`~outbox.errors.InvalidOptionError` naming it.
    """

    #: Positional arguments of the handler (JSON-encodable). Defaults to none.
    args: Sequence[Any]
    #: Keyword arguments of the handler (JSON-encodable). Defaults to none.
    kwargs: Mapping[str, Any] | None
    #: A job with a key already used is not written again: the first job's id is returned.
    idempotency_key: str | None
    #: Run no earlier than this many seconds (or this timedelta) after commit. Excludes ``run_at``.
    delay: dt.timedelta | float | None
    #: Run no earlier than this aware datetime. Excludes ``delay``.
    run_at: dt.datetime | None
    #: Skip the job if it has not started by then: seconds or a timedelta from now, or an aware datetime.
    expires: dt.timedelta | float | dt.datetime | None
    #: Extra message headers (JSON-encodable), visible to the handler's ``ctx`` and in the ledger.
    headers: Mapping[str, Any] | None
    #: 0..255 inside the tier's queue; defaults to the task's priority, else the tier's weight.
    priority: int | None
    #: Retries after the first attempt; defaults to the task's ``max_retries``.
    max_retries: int | None
    #: POST a signed document to this URL at the job's final outcome; defaults to the task's ``on_complete``.
    webhook: webhooks.Webhook | None


_OPTION_NAMES = frozenset(JobOptions.__annotations__)


def job(task: Task | str, tier: Tier | str | None = None, **options: Unpack[JobOptions]) -> JobSpec:
    """Validate one job's arguments; raises an ``EnqueueError`` subclass naming the field."""
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        raise InvalidOptionError(unknown[0], f"no such option (known: {', '.join(sorted(_OPTION_NAMES))})")
    args, kwargs = options.get("args", ()), options.get("kwargs")
    delay, run_at, expires = options.get("delay"), options.get("run_at"), options.get("expires")
    t = _resolve_task(task)
    tier_name = _resolve_tier(t, tier)
    spec = _options.topology.spec(tier_name)
    payload = encode_payload(args, {} if kwargs is None else kwargs, _options.max_payload_bytes)
    run_at, delay_s = _schedule(delay, run_at)
    if expires is None and t.expires_s is not None:
        # A task's default lifetime counts from when the job is due, so a delayed job keeps all of it.
        expires = (run_at + dt.timedelta(seconds=t.expires_s) if run_at is not None
                   else t.expires_s + (delay_s or 0.0))
    expires_at, expires_s = _expiry(expires, run_at, delay_s)
    return JobSpec(
        id=new_job_id(), task=t.name, tier=tier_name, weight=spec.weight,
        priority=_priority(options.get("priority"), t, spec.weight, spec.max_priority), payload=payload,
        headers=encode_headers(_headers(options.get("headers"), t)),
        idempotency_key=_key(options.get("idempotency_key")),
        max_retries=_max_retries(options.get("max_retries"), t), run_at=run_at, delay_s=delay_s,
        expires_at=expires_at, expires_s=expires_s, explicit_tier=tier is not None,
        webhook=webhooks.declare(options.get("webhook"), t.on_complete, t.webhook_result, _options.topology),
    )


def enqueue(session: SyncSession, task: Task | str, tier: Tier | str | None = None,
            **options: Unpack[JobOptions]) -> uuid.UUID:
    """Write one job through ``session``'s transaction and return its id.

    ``session`` is a SQLAlchemy ``Session`` or ``Connection`` or a psycopg 3
    connection. This never commits: the job is published only once the
    caller commits, and never if it rolls back. With an ``idempotency_key``
    already used, nothing is written and the first job's id is returned.
    ``tier`` overrides the task's own tier. ``delay`` (seconds or timedelta)
    and ``run_at`` (aware datetime) are exclusive; ``expires`` is seconds, a
    timedelta (both from now) or an aware datetime. :class:`JobOptions` documents every option.
    """
    return enqueue_many(session, [job(task, tier, **options)])[0]


async def enqueue_async(session: AsyncSessionLike, task: Task | str, tier: Tier | str | None = None,
                        **options: Unpack[JobOptions]) -> uuid.UUID:
    """:func:`enqueue` for an ``AsyncSession``, ``AsyncConnection`` or async psycopg connection."""
    return (await enqueue_many_async(session, [job(task, tier, **options)]))[0]


def enqueue_many(session: SyncSession, jobs: Iterable[JobSpec]) -> list[uuid.UUID]:
    """Write a batch of jobs (built with :func:`job`) in one round trip; ids in input order."""
    specs = list(jobs)
    if not specs:
        return []
    if tracing.enabled():  # the create spans, their contexts written with the jobs (docs/tracing.md)
        with tracing.Creation(specs) as creation:
            ids = _write(session, creation.specs)
            creation.done(ids)
            return ids
    return _write(session, specs)


def _write(session: SyncSession, specs: list[JobSpec]) -> list[uuid.UUID]:
    stmt, params, alias = _statement(specs)
    rows = run(session, stmt, params)
    missing = _missing_keys(specs, rows, alias)
    found = _by_key(run(session, queries.JOB_IDS_BY_KEY, {"keys": missing})) if missing else {}
    ids = _ids(specs, rows, alias, found)
    if declared := _webhooks(specs, ids):
        run(session, queries.DECLARE_WEBHOOKS, webhooks.declaration_params(declared))
    return ids


async def enqueue_many_async(session: AsyncSessionLike, jobs: Iterable[JobSpec]) -> list[uuid.UUID]:
    """:func:`enqueue_many` for async connections."""
    specs = list(jobs)
    if not specs:
        return []
    if tracing.enabled():
        with tracing.Creation(specs) as creation:
            ids = await _write_async(session, creation.specs)
            creation.done(ids)
            return ids
    return await _write_async(session, specs)


async def _write_async(session: AsyncSessionLike, specs: list[JobSpec]) -> list[uuid.UUID]:
    stmt, params, alias = _statement(specs)
    rows = await run_async(session, stmt, params)
    missing = _missing_keys(specs, rows, alias)
    found = _by_key(await run_async(session, queries.JOB_IDS_BY_KEY, {"keys": missing})) if missing else {}
    ids = _ids(specs, rows, alias, found)
    if declared := _webhooks(specs, ids):
        await run_async(session, queries.DECLARE_WEBHOOKS, webhooks.declaration_params(declared))
    return ids


def _webhooks(specs: list[JobSpec], ids: list[uuid.UUID]) -> list[tuple[uuid.UUID, webhooks.Declared]]:
    """The webhooks of the jobs this call created: a job found by its idempotency key (another id) keeps
    what it was enqueued with."""
    return [(s.id, s.webhook) for s, job_id in zip(specs, ids, strict=True)
            if s.webhook is not None and job_id == s.id]


def _statement(specs: list[JobSpec]) -> tuple[Statement[EnqueuedRow], dict[str, Any], dict[int, int]]:
    """The statement for this batch: the single-row form for one job (the hot path), else the array form."""
    if len(specs) == 1:
        s = specs[0]
        return transitions.ENQUEUE_ONE, {
            "id": s.id, "task": s.task, "tier": s.tier, "weight": s.weight, "priority": s.priority,
            "payload": s.payload, "headers": s.headers, "key": s.idempotency_key, "max_retries": s.max_retries,
            "run_at": s.run_at, "delay_s": s.delay_s, "expires_at": s.expires_at, "expires_s": s.expires_s,
            "explicit": s.explicit_tier,
        }, {}
    params, alias = _batch_params(specs)
    return transitions.ENQUEUE, params, alias


def _batch_params(specs: list[JobSpec]) -> tuple[dict[str, Any], dict[int, int]]:
    """Column arrays for ENQUEUE (payloads and headers as one JSON array text each), and which
    later rows repeat an earlier row's key."""
    first_by_key: dict[str, int] = {}
    alias: dict[int, int] = {}
    unique: list[JobSpec] = []
    for i, s in enumerate(specs):
        if s.idempotency_key is not None and s.idempotency_key in first_by_key:
            alias[i] = first_by_key[s.idempotency_key]
            continue
        if s.idempotency_key is not None:
            first_by_key[s.idempotency_key] = i
        unique.append(s)
    columns = {
        "ids": "id", "tasks": "task", "tiers": "tier", "weights": "weight", "priorities": "priority",
        "keys": "idempotency_key", "max_retries": "max_retries",
        "run_ats": "run_at", "delays_s": "delay_s", "expires_ats": "expires_at", "expires_s": "expires_s",
        "explicit": "explicit_tier",
    }
    params: dict[str, Any] = {param: [getattr(s, attr) for s in unique] for param, attr in columns.items()}
    # Each is already a JSON document (encode_payload / encode_headers): joined, they are a JSON array.
    params["payloads"] = "[" + ",".join(s.payload for s in unique) + "]"
    params["headers"] = "[" + ",".join(s.headers for s in unique) + "]"
    return params, alias


def _by_key(rows: list[KeyedJobRow]) -> dict[str, uuid.UUID]:
    return {str(row.idempotency_key): row.job_id for row in rows}


def _missing_keys(specs: list[JobSpec], rows: list[EnqueuedRow], alias: dict[int, int]) -> list[str]:
    unique = [s for i, s in enumerate(specs) if i not in alias]
    return [s.idempotency_key for s, row in zip(unique, rows, strict=True)
            if row.job_id is None and s.idempotency_key is not None]


def _ids(specs: list[JobSpec], rows: list[EnqueuedRow], alias: dict[int, int],
         found: dict[str, uuid.UUID]) -> list[uuid.UUID]:
    unique_idx = [i for i in range(len(specs)) if i not in alias]
    by_index: dict[int, uuid.UUID] = {}
    for i, row in zip(unique_idx, rows, strict=True):
        key = specs[i].idempotency_key
        job_id = row.job_id if row.job_id is not None else found.get(key) if key else None
        if job_id is None:
            raise RuntimeError(f"enqueue: no id for idempotency key {key!r}")  # a bug, not bad input
        by_index[i] = job_id
        if row.created and specs[i].tier != _task_tier(specs[i].task):
            log.info("action=enqueue.tier_override job_id=%s task=%s tier=%s", job_id, specs[i].task, specs[i].tier)
    for i, first in alias.items():
        by_index[i] = by_index[first]
    return [by_index[i] for i in range(len(specs))]


def _registry() -> Registry:
    return _options.registry if _options.registry is not None else registry


def _resolve_task(task: Task | str) -> Task:
    if isinstance(task, Task):
        return task
    if not isinstance(task, str):
        raise UnknownTaskError("task", f"expected a task or its name, got {type(task).__name__}")
    found = _registry().get(task)
    if found is None:
        raise UnknownTaskError("task", f"no task is registered under {task!r} (is its module imported?)")
    return found


def _task_tier(name: str) -> str | None:
    t = _registry().get(name)
    return t.tier if t else None


def _resolve_tier(t: Task, tier: Tier | str | None) -> str:
    chosen = tier if tier is not None else t.tier
    if chosen is None:
        raise UnknownTierError("tier", f"task {t.name!r} has no tier and none was given")
    if not isinstance(chosen, str):
        raise UnknownTierError("tier", f"expected a Tier or its name, got {type(chosen).__name__}")
    name = str(chosen.value) if isinstance(chosen, Tier) else chosen.lower()
    if name not in _options.topology.tiers:
        raise UnknownTierError("tier", f"{chosen!r} is not a tier (known: {', '.join(_options.topology.tiers)})")
    return name


def _seconds(field: str, value: dt.timedelta | float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, dt.timedelta)):
        raise InvalidScheduleError(field, f"expected seconds or a timedelta, got {type(value).__name__}")
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    if not 0 <= seconds <= MAX_DURATION_S:
        raise InvalidScheduleError(field, f"must be a duration within 0..{MAX_DURATION_S:.0f} s, got {value!r}")
    return seconds


def _aware(field: str, value: dt.datetime) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise InvalidScheduleError(field, f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidScheduleError(field, "naive datetime: give a timezone (e.g. datetime.now(timezone.utc))")
    return value


def _schedule(delay: dt.timedelta | float | None,
              run_at: dt.datetime | None) -> tuple[dt.datetime | None, float | None]:
    if delay is not None and run_at is not None:
        raise InvalidScheduleError("delay", "give delay or run_at, not both")
    if run_at is not None:
        return _aware("run_at", run_at), None
    return None, (_seconds("delay", delay) if delay is not None else None)


def _expiry(expires: dt.timedelta | float | dt.datetime | None, run_at: dt.datetime | None,
            delay_s: float | None) -> tuple[dt.datetime | None, float | None]:
    if expires is None:
        return None, None
    now = dt.datetime.now(dt.UTC)
    due = max(run_at, now) if run_at is not None else now + dt.timedelta(seconds=delay_s or 0)
    if isinstance(expires, dt.datetime):
        at = _aware("expires", expires)
        if at <= due:
            raise InvalidScheduleError("expires", "is not after the job's due time: it would expire before it runs")
        return at, None
    seconds = _seconds("expires", expires)
    if seconds == 0 or now + dt.timedelta(seconds=seconds) <= due:
        raise InvalidScheduleError("expires", "must be later than the job's due time")
    return None, seconds


def _priority(priority: int | None, t: Task, weight: int, max_priority: int | None) -> int:
    value = priority if priority is not None else t.priority if t.priority is not None else weight
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise InvalidOptionError("priority", f"must be an int within 0..255, got {value!r}")
    return min(value, max_priority) if max_priority is not None else value


def _headers(headers: Mapping[str, Any] | None, t: Task) -> Mapping[str, Any] | None:
    """The job's headers with its task's own over them (a Celery task's route, outbox.celery)."""
    if not t.headers:
        return headers
    if headers is None:
        return t.headers
    # Anything but a mapping goes on unchanged: encode_headers refuses it, naming the field.
    return {**headers, **t.headers} if isinstance(headers, Mapping) else headers


def _key(key: str | None) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or "\x00" in key:
        raise InvalidOptionError(
            "idempotency_key", f"must be a non-empty str of at most {MAX_IDEMPOTENCY_KEY_CHARS} chars without NUL")
    return key


def _max_retries(value: int | None, t: Task) -> int:
    if value is None:
        return t.max_retries
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES_LIMIT:
        raise InvalidOptionError("max_retries", f"must be an int within 0..{MAX_RETRIES_LIMIT}, got {value!r}")
    return value
