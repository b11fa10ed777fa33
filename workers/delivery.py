"""One delivery of a message to a pool, from the broker's hand-off to its one acknowledgement.

A :class:`Delivery` carries everything the worker learns about the message on its way
(envelope and payload, task, the flow-control decision, the start, the connection an attempt
runs on) and ends in exactly one :meth:`Delivery.finish`: the outcome is recorded in Postgres,
then the admission is released, then the message is acked (or handed back to its queue). A
second ``finish`` is a bug and raises :class:`DeliveryFinishedError`.

Acknowledgement is late: nothing is acked before its outcome is committed, so a crash in
between leaves the message unacked and RabbitMQ delivers it again (the ledger absorbs the
copy). The one exception is a ``long=True`` task, acked (:meth:`Delivery.ack_early`) once its
lease is committed so the broker's consumer timeout cannot cancel it; the lease protects it
from then on, and ``finish`` then records and releases without acking twice.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import msgspec
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy.ext.asyncio import AsyncConnection

from outbox import _encoding as encoding
from outbox._logs import event
from outbox.registry import Task
from tierbox.flow.admission import Admission
from tierbox.flow.gate import Decision
from tierbox.workers.ledger import StartResult
from tierbox.workers.outcomes import HandedBack, Outcome, Recorder

log = logging.getLogger("tierbox.worker")


class DeliveryFinishedError(RuntimeError):
    """``finish`` was called for a delivery already finished: a bug in the worker, never retried."""


class Delivery:
    """One delivery across the pool's tries of it (the infrastructure back-off in ``Pool.process``).

    ``token`` is sent with every start: a try whose start committed but whose reply was lost is
    resumed by the next try instead of being taken for a duplicate (migration 0006). Once the
    handler has run, the token is spent (:meth:`next_try` draws a new one): a later try, whose
    outcome could not be recorded, must not run the handler again under the same attempt; it
    meets the lease like any other copy. ``admitted``: the flow-control decision, taken once for
    the delivery, with its concurrency hold, released when the delivery is done.
    """

    __slots__ = (
        "_acked",
        "_admission",
        "_finished",
        "_payload",
        "_recorder",
        "_released",
        "admitted",
        "conn",
        "envelope",
        "finishing",
        "handler_ran",
        "message",
        "received",
        "start",
        "task",
        "tier",
        "token",
    )

    def __init__(self, tier: str, message: AbstractIncomingMessage, recorder: Recorder, admission: Admission) -> None:
        self.tier = tier
        self.message = message
        self._recorder = recorder
        self._admission = admission
        self.token = uuid.uuid4()
        self.handler_ran = False
        self.envelope: encoding.Envelope | None = None
        self._payload: encoding.Payload | None = None
        self.task: Task | None = None
        self.admitted: Decision | None = None
        self.start: StartResult | None = None
        #: The connection the attempt runs on (async handlers taking ``ctx``), while it is checked out.
        self.conn: AsyncConnection | None = None
        #: The finishing stage's task that finishes it, once its handler returned and it was handed there.
        self.finishing: asyncio.Task[None] | None = None
        #: When the pool's receiver got the message (wall clock), the tier's messages the pool held unacked
        #: then, and the tier's QoS (benchmark hops only, workers.processing.HOPS; else zeros).
        self.received: tuple[float, int, int] = (0.0, 0, 0)
        self._finished = self._released = self._acked = False

    @property
    def finished(self) -> bool:
        """Whether :meth:`finish` has recorded an outcome."""
        return self._finished

    @property
    def env(self) -> encoding.Envelope:
        """The decoded envelope (after :meth:`decode` succeeded)."""
        if self.envelope is None:
            raise RuntimeError("the delivery is not decoded")
        return self.envelope

    @property
    def payload(self) -> encoding.Payload:
        """The decoded payload (after :meth:`decode` succeeded)."""
        if self._payload is None:
            raise RuntimeError("the delivery is not decoded")
        return self._payload

    @property
    def started(self) -> StartResult:
        """What ``start_attempt`` decided (once the delivery was started)."""
        if self.start is None:
            raise RuntimeError("the delivery is not started")
        return self.start

    @property
    def handler(self) -> Task:
        """The registered task that runs it (once known to exist)."""
        if self.task is None:
            raise RuntimeError(f"no handler for {self.env.task!r}")
        return self.task

    def decode(self) -> Exception | None:
        """Decode the envelope and payload (once); returns the error if the body is not a valid message."""
        if self.envelope is None:
            try:
                env = encoding.decode_envelope(self.message.body)
                self._payload = encoding.decode_payload(env.payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return exc
            self.envelope = env
        return None

    def next_try(self) -> None:
        """Before another try: keep the token unless the handler has already run with it."""
        if self.handler_ran:
            self.token, self.handler_ran = uuid.uuid4(), False

    async def finish(self, outcome: Outcome) -> None:
        """Record ``outcome``, release the admission, then ack (or, handed back, requeue): once.

        Recording may raise (Postgres trouble): the delivery is then not finished and the pool tries
        it again. Once recorded, nothing here raises; calling ``finish`` again raises
        :class:`DeliveryFinishedError`.
        """
        if self._finished:
            raise DeliveryFinishedError(f"delivery {self.message.message_id} finished twice ({outcome})")
        ok = await self._recorder.record(self, outcome)
        self._finished = True
        await self.release(ok)
        await self._settle(requeue=isinstance(outcome, HandedBack))

    async def ack_early(self) -> None:
        """Ack before the outcome (a long task whose lease is committed); :meth:`finish` will not ack again."""
        await self._settle(requeue=False)

    async def release(self, ok: bool | None = None) -> None:
        """Give back the admission's concurrency hold (the breaker learns ``ok``), once; later calls do nothing.

        :meth:`finish` calls it; the pool calls it for a delivery cancelled before it finished
        (shutdown), whose job the pool then hands back itself.
        """
        if self._released:
            return
        self._released = True
        if self.task is None or self.admitted is None:
            return
        try:
            await self._admission.finished(self.task, self.admitted, ok)
        except Exception as exc:  # noqa: BLE001 - the outcome is committed: the ack must still follow
            event(log, "worker.admission_release_failed", logging.WARNING, job_id=self.env.id, error=exc)

    async def _settle(self, requeue: bool) -> None:
        if self._acked:  # a long task's message, acked when its lease committed
            return
        self._acked = True
        try:
            if requeue:
                await self.message.nack(requeue=True)
            else:
                await self.message.ack()
        except Exception as exc:  # noqa: BLE001 - channel gone: the outcome is committed; a redelivery is absorbed
            event(log, "worker.ack_failed", logging.WARNING, message_id=self.message.message_id, error=exc,
                  requeue=requeue)
