"""Prometheus counters of a worker process, served on ``--metrics-port`` (127.0.0.1 only).

The admin API's ``/metrics`` shows the cluster as Postgres and RabbitMQ see it; these show what
one process did: its outcomes, deferrals and absorbed duplicates, how long jobs waited from commit
to start and how long they ran.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

BUCKETS_S = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

EVENTS = Counter("tierbox_worker_events_total", "Deliveries by what happened to them "
                 "(succeeded, retried, dead, fenced, deferred_<reason>, skipped_<decision>, reaped_<decision>)",
                 ["pool", "event"])
WAIT = Histogram("tierbox_job_wait_seconds", "Commit (enqueue) to first start of a job", ["tier"], buckets=BUCKETS_S)
DURATION = Histogram("tierbox_job_duration_seconds", "Handler run time of one attempt", ["tier"], buckets=BUCKETS_S)
# A job counts from its start until its outcome is recorded and its message acked: its handler
# running, or (workers.finishing) its outcome being recorded after its slot was freed.
RUNNING = Gauge("tierbox_worker_running", "Jobs started and not yet finished (outcome recorded) in this process",
                ["pool"])
BUFFERED = Gauge("tierbox_worker_buffered", "Messages waiting in this process's priority buffer", ["pool"])


def serve(port: int) -> None:
    """Expose the default registry on 127.0.0.1:``port``."""
    start_http_server(port, addr="127.0.0.1")
