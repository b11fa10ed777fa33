"""The production queue (shared/seeds 003): an HTTP API enqueueing with client idempotency keys, a flaky
downstream behind a cluster-wide Redis breaker, dead letters inspected and redriven over HTTP."""
