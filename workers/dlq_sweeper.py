"""Sweeps RabbitMQ's ``<tier>.dlq`` queues into ``outbox.dead_letters``.

Tierbox itself never rejects a message: its workers record the outcome and
ack. Messages land in a dlq only when the broker dead-letters them (a
rejection by some other consumer, a queue length limit, a TTL, a quorum
delivery limit). Each pool sweeps the dlqs of its own tiers so that one SQL
table shows every failure. A message is acked from the dlq only after its
dead letter is committed (or the ledger shows the job finished elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
import msgspec
from aio_pika.abc import AbstractIncomingMessage

from outbox import _encoding as encoding
from outbox._failure import ErrorInfo
from outbox._logs import event
from outbox.config import Settings
from tierbox.workers.consumers import watch_cancel
from tierbox.workers.ledger import Ledger

log = logging.getLogger("tierbox.worker")

#: x-death reasons RabbitMQ uses, mapped to ``dead_letters.reason``.
X_DEATH_REASONS = {"rejected": "rejected", "maxlen": "maxlen", "expired": "expired",
                   "delivery_limit": "delivery_limit"}
SWEEP_PREFETCH = 20


def death_reason(headers: dict[str, Any] | None) -> tuple[str, str]:
    """(reason, description) from the x-death / x-first-death-reason headers."""
    headers = headers or {}
    first = headers.get("x-first-death-reason")
    deaths = headers.get("x-death") or []
    if not first and deaths and isinstance(deaths[0], dict):
        first = deaths[0].get("reason")
    raw = first.decode() if isinstance(first, bytes) else str(first or "rejected")
    queue = headers.get("x-first-death-queue", b"")
    queue = queue.decode() if isinstance(queue, bytes) else str(queue)
    return X_DEATH_REASONS.get(raw, "rejected"), f"RabbitMQ dead-lettered the message from {queue or '?'}: {raw}"


class DlqSweeper:
    """Consumes the dlqs of some tiers and records each message as a dead letter."""

    def __init__(self, settings: Settings, connection: aio_pika.abc.AbstractConnection, ledger: Ledger,
                 tiers: list[str]) -> None:
        self.settings = settings
        self.connection = connection
        self.ledger = ledger
        self.tiers = tiers
        self._consumers: list[tuple[aio_pika.abc.AbstractQueue, str]] = []

    async def start(self, lost: asyncio.Event | None = None) -> None:
        """Start consuming every dlq of the pool's tiers; ``lost`` is set if the broker cancels one of
        these consumers (the dlq was deleted: the pool then declares it again and re-subscribes)."""
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=SWEEP_PREFETCH)
        for tier in self.tiers:
            queue = await channel.get_queue(self.settings.dlq_name(tier), ensure=False)
            if lost is not None:
                await watch_cancel(channel, queue.name, lost)
            tag = await queue.consume(self._receiver(tier))
            self._consumers.append((queue, tag))

    async def stop(self) -> None:
        """Stop consuming (unacked dlq messages return to their dlq)."""
        for queue, tag in self._consumers:
            try:
                await queue.cancel(tag)
            except Exception as exc:  # noqa: BLE001 - channel already gone
                event(log, "worker.dlq_cancel_failed", logging.DEBUG, error=exc)

    def _receiver(self, tier: str) -> Any:
        async def receive(message: AbstractIncomingMessage) -> None:
            try:
                await self.sweep(tier, message)
                await message.ack()
            except Exception as exc:  # noqa: BLE001 - stays in the dlq; swept again later
                event(log, "worker.dlq_sweep_failed", logging.WARNING, tier=tier, error=exc)
                await message.nack(requeue=True)
        return receive

    async def sweep(self, tier: str, message: AbstractIncomingMessage) -> None:
        """Record one dlq message as a dead letter (idempotent per job)."""
        reason, description = death_reason(message.headers)
        error = ErrorInfo("BrokerDeadLettered", description)
        try:
            env = encoding.decode_envelope(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            env = None
        if env is not None and await self.ledger.dead_without_attempt(env.id, reason, error):
            event(log, "worker.dead_lettered", logging.WARNING, job_id=env.id, reason=reason, source="dlq")
            return
        if env is not None and await self._job_known(env.id):
            return  # finished or running elsewhere: this copy was a duplicate
        await self.ledger.dead_message(
            tier=tier, reason=reason, error=error, raw_body=message.body, headers=safe_headers(message),
            job_id=env.id if env else None, task=env.task if env else None,
            payload=bytes(env.payload) if env else None, priority=message.priority,
        )
        event(log, "worker.dead_lettered", logging.WARNING, reason=reason, source="dlq", tier=tier,
              message_id=message.message_id)

    async def _job_known(self, job_id: Any) -> bool:
        return await self.ledger.job_exists(job_id)


def safe_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    """AMQP headers as JSON-safe strings (bounded), for a dead letter's audit."""
    out: dict[str, Any] = {k: str(v)[:200] for k, v in (message.headers or {}).items()}
    out["content_type"] = message.content_type or ""
    out["redelivered"] = bool(message.redelivered)
    return out
