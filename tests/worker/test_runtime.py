"""What every long-running process does at start: the frozen start-up heap and the signal wiring."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.helpers import ROOT

CHILD = textwrap.dedent("""
    import asyncio, gc, os, signal
    import tierbox.relay.main, tierbox.workers.main  # what a relay or worker process has imported by then
    from outbox._runtime import serve_until_signalled

    async def serve(stop):
        print("frozen", gc.get_freeze_count(), "tracked", len(gc.get_objects()), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 5)
        print("stopped gracefully", flush=True)

    serve_until_signalled(serve)
""")


def test_a_served_process_freezes_its_start_up_heap_and_stops_on_sigterm() -> None:
    """The import-time heap is out of the cyclic collector's reach before serving (a full collection
    of it stalled the event loop 20-54 ms), and SIGTERM sets the stop event instead of killing."""
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    words = done.stdout.split()
    frozen, tracked = int(words[1]), int(words[3])
    assert frozen > 10_000  # the imported modules' objects (tens of thousands)
    assert tracked < frozen / 10  # what a full collection still walks: only what came after the freeze
    assert "stopped gracefully" in done.stdout


STUCK_CHILD = textwrap.dedent("""
    import asyncio, os, signal
    from outbox._runtime import serve_until_signalled

    async def deep_wait(forever):
        await forever

    async def refuses_to_stop():
        forever = asyncio.get_running_loop().create_future()
        try:
            await deep_wait(forever)
        except asyncio.CancelledError:
            await deep_wait(asyncio.get_running_loop().create_future())  # a cleanup that never ends

    async def serve(stop):
        asyncio.create_task(refuses_to_stop(), name="stubborn")
        await asyncio.sleep(0.1)
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.sleep(0.3)
        print("serve returned", flush=True)

    serve_until_signalled(serve)
    print("process exits", flush=True)
""")


def test_sigusr1_shows_each_await_chain_and_a_task_stuck_in_cleanup_does_not_keep_the_process_alive() -> None:
    """The dump names the innermost coroutine a task waits in (not only its outermost frame), and a
    task that swallows its cancellation is given up after LEFTOVER_TIMEOUT_S instead of hanging the exit."""
    done = subprocess.run([sys.executable, "-c", STUCK_CHILD], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["serve returned", "process exits"]
    first_dump = done.stderr.split("did not finish")[0]
    assert "name='stubborn'" in first_dump and "in refuses_to_stop" in first_dump and "in deep_wait" in first_dump
    assert "--- threads" in first_dump
    assert "1 task(s) did not finish within 5.0s of their cancellation" in done.stderr
