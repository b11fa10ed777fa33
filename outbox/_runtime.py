"""What every long-running Tierbox process (relay, worker pool) does the same way.

:func:`serve_until_signalled` runs the process's coroutine with SIGTERM/SIGINT
wired to a stop event, after :func:`freeze_startup_heap`; :func:`wait_any`
is the "sleep, but wake on stop or on this other event" both use between
reconnects. SIGUSR1 makes any of them write every asyncio task's and thread's stack to stderr
(:func:`dump_stacks`): what to look at when a process does not stop or does not progress.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import io
import signal
import sys
from collections.abc import Awaitable, Callable


def freeze_startup_heap() -> None:
    """Collect once, then move every object alive now out of the cyclic collector's reach.

    After start-up the heap is mostly import-time objects (modules, classes, the task registry,
    SQLAlchemy's and aio-pika's machinery) that live as long as the process. A generation-2
    collection walks all of them; measured on the urgent pool and the relay, one such pass stalled
    the event loop 20-54 ms and put those milliseconds on the p99 of commit -> start. Frozen
    objects are never collected (they are not garbage); objects created later are collected as
    usual, and each full pass now walks only them.
    """
    gc.collect()
    gc.freeze()


def serve_until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``serve(stop)`` in a new event loop; SIGTERM and SIGINT set ``stop`` (a graceful stop)."""
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, dump_stacks)
        freeze_startup_heap()
        await serve(stop)

    asyncio.run(runner())


async def wait_any(*events: asyncio.Event, timeout_s: float | None = None) -> None:
    """Return as soon as one of ``events`` is set, or after ``timeout_s`` (None: no limit)."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def dump_stacks() -> None:
    """Write the stack of every asyncio task of the running loop, then of every thread, to stderr.

    Bound to SIGUSR1 in every long-running process: a process that hangs (a stop that does not
    finish, a loop stuck on one await) shows where, without a debugger. The event loop must be
    running for the task part; the thread part comes from :mod:`faulthandler` and always works.
    """
    out = io.StringIO()
    tasks = asyncio.all_tasks()
    out.write(f"--- {len(tasks)} asyncio task(s)\n")
    for task in sorted(tasks, key=lambda t: t.get_name()):
        task.print_stack(file=out)
    sys.stderr.write(out.getvalue())
    sys.stderr.write("--- threads\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(all_threads=True)
    sys.stderr.flush()
