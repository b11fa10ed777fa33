"""A real OTLP/HTTP trace receiver for tests: ``POST /v1/traces`` on a free local port, decoded
with opentelemetry-proto into :class:`Span` records (what a collector would store)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.helpers import wait_until

#: opentelemetry.proto.trace.v1.Span.SpanKind values by name.
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass
class Span:
    """One received span, ids as lowercase hex."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    status_code: int = 0
    start_ns: int = 0

    def tree_line(self) -> str:
        attrs = ", ".join(f"{k}={v}" for k, v in sorted(self.attributes.items())
                          if k.startswith(("messaging.operation.type", "tierbox.attempt", "tierbox.outcome")))
        link = f" links->{self.links[0][1]}@{self.links[0][0][:8]}" if self.links else ""
        return f"{self.name} [{self.kind}, {self.service}] span={self.span_id}{link} {attrs}".rstrip()


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


class Receiver:
    """Collects every span exported to ``endpoint`` (set OTEL_EXPORTER_OTLP_ENDPOINT to it)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver._add(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _add(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for rs in request.resource_spans:
            service = next((_value(a.value) for a in rs.resource.attributes if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(Span(
                        service=service, name=s.name, kind=KINDS[s.kind], trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(), parent_span_id=s.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in s.attributes},
                        links=[(lk.trace_id.hex(), lk.span_id.hex()) for lk in s.links],
                        events=[(e.name, {a.key: _value(a.value) for a in e.attributes}) for e in s.events],
                        status_code=s.status.code, start_ns=s.start_time_unix_nano,
                    ))
        with self._lock:
            self.requests += 1
            self.spans.extend(spans)

    def find(self, predicate: Callable[[Span], bool]) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if predicate(s)]

    def wait_for(self, predicate: Callable[[Span], bool], count: int = 1, timeout: float = 30,
                 what: str = "") -> list[Span]:
        wait_until(lambda: len(self.find(predicate)) >= count, timeout=timeout, what=what or "spans")
        return self.find(predicate)

    def tree(self, trace_id: str) -> str:
        """The trace as text, children indented under their parents."""
        spans = self.find(lambda s: s.trace_id == trace_id)
        ids = {s.span_id for s in spans}
        lines: list[str] = []

        def walk(parent: str, depth: int) -> None:
            for s in sorted((s for s in spans if s.parent_span_id == parent), key=lambda s: s.start_ns):
                lines.append("  " * depth + s.tree_line())
                walk(s.span_id, depth + 1)

        for root in [s for s in spans if s.parent_span_id not in ids]:
            lines.append(root.tree_line() + (f" (parent {root.parent_span_id})" if root.parent_span_id else ""))
            walk(root.span_id, 1)
        return f"trace {trace_id}\n" + "\n".join(lines)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
