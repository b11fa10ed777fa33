"""Tasks of the tracing tests: handlers that open spans of their own (they must nest under the
worker's process span), and one that fails once. Importable without opentelemetry installed."""

from __future__ import annotations

from typing import Any

import outbox
from outbox.tiers import Tier

try:
    from opentelemetry import trace
except ImportError:  # the no-opentelemetry test imports this module too
    trace = None  # type: ignore[assignment]


def _span(name: str, ctx: outbox.TaskContext) -> Any:
    if trace is None:
        import contextlib

        return contextlib.nullcontext()
    return trace.get_tracer("tests.tracing").start_as_current_span(name, attributes={"test.attempt": ctx.attempt})


@outbox.task(tier=Tier.HIGH, name="traced.work")
def work(ctx: outbox.TaskContext, secret: str = "") -> None:
    """A sync handler (runs in a thread) with a span of its own."""
    with _span("handler work", ctx):
        pass


@outbox.task(tier=Tier.HIGH, name="traced.async_work")
async def async_work(ctx: outbox.TaskContext, secret: str = "") -> None:
    """An async handler with a span of its own."""
    with _span("handler async work", ctx):
        pass


@outbox.task(tier=Tier.HIGH, name="traced.flaky", max_retries=2, retry_backoff_s=0.1, retry_backoff_max_s=0.2)
def flaky(ctx: outbox.TaskContext) -> None:
    """Fail the first attempt, succeed the second."""
    with _span("handler flaky", ctx):
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")


@outbox.task(tier=Tier.HIGH, name="traced.reject")
def reject(ctx: outbox.TaskContext) -> None:
    """Fail with a non-retryable error: the job is dead-lettered at once (then redriven by the test)."""
    raise outbox.Reject("declined")


@outbox.task(tier=Tier.HIGH, name="traced.chain")
def chain(ctx: outbox.TaskContext) -> None:
    """Enqueue a follow-up job through the attempt's transaction: its trace goes on through it."""
    outbox.enqueue(ctx.session, "traced.work")


@outbox.task(tier=Tier.HIGH, name="traced.rated", rate_limit="1/s")
def rated(ctx: outbox.TaskContext) -> None:
    """At most one start a second: a burst is deferred by flow control."""
