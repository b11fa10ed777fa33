"""Job events end to end: real relay, worker and ``tierbox api`` processes, an application's own ASGI app
in uvicorn, read with httpx streaming and by headless Chromium's ``EventSource``."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

import outbox
from outbox.config import Settings
from tests.api.test_api import READ
from tests.api.test_api_http import free_port, start_api
from tests.helpers import ROOT, Proc, settings_env, wait_until
from tests.progress import sse
from tests.system import System

pytestmark = pytest.mark.slow

SECRET = "end-user-capability-secret-of-this-test-0123456789"
CHROMIUM = "/usr/bin/chromium"


def table_ids(system: System, job_id: uuid.UUID) -> list[int]:
    return [r[0] for r in system.q("SELECT id FROM outbox.job_events WHERE job_id = %s ORDER BY id", job_id)]


def test_operator_stream_in_order_resumes_without_gaps_and_closes(system: System, procs: list[Proc],
                                                                  tmp_path: Path) -> None:
    system.relay()
    system.worker("--pool", "urgent")
    base = start_api(system.settings, procs, tmp_path)
    http = httpx.Client(base_url=base, timeout=10)
    job = system.enqueue("sample.progress", 6, 0.6)
    url = f"/admin/jobs/{job}/events"

    first = sse.read(http, url, headers=READ, max_events=3)  # then the client goes away mid-way
    assert not first.closed_by_server and first.kinds[0] == "status"
    began = time.monotonic()
    rest = sse.read(http, url, headers={**READ, "Last-Event-ID": str(first.ids[-1])})
    assert rest.closed_by_server, "the stream closes after the outcome"
    # Woken by NOTIFY, not by the 15 s heartbeat's re-read: the rest of a 3.6 s job comes in real time.
    assert time.monotonic() - began < 10, time.monotonic() - began

    ids = first.ids + rest.ids
    assert ids == sorted(set(ids)), ids  # increasing, no duplicates
    assert ids == table_ids(system, job), "no gap: every event of the job, each once"
    events = first.events + rest.events
    assert [e["event"] for e in events] == ["status"] + ["progress"] * 6 + ["outcome"]
    assert events[0]["data"]["status"] == "running" and events[-1]["data"]["status"] == "succeeded"
    progress = [e["data"] for e in events if e["event"] == "progress"]
    assert [p["fraction"] for p in progress] == [pytest.approx(s / 6) for s in range(1, 7)]
    assert [p["data"] for p in progress] == [{"step": s} for s in range(1, 7)]
    assert all(e["data"]["job_id"] == str(job) and e["data"]["id"] == int(e["id"]) for e in events)

    # The status resource: the latest progress, and progress in the timeline.
    detail = http.get(f"/admin/jobs/{job}", headers=READ).json()
    assert detail["progress"]["fraction"] == 1.0 and detail["progress"]["message"] == "step 6 of 6"
    assert detail["progress"]["event_id"] == progress[-1]["id"]
    timeline = [e["event"] for e in detail["timeline"]]
    assert timeline.count("progress") == 6 and timeline[-1] == "finished_succeeded", timeline

    # Resuming after the outcome: nothing more, closed at once. Unknown job: 404; no token: 401.
    done = sse.read(http, url, headers={**READ, "Last-Event-ID": str(ids[-1])}, timeout=10)
    assert done.events == [] and done.closed_by_server
    missing = http.get(f"/admin/jobs/{uuid.uuid4()}/events", headers=READ)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert http.get(url).status_code == 401
    bad = http.get(url, headers={**READ, "Last-Event-ID": "x"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "Last-Event-ID"


def test_sync_handler_holding_its_session_reports_progress_on_a_one_slot_pool(system: System) -> None:
    # A sync handler's session holds one of the sync engine's connections; its progress writes need a
    # second one. With one connection per slot they waited for SQLAlchemy's 30 s pool timeout and were
    # dropped (progress.write_failed). One slot makes the pool as full as it gets.
    system.relay()
    worker = system.worker("--queues", "high", "--concurrency", "1")
    job = system.enqueue("sample.progress", 2, 0.1)  # writes through ctx.session, then two progress calls
    system.wait_status(job, "succeeded", timeout=20)
    fractions = [r[0] for r in system.q("SELECT fraction FROM outbox.job_events WHERE job_id = %s "
                                        "AND kind = 'progress' ORDER BY id", job)]
    assert fractions == [0.5, 1.0], fractions
    assert "progress.write_failed" not in worker.output()


def test_async_handler_progress_and_a_failed_handlers_progress(system: System, procs: list[Proc],
                                                               tmp_path: Path) -> None:
    system.relay()
    system.worker("--pool", "urgent")
    base = start_api(system.settings, procs, tmp_path)
    http = httpx.Client(base_url=base, timeout=10)
    async_job = system.enqueue("sample.async_progress", 3, 0.6)
    failing = system.enqueue("sample.progress", 2, 0.1, True)

    with ThreadPoolExecutor(3) as clients:  # three clients at once: one listening connection serves them
        reads = [clients.submit(sse.read, httpx.Client(base_url=base, timeout=10),
                                f"/admin/jobs/{async_job}/events", headers=READ) for _ in range(3)]
        seen = set()  # listening connections, sampled while the three streams run
        while not all(r.done() for r in reads):
            seen.add(system.q("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                              "AND query = %s", "LISTEN tierbox_job_events")[0][0])
            time.sleep(0.05)
        streams = [r.result() for r in reads]
    assert max(seen) == 1, seen
    stream = streams[0]
    assert all(s.ids == stream.ids for s in streams)
    assert stream.closed_by_server and stream.kinds == ["status", "progress", "progress", "progress", "outcome"]
    assert [e["data"]["fraction"] for e in stream.events[1:4]] == [pytest.approx(s / 3) for s in (1, 2, 3)]

    failed = sse.read(http, f"/admin/jobs/{failing}/events", headers=READ)
    # The handler's effect rolled back with it; its progress (both calls: the second, held by the
    # throttle, was written when the handler raised) did not, and precedes the outcome.
    assert [(e["event"], e["data"]["status"] or e["data"]["message"]) for e in failed.events] == [
        ("status", "running"), ("progress", "step 1 of 2"), ("progress", "step 2 of 2"), ("outcome", "dead")]
    assert system.effects(failing) == []


class EndUserApp:
    """The application's own ASGI app (tests/progress/enduser_app.py) in a uvicorn process."""

    def __init__(self, settings: Settings, tmp_path: Path, heartbeat_s: float) -> None:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = {**settings_env(settings), "JOB_EVENTS_SECRET": SECRET, "JOB_EVENTS_HEARTBEAT_S": str(heartbeat_s)}
        self.log = open(tmp_path / "enduser.log", "ab")  # closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "tests.progress.enduser_app:app",
                                      "--port", str(port), "--log-level", "warning"],
                                     env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

        def up() -> bool:
            assert self.proc.poll() is None, (tmp_path / "enduser.log").read_text()
            try:
                return httpx.get(f"{self.base}/page", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=20, what="the end-user app answering")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def enduser(system: System, tmp_path: Path) -> Iterator[EndUserApp]:
    app = EndUserApp(system.settings, tmp_path, heartbeat_s=0.3)
    yield app
    app.stop()


