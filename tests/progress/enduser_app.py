"""An application's own ASGI app mounting the end-user job event stream (run by the tests in uvicorn).

What docs/progress.md shows: ``JobEvents(...).router()`` in the application's Litestar app, its
``close`` on shutdown, and a page whose ``EventSource`` reads a job's events with a capability the
application issued (``outbox.job_capability``). The page collects the events into ``window.events``
and sets ``window.done`` when the stream ends, for the headless-Chromium test.
"""

from __future__ import annotations

import os

from litestar import Litestar, get

from tierbox.api.job_events import JobEvents

events = JobEvents(os.environ["TIERBOX_DATABASE_URL"], secret=os.environ["JOB_EVENTS_SECRET"],
                   heartbeat_s=float(os.environ.get("JOB_EVENTS_HEARTBEAT_S", "15")))

PAGE = """<!doctype html>
<html><body><script>
window.events = [];
window.done = false;
const q = new URLSearchParams(location.search);
const source = new EventSource(`/jobs/${q.get("job")}/events?token=${encodeURIComponent(q.get("token"))}`);
for (const kind of ["status", "progress", "outcome"]) {
  source.addEventListener(kind, (e) => {
    window.events.push({id: e.lastEventId, kind: e.type, body: JSON.parse(e.data)});
    if (kind === "outcome") { window.done = true; source.close(); }
  });
}
</script></body></html>
"""


@get("/page", media_type="text/html", sync_to_thread=False)
def page() -> str:
    """The end user's page."""
    return PAGE


app = Litestar(route_handlers=[page, events.router("/jobs")], on_shutdown=[events.close])
