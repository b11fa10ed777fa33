"""The task registry: the single source of truth for task names, tiers and policies.

A task's name is its wire identity. It defaults to ``module.qualname`` at the
moment of registration and should be pinned with ``name=`` before a module is
ever moved: renaming it strands messages already in flight.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import msgspec

from outbox.errors import RegistryError, Reject
from outbox.flow import BreakerPolicy, RateLimit, Schedule, breaker_policy, parse_rate
from outbox.tiers import Tier, Topology
from outbox.webhooks import Webhook, check_declaration

F = TypeVar("F", bound=Callable[..., Any])

#: Retries after the first attempt, unless a task says otherwise.
DEFAULT_MAX_RETRIES = 3
#: Base of the exponential backoff, seconds.
DEFAULT_RETRY_BACKOFF_S = 1.0
#: Cap of the exponential backoff, seconds.
DEFAULT_RETRY_BACKOFF_MAX_S = 600.0
#: Per-attempt time limit, seconds.
DEFAULT_TIMEOUT_S = 300.0


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """A registered handler and its policy. Calling it calls the handler directly."""

    name: str
    fn: Callable[..., Any]
    tier: str | None
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S
    retry_backoff_max_s: float = DEFAULT_RETRY_BACKOFF_MAX_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    priority: int | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    no_retry_on: tuple[type[BaseException], ...] = (Reject,)
    long: bool = False
    expires_s: float | None = None
    schedule: Schedule | None = None
    rate_limit: RateLimit | None = None
    rate_key: str | None = None
    concurrency: int | None = None
    breaker: str | None = None
    takes_context: bool = False
    context_first: bool = False
    #: Headers every job of this task carries, over the job's own (a Celery task's route: outbox.celery).
    headers: dict[str, str | float] | None = None
    #: Webhook of every job of this task unless its enqueue names one (docs/webhooks.md).
    on_complete: Webhook | None = None
    #: The handler's return value is sent in the webhook's body (``data.result``).
    webhook_result: bool = False

    @property
    def limited(self) -> bool:
        """Whether the task has a rate or a concurrency limit of its own (flow control's limits)."""
        return self.rate_limit is not None or self.concurrency is not None

    @property
    def is_async(self) -> bool:
        """True when the handler is an ``async def``."""
        return inspect.iscoroutinefunction(self.fn)

    def retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` from this task's handler may be retried."""
        return isinstance(exc, self.retry_on) and not isinstance(exc, self.no_retry_on)

    def arguments(self, args: list[Any], kwargs: dict[str, Any], ctx: Any) -> tuple[list[Any], dict[str, Any]]:
        """The handler's call arguments: ``ctx`` first when it is the first parameter, else by keyword."""
        if not self.takes_context:
            return args, kwargs
        if self.context_first:
            return [ctx, *args], kwargs
        return args, {**kwargs, "ctx": ctx}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


class Registry:
    """Tasks by name. One global instance, :data:`registry`; tests may build their own."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        #: Declared breaker policies by breaker name (:func:`breaker`); others use the default.
        self.breakers: dict[str, BreakerPolicy] = {}
        self._duplicates: list[str] = []
        self._collect = False

    @contextlib.contextmanager
    def collecting(self) -> Iterator[None]:
        """Record duplicate names instead of raising, so one import reports them all (``tierbox check``)."""
        previous, self._collect = self._collect, True
        try:
            yield
        finally:
            self._collect = previous

    def add(self, task: Task) -> None:
        """Register ``task``; a second, different task under the same name is an error."""
        existing = self._tasks.get(task.name)
        if existing is not None and existing.fn is not task.fn:
            if _same_function(existing.fn, task.fn):
                self._tasks[task.name] = task  # a module re-imported (reload, __main__)
                return
            self._duplicates.append(f"{task.name!r} ({_where(existing.fn)} and {_where(task.fn)})")
            if self._collect:
                return  # the first registration stays; problems() reports the clash
            raise RegistryError(f"task name {task.name!r} is already registered by {_where(existing.fn)}")
        self._tasks[task.name] = task

    def get(self, name: str) -> Task | None:
        """The task registered under ``name``, or None."""
        return self._tasks.get(name)

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self._tasks.values()))

    def __len__(self) -> int:
        return len(self._tasks)

    def problems(self, topology: Topology) -> list[str]:
        """Everything ``tierbox check`` reports: one readable line per problem."""
        out = [f"duplicate task name {clash}" for clash in self._duplicates]
        consumed = topology.consumed_tiers()
        for task in self._tasks.values():
            if task.tier is None:
                out.append(f"task {task.name!r} has no tier")
            elif task.tier not in topology.tiers:
                out.append(f"task {task.name!r}: tier {task.tier!r} is not in the topology")
            elif task.tier not in consumed:
                out.append(f"task {task.name!r}: tier {task.tier!r} is consumed by no pool")
        out.extend(f"tier {t!r} is consumed by no pool" for t in topology.tiers if t not in consumed)
        return out


registry = Registry()


def breaker(name: str, *, threshold: int = 5, window_s: float = 30.0, open_s: float = 30.0, probes: int = 1,
            probe_retry_s: float = 1.0, registry_: Registry | None = None) -> BreakerPolicy:
    """Declare the policy of the circuit breaker ``name`` (tasks name it with ``breaker=name``).

    Declare it in a module the workers import (beside the tasks): ``outbox.breaker("stripe",
    threshold=3, open_s=60)``. A breaker named by a task but never declared uses the defaults (5
    failures within 30 s open it; open 30 s; 1 probe; a busy probe defers others 1 s). Declaring
    the same name again with a different policy raises :class:`RegistryError`.
    """
    if not isinstance(name, str) or not name.strip():
        raise RegistryError(f"breaker name must be a non-empty string, got {name!r}")
    policy = breaker_policy(threshold=threshold, window_s=window_s, open_s=open_s, probes=probes,
                            probe_retry_s=probe_retry_s)
    target = registry_ if registry_ is not None else registry
    existing = target.breakers.get(name)
    if existing is not None and existing != policy:
        raise RegistryError(f"breaker {name!r} is already declared with another policy ({existing})")
    target.breakers[name] = policy
    return policy


def task(
    fn: F | None = None,
    *,
    tier: Tier | str | None = None,
    name: str | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
    retry_backoff_max_s: float = DEFAULT_RETRY_BACKOFF_MAX_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    priority: int | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    no_retry_on: tuple[type[BaseException], ...] = (Reject,),
    long: bool = False,
    expires_s: float | None = None,
    expires: float | None = None,
    schedule: Schedule | None = None,
    rate_limit: str | None = None,
    rate_key: str | None = None,
    concurrency: int | None = None,
    breaker: str | None = None,
    headers: dict[str, str | float] | None = None,
    on_complete: Webhook | None = None,
    webhook_result: bool = False,
    registry_: Registry | None = None,
) -> Any:
    """Register a handler as a task. Use as ``@task(tier=Tier.HIGH)``.

    ``name`` is the stable wire name (defaults to ``module.qualname``).
    ``priority`` (0..255) is the in-queue priority, meaningful on classic
    priority queues such as CALLS. ``long=True`` marks jobs that may outlive
    the broker's consumer timeout: their message is acked once the lease is
    recorded in Postgres, and the lease (not the broker) then protects them.
    Flow control (acted on by the scheduler and the workers' flow gate):
    ``schedule=cron("*/5 * * * *")`` runs it periodically and needs ``expires``
    (alias of ``expires_s``: a run not started that long after it is due is
    expired, not run); ``rate_limit="100/s"`` caps starts cluster-wide, per
    value of the kwarg named by ``rate_key`` if given; ``concurrency=N`` caps
    jobs running at once cluster-wide; ``breaker="stripe"`` names a circuit
    breaker shared by every task that names it. Jobs held back by a limit,
    an open breaker or a pause are deferred through the outbox, never failed.
    ``on_complete=outbox.Webhook(url=..., secret="name")`` announces each
    job's final outcome with a signed POST (an enqueue's ``webhook=`` wins);
    ``webhook_result=True`` puts the handler's JSON return value in it.

    ``headers`` are set on every job of the task, over the job's own (``outbox.celery_task`` puts
    a Celery task's route there).

    A handler that declares a parameter named ``ctx`` receives a
    :class:`outbox.context.TaskContext`: as the first positional argument
    when ``ctx`` is its first parameter, otherwise as a keyword.
    """

    def register(f: F) -> Task:
        if not callable(f):
            raise RegistryError(f"@task needs a function, got {f!r}")
        task_name = name or f"{f.__module__}.{f.__qualname__}"
        tier_name = str(Tier(tier)) if isinstance(tier, Tier) else tier
        params = list(inspect.signature(f).parameters)
        lifetime = expires if expires is not None else expires_s
        if schedule is not None and not lifetime:
            raise RegistryError(f"task {name or f.__qualname__!r}: a scheduled task needs expires= (seconds)")
        if concurrency is not None and (isinstance(concurrency, bool) or concurrency < 1):
            raise RegistryError(f"task {name or f.__qualname__!r}: concurrency must be an int >= 1")
        if rate_key is not None and rate_limit is None:
            raise RegistryError(f"task {name or f.__qualname__!r}: rate_key needs a rate_limit")
        _validate_policy(task_name, max_retries, retry_backoff_s, retry_backoff_max_s, timeout_s, priority)
        if on_complete is not None:  # its address is resolved and checked at each enqueue (DNS changes)
            try:
                check_declaration(on_complete, "on_complete")
            except ValueError as exc:
                raise RegistryError(f"task {task_name!r}: {exc}") from exc
        t = Task(
            name=task_name, fn=f, tier=tier_name, max_retries=max_retries, retry_backoff_s=retry_backoff_s,
            retry_backoff_max_s=retry_backoff_max_s, timeout_s=timeout_s, priority=priority,
            retry_on=tuple(retry_on), no_retry_on=tuple(no_retry_on), long=long, expires_s=lifetime,
            schedule=schedule, rate_limit=parse_rate(rate_limit) if rate_limit is not None else None,
            rate_key=rate_key, concurrency=concurrency, breaker=breaker, on_complete=on_complete,
            webhook_result=bool(webhook_result),
            takes_context="ctx" in params,
            context_first=bool(params) and params[0] == "ctx", headers=dict(headers) if headers else None,
        )
        (registry_ if registry_ is not None else registry).add(t)  # an empty Registry is falsy
        return t

    return register(fn) if fn is not None else register


def _validate_policy(
    name: str, max_retries: int, backoff: float, backoff_max: float, timeout: float, priority: int | None
) -> None:
    if max_retries < 0:
        raise RegistryError(f"task {name!r}: max_retries must be >= 0")
    if backoff < 0 or backoff_max < backoff:
        raise RegistryError(f"task {name!r}: need 0 <= retry_backoff_s <= retry_backoff_max_s")
    if timeout <= 0:
        raise RegistryError(f"task {name!r}: timeout_s must be > 0")
    if priority is not None and not 0 <= priority <= 255:
        raise RegistryError(f"task {name!r}: priority must be within 0..255")


def import_app(modules: Iterable[str]) -> list[str]:
    """Import the modules that register tasks; returns one line per failure."""
    failures = []
    for module in modules:
        try:
            importlib.import_module(module)
        except RegistryError as exc:
            failures.append(f"{module}: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported to the operator, not swallowed
            failures.append(f"cannot import {module}: {type(exc).__name__}: {exc}")
    return failures


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    return code_a is not None and code_b is not None and (
        code_a.co_filename, code_a.co_firstlineno) == (code_b.co_filename, code_b.co_firstlineno)


def _where(fn: Callable[..., Any]) -> str:
    code = getattr(fn, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else repr(fn)
