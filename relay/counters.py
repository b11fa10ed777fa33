"""Prometheus counters of a relay process, served on ``--metrics-port`` (127.0.0.1 only)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

PUBLISHED = Counter("tierbox_relay_published_total", "Rows confirmed by the broker and committed", ["tier"])
NACKED = Counter("tierbox_relay_nacks_total", "Publishes the broker nacked (rows kept pending)", ["tier"])
RETURNED = Counter("tierbox_relay_returns_total", "Publishes returned as unroutable (rows kept pending)", ["tier"])
FAILED = Counter("tierbox_relay_publish_errors_total", "Publishes lost to timeouts or closed channels "
                 "(rows kept pending)", ["tier"])
EXPIRED = Counter("tierbox_relay_expired_total", "Rows past expires_at marked expired instead of published")
REPUBLISHED = Counter("tierbox_relay_republished_total", "Published jobs whose message RabbitMQ no longer held, "
                      "put back in the outbox by reconciliation", ["tier"])
RECONCILE_SKIPPED = Counter("tierbox_relay_reconcile_skipped_total", "Reconciliation rounds skipped (Redis "
                            "unreachable, or a round failed)")
RECONNECTS = Counter("tierbox_relay_reconnects_total", "Times the relay lost a connection and reconnected")
BLOCKED = Gauge("tierbox_relay_blocked", "Relay connections the broker blocks right now (connection.blocked: "
                "a memory or disk alarm); their lane claims nothing until unblocked")
BATCH = Histogram("tierbox_relay_batch_seconds", "Claim, publish, confirm and commit of one batch",
                  buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
LAG = Gauge("tierbox_relay_observed_lag_seconds", "Age of the oldest due, unpublished row, as this relay saw it "
            "at its last lag log (the API's tierbox_relay_lag_seconds is the same at scrape time)",
            ["tier"])


def serve(port: int) -> None:
    """Expose the default registry on 127.0.0.1:``port``."""
    start_http_server(port, addr="127.0.0.1")
