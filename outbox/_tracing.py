"""OpenTelemetry tracing of a job's way: ``create`` at enqueue, ``send`` in the relay, ``process`` per attempt.

The only module of Tierbox that imports OpenTelemetry, and only its API (``opentelemetry-api``,
the ``otel`` extra), lazily. Without the package, or while no SDK has set a tracer provider
(the API's default is a no-op), :func:`enabled` is False and every hook stays unused: callers
check it once (enqueue, the relay) or once per pool (the worker), and the answer is cached,
so tracing off costs one boolean check per job. The check is made at first use: set your
tracer provider up at startup, before the first enqueue (``opentelemetry-instrument`` and
every SDK setup do); :func:`refresh` checks again.

The creation context of a job (its ``create`` span) is stored with the job row, in its
``headers``, under reserved keys, inside the caller's transaction: ``traceparent`` and
``tracestate`` (W3C Trace Context) and :data:`HEADER_TRACE_JOB`, the id of the job whose
first attempt may continue that trace (set only for a job due at once). The relay copies
``traceparent``/``tracestate`` unchanged into the AMQP headers, with ``x-tierbox-trace-job``.

Library code never configures a provider; the ``tierbox relay`` and ``tierbox worker``
processes call :func:`configure_from_env`, which does when the standard ``OTEL_*``
environment asks for it.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from outbox.enqueue import JobSpec

log = logging.getLogger("tierbox.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: Reserved job header: the id of the job whose first, undelayed attempt continues the stored trace.
#: A redriven job copies its dead letter's headers, so it names another job: it links instead.
HEADER_TRACE_JOB = "x-tierbox-trace-job"
#: Every job header Tierbox reserves for tracing (the relay copies these into the AMQP headers).
RESERVED_HEADERS = (TRACEPARENT, TRACESTATE, HEADER_TRACE_JOB)

#: ``messaging.system`` of every span.
SYSTEM = "rabbitmq"
#: OTEL_* variables any of which makes :func:`configure_from_env` set the SDK up.
_ASKING_ENV = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

_on: bool | None = None  # None: not checked yet
_tracer: Tracer | None = None
_encoder = msgspec.json.Encoder()


def enabled() -> bool:
    """Whether spans are recorded: the API is installed and a real tracer provider is set (cached)."""
    on = _on
    return _detect() if on is None else on


def refresh() -> bool:
    """Check again whether a tracer provider is set (after one was set up late); returns :func:`enabled`."""
    global _on
    _on = None
    return enabled()


def _detect() -> bool:
    global _on, _tracer
    try:
        from opentelemetry import trace
    except ImportError:
        _on = False
        return False
    provider = trace.get_tracer_provider()
    _on = not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
    _tracer = trace.get_tracer("tierbox") if _on else None
    return _on


def _get_tracer() -> Tracer:
    if _tracer is None:
        raise RuntimeError("tracing is not enabled")
    return _tracer


def continues(job_id: uuid.UUID | str, attempt: int, headers: Mapping[str, Any]) -> bool:
    """Whether this attempt runs in the trace that created the job (a child), not in one of its own
    (linked to it): only the first attempt of a job due at once, and of the very job that was traced
    (not a redriven copy)."""
    return attempt <= 1 and headers.get(HEADER_TRACE_JOB) == str(job_id)


def _extract(headers: Mapping[str, Any]) -> Context | None:
    """The creation context stored in ``headers`` (None if there is none or it is malformed)."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = headers.get(TRACEPARENT)
    if not isinstance(parent, str):
        return None
    carrier = {TRACEPARENT: parent}
    state = headers.get(TRACESTATE)
    if isinstance(state, str):
        carrier[TRACESTATE] = state
    ctx = TraceContextTextMapPropagator().extract(carrier)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def _attributes(operation: str, tier: str, task: str, job_id: object, **more: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.message.id": str(job_id),
        "messaging.rabbitmq.destination.routing_key": tier,
        "tierbox.task": task,
        "tierbox.tier": tier,
    }
    attrs.update((k, v) for k, v in more.items() if v is not None)
    return attrs


