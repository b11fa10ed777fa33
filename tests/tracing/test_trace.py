"""One trace from an enqueue through the relay to every attempt, across real processes.

The enqueuing process (tests.tracing.enqueuer), the relay and the worker each export their spans
over OTLP/HTTP to a receiver this test runs; the spans are decoded with opentelemetry-proto and
checked for kinds, parentage, links and attributes.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from outbox.config import Settings
from tests.helpers import ROOT, settings_env
from tests.system import System
from tests.tracing.receiver import Receiver, Span

#: A value put in every job's arguments: it must appear in no span (payloads are never recorded).
SECRET = "card-4242-secret"


def otel_env(receiver: Receiver) -> dict[str, str]:
    """What a deployment sets to export a process's spans: the standard OTEL_* variables."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
            "TIERBOX_LOG_FORMAT": "json"}


def enqueue(settings: Settings, jobs: list[tuple[str, dict[str, Any]]], receiver: Receiver | None,
            rollback: bool = False, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Enqueue ``jobs`` from a process of its own (inside a parent span when ``receiver``)."""
    spec = {"database_url": settings.database_url, "endpoint": receiver.endpoint if receiver else None,
            "jobs": jobs, "rollback": rollback}
    child_env = settings_env(settings) | (env or {})
    done = subprocess.run([sys.executable, "-m", "tests.tracing.enqueuer", json.dumps(spec)], env=child_env,
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def start(system: System, receiver: Receiver | None, env: dict[str, str] | None = None) -> None:
    extra = (otel_env(receiver) if receiver else {}) | (env or {})
    system.start("relay", env=extra)
    system.wait(lambda: "relay.connected" in system.procs[-1].output(), what="relay connected")
    system.worker(env=extra)


def one(spans: list[Span], what: str) -> Span:
    assert len(spans) == 1, f"expected one {what}, got {spans}"
    return spans[0]


def messaging(span: Span, operation: str, job_id: str, task: str) -> None:
    a = span.attributes
    assert a["messaging.system"] == "rabbitmq"
    assert a["messaging.operation.type"] == operation
    assert a["messaging.operation.name"] == operation
    assert a["messaging.message.id"] == job_id
    assert a["messaging.rabbitmq.destination.routing_key"] == "high"
    assert a["tierbox.task"] == task
    assert a["tierbox.tier"] == "high"
    assert span.name == f"{operation} high"


def no_payload(spans: list[Span]) -> None:
    for s in spans:
        assert SECRET not in repr(s.attributes) + repr(s.events), s


def test_one_enqueue_yields_one_trace_across_three_processes(system: System, receiver: Receiver) -> None:
    start(system, receiver)
    out = enqueue(system.settings, [("traced.work", {"secret": SECRET})], receiver)
    job_id, trace_id = out["ids"][0], out["trace_id"]
    system.wait_status(uuid.UUID(job_id), "succeeded")
    try:
        receiver.wait_for(lambda s: s.name == "handler work" and s.trace_id == trace_id, what="the handler's span")
        # The process span ends last, once the finishing stage has recorded the outcome and acked.
        receiver.wait_for(lambda s: s.name.startswith("process") and s.trace_id == trace_id, what="the process span")
    except AssertionError:
        raise AssertionError(f"{receiver.spans}\n{system.logs()[-6000:]}") from None
    spans = receiver.find(lambda s: s.trace_id == trace_id)
    print(receiver.tree(trace_id))  # the span tree the docs show (pytest -s)

    parent = one([s for s in spans if s.name == "checkout"], "parent span")
    create = one([s for s in spans if s.name.startswith("create")], "create span")
    send = one([s for s in spans if s.name.startswith("send")], "send span")
    process = one([s for s in spans if s.name.startswith("process")], "process span")
    handler = one([s for s in spans if s.name == "handler work"], "handler span")

    # Three processes, one trace.
    assert (parent.service, create.service, send.service, process.service) == (
        "test-enqueuer", "test-enqueuer", "tierbox-relay", "tierbox-worker")
    assert (create.kind, send.kind, process.kind, handler.kind) == ("PRODUCER", "PRODUCER", "CONSUMER", "INTERNAL")
    # Parentage: create in the caller's span; send and process children of create; the handler's own span
    # (a sync handler, in a thread) under process.
    assert create.parent_span_id == parent.span_id == out["span_id"]
    assert send.parent_span_id == create.span_id
    assert send.links == [(trace_id, create.span_id)]
    assert process.parent_span_id == create.span_id and process.links == []
    assert handler.parent_span_id == process.span_id

    messaging(create, "create", job_id, "traced.work")
    messaging(send, "send", job_id, "traced.work")
    messaging(process, "process", job_id, "traced.work")
    assert create.attributes["tierbox.idempotency_key.present"] is False
    assert send.attributes["messaging.destination.name"] == system.settings.exchange_name
    assert process.attributes["messaging.destination.name"] == system.settings.exchange_name
    assert (send.attributes["tierbox.attempt"], process.attributes["tierbox.attempt"]) == (1, 1)
    assert process.attributes["tierbox.outcome"] == "succeeded"
    no_payload(spans)

    # The context stored with the job is the create span's, and the relay forwarded it unchanged.
    version, stored_trace, stored_span, flags = out["headers"]["traceparent"].split("-")
    assert (version, stored_trace, stored_span) == ("00", trace_id, create.span_id)
    assert int(flags, 16) & 1  # sampled
    assert out["headers"]["x-tierbox-trace-job"] == job_id


def test_an_async_handler_nests_its_spans_under_process(system: System, receiver: Receiver) -> None:
    start(system, receiver)
    out = enqueue(system.settings, [("traced.async_work", {})], receiver)
    handler = one(receiver.wait_for(lambda s: s.name == "handler async work", what="the handler's span"), "handler")
    # Its parent, the process span, ends after it (the finishing stage records the outcome first).
    process = one(receiver.wait_for(lambda s: s.span_id == handler.parent_span_id, what="its parent"), "its parent")
    assert process.name == "process high" and process.trace_id == out["trace_id"]


def test_a_retried_attempt_links_to_the_first_trace(system: System, receiver: Receiver) -> None:
    start(system, receiver)
    out = enqueue(system.settings, [("traced.flaky", {})], receiver)
    job_id, trace_id = out["ids"][0], out["trace_id"]
    system.wait_status(uuid.UUID(job_id), "succeeded")
    processes = receiver.wait_for(lambda s: s.name == "process high" and s.attributes["messaging.message.id"] == job_id,
                                  count=2, what="two process spans")
    sends = receiver.wait_for(lambda s: s.name == "send high" and s.attributes["messaging.message.id"] == job_id,
                              count=2, what="two send spans")
    create = one(receiver.find(lambda s: s.name == "create high" and s.trace_id == trace_id), "create")
    first, second = sorted(processes, key=lambda s: s.attributes["tierbox.attempt"])
    print(receiver.tree(trace_id))
    print(receiver.tree(second.trace_id))

    # The first attempt continues the enqueue's trace; it failed: outcome, status and exception event.
    assert first.trace_id == trace_id and first.parent_span_id == create.span_id
    assert first.attributes["tierbox.outcome"] == "retried"
    assert first.status_code == 2  # STATUS_CODE_ERROR
    exception = one([e for e in first.events if e[0] == "exception"], "exception event")
    assert exception[1]["exception.type"] == "RuntimeError"
    assert exception[1]["exception.message"] == "first attempt fails"
    # The retry is a trace of its own (published again by the relay), linked to the creation context.
    assert second.attributes["tierbox.attempt"] == 2
    assert second.trace_id != trace_id and second.parent_span_id != create.span_id
    assert second.links == [(trace_id, create.span_id)]
    assert second.attributes["tierbox.outcome"] == "succeeded"
    resend = one([s for s in sends if s.attributes["tierbox.attempt"] == 2], "second send")
    assert resend.trace_id != trace_id and resend.links == [(trace_id, create.span_id)]
    assert resend.trace_id != second.trace_id  # the AMQP headers carry the creation context, not the send's

    # The worker's JSON log line of the retry carries the first attempt's trace and span ids.
    lines = [json.loads(line) for line in system.procs[1].output().splitlines() if line.startswith("{")]
    retry = one([x for x in lines if x.get("action") == "worker.retry_scheduled"], "retry log line")
    assert retry["job_id"] == job_id and retry["level"] == "INFO" and retry["logger"] == "tierbox.worker"
    assert (retry["trace_id"], retry["span_id"]) == (trace_id, first.span_id)
    assert retry["attempt"] == 1 and "time" in retry


def test_a_rolled_back_enqueue_has_no_send_or_process_span(system: System, receiver: Receiver) -> None:
    start(system, receiver)
    rolled_back = enqueue(system.settings, [("traced.work", {})], receiver, rollback=True)
    job_id, trace_id = rolled_back["ids"][0], rolled_back["trace_id"]
    # A job committed after it: once its process span is in, the relay and worker have long passed.
    later = enqueue(system.settings, [("traced.work", {})], receiver)
    receiver.wait_for(lambda s: s.name == "process high" and s.trace_id == later["trace_id"], what="the later job")
    assert system.q("SELECT count(*) FROM outbox.jobs WHERE id = %s", uuid.UUID(job_id))[0][0] == 0
    of_job = receiver.find(lambda s: s.attributes.get("messaging.message.id") == job_id)
    assert [s.name for s in of_job] == ["create high"]  # the attempt to create, and nothing after
    assert sorted(s.name for s in receiver.find(lambda s: s.trace_id == trace_id)) == ["checkout", "create high"]


def test_a_delayed_job_links_instead_of_continuing(system: System, receiver: Receiver) -> None:
    start(system, receiver)
    # Enqueued by hand with a delay: the same enqueuer, through the library's delay option.
    out = enqueue(system.settings, [("traced.work", {})], receiver, env={"TRACING_TEST_DELAY_S": "0.3"})
    job_id, trace_id = out["ids"][0], out["trace_id"]
    assert "x-tierbox-trace-job" not in out["headers"]
    process = one(receiver.wait_for(lambda s: s.name == "process high" and s.attributes["messaging.message.id"] == job_id,
                                    what="process span"), "process")
    create = one(receiver.find(lambda s: s.name == "create high" and s.trace_id == trace_id), "create")
    assert create.attributes["tierbox.delayed"] is True
    assert process.trace_id != trace_id and process.links == [(trace_id, create.span_id)]


def test_without_otel_env_nothing_is_exported_and_jobs_run(system: System, receiver: Receiver) -> None:
    start(system, None)
    out = enqueue(system.settings, [("traced.work", {})], None)
    system.wait_status(uuid.UUID(out["ids"][0]), "succeeded")
    assert out["headers"] == {}  # no provider in the enqueuer: nothing stored
    assert receiver.requests == 0 and "tracing.sdk_missing" not in system.logs()


def test_without_opentelemetry_installed_everything_works(system: System, receiver: Receiver,
                                                          tmp_path: Path) -> None:
    """OTEL_* set, but opentelemetry not importable (a meta-path blocker on PYTHONPATH): every process
    runs as without tracing; the relay and worker say once why they export nothing."""
    blocker = str(Path(__file__).parent / "no_otel")
    env = otel_env(receiver) | {"PYTHONPATH": blocker + ":" + settings_env(system.settings)["PYTHONPATH"]}
    start(system, None, env=env)
    out = enqueue(system.settings, [("traced.work", {}), ("traced.async_work", {})], None, env=env)
    assert out["otel_importable"] is False
    for job_id in out["ids"]:
        system.wait_status(uuid.UUID(job_id), "succeeded")
    assert out["headers"] == {}
    assert receiver.requests == 0
    for proc in system.procs:
        assert '"action":"tracing.sdk_missing"' in proc.output(), proc.output()[-2000:]


def test_a_redriven_job_links_to_the_trace_that_created_the_first(system: System, receiver: Receiver) -> None:
    import psycopg

    import outbox

    start(system, receiver)
    out = enqueue(system.settings, [("traced.reject", {})], receiver)
    job_id, trace_id = out["ids"][0], out["trace_id"]
    system.wait_status(uuid.UUID(job_id), "dead")
    with psycopg.connect(system.settings.database_url) as conn:
        new_id = str(outbox.redrive(conn, job_id, reason="tracing test"))
        conn.commit()
    first = one(receiver.wait_for(lambda s: s.name == "process high" and s.attributes["messaging.message.id"] == job_id,
                                  what="the dead job's process span"), "first process")
    again = one(receiver.wait_for(lambda s: s.name == "process high" and s.attributes["messaging.message.id"] == new_id,
                                  what="the redriven job's process span"), "redriven process")
    create = one(receiver.find(lambda s: s.name == "create high" and s.trace_id == trace_id), "create")
    assert first.trace_id == trace_id and first.attributes["tierbox.outcome"] == "dead" and first.status_code == 2
    assert again.trace_id != trace_id and again.links == [(trace_id, create.span_id)]
    assert again.attributes["tierbox.attempt"] == 1  # a first attempt, but of another job: linked, not a child


def test_a_job_enqueued_by_a_handler_continues_the_trace(system: System, receiver: Receiver) -> None:
    start(system, receiver)
    out = enqueue(system.settings, [("traced.chain", {})], receiver)
    trace_id = out["trace_id"]
    handler = one(receiver.wait_for(lambda s: s.name == "handler work" and s.trace_id == trace_id,
                                    what="the follow-up job's handler span"), "handler")
    expected = [("process high", "tierbox-worker"), ("create high", "tierbox-worker"),
                ("process high", "tierbox-worker"), ("create high", "test-enqueuer"), ("checkout", "test-enqueuer")]

    def chain_of() -> list[tuple[str, str]]:
        spans = {s.span_id: s for s in receiver.find(lambda s: s.trace_id == trace_id)}
        chain, span = [], handler
        while span.parent_span_id in spans:
            span = spans[span.parent_span_id]
            chain.append((span.name, span.service))
        return chain

    # A process span ends after its handler's (once the finishing stage has recorded the outcome and
    # acked): it may be exported a moment after the handler span this waited for.
    with contextlib.suppress(AssertionError):
        system.wait(lambda: chain_of() == expected, timeout=20, what="the whole chain exported")
    assert chain_of() == expected


def test_a_deferral_by_flow_control_is_recorded_and_the_job_stays_in_its_trace(system: System,
                                                                              receiver: Receiver) -> None:
    start(system, receiver)
    out = enqueue(system.settings, [("traced.rated", {})] * 3, receiver)
    for job_id in out["ids"]:
        system.wait_status(uuid.UUID(job_id), "succeeded")
    deferred = receiver.wait_for(lambda s: s.name == "process high"
                                 and str(s.attributes.get("tierbox.outcome", "")).startswith("deferred_"),
                                 what="a deferred delivery's span")
    creates = {s.attributes["messaging.message.id"]: s for s in receiver.find(lambda s: s.name == "create high")
               if s.trace_id == out["trace_id"]}
    for span in deferred:
        job_id = span.attributes["messaging.message.id"]
        # Deferral uses no attempt: the job's next delivery is still its first attempt, still in its trace.
        assert span.parent_span_id == creates[job_id].span_id and span.status_code != 2
        ran = receiver.wait_for(lambda s, j=job_id: s.name == "process high" and s.attributes["messaging.message.id"] == j
                                and s.attributes.get("tierbox.outcome") == "succeeded", what="its run")
        assert [(s.trace_id, s.parent_span_id) for s in ran] == [(out["trace_id"], creates[job_id].span_id)]
