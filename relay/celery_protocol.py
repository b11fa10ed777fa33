"""Celery's message protocol, version 2: how the relay publishes a job declared with ``outbox.celery_task``.

What Celery 5 itself sends for ``task.apply_async`` (``celery.app.amqp.AMQP.as_task_v2`` and kombu's
``Producer.publish``; https://docs.celeryq.dev/en/stable/internals/protocol.html), with the JSON
serializer:

* headers: ``lang``, ``task`` (the Celery name), ``id``, ``shadow``, ``eta``, ``expires``, ``group``,
  ``group_index``, ``retries``, ``timelimit`` ``[hard, soft]``, ``root_id``, ``parent_id``,
  ``argsrepr``, ``kwargsrepr``, ``origin``, ``ignore_result``, ``replaced_task_nesting``,
  ``stamped_headers``, ``stamps``;
* properties: ``correlation_id`` (= the task id), ``reply_to``, ``content_type``
  ``application/json``, ``content_encoding`` ``utf-8``, ``delivery_mode`` 2 (persistent), ``priority``;
* body: ``[args, kwargs, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]``.

Tierbox's choices inside that format:

* ``id`` is the Tierbox job id, so the ledger and Celery (its logs, result backend, Flower) name the
  same run alike, and ``tierbox.celery`` finds the job from ``task.request.id``.
* ``eta`` is always null: the relay publishes a job only once it is due (``delay``/``run_at`` wait in
  the outbox, not in a worker's memory as Celery's countdown messages do). ``expires`` is null too:
  the ledger enforces a job's expiry when the worker starts it (``outbox.start_attempt``).
* ``retries`` is the number of attempts already started, so Celery's ``request.retries`` and its
  ``max_retries`` check count the same attempts as the ledger when the outbox re-sends a job.
* ``argsrepr``/``kwargsrepr`` say how many arguments and which keyword names, never their values:
  Celery logs and monitors show these, and payloads are not logged.
* one header of Tierbox's own, ``tierbox_job`` (:data:`outbox.celery.JOB_MARKER`, value: the job
  id), marks the message as a Tierbox job. ``tierbox.celery`` consults the ledger only for marked
  deliveries: a task sent with ``.delay()`` (a UUID task id too) runs as before, even while the
  ledger is unreachable. Celery keeps a header it does not know in ``request.headers`` and sends it
  again with the task's retries (``signature_from_request``); a worker without ``tierbox.celery``
  ignores it.
"""

from __future__ import annotations

import socket
from typing import Any, NamedTuple

import aio_pika
import aiormq
import msgspec

from outbox import _encoding as encoding
from outbox._rows import ClaimedRow
from outbox.celery import (
    HEADER_EXCHANGE,
    HEADER_QUEUE,
    HEADER_ROUTING_KEY,
    HEADER_SOFT_TIME_LIMIT,
    HEADER_TIME_LIMIT,
    JOB_MARKER,
)

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
#: The body's third element, the "embed": no canvas (callbacks, errbacks, chain, chord).
EMBED: dict[str, None] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

_encoder = msgspec.json.Encoder()


class Route(NamedTuple):
    """Where a Celery job's message goes, and its time limits (from the job's route headers)."""

    exchange: str
    routing_key: str
    time_limit: float | None
    soft_time_limit: float | None


def route_of(headers: str) -> Route | None:
    """The Celery route in a claimed row's headers (JSON text), or None for a Tierbox job."""
    if HEADER_QUEUE not in headers:  # the common case, a substring test; "{}" for most rows
        return None
    values = encoding.decode_headers(headers)
    queue = values.get(HEADER_QUEUE)
    if not isinstance(queue, str) or not queue:
        return None
    exchange = values.get(HEADER_EXCHANGE)
    key = values.get(HEADER_ROUTING_KEY)
    return Route(exchange if isinstance(exchange, str) else "", key if isinstance(key, str) and key else queue,
                 _seconds(values.get(HEADER_TIME_LIMIT)), _seconds(values.get(HEADER_SOFT_TIME_LIMIT)))


def build(row: ClaimedRow, route: Route) -> tuple[bytes, aiormq.spec.Basic.Properties]:
    """Body and AMQP properties of the Celery message for one claimed row."""
    payload = encoding.decode_payload(row.payload.encode())
    task_id = str(row.job_id)
    headers: dict[str, Any] = {
        "lang": "py",
        "task": row.task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": row.attempts,
        "timelimit": [route.time_limit, route.soft_time_limit],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": f"<{len(payload.args)} args>",
        "kwargsrepr": "<kwargs: " + ", ".join(sorted(payload.kwargs)) + ">",
        "origin": ORIGIN,
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        JOB_MARKER: task_id,
    }
    properties = aiormq.spec.Basic.Properties(
        content_type=CONTENT_TYPE,
        content_encoding=CONTENT_ENCODING,
        delivery_mode=int(aio_pika.DeliveryMode.PERSISTENT),
        priority=row.priority,
        correlation_id=task_id,
        reply_to="",
        message_id=task_id,
        headers=headers,
    )
    return _encoder.encode([payload.args, payload.kwargs, EMBED]), properties


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


#: The ``origin`` header: this relay's host (Celery puts the sender's node name there).
ORIGIN = f"tierbox-relay@{socket.gethostname()}"
