"""Flow control shared by the workers and the admin API: rate limits, concurrency limits and
circuit breakers kept in Redis, and the admission decision a worker makes before a job starts."""