# --- enqueue: the create span, and the context stored with the job


class Creation:
    """The ``create`` spans of one enqueue call, one per job, and the specs carrying their contexts."""

    def __init__(self, specs: Sequence[JobSpec]) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        tracer, propagator = _get_tracer(), TraceContextTextMapPropagator()
        current = context.get_current()
        has_parent = trace.get_current_span(current).get_span_context().is_valid
        self.spans: list[Span] = []
        self.specs: list[JobSpec] = []
        for spec in specs:
            headers = _decode(spec.headers)
            # No span of the caller's: a traceparent the caller put in the headers (a trace from
            # elsewhere) is the parent, so it is continued rather than dropped.
            parent = current if has_parent else (_extract(headers) or current)
            span = tracer.start_span(
                f"create {spec.tier}", context=parent, kind=SpanKind.PRODUCER,
                attributes=_attributes("create", spec.tier, spec.task, spec.id, **{
                    "tierbox.attempt": 0, "tierbox.idempotency_key.present": spec.idempotency_key is not None,
                    "tierbox.delayed": spec.run_at is not None or bool(spec.delay_s)}))
            carrier: dict[str, str] = {}
            propagator.inject(carrier, trace.set_span_in_context(span, parent))
            for key in RESERVED_HEADERS:
                headers.pop(key, None)
            headers.update(carrier)
            if spec.run_at is None and not spec.delay_s:
                headers[HEADER_TRACE_JOB] = str(spec.id)
            self.spans.append(span)
            self.specs.append(msgspec.structs.replace(spec, headers=_encoder.encode(headers).decode()))

    def done(self, ids: Sequence[uuid.UUID]) -> None:
        """The jobs were written: mark those an idempotency key resolved to an earlier job."""
        for span, spec, job_id in zip(self.spans, self.specs, ids, strict=True):
            if job_id != spec.id:
                span.set_attribute("tierbox.deduplicated", True)
                span.set_attribute("tierbox.existing_job_id", str(job_id))

    def __enter__(self) -> Creation:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        for span in self.spans:
            if exc is not None:
                _fail(span, exc)
            span.end()


def _decode(headers: str) -> dict[str, Any]:
    if headers == "{}":
        return {}
    value = msgspec.json.decode(headers)
    return dict(value) if isinstance(value, dict) else {}


# --- the relay: the send span


def sending(job_id: uuid.UUID, task: str, tier: str, attempt: int, headers: Mapping[str, Any],
            exchange: str) -> AbstractContextManager[Span]:
    """The ``send`` span of one published message: a child of the job's creation context for a job
    due at once (:func:`continues`), and linked to it in every case."""
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanKind

    created = _extract(headers)
    links = [Link(trace.get_current_span(created).get_span_context())] if created is not None else None
    parent = created if created is not None and continues(job_id, attempt, headers) else None
    return _get_tracer().start_as_current_span(
        f"send {tier}", context=parent, kind=SpanKind.PRODUCER, links=links,
        attributes=_attributes("send", tier, task, job_id, **{"messaging.destination.name": exchange,
                                                             "tierbox.attempt": attempt}))


def unconfirmed(span: Span, what: str) -> None:
    """The broker did not confirm a ``send`` span's publish (a nack or a return): an error, named."""
    from opentelemetry.trace import StatusCode

    span.set_attribute("error.type", what)
    span.set_status(StatusCode.ERROR, what)


# --- the worker: the process span


