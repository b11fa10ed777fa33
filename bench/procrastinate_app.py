"""The procrastinate baseline on the same Postgres; ``python -m bench.procrastinate_app`` runs a worker.

The worker's concurrency comes from ``BENCH_CONCURRENCY`` (the harness uses
the Tierbox pool's). Jobs are kept (status ``succeeded``), so like Tierbox it
records every outcome in Postgres.
"""

from __future__ import annotations

import asyncio
import os

from procrastinate import App, PsycopgConnector

from bench.tasks import stamp_now

app = App(connector=PsycopgConnector(conninfo=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1/test")))


@app.task(name="bench.noop")
async def noop(key: str = "") -> None:
    """Do nothing."""


@app.task(name="bench.stamp")
async def stamp(key: str, token: str) -> None:
    """Record when the handler started."""
    stamp_now(key, token)


async def _work() -> None:
    async with app.open_async():
        await app.run_worker_async(concurrency=int(os.environ.get("BENCH_CONCURRENCY", "8")))


if __name__ == "__main__":
    asyncio.run(_work())
