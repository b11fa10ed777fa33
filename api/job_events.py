"""One job's events as a Server-Sent Events stream: for operators (the admin API) and for end users.

``GET .../jobs/{job_id}/events`` answers ``text/event-stream``: the job's events from
``outbox.job_events`` after ``Last-Event-ID`` (all of them without it), then each new one as it is
committed, then closes after the outcome (succeeded, dead, discarded, expired). Every event carries
its id, so a client that reconnects (``EventSource`` does it by itself) resumes where it stopped,
without gaps or duplicates. A comment line (``: heartbeat``) is sent after ``heartbeat_s`` of
silence so proxies do not cut an idle stream.

Real time through Postgres: the trigger and the progress writer ``NOTIFY tierbox_job_events`` with
the job id at commit, for the jobs listed in ``outbox.job_watchers`` (a stream adds its job before
its first read and renews the row while it reads: NOTIFY is not free, so unwatched jobs send
none). One listening connection per :class:`JobEvents` (per process, not per client) wakes the
streams of that job, and each re-reads the table after its last id, so a notification that
arrives early, late or twice changes nothing, and one that is lost (the listener reconnecting, a
change whose transaction checked the watchers just before the stream's row committed) is made up
by a re-read one second after the stream's first read, and at every heartbeat.

Applications mount :meth:`JobEvents.router` (Litestar) or :meth:`JobEvents.asgi_app` (any ASGI
framework) and hand their users a capability from :func:`outbox.job_capability`: it lets its holder
read one job's events and its status (``GET .../jobs/{job_id}``) until it expires, nothing else.
docs/progress.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import msgspec
import psycopg
from litestar import Litestar, Request, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.response import ServerSentEvent, ServerSentEventMessage
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox import _keepalive as keepalive
from outbox import _queries as queries
from outbox._logs import event
from outbox._progress import CapabilityError, verify_capability
from outbox._sql import run_async
from outbox.config import Settings
from outbox.schema import FINISHED_STATUSES
from tierbox.api import errors
from tierbox.ops import cursors
from tierbox.ops.errors import RequestError, invalid

log = logging.getLogger("tierbox.api.job_events")

#: The NOTIFY channel of job events (payload: the job id).
CHANNEL = "tierbox_job_events"
#: Seconds of silence after which a stream sends a heartbeat comment.
DEFAULT_HEARTBEAT_S = 15.0
#: Events read from the table per round trip.
READ_BATCH = 500
#: Seconds between attempts to re-open the listening connection after it failed.
RECONNECT_S = 1.0
#: Seconds a job's row in ``outbox.job_watchers`` lasts unrenewed; renewed every third of it.
WATCH_TTL_S = 60.0
#: Seconds after its first read a stream reads again, waking or not (see the module docstring).
CATCH_UP_S = 1.0


class EventHub:
    """One ``LISTEN tierbox_job_events`` connection, fanning notifications out to the streams by job id."""

    def __init__(self, psycopg_url: str) -> None:
        self._url = psycopg_url
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def subscribe(self, job_id: uuid.UUID) -> asyncio.Event:
        """An event set whenever ``job_id`` has new events (or the listener reconnected)."""
        if self._task is None or self._task.done():
            self._ready = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="tierbox-job-events-listen")
        waker = asyncio.Event()
        self._waiters.setdefault(str(job_id), set()).add(waker)
        return waker

    def unsubscribe(self, job_id: uuid.UUID, waker: asyncio.Event) -> None:
        """Stop waking ``waker``."""
        waiters = self._waiters.get(str(job_id))
        if waiters is not None:
            waiters.discard(waker)
            if not waiters:
                del self._waiters[str(job_id)]

    async def ready(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until the listener listens: a stream reads the table after that,
        so nothing committed in between is missed. On timeout the heartbeat's re-read covers it."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout_s)

    def watched(self) -> list[str]:
        """The jobs some stream of this process reads now."""
        return list(self._waiters)

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for waker in waiters:
                waker.set()

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._ready.set()
                    self._wake_all()  # anything missed while not listening is re-read
                    async for note in conn.notifies():
                        for waker in self._waiters.get(note.payload, ()):
                            waker.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Postgres went away: streams wait on heartbeats meanwhile
                event(log, "job_events.listen_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")
                self._ready.clear()
                await asyncio.sleep(RECONNECT_S)

    async def close(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None


class EventBody(msgspec.Struct, kw_only=True):
    """The ``data:`` of one SSE event (its ``event:`` is ``kind``, its ``id:`` is ``id``)."""

    id: int
    job_id: uuid.UUID
    at: str
    kind: str
    status: str | None
    fraction: float | None
    message: str | None
    data: Any


class LatestProgress(msgspec.Struct, kw_only=True):
    """A job's latest ``ctx.progress``, as its stream sent it."""

    #: From 0 to 1.
    fraction: float
    message: str | None
    data: Any
    at: dt.datetime
    #: The id of its event in the stream (``Last-Event-ID`` resumes after it).
    event_id: int


