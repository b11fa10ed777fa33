"""``tierbox.celery``: Celery workers record the Tierbox jobs they run in Tierbox's ledger.

One line in the module that builds the Celery app, before its tasks are registered::

    app = Celery("proj")
    tierbox.celery.install(app, database_url="postgresql://app@db/app")

Every task of the app then derives from :class:`LedgerTask`: a delivery of a job enqueued through
the outbox (``outbox.celery_task``) starts an attempt in the ledger, so a redelivered duplicate
does not run twice, and its success, Celery retries and final failure (a dead letter) are recorded.
Tasks called with ``.delay()`` run as before, without a word to the ledger (only the messages the
relay publishes carry the ``tierbox_job`` marker), so the ledger database is a dependency of Tierbox
jobs only. Needs the ``celery`` extra (``pip install
'tierbox[celery]'``); nothing else in Tierbox imports Celery.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_ready  # type: ignore[import-untyped]

from tierbox.celery.ledger import LEASE_MARGIN_S, REAP_EVERY_S, CeleryLedger
from tierbox.celery.task import APP_ATTRIBUTE, LedgerTask

#: ``task_cls`` of a Celery app that :func:`install` has not touched.
CELERY_DEFAULT_TASK_CLS = "celery.app.task:Task"
#: What :func:`install` sets as the app's ``task_cls``.
LEDGER_TASK_CLS = "tierbox.celery.task:LedgerTask"


def install(app: Any, *, database_url: str | None = None, lease_margin_s: float = LEASE_MARGIN_S,
            reap_every_s: float = REAP_EVERY_S) -> CeleryLedger:
    """Make every task of the Celery ``app`` record its Tierbox jobs in the ledger at ``database_url``
    (default: ``TIERBOX_DATABASE_URL``, as every Tierbox process reads it).

    An attempt's lease lasts the task's hard time limit plus ``lease_margin_s``: a worker killed
    mid-task leaves the job to the reaper once it expires (retried through the outbox, or dead):
    the worker's main process (from ``worker_ready``) and each process that ran a job reap every
    ``reap_every_s``.

    Call it where the app is built, before the app is finalized (before a worker starts or any task
    is called): Celery builds each task's class from ``task_cls`` then. An app with a ``task_cls`` of
    its own derives it from :class:`LedgerTask` instead (and calls ``install`` for the database URL).
    Raises ``RuntimeError`` when it is too late or the app's base class would be lost.
    """
    from outbox.config import Settings  # deferred: only when no URL is given

    url = database_url or Settings.from_env().database_url
    task_cls = app.task_cls if isinstance(app.task_cls, str) else f"{app.task_cls.__module__}:{app.task_cls.__name__}"
    if task_cls not in (CELERY_DEFAULT_TASK_CLS, LEDGER_TASK_CLS) and not (
            isinstance(app.task_cls, type) and issubclass(app.task_cls, LedgerTask)):
        raise RuntimeError(f"Celery app {app.main!r} has task_cls={task_cls!r}: derive it from "
                           f"tierbox.celery.LedgerTask, then call install() for the database URL")
    if task_cls == CELERY_DEFAULT_TASK_CLS:
        if app.finalized or "Task" in vars(app):
            raise RuntimeError(f"Celery app {app.main!r} already built its task classes: call "
                               f"tierbox.celery.install(app) right after Celery(...), before any task is used")
        app.task_cls = LEDGER_TASK_CLS
    ledger = CeleryLedger(url, lease_margin_s=lease_margin_s, reap_every_s=reap_every_s)
    setattr(app, APP_ATTRIBUTE, ledger)

    def reap_from_the_main_process(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:  # the signal is global: another app's worker is not ours
            ledger.start_reaper()

    # weak=False: the receiver is a closure nothing else references.
    worker_ready.connect(reap_from_the_main_process, weak=False)
    return ledger


__all__ = ["CeleryLedger", "LedgerTask", "install"]
