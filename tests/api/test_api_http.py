"""A real ``tierbox api`` process over HTTP, on data from really failing jobs (real relay and worker)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from outbox.config import Settings
from tests.api.test_api import OPERATE, OPERATE_SECRET, READ, READ_SECRET, TOKENS, audit_rows
from tests.helpers import ROOT, Proc, settings_env, wait_until
from tests.system import System

pytestmark = pytest.mark.slow

TOKENS_ENV = ",".join(f"{t.name}:{t.scope}:{t.sha256}" for t in TOKENS)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(settings: Settings, procs: list[Proc], tmp_path: Path, *args: str,
              env: dict[str, str] | None = None) -> str:
    """Start ``tierbox api`` on a free port; returns its base URL once /healthz answers."""
    port = free_port()
    proc = Proc(["api", "--port", str(port), *args], settings, tmp_path / f"api{port}.log",
                {"TIERBOX_API_TOKENS": TOKENS_ENV, **(env or {})})
    procs.append(proc)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.alive(), proc.output()
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    # 60 s, not 20: on a loaded 2-core box the API's start-up (imports, Litestar app) was measured at
    # 15 s (load average 20); a dead process still fails at once through up()'s alive() check.
    wait_until(up, timeout=60, what="tierbox api answering")
    return base


def test_operator_fixes_real_failures_over_http(system: System, procs: list[Proc], tmp_path: Path) -> None:
    system.relay()
    system.worker("--pool", "urgent")
    rejected = system.enqueue("sample.reject")
    broken = system.enqueue("sample.needs_flag")
    system.wait_status(rejected, "dead")
    system.wait_status(broken, "dead")
    base = start_api(system.settings, procs, tmp_path)
    http = httpx.Client(base_url=base, timeout=10)

    page = http.get("/admin/dlq", headers=READ).json()
    reasons = {i["job_id"]: (i["reason"], i["error_type"]) for i in page["items"]}
    assert reasons[str(rejected)][0] == "non_retryable" and reasons[str(broken)] == ("failed", "RuntimeError")
    detail = http.get(f"/admin/dlq/{broken}", headers=READ).json()
    assert [(a["attempt"], a["outcome"]) for a in detail["attempts"]] == [(1, "failed")]
    assert detail["dead_letter"]["last_worker_id"] and "downstream unavailable" in detail["dead_letter"]["error_message"]

    high = next(t for t in http.get("/admin/tiers", headers=READ).json() if t["tier"] == "high")
    assert high["dead_1h"] == 2 and high["failed_1h"] == 2 and high["queue_consumers"] == 1, high
    assert high["queue"] == system.settings.queue_name("high") and high["dlq_depth"] == 0

    assert http.post(f"/admin/dlq/{broken}/redrive", headers=READ).status_code == 403
    system.q("INSERT INTO public.test_flags VALUES (1) RETURNING id")  # the operator fixes the cause
    r = http.post(f"/admin/dlq/{broken}/redrive", json={"reason": "flag set"}, headers=OPERATE)
    assert r.status_code == 200, r.text
    new = r.json()["new_job_id"]
    system.wait_status(new, "succeeded")
    assert http.post(f"/admin/dlq/{broken}/redrive", headers=OPERATE).status_code == 409

    events = [e["event"] for e in http.get(f"/admin/jobs/{new}", headers=READ).json()["timeline"]]
    # published_at is written once the broker confirmed, which can be after the worker started it.
    assert events[0] == "enqueued" and {"published", "attempt_started", "attempt_succeeded"} <= set(events)
    assert events[-1] == "finished_succeeded"
    old_events = [e["event"] for e in http.get(f"/admin/jobs/{broken}", headers=READ).json()["timeline"]]
    assert old_events[-1] == "redriven"
    assert http.post(f"/admin/dlq/{rejected}/discard", json={"reason": "card declined"}, headers=OPERATE).status_code == 200

    rows = audit_rows(system.settings.database_url)
    assert [(r[0], r[2], r[4], r[5]) for r in rows] == [("alice", "redrive", "127.0.0.1", "ok"),
                                                        ("alice", "redrive", "127.0.0.1", "refused"),
                                                        ("alice", "discard", "127.0.0.1", "ok")]
    metrics = http.get("/metrics", headers={"Authorization": f"Bearer {READ_SECRET}"}).text
    assert 'tierbox_queue_consumers{queue="main",tier="high"} 1.0' in metrics
    assert http.get("/readyz").json()["status"] == "ok"
    assert http.get("/admin/dlq", headers={"Authorization": f"Bearer {OPERATE_SECRET}x"}).status_code == 401


def run_api(settings: Settings, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``tierbox api`` expecting it to refuse to start."""
    full_env = {**settings_env(settings), "TIERBOX_API_TOKENS": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tierbox.cli", "api", *args], env=full_env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_refuses_to_start_without_tokens(settings: Settings) -> None:
    result = run_api(settings, "--port", str(free_port()))
    assert result.returncode == 1
    assert "no API token configured" in result.stderr and "--insecure-dev" in result.stderr
    bad = run_api(settings, env={"TIERBOX_API_TOKENS": "alice:operate:not-a-hash"})
    assert bad.returncode == 1 and "64 hex digits" in bad.stderr
    public = run_api(settings, "--insecure-dev", "--host", "0.0.0.0")
    assert public.returncode == 1 and "127.0.0.1 only" in public.stderr


def test_insecure_dev_serves_loopback_only_and_says_so(settings: Settings, procs: list[Proc],
                                                       tmp_path: Path) -> None:
    base = start_api(settings, procs, tmp_path, "--insecure-dev", env={"TIERBOX_API_TOKENS": ""})
    r: Any = httpx.get(f"{base}/admin/dlq", timeout=10)
    assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}
    assert "INSECURE DEV MODE" in procs[-1].output()


def test_app_modules_give_the_dashboard_the_task_limits(settings: Settings, procs: list[Proc],
                                                        tmp_path: Path) -> None:
    # TIERBOX_APP=sample_tasks comes from the settings; --app names the same modules on the command line.
    base = start_api(settings, procs, tmp_path, "--app", "sample_tasks")
    with httpx.Client(base_url=base, timeout=10) as http:
        login = http.post("/ui/login", data={"token": READ_SECRET})
        assert login.status_code == 303 and login.headers["location"] == "/ui/tiers", login.text
        page = http.get("/ui/control").text
    assert 'id="limit-task-sample.rated"' in page and "5/s" in page and 'id="limits-no-app"' not in page
    missing = run_api(settings, "--app", "no_such_module", env={"TIERBOX_API_TOKENS": TOKENS_ENV})
    assert missing.returncode == 1 and "cannot import no_such_module" in missing.stderr
