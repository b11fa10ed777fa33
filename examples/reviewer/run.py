"""The labs reviewer, both ways: local development without a broker, then production with one.

1. The API alone (uvicorn), with no ``TIERBOX_AMQP_URL``: labs are reviewed in the API process by
   ``outbox.testing.drain`` after each response; no relay, no worker, no RabbitMQ.
2. The API with a broker configured, the relay and a ``normal`` worker: the same requests, the same
   answers, the jobs run in the worker. Then the output storage disappears: a lab carrying a private
   note fails four times and is dead-lettered; its process reads ``failed``; the admin view shows the
   note only as its length and SHA-256. The storage comes back and the dead job is replayed.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

from examples.support import (
    Claim,
    Processes,
    conclude,
    example_settings,
    print_claims,
    tear_down,
    wait_for,
    wait_for_consumers,
)
from outbox.config import Settings
from tierbox import migrations

#: What a user's notes may hold; it must never show in an operator's view.
PRIVATE_NOTE = "PRIVATE NOTE: guest passport X1234567, allergic to penicillin."


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _context(i: int) -> str:
    return f"## Lab {i}\n\nSteps we followed, results we saw, and what to change next time. " * 20


def _start_api(procs: Processes, port: int, output: Path, broker: bool) -> str:
    env = {"REVIEWER_OUTPUT_DIR": str(output)}
    procs.start("api", ["examples.reviewer.app:app", "--port", str(port), "--log-level", "warning",
                        "--no-access-log"], module="uvicorn", extra_env=env,
                unset=() if broker else ("TIERBOX_AMQP_URL",))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(f"{url}/admin/failed"), 60, "the reviewer API")
    return url


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _submit_and_follow(api: str, labs: int, offset: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    ids = []
    for i in range(offset, offset + labs):
        answer = httpx.post(f"{api}/labs", json={"context": _context(i), "output_name": f"lab-{i}.md"}, timeout=30)
        answer.raise_for_status()
        ids.append(answer.json())
    return [_follow(api, s["process_id"], {"completed", "failed"}, timeout_s) | {"dispatcher": s["dispatcher"]}
            for s in ids]


def _follow(api: str, process_id: str, until: set[str], timeout_s: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = httpx.get(f"{api}/labs/{process_id}", timeout=10).json()
        return body if body["status"] in until else None

    result: dict[str, Any] = wait_for(done, timeout_s, f"process {process_id} to reach {until}")
    return result


def _workers_of(conn: psycopg.Connection[Any], process_ids: list[str]) -> set[str]:
    rows = conn.execute("SELECT DISTINCT a.worker_id FROM outbox.attempts a JOIN public.reviewer_processes p "
                        "ON p.job_id = a.job_id WHERE p.id = ANY(%s::uuid[])", (process_ids,)).fetchall()
    return {str(r[0]).split(":")[0] for r in rows}


def run(labs: int) -> int:
    """Both phases; returns 0 when every claim held."""
    settings = example_settings("examples.reviewer.tasks", "reviewer")
    migrations.upgrade(settings.database_url)
    output = Path(tempfile.mkdtemp(prefix="reviewer-output-"))
    procs = Processes(settings)
    try:
        return conclude(procs, _scenario(settings, procs, output, labs))
    finally:
        tear_down(settings, procs)
        shutil.rmtree(output, ignore_errors=True)
        shutil.rmtree(output.with_name(output.name + ".unmounted"), ignore_errors=True)


def _scenario(settings: Settings, procs: Processes, output: Path, labs: int) -> int:
    port = _free_port()
    print(f"local development: the API alone, no broker configured; {labs} labs ...", flush=True)
    t0 = time.monotonic()
    api = _start_api(procs, port, output, broker=False)
    local = _submit_and_follow(api, labs, 0)
    local_s = time.monotonic() - t0
    procs.kill("api")

    print(f"production: broker configured, relay + a normal worker; {labs} labs, then a final failure ...", flush=True)
    worker_env = {"REVIEWER_OUTPUT_DIR": str(output)}
    procs.start("relay", ["relay"])
    procs.start("worker", ["worker", "--pool", "normal"], extra_env=worker_env)
    wait_for_consumers(settings, ["normal"])
    t1 = time.monotonic()
    api = _start_api(procs, port, output, broker=True)
    queued = _submit_and_follow(api, labs, 100)
    queued_s = time.monotonic() - t1

    unmounted = output.with_name(output.name + ".unmounted")
    output.rename(unmounted)  # the output storage goes away
    private = _context(999) + PRIVATE_NOTE
    submitted = httpx.post(f"{api}/labs", json={"context": private, "output_name": "lab-999.md"}, timeout=30).json()
    failed = _follow(api, submitted["process_id"], {"failed", "completed"}, 120)
    listing = httpx.get(f"{api}/admin/failed", timeout=30)
    entry = next((e for e in listing.json() if e["payload"]["kwargs"].get("process_id") == submitted["process_id"]),
                 None)
    unmounted.rename(output)  # the storage is back
    replayed = httpx.post(f"{api}/admin/failed/{entry['job_id']}/replay", timeout=30).json() if entry else {}
    after = _follow(api, submitted["process_id"], {"completed"}, 60) if entry else {}

    with psycopg.connect(settings.psycopg_url, autocommit=True) as conn:
        local_workers = _workers_of(conn, [p["process_id"] for p in local])
        queued_workers = _workers_of(conn, [p["process_id"] for p in queued])
        stored = conn.execute("SELECT payload->'kwargs'->>'context' FROM outbox.dead_letters WHERE job_id = %s",
                              (uuid.UUID(entry["job_id"]) if entry else uuid.uuid4(),)).fetchone()
    files = sorted(p.name for p in output.iterdir())
    sha = hashlib.sha256(private.encode()).hexdigest()
    shown = entry["payload"]["kwargs"]["context"] if entry else None
    claims = [
        Claim("local development keeps working with no broker (in-process mode)",
              f"{sum(p['status'] == 'completed' for p in local)}/{labs} labs completed in {local_s:.1f} s by "
              f"{sorted(local_workers)} inside the API process (dispatcher {local[0]['dispatcher']}), no relay, "
              f"no worker", all(p["status"] == "completed" for p in local) and local_workers == {"outbox.testing"}
              and local[0]["dispatcher"] == "in_process"),
        Claim("production moves the work to a separate worker, same API contract",
              f"{sum(p['status'] == 'completed' for p in queued)}/{labs} labs completed in {queued_s:.1f} s by a "
              f"worker process (dispatcher {queued[0]['dispatcher']}); output files written: {len(files)}",
              all(p["status"] == "completed" for p in queued) and "outbox.testing" not in queued_workers
              and bool(queued_workers) and queued[0]["dispatcher"] == "tierbox"),
        Claim("a final failure is dead-lettered after the retries and marks the process failed",
              f"process {failed['status']} after {failed['attempts']} attempts (max_retries 3); dead letter "
              f"{'listed' if entry else 'MISSING'}, reason {entry['reason'] if entry else '-'}",
              failed["status"] == "failed" and failed["attempts"] == 4 and entry is not None),
        Claim("the user's context is redacted in the dead-letter view",
              f"shown as {shown if not isinstance(shown, dict) else {**shown, 'sha256': shown['sha256'][:12] + '...'}};"
              f" private note in the response: {PRIVATE_NOTE in listing.text}; SHA-256 matches: "
              f"{isinstance(shown, dict) and shown.get('sha256') == sha}",
              isinstance(shown, dict) and shown.get("sha256") == sha and PRIVATE_NOTE not in listing.text
              and "Steps we followed" not in listing.text),
        Claim("... and the failed job can still be replayed (the story's could not)",
              f"full payload kept in Postgres: {bool(stored and stored[0] == private)}; replay -> new job "
              f"{replayed.get('new_job_id', '-')[:8]}..., process {after.get('status', '-')}",
              bool(stored and stored[0] == private) and after.get("status") == "completed"),
    ]
    print_claims(f"labs reviewer, {labs} labs per mode", claims)
    return 0 if all(c.held for c in claims) else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m examples.reviewer [--labs N]``."""
    parser = argparse.ArgumentParser(prog="python -m examples.reviewer",
                                     description="The labs reviewer on Tierbox: local mode, worker mode, redacted DLQ.")
    parser.add_argument("--size", choices=("small", "full"), default="small", help="small: 3 labs per mode; full: 20")
    parser.add_argument("--labs", type=int, help="labs per mode (overrides --size)")
    args = parser.parse_args(argv)
    return run(args.labs or (3 if args.size == "small" else 20))
