"""The Celery baseline: RabbitMQ broker, publisher confirms, late acks, prefetch 1, thread pool.

Configured from the environment the harness sets (``BENCH_AMQP_URL``,
``BENCH_CELERY_QUEUE``), so each run uses its own queue. Celery records
nothing in a database; ``noop`` increments a Redis counter only so the
harness can tell when all jobs have run (about 0.1 ms a task).
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

from bench.tasks import stamp_now

QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "bench-celery")
app = Celery("bench", broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"))
#: The issue's Celery settings, shared with ``bench/celery_bridge_app.py``: both sides measured alike.
BENCH_CONF = {
    "broker_transport_options": {"confirm_publish": True},
    "task_acks_late": True,
    "worker_prefetch_multiplier": 1,
    "task_ignore_result": True,
    "worker_hijack_root_logger": False,
    "broker_connection_retry_on_startup": True,
}
app.conf.update(BENCH_CONF, task_default_queue=QUEUE)
_redis = redis.Redis.from_url(os.environ.get("TIERBOX_REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.task(name="bench.noop")
def noop(key: str) -> None:
    """Count the run (the only way to see completion: Celery keeps no ledger)."""
    _redis.incr(key)


@app.task(name="bench.stamp")
def stamp(key: str, token: str) -> None:
    """Record when the handler started."""
    stamp_now(key, token)


@app.task(name="bench.busy")
def busy(seconds: float) -> None:
    """Keep a worker thread busy."""
    time.sleep(seconds)
