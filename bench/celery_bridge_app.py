"""The Celery app of ``bench/celery_bridge.py``'s second system: ``bench/celery_app.py``'s settings
(confirm_publish, acks_late, prefetch 1, threads pool) plus ``tierbox.celery.install``, so every run of a
job enqueued through the outbox is recorded in the ledger. Tasks keep Celery names of their own; the
benchmark declares them with ``outbox.celery_task``.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

import tierbox.celery
from bench.celery_app import BENCH_CONF
from bench.tasks import stamp_now

QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "bench-celery-bridge")
app = Celery("benchbridge", broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"))
tierbox.celery.install(app)  # TIERBOX_DATABASE_URL from the environment the harness sets
app.conf.update(BENCH_CONF, task_default_queue=QUEUE)
_redis = redis.Redis.from_url(os.environ.get("TIERBOX_REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.task(name="bench.bridge.noop")
def noop(key: str) -> None:
    """Count the run in Redis too (the ledger's ``succeeded`` is what the benchmark waits for)."""
    _redis.incr(key)


@app.task(name="bench.bridge.stamp")
def stamp(key: str, token: str) -> None:
    """Record when the handler started."""
    stamp_now(key, token)
