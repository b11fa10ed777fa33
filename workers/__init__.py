"""Worker pools: consume tier queues, run handlers, record every outcome in Postgres."""