def test_end_user_capability_heartbeats_and_refusals(system: System, enduser: EndUserApp) -> None:
    system.relay()
    system.worker("--pool", "urgent")
    http = httpx.Client(base_url=enduser.base, timeout=10)
    job = system.enqueue("sample.progress", 3, 0.9)
    url = f"/jobs/{job}/events"

    refused: dict[str, Any] = {
        "missing": http.get(url),
        "another job": http.get(url, params={"token": outbox.job_capability(uuid.uuid4(), SECRET)}),
        "expired": http.get(url, params={"token": outbox.job_capability(job, SECRET, ttl_s=5,
                                                                        now=time.time() - 60)}),
        "tampered": http.get(url, params={
            "token": outbox.job_capability(job, SECRET).rsplit(".", 1)[0] + ".AAAA"}),
        "other secret": http.get(url, params={"token": outbox.job_capability(job, "x" * 40)}),
        "operator token": http.get(url, headers=READ),
    }
    for case, response in refused.items():
        assert response.status_code == 403, (case, response.text)
        error = response.json()["error"]
        assert error["code"] == "forbidden" and error["field"] == "token", (case, error)

    token = outbox.job_capability(job, SECRET, ttl_s=120)
    stream = sse.read(http, f"{url}?token={token}")
    assert stream.closed_by_server and stream.kinds == ["status", "progress", "progress", "progress", "outcome"]
    assert stream.ids == table_ids(system, job)
    # 0.9 s between progress calls, a heartbeat after 0.3 s of silence: comments between the events.
    assert stream.comments.count("heartbeat") >= 3, stream.comments
    bearer = sse.read(http, url, headers={"Authorization": f"Bearer {token}", "Last-Event-ID": str(stream.ids[2])})
    assert bearer.ids == stream.ids[3:]
    # The status resource beside the stream, behind the same capability.
    state = http.get(f"/jobs/{job}", params={"token": token})
    assert state.status_code == 200, state.text
    assert {k: state.json()[k] for k in ("status", "attempts")} == {"status": "succeeded", "attempts": 1}
    assert state.json()["progress"]["event_id"] == stream.ids[-2] and state.json()["progress"]["fraction"] == 1.0
    assert http.get(f"/jobs/{job}").status_code == 403
    assert http.get(f"/jobs/{job}", headers=READ).status_code == 403


def test_chromium_eventsource_receives_the_events(system: System, enduser: EndUserApp) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "apt-get install -y chromium"
    system.relay()
    system.worker("--pool", "urgent")
    job = system.enqueue("sample.progress", 4, 0.6)
    token = outbox.job_capability(job, SECRET, ttl_s=120)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{enduser.base}/page?job={job}&token={token}")
            page.wait_for_function("window.done === true", timeout=60_000)
            received = page.evaluate("window.events")
        finally:
            browser.close()
    assert [e["kind"] for e in received] == ["status"] + ["progress"] * 4 + ["outcome"]
    assert [int(e["id"]) for e in received] == table_ids(system, job)
    assert [e["body"]["fraction"] for e in received if e["kind"] == "progress"] == [0.25, 0.5, 0.75, 1.0]
    assert received[-1]["body"]["status"] == "succeeded"
