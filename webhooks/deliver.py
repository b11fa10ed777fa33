"""The built-in task ``tierbox.webhook.deliver``: POST one job's outcome, signed, to its receiver.

Its jobs are written by the trigger of revision 0013 in the transaction that records a job's final
outcome; it is an ordinary Tierbox task, so its retries, back-off, dead letters, triage and
redrive are every task's. Workers register it themselves (``tierbox worker`` imports this module).
What an attempt does, in order (docs/webhooks.md has the table):

1. read the job and its declaration (``ctx.session``: the attempt's transaction);
2. ask the receiver's circuit breaker (open: fail now, retried later, the host is not contacted);
3. sign the body with every value of the named secret (Standard Webhooks);
4. resolve and check the host again, connect to the checked address, POST;
5. 2xx: success, ``delivered_at`` recorded with it. 408, 429, 5xx, network errors and timeouts:
   a retryable failure. Any other status (3xx included: redirects are not followed): ``Reject``,
   dead-lettered at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import uuid
from typing import Any

import httpx
import msgspec

import outbox
from outbox._sql import run_async
from outbox.errors import Reject
from outbox.registry import Task
from outbox.webhooks import (
    DEFAULT_TIER,
    DELIVERY_BACKOFF_MAX_S,
    DELIVERY_BACKOFF_S,
    DELIVERY_MAX_RETRIES,
    DELIVERY_TASK,
    WebhookError,
    secret_env,
)
from tierbox.ops.redaction import redact
from tierbox.webhooks import queries, signing, transport
from tierbox.webhooks.breaker import breaker_name, breakers
from tierbox.workers.outcomes import RETRY_AFTER_ATTR

#: Statuses worth trying again: the receiver is overloaded, restarting or timing out.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))
#: Characters of the job's error message sent in the body.
ERROR_MESSAGE_CHARS = 500


class DeliveryError(Exception):
    """The receiver did not take it (no answer, timeout, 408/429/5xx): retried with back-off, no sooner
    than ``retry_after_s`` (a receiver's ``Retry-After``, an open breaker's remaining time) if given."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        if retry_after_s is not None:  # read by the worker's retry delay (tierbox.workers.outcomes)
            setattr(self, RETRY_AFTER_ATTR, min(max(retry_after_s, 0.0), DELIVERY_BACKOFF_MAX_S))


class HostCircuitOpenError(DeliveryError):
    """The receiver's breaker is open: not contacted, retried with back-off."""


def message_id(job_id: uuid.UUID) -> str:
    """The ``webhook-id`` of a job's announcement: the same for every attempt and every redrive of the
    delivery, so the receiver's idempotency on it sees each outcome once."""
    return f"msg_{job_id.hex}"


def body(a: queries.Announcement) -> dict[str, Any]:
    """The JSON document announced (Standard Webhooks' ``type``/``timestamp``/``data`` envelope).

    Identical on every attempt: ``timestamp`` is when the outcome was recorded, not when it is sent.
    """
    error = None
    if a.outcome != "succeeded" and (a.last_error or a.error_type):
        error = redact({"type": a.error_type, "message": (a.last_error or "")[:ERROR_MESSAGE_CHARS]}, a.task)
    data: dict[str, Any] = {
        "job_id": str(a.job_id), "task": a.task, "tier": a.tier, "status": a.outcome, "attempts": a.attempts,
        "enqueued_at": _iso(a.enqueued_at), "finished_at": _iso(a.finished_at), "error": error,
    }
    if a.include_result and a.outcome == "succeeded":
        data["result"] = redact(a.result, a.task)
    return {"type": f"job.{a.outcome}", "timestamp": _iso(a.finished_at or a.enqueued_at), "data": data}


async def deliver(ctx: outbox.TaskContext, job_id: str) -> None:
    """Deliver the completion webhook of job ``job_id`` (the payload of the trigger's jobs)."""
    rows = await run_async(ctx.session, queries.ANNOUNCEMENT, {"job_id": job_id, "delivery_id": ctx.job_id})
    if not rows:  # pruned, or its declaration deleted: nothing to announce
        raise Reject(f"job {job_id} has no webhook declaration (pruned?)", fingerprint="webhook-gone")
    a = rows[0]
    secrets = signing.secret_values(a.secret_name)
    decision = await breakers.admit(a.url, ctx.tier)
    if not decision.run:
        raise HostCircuitOpenError(f"breaker {breaker_name(a.url)} is open: not contacted (half-opens in "
                                   f"~{decision.delay_s:.0f} s)", retry_after_s=decision.delay_s)
    ok = False
    try:
        answer = await send(a, secrets)
        ok = answer.status < 500 and answer.status != 429
    except DeliveryError as exc:  # no answer: a failed contact
        give_up_if_spent(ctx.attempt, a, str(exc))
        raise
    finally:
        await breakers.record(a.url, ctx.tier, ok, decision)
    judge(answer, a, ctx.attempt)
    await run_async(ctx.session, queries.MARK_DELIVERED, {"job_id": job_id, "status": answer.status})