class JobState(msgspec.Struct, kw_only=True):
    """What ``GET {path}/{job_id}`` of the end-user router answers: the job's state, never its
    arguments, errors or result (those are the application's to show)."""

    job_id: uuid.UUID
    #: ``pending``, ``published``, ``running``, ``retrying``, ``succeeded``, ``dead``, ``discarded``
    #: or ``expired``.
    status: str
    #: Attempts started so far.
    attempts: int
    #: When it reached its outcome; None until then.
    finished_at: dt.datetime | None
    #: None if the job reported no progress.
    progress: LatestProgress | None


def _message(row: queries.JobEventRow) -> ServerSentEventMessage:
    body = EventBody(id=row.id, job_id=row.job_id, at=row.at.isoformat(), kind=row.kind, status=row.status,
                     fraction=row.fraction, message=row.message, data=row.data)
    return ServerSentEventMessage(data=msgspec.json.encode(body).decode(), event=row.kind, id=str(row.id))


def last_event_id(request: Request[Any, Any, Any]) -> int:
    """The id to resume after: the ``Last-Event-ID`` header (or ``last_event_id`` query parameter), else 0."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or raw == "":
        return 0
    if not cursors.is_bigint(raw):
        raise invalid("Last-Event-ID", "must be an event id this stream sent (a non-negative integer)")
    return int(raw)


def parse_job_id(raw: str) -> uuid.UUID:
    """The path's job id; 422 naming ``job_id`` if it is not a UUID."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise invalid("job_id", "not a UUID") from None


