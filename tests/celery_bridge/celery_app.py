"""The Celery app the tests/celery_bridge worker runs: an ordinary Celery 5 app plus one line, ``install``.

Configured from the environment the test gives the worker process: the broker, the queue (one per
test module) and the Tierbox database (``TB_LEDGER_URL``, when set, puts the ledger elsewhere than the
effects table; ``TB_CELERY_INSTALL=0`` leaves ``install`` out: an unchanged Celery app). Each task writes what it did to ``public.celery_effects`` in
its own transaction, so a test compares the ledger with what the worker really ran.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg
from celery import Celery

import tierbox.celery

QUEUE = os.environ.get("TB_CELERY_QUEUE", "celery")
DATABASE_URL = os.environ.get("TIERBOX_DATABASE_URL", "")

EFFECTS_DDL = """
CREATE TABLE IF NOT EXISTS public.celery_effects (
    task_id text NOT NULL, task text NOT NULL, note text, retries int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS public.celery_switches (key text PRIMARY KEY);
"""

app = Celery("tbtest", broker=os.environ.get("TB_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"))
if os.environ.get("TB_CELERY_INSTALL", "1") != "0":
    # The one line a Celery team adds (a short lease margin and reap period: the crash test's lease
    # expires and is reaped within seconds).
    tierbox.celery.install(app, database_url=os.environ.get("TB_LEDGER_URL") or DATABASE_URL or None,
                           lease_margin_s=float(os.environ.get("TB_LEASE_MARGIN_S", "30")),
                           reap_every_s=float(os.environ.get("TB_REAP_EVERY_S", "30")))
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)


def _record(task: Any, note: str) -> None:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute("INSERT INTO public.celery_effects (task_id, task, note, retries) VALUES (%s, %s, %s, %s)",
                      (task.request.id, task.name, note, task.request.retries))


def _switched_on(key: str) -> bool:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM public.celery_switches WHERE key = %s", (key,)).fetchone() is not None


@app.task(name="tbtest.effect", bind=True)
def effect(self: Any, note: str) -> str:
    """Writes one effect row."""
    _record(self, note)
    return note


@app.task(name="tbtest.flaky", bind=True, autoretry_for=(RuntimeError,), max_retries=2, retry_backoff=0.2,
          retry_backoff_max=1, retry_jitter=False)
def flaky(self: Any, key: str) -> str:
    """Fails (autoretry_for, two retries) until the switch ``key`` is on."""
    _record(self, "try")
    if not _switched_on(key):
        raise RuntimeError(f"downstream refused {key}")
    return "ok"


@app.task(name="tbtest.retry_twice", bind=True, max_retries=5)
def retry_twice(self: Any, note: str) -> str:
    """Calls ``self.retry`` on its first two runs, then succeeds."""
    _record(self, note)
    if self.request.retries < 2:
        raise self.retry(countdown=0.2, exc=ConnectionError(f"not yet ({self.request.retries})"))
    return note


@app.task(name="tbtest.refuse", bind=True)
def refuse(self: Any, how: str) -> None:
    """Ends in Celery's ``Reject`` or in the exception Celery's time limit raises inside a task.

    (The soft limit itself needs the prefork pool's signals; the tests' worker is ``-P solo``, so the
    task raises ``SoftTimeLimitExceeded`` as the prefork pool makes it surface.)
    """
    from celery.exceptions import Reject, SoftTimeLimitExceeded

    _record(self, how)
    if how == "reject":
        raise Reject("malformed order", requeue=False)
    raise SoftTimeLimitExceeded("soft time limit (30 s) exceeded")


@app.task(name="tbtest.sleepy", bind=True)
def sleepy(self: Any, key: str) -> str:
    """Runs for a minute unless the switch ``key`` is on (the crash test kills the worker meanwhile;
    under prefork, the time limits of the message end it)."""
    _record(self, "start")
    if not _switched_on(key):
        time.sleep(60)
    return "done"
