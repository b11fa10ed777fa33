"""The ledger as a Celery worker process records it: Tierbox's own statements, run synchronously.

A Celery worker runs tasks in plain (non-async) code, so this runs the ledger statements the
Tierbox workers use (:mod:`outbox._transitions`: ``START_ATTEMPT``, ``SUCCEED``, ``RETRY``, ``DEAD``,
``REAP``) through :func:`outbox._sql.run` on a psycopg connection per thread, in autocommit:
each is a single statement, committed when it returns, as :mod:`tierbox.workers.ledger` runs them.
No SQL of its own.

Connections (one per thread) are opened lazily and re-opened in a forked child (Celery's prefork
pool forks after the app is loaded: a connection must never cross a fork) or after one broke.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, TypeVar

import psycopg

from outbox import _transitions as transitions
from outbox._failure import ErrorInfo
from outbox._logs import event
from outbox._sql import Statement, run
from outbox._worker_rows import Reaped, StartRow

log = logging.getLogger("tierbox.celery")

R = TypeVar("R", bound=tuple[Any, ...])

#: Seconds between two reaps from one Celery process (expired leases: a worker killed mid-task).
REAP_EVERY_S = 30.0
#: Default seconds a lease outlives the task's hard time limit.
LEASE_MARGIN_S = 30.0
#: Seconds to wait for a ledger connection: a blackholed database must not hold a delivery for the
#: system's TCP timeout (minutes); the delivery waits and is tried again instead.
CONNECT_TIMEOUT_S = 10


class CeleryLedger:
    """Ledger statements of one Celery worker process (thread-safe: a connection per thread)."""

    def __init__(self, database_url: str, *, reap_every_s: float = REAP_EVERY_S,
                 lease_margin_s: float = LEASE_MARGIN_S) -> None:
        _, _, rest = database_url.partition("://")  # any SQLAlchemy dialect+driver spelling, as Settings does
        self.dsn = f"postgresql://{rest}" if rest else database_url
        self.reap_every_s = reap_every_s
        #: Seconds a lease outlives the task's hard time limit (the worker kills the task at that limit).
        self.lease_margin_s = lease_margin_s
        # One connection per thread (Celery's threads pool runs tasks side by side: one shared
        # connection would serialise their ledger statements), re-opened after a fork.
        self._local = threading.local()
        self._reaper_pid = 0
        self._reaper_lock = threading.Lock()

    @property
    def worker_id(self) -> str:
        """This process in ``outbox.attempts.worker_id``: ``celery:host:pid``."""
        return f"celery:{socket.gethostname()}:{os.getpid()}"

    def _connection(self) -> psycopg.Connection[Any]:
        local = self._local
        conn: psycopg.Connection[Any] | None = getattr(local, "conn", None)
        if conn is None or getattr(local, "pid", 0) != os.getpid() or conn.closed or conn.broken:
            # A connection inherited through fork belongs to the parent: dropped, never closed here
            # (closing would send a Terminate on the parent's socket).
            conn = psycopg.connect(self.dsn, autocommit=True, application_name="tierbox-celery",
                                   connect_timeout=CONNECT_TIMEOUT_S)
            local.conn, local.pid = conn, os.getpid()
        return conn

    def _one(self, stmt: Statement[R], params: dict[str, Any]) -> list[R]:
        conn = self._connection()
        try:
            return run(conn, stmt, params)
        except psycopg.OperationalError:
            # The server closed an idle connection (restart, failover): one fresh connection, once.
            # Every statement here is safe to repeat: each is fenced on the job's state.
            if not conn.broken:
                raise
            return run(self._connection(), stmt, params)

    def start(self, job_id: uuid.UUID, lease_s: float, acked_early: bool) -> StartRow:
        """``outbox.start_attempt``: run this delivery (``run``), or why not (``finished``, ...)."""
        self._ensure_reaper()
        return self._one(transitions.START_ATTEMPT, {"job_id": job_id, "worker_id": self.worker_id,
                                                     "lease_s": lease_s, "acked_early": acked_early,
                                                     "token": None})[0]

    def succeed(self, job_id: uuid.UUID, attempt: int) -> bool:
        """The attempt succeeded; False if it was fenced out (its lease was reaped meanwhile)."""
        return bool(self._one(transitions.SUCCEED, {"job_id": job_id, "attempt": attempt})[0].jobs)

    def retry(self, job_id: uuid.UUID, attempt: int, delay_s: float, outcome: str, error: ErrorInfo) -> bool:
        """The attempt failed (``outcome``: ``failed`` or ``timeout``) and Celery retries it: the job is
        due again through the outbox in ``delay_s``."""
        rows = self._one(transitions.RETRY, {"job_id": job_id, "attempt": attempt, "delay_s": delay_s,
                                             "outcome": outcome, **error.params()})
        return bool(rows[0].jobs)

    def dead(self, job_id: uuid.UUID, attempt: int, reason: str, outcome: str, error: ErrorInfo) -> bool:
        """The final failure (``reason``: one of ``outbox.schema.DEAD_LETTER_REASONS``): the job becomes a
        dead letter ``outbox.redrive`` can send back."""
        rows = self._one(transitions.DEAD, {"job_id": job_id, "attempt": attempt, "reason": reason,
                                            "outcome": outcome, **error.params()})
        return bool(rows[0].jobs)

    def reap(self) -> list[Reaped]:
        """Recover expired leases (a Celery worker killed mid-task): each job is retried through the
        outbox, or dead-lettered with the attempt ``crashed``. Tierbox workers reap too, when they run."""
        reaped: list[Reaped] = self._one(transitions.REAP, {"limit": 100})
        for row in reaped:
            event(log, "celery.reaped", logging.WARNING, job_id=row.job_id, decision=row.decision)
        return reaped

    def start_reaper(self) -> None:
        """Start this process's reaper thread, if it has none, without waiting for the ledger.

        :func:`tierbox.celery.install` calls it in the worker's main process once the worker is ready
        (``worker_ready``): under the prefork pool a child whose task overran its hard ``time_limit``
        is killed with its reaper thread, and the other children start theirs only with a delivery,
        so without the main process's thread that job's lease could wait for the next delivery."""
        self._ensure_reaper(reap_now=False)

    def _ensure_reaper(self, reap_now: bool = True) -> None:
        """Reap (now, unless ``reap_now`` is False: the thread's first round does) and every
        ``reap_every_s`` from a daemon thread of this process (started with its first delivery or by
        :meth:`start_reaper`; a forked child starts its own): a job whose worker died is recovered
        even while no other delivery arrives, and even with no Tierbox worker running."""
        if self._reaper_pid == os.getpid():
            return
        with self._reaper_lock:
            if self._reaper_pid == os.getpid():
                return
            self._reaper_pid = os.getpid()
            if reap_now:
                self._reap_quietly()
            threading.Thread(target=self._reap_forever, args=(not reap_now,), name="tierbox-celery-reaper",
                             daemon=True).start()

    def _reap_forever(self, reap_first: bool) -> None:
        pid = os.getpid()
        if reap_first:
            self._reap_quietly()
        while self._reaper_pid == pid:
            time.sleep(self.reap_every_s)
            self._reap_quietly()

    def _reap_quietly(self) -> None:
        try:
            self.reap()
        except psycopg.Error as exc:  # Postgres away: the next round tries again; nothing is lost meanwhile
            event(log, "celery.reap_failed", logging.WARNING, error=type(exc).__name__)

    def close(self) -> None:
        """Close this thread's connection (idempotent)."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None and getattr(self._local, "pid", 0) == os.getpid() and not conn.closed:
            conn.close()
