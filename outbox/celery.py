"""Tasks that run on Celery workers: enqueued through the outbox, published in Celery's own protocol.

``outbox.celery_task("app.tasks.send_otp", tier=Tier.CRITICAL, queue="critical")`` declares a task
by its Celery name. ``outbox.enqueue(session, send_otp, args=[...])`` writes it in the caller's
transaction like any other job; the relay then publishes it as a Celery protocol-2 message (task id
= the Tierbox job id) to ``queue``, where an unchanged Celery 5 worker runs it
(:mod:`tierbox.relay.celery_protocol`). With ``tierbox.celery`` installed in the Celery app, each
execution is recorded in the ledger (docs/celery.md).

How the relay tells a Celery job from a Tierbox one: the job's ``headers`` carry the route
(``x-tierbox-celery-*``, flat strings and numbers, as every stored header). No column and no
migration: the route travels with the job, so a redrive (which copies the headers) goes back to the
same Celery queue, and a relay needs no registry to route it.

This module imports nothing of Celery: producers declare tasks without installing it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from outbox.errors import RegistryError
from outbox.flow import Schedule
from outbox.registry import DEFAULT_MAX_RETRIES, Registry, Task, task
from outbox.tiers import Tier

#: The Celery queue the message goes to (the routing key when no exchange is named).
HEADER_QUEUE = "x-tierbox-celery-queue"
#: The exchange to publish to; "" is RabbitMQ's default exchange (routes by queue name).
HEADER_EXCHANGE = "x-tierbox-celery-exchange"
#: The routing key on that exchange.
HEADER_ROUTING_KEY = "x-tierbox-celery-routing-key"
#: Celery's hard time limit of one run, seconds (the ``timelimit`` header's first item).
HEADER_TIME_LIMIT = "x-tierbox-celery-time-limit"
#: Celery's soft time limit, seconds (the ``timelimit`` header's second item).
HEADER_SOFT_TIME_LIMIT = "x-tierbox-celery-soft-time-limit"
#: Every route header; the relay finds a Celery job by the first one.
ROUTE_HEADERS = (HEADER_QUEUE, HEADER_EXCHANGE, HEADER_ROUTING_KEY, HEADER_TIME_LIMIT, HEADER_SOFT_TIME_LIMIT)

#: The message header the relay adds to every Celery message it publishes (value: the job id): a
#: worker with ``tierbox.celery`` installed consults the ledger for marked deliveries only, so a
#: task sent with ``.delay()`` never depends on the ledger. Not a route header: it is set on the
#: AMQP message, never stored in the job's headers.
JOB_MARKER = "tierbox_job"

#: Celery's default queue (``task_default_queue``).
DEFAULT_QUEUE = "celery"


def celery_task(name: str, *, tier: Tier | str, queue: str = DEFAULT_QUEUE, exchange: str = "",
                routing_key: str | None = None, max_retries: int = DEFAULT_MAX_RETRIES,
                time_limit: float | None = None, soft_time_limit: float | None = None,
                priority: int | None = None, expires: float | None = None, schedule: Schedule | None = None,
                registry_: Registry | None = None) -> Task:
    """Declare the Celery task ``name`` (its Celery name) so :func:`outbox.enqueue` accepts it.

    ``tier`` orders it in the outbox (the relay claims urgent tiers first) and names it in the
    ledger's views; ``queue`` is the Celery queue its workers consume (``exchange``/``routing_key``
    when the app routes through an exchange of its own instead of the default one). ``max_retries``
    should be the Celery task's own: the ledger dead-letters a job once Celery gives up.
    ``time_limit``/``soft_time_limit`` travel in the message's ``timelimit`` header (unset: the
    worker's configuration applies). ``expires`` (seconds after it is due) expires a job not
    started by then. ``schedule=outbox.cron(...)`` (with ``expires``) has ``tierbox scheduler``
    enqueue it periodically, in place of a beat entry. Returns the registered :class:`~outbox.Task`;
    calling it raises, since its code lives in the Celery app.
    """
    if not isinstance(name, str) or not name.strip():
        raise RegistryError(f"celery_task: name must be the task's Celery name, got {name!r}")
    if not isinstance(tier, str) or not tier:  # a Tier is a str; every Celery job goes to a tier's place in the outbox
        raise RegistryError(f"celery task {name!r}: tier is required (the outbox's order and the ledger's views)")
    if not isinstance(queue, str) or not queue:
        raise RegistryError(f"celery task {name!r}: queue must be a non-empty str, got {queue!r}")
    if not isinstance(exchange, str):
        raise RegistryError(f"celery task {name!r}: exchange must be a str, got {exchange!r}")
    key = routing_key if routing_key is not None else queue
    if not isinstance(key, str) or not key:
        raise RegistryError(f"celery task {name!r}: routing_key must be a non-empty str, got {routing_key!r}")
    if exchange == "" and key != queue:
        raise RegistryError(f"celery task {name!r}: on the default exchange the routing key is the queue name")
    headers: dict[str, str | float] = {HEADER_QUEUE: queue, HEADER_EXCHANGE: exchange, HEADER_ROUTING_KEY: key}
    for field, limit, header in (("time_limit", time_limit, HEADER_TIME_LIMIT),
                                 ("soft_time_limit", soft_time_limit, HEADER_SOFT_TIME_LIMIT)):
        if limit is None:
            continue
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0:
            raise RegistryError(f"celery task {name!r}: {field} must be seconds > 0, got {limit!r}")
        headers[header] = float(limit)
    return _register(name, tier=tier, max_retries=max_retries, priority=priority, expires=expires,
                     schedule=schedule, headers=headers, registry_=registry_)


def celery_tasks_from_routes(task_routes: Mapping[str, Mapping[str, Any]], tiers: Mapping[str, Tier | str], *,
                             registry_: Registry | None = None, **policy: Any) -> dict[str, Task]:
    """Declare every task of a Celery app's ``task_routes`` (``{"app.tasks.x": {"queue": "q"}}``).

    ``tiers`` maps each Celery queue to its Tierbox tier; ``policy`` (``max_retries``,
    ``time_limit``, ...) applies to all. Glob and regex routes name no task, so they raise
    :class:`~outbox.RegistryError`: declare those tasks one by one with :func:`celery_task`.
    Returns the tasks by Celery name.
    """
    declared: dict[str, Task] = {}
    for name, route in task_routes.items():
        if not isinstance(name, str) or any(c in name for c in "*?["):
            raise RegistryError(f"task_routes: {name!r} is a pattern, not a task name; declare its tasks one by one")
        queue = route.get("queue", DEFAULT_QUEUE) if isinstance(route, Mapping) else None
        if not isinstance(queue, str):
            raise RegistryError(f"task_routes[{name!r}]: expected a mapping with a 'queue', got {route!r}")
        if queue not in tiers:
            raise RegistryError(f"task_routes[{name!r}]: queue {queue!r} has no tier in tiers=")
        declared[name] = celery_task(name, tier=tiers[queue], queue=queue, exchange=str(route.get("exchange", "")),
                                     routing_key=route.get("routing_key"), registry_=registry_, **policy)
    return declared


def is_celery_task(task: Task) -> bool:
    """Whether ``task`` was declared with :func:`celery_task` (its jobs run on Celery workers)."""
    return bool(task.headers) and HEADER_QUEUE in (task.headers or {})


def _register(name: str, *, tier: Tier | str, max_retries: int, priority: int | None, expires: float | None,
              schedule: Schedule | None, headers: dict[str, str | float], registry_: Registry | None) -> Task:
    """Register the declaration through :func:`outbox.task`, so it is validated like any task."""
    registered: Task = task(_runs_on_celery(name), tier=tier, name=name, max_retries=max_retries,
                            priority=priority, expires=expires, schedule=schedule, headers=headers,
                            registry_=registry_)
    return registered


def _runs_on_celery(name: str) -> Callable[..., Any]:
    def run_on_celery(*args: Any, **kwargs: Any) -> Any:
        raise RegistryError(f"{name!r} is a Celery task: its code runs on Celery workers, enqueue it instead")

    run_on_celery.__qualname__ = f"celery_task[{name}]"
    return run_on_celery


__all__ = ["DEFAULT_QUEUE", "JOB_MARKER", "ROUTE_HEADERS", "celery_task", "celery_tasks_from_routes", "is_celery_task"]