class JobEvents:
    """Serves job event streams from one database: the listener, the reads, and the capability check.

    ``database_url``: the Postgres holding the outbox schema. ``secret``: what
    :func:`outbox.job_capability` signs with (needed by :meth:`router` and :meth:`asgi_app`, not by
    the admin API, which takes operator tokens). ``engine``: an async engine to read with
    (default: one of its own, closed by :meth:`close`).
    """

    def __init__(self, database_url: str, *, secret: str | bytes | None = None,
                 heartbeat_s: float = DEFAULT_HEARTBEAT_S, engine: AsyncEngine | None = None) -> None:
        if heartbeat_s <= 0:
            raise ValueError(f"heartbeat_s: must be > 0, not {heartbeat_s!r}")
        settings = Settings(database_url=database_url)
        self.secret = secret
        self.heartbeat_s = heartbeat_s
        self._own_engine = engine is None
        self.engine = engine or keepalive.on_connect(create_async_engine(
            settings.sqlalchemy_url, pool_size=5, max_overflow=10, pool_pre_ping=True, pool_timeout=10))
        self.hub = EventHub(settings.psycopg_url)
        self._renewer: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Stop listening and renewing; dispose of the engine if it is this object's own."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renewer
            self._renewer = None
        await self.hub.close()
        if self._own_engine:
            await self.engine.dispose()

    async def response(self, job_id: uuid.UUID, after: int) -> ServerSentEvent:
        """The stream of ``job_id`` after event ``after``; 404 if the ledger has no such job."""
        async with self.engine.begin() as conn:
            state = await run_async(conn, queries.JOB_STATE, {"job_id": job_id})
            if not state:
                raise RequestError(404, f"no job {job_id}")
            if state[0].status not in FINISHED_STATUSES:  # its events NOTIFY from this commit on
                await run_async(conn, queries.WATCH_JOBS, {"job_ids": [job_id], "ttl_s": WATCH_TTL_S})
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew(), name="tierbox-job-events-renew")
        return ServerSentEvent(self.stream(job_id, after),
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def state(self, job_id: uuid.UUID) -> JobState:
        """The job's status, attempts, outcome time and latest progress; 404 if the ledger has no such job."""
        async with self.engine.connect() as conn:
            rows = await run_async(conn, queries.JOB_STATE, {"job_id": job_id})
        if not rows:
            raise RequestError(404, f"no job {job_id}")
        r = rows[0]
        progress = None
        if r.progress_id is not None and r.at is not None:
            progress = LatestProgress(fraction=r.fraction or 0.0, message=r.message, data=r.data, at=r.at,
                                      event_id=r.progress_id)
        return JobState(job_id=job_id, status=r.status, attempts=r.attempts, finished_at=r.finished_at,
                        progress=progress)

    async def _renew(self) -> None:
        """Keep the watched jobs' rows in ``outbox.job_watchers`` alive; delete the expired ones."""
        while True:
            await asyncio.sleep(WATCH_TTL_S / 3)
            try:
                async with self.engine.begin() as conn:
                    watched = self.hub.watched()
                    if watched:
                        await run_async(conn, queries.WATCH_JOBS, {"job_ids": watched, "ttl_s": WATCH_TTL_S})
                    await run_async(conn, queries.UNWATCH_EXPIRED)
            except Exception as exc:  # noqa: BLE001 - tried again next round; streams re-read on heartbeats
                event(log, "job_events.renew_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")

    async def _read(self, job_id: uuid.UUID, after: int) -> tuple[list[queries.JobEventRow], bool]:
        async with self.engine.connect() as conn:
            rows = await run_async(conn, queries.JOB_EVENTS_AFTER, {"job_id": job_id, "after": after,
                                                                    "limit": READ_BATCH})
            finished = False
            if not rows:  # a finished job whose outcome was sent already (or predates job events): done
                state = await run_async(conn, queries.JOB_STATE, {"job_id": job_id})
                finished = not state or state[0].status in FINISHED_STATUSES
        return rows, finished

    async def stream(self, job_id: uuid.UUID, after: int = 0) -> AsyncGenerator[ServerSentEventMessage, None]:
        """The job's events after ``after``, then new ones as they commit, until the outcome."""
        waker = self.hub.subscribe(job_id)  # before the first read: nothing committed after it is missed
        try:
            await self.hub.ready(self.heartbeat_s)
            catch_up = True
            while True:
                waker.clear()
                rows, finished = await self._read(job_id, after)
                for row in rows:
                    after = row.id
                    yield _message(row)
                    if row.kind == "outcome":
                        return
                if finished:
                    return
                if len(rows) == READ_BATCH:
                    continue
                try:
                    await asyncio.wait_for(waker.wait(), min(CATCH_UP_S, self.heartbeat_s) if catch_up
                                           else self.heartbeat_s)
                except TimeoutError:
                    if not catch_up:
                        yield ServerSentEventMessage(data=None, comment="heartbeat")  # a comment only: no event
                catch_up = False
        finally:
            self.hub.unsubscribe(job_id, waker)

    def verify(self, request: Request[Any, Any, Any], job_id: uuid.UUID) -> None:
        """403 unless the request carries a valid capability for ``job_id`` (``?token=`` or a Bearer header)."""
        if self.secret is None:
            raise RuntimeError("JobEvents(secret=...) is required to serve end users")
        token = request.query_params.get("token")
        header = request.headers.get("authorization", "")
        if token is None and header.lower().startswith("bearer "):
            token = header[7:].strip()
        if not token:
            raise RequestError(403, "a job capability is required: ?token=<capability>", field="token")
        try:
            verify_capability(token, job_id, self.secret)
        except CapabilityError as exc:
            raise RequestError(403, f"job capability refused: {exc}", field="token") from None

    def router(self, path: str = "/jobs") -> Router:
        """A Litestar router serving ``GET {path}/{job_id}/events`` (the stream) and ``GET
        {path}/{job_id}`` (:class:`JobState`, JSON) to holders of a job capability.

        Register :meth:`close` in the application's ``on_shutdown``.
        """
        events = self

        @get("/{job_id:str}", cache_control=CacheControlHeader(no_store=True))
        async def job_state(request: Request[Any, Any, Any], job_id: str) -> JobState:
            """One job's status and latest progress, for the holder of its capability."""
            parsed = parse_job_id(job_id)
            events.verify(request, parsed)  # before the lookup: no capability, no clue whether it exists
            return await events.state(parsed)

        @get("/{job_id:str}/events", media_type="text/event-stream", sync_to_thread=False)
        async def job_events(request: Request[Any, Any, Any], job_id: str) -> ServerSentEvent:
            """One job's events as Server-Sent Events, for the holder of its capability."""
            parsed = parse_job_id(job_id)
            events.verify(request, parsed)
            return await events.response(parsed, last_event_id(request))

        return Router(path=path, route_handlers=[job_state, job_events], exception_handlers=errors.HANDLERS)

    def asgi_app(self, path: str = "/jobs") -> Litestar:
        """A standalone ASGI app serving :meth:`router`, to mount in any ASGI framework (it closes
        the listener at its lifespan's shutdown)."""
        return Litestar(route_handlers=[self.router(path)], exception_handlers=errors.HANDLERS,
                        on_shutdown=[self.close], openapi_config=None, debug=False)