def judge(answer: transport.Answer, a: queries.Announcement, attempt: int) -> None:
    """Return if ``answer`` took the delivery (2xx); otherwise raise what the worker records:
    :class:`DeliveryError` (retried) for 408/425/429/5xx, :class:`~outbox.Reject` (dead-lettered now)
    for any other status, 3xx included, or once attempt ``attempt`` spent the retries."""
    if 200 <= answer.status < 300:
        return
    detail = f"{a.url} answered {answer.status}: {answer.snippet!r}"
    if answer.status in RETRY_STATUSES:
        retry_after = f" (Retry-After: {answer.retry_after})" if answer.retry_after else ""
        give_up_if_spent(attempt, a, detail + retry_after)
        raise DeliveryError(detail + retry_after, retry_after_seconds(answer.retry_after))
    raise Reject(detail + (" (redirects are not followed)" if 300 <= answer.status < 400 else ""),
                 fingerprint=f"webhook-http-{answer.status}")


async def send(a: queries.Announcement, secrets: list[str], limits: transport.Limits = transport.LIMITS
               ) -> transport.Answer:
    """Sign ``a``'s body with every secret value and POST it within ``limits``; :class:`DeliveryError`
    if no answer came (network error, a read or the whole request timing out)."""
    text = msgspec.json.encode(body(a)).decode()
    msg_id, now = message_id(a.job_id), dt.datetime.now(dt.UTC)
    headers = {
        "webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signing.signature(secrets, msg_id, now, text, secret_env(a.secret_name)),
    }
    try:
        async with asyncio.timeout(limits.total_s):
            return await transport.post(a.url, text.encode(), headers, limits)
    except (httpx.TransportError, TimeoutError) as exc:
        raise DeliveryError(f"{a.url}: no answer ({type(exc).__name__}: {str(exc)[:200]})") from None


def give_up_if_spent(attempt: int, a: queries.Announcement, detail: str) -> None:
    """Dead-letter the delivery (raise :class:`~outbox.Reject`) once attempt ``attempt`` is the
    receiver's ``max_retries + 1``-th failed contact.

    The delivery job's own ``max_retries`` is the declaration's plus :data:`BREAKER_SKIPS_ALLOWED`
    (revision 0013's trigger), so attempts that found the breaker open (opened by other deliveries
    to the same host, the receiver not contacted) do not use up the retries; the contacts are
    counted here, from the attempts recorded so far.
    """
    failed_contacts = attempt - a.breaker_skips  # this one included
    if failed_contacts > a.max_retries:
        raise Reject(f"{detail}; gave up after {failed_contacts} failed contacts "
                     f"({a.breaker_skips} attempts found the breaker open)", fingerprint="webhook-retries-spent")


def retry_after_seconds(header: str | None, now: dt.datetime | None = None) -> float | None:
    """A ``Retry-After`` header (delay-seconds or an HTTP-date) as seconds from now; None if absent or
    unreadable. The worker caps it at the task's longest back-off (600 s)."""
    if not header:
        return None
    text = header.strip()
    if text.isdigit():
        return float(text)
    try:
        at = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if at.tzinfo is None:
        return None
    return max((at - (now or dt.datetime.now(dt.UTC))).total_seconds(), 0.0)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


#: The registered task (what ``tierbox worker`` imports this module for).
TASK: Task = outbox.task(deliver, name=DELIVERY_TASK, tier=DEFAULT_TIER, max_retries=DELIVERY_MAX_RETRIES,
                         retry_backoff_s=DELIVERY_BACKOFF_S, retry_backoff_max_s=DELIVERY_BACKOFF_MAX_S,
                         timeout_s=transport.TOTAL_TIMEOUT_S + 15.0, no_retry_on=(Reject, WebhookError))
