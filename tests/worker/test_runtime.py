"""What every long-running process does at start: the frozen start-up heap and the signal wiring."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.helpers import ROOT

CHILD = textwrap.dedent("""
    import asyncio, gc, os, signal
    import relay.main, workers.main  # what a relay or worker process has imported by then
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
