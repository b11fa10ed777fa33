"""Enqueue jobs from a process of its own, inside a parent span, as an application would.

``python -m tests.tracing.enqueuer SPEC_JSON`` prints one JSON line: the job ids, the parent
span's trace and span ids (when tracing), and the headers written with the first job. SPEC:
``database_url``, ``endpoint`` (OTLP/HTTP receiver, or null for no SDK), ``jobs`` (a list of
``[task, kwargs]``), ``rollback`` (roll the transaction back instead of committing); the
environment variable ``TRACING_TEST_DELAY_S`` delays the jobs.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def main() -> None:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    provider = None
    if spec.get("endpoint"):
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": "test-enqueuer"}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=spec["endpoint"] + "/v1/traces")))
        trace.set_tracer_provider(provider)

    import psycopg

    import outbox
    import tests.tracing.tasks  # noqa: F401 - registers the tasks

    out: dict[str, Any] = {"otel_importable": _importable()}
    delay = float(os.environ.get("TRACING_TEST_DELAY_S") or 0) or None
    with psycopg.connect(spec["database_url"]) as conn:
        if provider is not None:
            from opentelemetry import trace

            with trace.get_tracer("tests.tracing").start_as_current_span("checkout") as parent:
                ids = [outbox.enqueue(conn, task, kwargs=kwargs, delay=delay) for task, kwargs in spec["jobs"]]
            ctx = parent.get_span_context()
            out.update(trace_id=format(ctx.trace_id, "032x"), span_id=format(ctx.span_id, "016x"))
        else:
            ids = [outbox.enqueue(conn, task, kwargs=kwargs, delay=delay) for task, kwargs in spec["jobs"]]
        headers = conn.execute("SELECT headers FROM outbox.jobs WHERE id = %s", (ids[0],)).fetchone()
        out["headers"] = headers[0] if headers else None
        if spec.get("rollback"):
            conn.rollback()
        else:
            conn.commit()
    out["ids"] = [str(i) for i in ids]
    if provider is not None:
        provider.shutdown()
    print(json.dumps(out))


def _importable() -> bool:
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
