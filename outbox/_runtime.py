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

    # Not asyncio.run(): on the way out it cancels what is left and waits for it without a limit,
    # so one task stuck in a library's cleanup would keep a stopped process alive forever.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(runner())
    finally:
        try:
            loop.run_until_complete(_cancel_leftovers(LEFTOVER_TIMEOUT_S))
        finally:
            loop.close()


#: Seconds a stopped process waits for the tasks it cancels on the way out (then exits anyway).
LEFTOVER_TIMEOUT_S = 5.0


async def _cancel_leftovers(timeout_s: float) -> None:
    """Cancel the tasks still alive after the process's coroutine returned; wait for them at most ``timeout_s``."""
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    if tasks:
        _, stuck = await asyncio.wait(tasks, timeout=timeout_s)
        if stuck:
            sys.stderr.write(f"--- {len(stuck)} task(s) did not finish within {timeout_s}s of their cancellation;"
                             " exiting without them\n")
            dump_stacks()
    loop = asyncio.get_running_loop()
    await asyncio.wait([asyncio.ensure_future(loop.shutdown_asyncgens()),
                        asyncio.ensure_future(loop.shutdown_default_executor())], timeout=timeout_s)


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
        out.write(f"{task!r}\n")
        for line in _awaiting(task.get_coro()):
            out.write(f"    {line}\n")
    sys.stderr.write(out.getvalue())
    sys.stderr.write("--- threads\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(all_threads=True)
    sys.stderr.flush()


def _awaiting(awaitable: object) -> list[str]:
    """The chain of awaits below a task's coroutine, outermost first, as ``file:line in function``.

    ``Task.print_stack`` shows one frame for a suspended coroutine; a hang is usually several
    awaits deeper (in a library), so walk ``cr_await`` down to the future it waits on.
    """
    lines: list[str] = []
    while awaitable is not None and len(lines) < 100:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            lines.append(f"waiting on {awaitable!r}"[:300])
            break
        lines.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return lines