@contextmanager
def processing(job_id: str | None, tier: str, headers: Mapping[str, Any], exchange: str | None,
               delivery_tag: int | None, end_on_exit: bool = True) -> Iterator[Span]:
    """The ``process`` span of one delivery, current while it runs (so the handler's own spans,
    and instrumented libraries', nest under it): a child of the creation context for the first
    attempt of a job due at once, else a root linked to it (retries, delayed, scheduled, redriven).
    ``end_on_exit=False``: the caller ends it (the worker's finishing stage outlives the block)."""
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanKind

    attempt = headers.get("x-tierbox-attempt")
    attempt = attempt if isinstance(attempt, int) else None
    created = _extract(headers)
    child = created is not None and job_id is not None and continues(job_id, attempt or 1, headers)
    links = None
    if created is not None and not child:
        links = [Link(trace.get_current_span(created).get_span_context())]
    task = headers.get("x-tierbox-task")
    attrs = _attributes("process", tier, task if isinstance(task, str) else "", job_id, **{
        "messaging.destination.name": exchange, "tierbox.attempt": attempt,
        "messaging.rabbitmq.message.delivery_tag": delivery_tag})
    with _get_tracer().start_as_current_span(
        f"process {tier}", context=created if child else None, kind=SpanKind.CONSUMER, links=links,
        attributes=attrs, record_exception=True, set_status_on_exception=True, end_on_exit=end_on_exit,
    ) as span:
        yield span


def outcome(key: str) -> None:
    """Record a delivery's outcome (``succeeded``, ``retried``, ``dead``, ``deferred_<reason>``...) on
    the current span; a dead letter also sets its status to error."""
    from opentelemetry import trace
    from opentelemetry.trace import StatusCode

    span = trace.get_current_span()
    span.set_attribute("tierbox.outcome", key)
    if key == "dead":
        span.set_status(StatusCode.ERROR, "dead-lettered")


def failed(exc: BaseException) -> None:
    """The attempt's handler raised ``exc`` (or ran out of time): an exception event on the current span."""
    from opentelemetry import trace

    _fail(trace.get_current_span(), exc)


def _fail(span: Span, exc: BaseException) -> None:
    from opentelemetry.trace import StatusCode

    span.record_exception(exc)
    span.set_attribute("error.type", type(exc).__qualname__)
    span.set_status(StatusCode.ERROR, f"{type(exc).__name__}")


# --- logs


def current_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids as hex, for log lines; None without one."""
    if not enabled():
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


# --- processes: the SDK, when the environment asks for it


def configure_from_env(service_name: str) -> bool:
    """Set up the OpenTelemetry SDK for a Tierbox process from the standard ``OTEL_*`` environment.

    Only when asked: one of ``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (and ``OTEL_SDK_DISABLED`` is not ``true``).
    A provider already set (the process runs under ``opentelemetry-instrument``) is kept. The
    setup is the SDK's own, the configurator ``opentelemetry-instrument`` runs (through
    opentelemetry-distro, whose configurator is a bare subclass of the SDK's), so every
    ``OTEL_*`` variable means what the OpenTelemetry docs say; Tierbox only supplies defaults:
    traces over OTLP/HTTP, no metrics or logs exporter, and ``OTEL_SERVICE_NAME=service_name``.
    Returns whether spans are recorded.
    """
    env = os.environ  # the SDK reads os.environ itself: defaults go there, for this process only
    if not any(env.get(name) for name in _ASKING_ENV) or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return refresh()
    try:
        from opentelemetry import trace
        from opentelemetry.sdk._configuration import _OTelSDKConfigurator
    except ImportError as exc:
        from outbox._logs import event

        event(log, "tracing.sdk_missing", logging.WARNING, error=exc,
              fix="pip install 'tierbox[otel-sdk]' (or unset the OTEL_* variables)")
        return refresh()
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return refresh()  # set up already, by opentelemetry-instrument or the application
    env.setdefault("OTEL_SERVICE_NAME", service_name)
    env.setdefault("OTEL_TRACES_EXPORTER", "otlp")
    env.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    env.setdefault("OTEL_METRICS_EXPORTER", "none")
    env.setdefault("OTEL_LOGS_EXPORTER", "none")
    # The SDK's configurator is meant to be subclassed by a distro, and this is what
    # opentelemetry-distro's is (a bare subclass): the same setup without its dependencies.
    type("TierboxConfigurator", (_OTelSDKConfigurator,), {})().configure()
    return refresh()


def shutdown() -> None:
    """Export the spans still buffered and stop the SDK (before a process exits without atexit)."""
    if not enabled():
        return
    from opentelemetry import trace

    stop = getattr(trace.get_tracer_provider(), "shutdown", None)
    if callable(stop):
        stop()
