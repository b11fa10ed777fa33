"""The create span and the context stored with a job, on a real SDK tracer (not the global provider,
so the other tests of this process stay untraced)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import outbox
from outbox import _tracing as tracing
from tests import sample_tasks  # noqa: F401 - registers sample.webhook

FOREIGN = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(tracing, "_on", True)
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("tierbox"))
    yield memory
    provider.shutdown()


def test_a_caller_traceparent_is_continued_and_replaced(exporter: InMemorySpanExporter) -> None:
    spec = outbox.job("sample.webhook", args=["payload-secret"],
                      headers={"traceparent": FOREIGN, "tenant": "acme"}, idempotency_key="key-secret")
    with tracing.Creation([spec]) as creation:
        creation.done([spec.id])
    [span] = exporter.get_finished_spans()
    headers = json.loads(creation.specs[0].headers)
    assert span.context.trace_id == int(FOREIGN.split("-")[1], 16)  # the foreign trace goes on
    assert span.parent is not None and span.parent.span_id == int(FOREIGN.split("-")[2], 16)
    assert headers["traceparent"].split("-")[2] == format(span.context.span_id, "016x")
    assert headers["tenant"] == "acme" and headers["x-tierbox-trace-job"] == str(spec.id)
    assert span.kind is trace.SpanKind.PRODUCER and span.name == "create high"
    assert span.attributes["tierbox.idempotency_key.present"] is True
    attributes = repr(dict(span.attributes or {}))
    assert "key-secret" not in attributes and "payload-secret" not in attributes and "acme" not in attributes


def test_a_delayed_job_is_not_continued_by_its_first_attempt(exporter: InMemorySpanExporter) -> None:
    later = outbox.job("sample.webhook", args=["e2"], delay=60)
    with tracing.Creation([later]) as creation:
        creation.done([later.id])
    headers = json.loads(creation.specs[0].headers)
    assert "x-tierbox-trace-job" not in headers
    [span] = exporter.get_finished_spans()
    assert span.attributes["tierbox.delayed"] is True


def test_a_deduplicated_job_and_a_failed_write_are_marked(exporter: InMemorySpanExporter) -> None:
    a, b = outbox.job("sample.webhook", args=["a"]), outbox.job("sample.webhook", args=["b"])
    earlier = uuid.uuid4()
    with tracing.Creation([a]) as creation:
        creation.done([earlier])
    with pytest.raises(RuntimeError), tracing.Creation([b]):
        raise RuntimeError("insert failed")
    first, second = exporter.get_finished_spans()
    assert first.attributes["tierbox.deduplicated"] is True
    assert first.attributes["tierbox.existing_job_id"] == str(earlier)
    assert second.status.status_code is trace.StatusCode.ERROR
    assert [e.name for e in second.events] == ["exception"]


def test_continues_only_the_first_attempt_of_the_traced_job() -> None:
    job_id = uuid.uuid4()
    headers = {"traceparent": FOREIGN, "x-tierbox-trace-job": str(job_id)}
    assert tracing.continues(job_id, 1, headers)
    assert not tracing.continues(job_id, 2, headers)  # a retry
    assert not tracing.continues(uuid.uuid4(), 1, headers)  # a redriven copy
    assert not tracing.continues(job_id, 1, {"traceparent": FOREIGN})  # delayed or scheduled
