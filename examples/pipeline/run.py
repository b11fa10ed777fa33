"""The meeting pipeline under load: uploads, a flaky summary provider, a killed worker, SSE, webhooks.

Processes, all real: the fake providers, the customer's webhook receiver and the API (each served
by uvicorn), the relay, and two worker processes of the ``normal`` pool with the story's
``worker_concurrency=2`` and ``worker_prefetch_multiplier=1`` (``topology.json``). The run uploads
the meetings over HTTP (one of them with unreadable audio, to show the mandatory step failing the
job), follows a sample of the jobs over SSE with a streaming httpx client as a browser's
``EventSource`` would, SIGKILLs a worker once a quarter of the jobs finished (restarted a second later),
then waits for every job to finish and for the receiver to have every webhook.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from examples.pipeline import tasks
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
from outbox import webhooks
from outbox.config import Settings
from tierbox import migrations

TOPOLOGY = Path(__file__).with_name("topology.json")
WORKERS = ("worker-1", "worker-2")
FINAL = ("succeeded", "dead", "discarded", "expired")
SIZES = {"small": 20, "full": 500}
#: Every FLAKY_EVERY-th meeting's first two transcription requests fail (503): its job succeeds on attempt 3.
FLAKY_EVERY = 5
#: A valid fake recording: a WAV header and some bytes.
WAV = b"RIFF\x24\x08\x00\x00WAVEfmt " + bytes(range(64))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


@dataclass
class Browser:
    """What one browser-like SSE client saw of one job."""

    job_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def in_order(self) -> bool:
        """Status running first; within each attempt progress rises; the outcome is the last event."""
        if not self.events or self.events[0]["kind"] != "status" or self.events[-1]["kind"] != "outcome":
            return False
        last = -1.0
        for event in self.events[:-1]:
            if event["kind"] == "status":
                last = -1.0  # a new attempt (after a retry or a killed worker) starts its progress again
            elif event["kind"] == "progress":
                if event["fraction"] <= last:
                    return False
                last = event["fraction"]
            else:
                return False
        ids = [e["id"] for e in self.events]
        return ids == sorted(set(ids))

    def progress(self) -> list[dict[str, Any]]:
        """The progress events seen."""
        return [e for e in self.events if e["kind"] == "progress"]


async def follow(http: httpx.AsyncClient, uploaded: dict[str, Any], browser: Browser, timeout_s: float) -> None:
    """Read one job's event stream as ``EventSource`` does, until the server ends it after the outcome."""
    try:
        async with asyncio.timeout(timeout_s), http.stream(
                "GET", uploaded["events_url"], params={"token": uploaded["token"]},
                headers={"accept": "text/event-stream"}, timeout=None) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    browser.events.append(json.loads(line[len("data: "):]))
    except (httpx.HTTPError, TimeoutError) as exc:
        browser.error = f"{type(exc).__name__}: {exc}"


@dataclass
class Run:
    """One run's processes, addresses and what the clients saw."""

    settings: Settings
    procs: Processes
    api: str
    providers: str
    receiver: str
    cms_secret: str
    uploads_dir: Path
    uploads: list[dict[str, Any]] = field(default_factory=list)
    upload_errors: list[str] = field(default_factory=list)
    browsers: list[Browser] = field(default_factory=list)
    kills: int = 0

    def start_worker(self, label: str) -> None:
        self.procs.start(label, ["worker", "--pool", "normal"], extra_env={
            "PIPELINE_PROVIDERS_URL": self.providers, "PIPELINE_UPLOAD_DIR": str(self.uploads_dir),
            webhooks.secret_env("cms"): self.cms_secret})

    async def kill_and_restart(self, label: str) -> None:
        """SIGKILL one worker (its in-flight jobs die with it), start a new one a second later."""
        await asyncio.to_thread(self.procs.kill, label, signal.SIGKILL)
        self.kills += 1
        await asyncio.sleep(1)
        self.start_worker(label)


async def _upload_all(r: Run, meetings: int, sample: int, kill: bool, concurrency: int = 4) -> None:
    """Upload ``meetings`` good recordings and one unreadable one; follow the first ``sample`` over SSE."""
    bodies = [{"title": f"weekly sync {i}", "audio_b64": base64.b64encode(WAV + secrets.token_bytes(32)).decode(),
               "webhook_url": f"{r.receiver}/hooks/meetings"} for i in range(meetings)]
    bodies.insert(meetings // 3, {"title": "unreadable recording", "audio_b64": base64.b64encode(b"\x00" * 64).decode(),
                                  "webhook_url": f"{r.receiver}/hooks/meetings"})
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    followers: list[asyncio.Task[None]] = []
    chaos: list[asyncio.Task[None]] = []
    async with httpx.AsyncClient(base_url=r.api, timeout=60) as http:
        async def client() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                try:
                    answer = await http.post("/meetings", json=body)
                except httpx.HTTPError as exc:
                    r.upload_errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if answer.status_code != 202:
                    r.upload_errors.append(f"{answer.status_code}: {answer.text[:200]}")
                    continue
                uploaded = {**answer.json(), "title": body["title"]}
                r.uploads.append(uploaded)
                if len(r.browsers) < sample and body["title"] != "unreadable recording":
                    browser = Browser(uploaded["job_id"])
                    r.browsers.append(browser)
                    followers.append(asyncio.create_task(follow(http, uploaded, browser, 240)))

        await asyncio.gather(*(client() for _ in range(concurrency)))
        if kill:  # mid-run: once a quarter of the jobs finished, while the rest are queued or running
            chaos.append(asyncio.create_task(_kill_when_busy(r)))
        await asyncio.gather(*chaos, *followers)


async def _kill_when_busy(r: Run) -> None:
    """SIGKILL worker 1 once a quarter of the jobs are finished and some are running (so it holds some)."""
    job_ids = [uuid.UUID(u["job_id"]) for u in r.uploads]

    def busy() -> bool:
        with psycopg.connect(r.settings.psycopg_url, autocommit=True) as conn:
            counts = dict(_rows(conn, "SELECT status, count(*) FROM outbox.jobs WHERE id = ANY(%s) GROUP BY 1",
                                (job_ids,)))  # type: ignore[arg-type]
        return counts.get("running", 0) >= 2 and sum(counts.get(s, 0) for s in FINAL) >= len(job_ids) // 4

    try:
        await asyncio.to_thread(wait_for, busy, 120, "jobs running mid-run", 0.3)
    except TimeoutError:
        pass  # kill anyway: the claim is about whatever it held at that moment
    await r.kill_and_restart(WORKERS[0])


def _rows(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def run(meetings: int, sample: int, kill: bool, label: str, rates: str,
        receiver_every: tuple[int, int] | None = None) -> int:
    """One run; returns 0 when every behaviour claim held."""
    settings = example_settings("examples.pipeline.tasks", "pipe", lease_s=5.0, reaper_interval_s=1.0,
                                topology_file=str(TOPOLOGY), webhook_allow="127.0.0.1")
    migrations.upgrade(settings.database_url)
    with psycopg.connect(settings.psycopg_url, autocommit=True) as conn:
        conn.execute(tasks.SCHEMA)  # type: ignore[arg-type]
    procs = Processes(settings)
    uploads_dir = procs.log_dir / "uploads"
    api_port, providers_port, receiver_port = _free_port(), _free_port(), _free_port()
    cms_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    r = Run(settings, procs, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{providers_port}",
            f"http://127.0.0.1:{receiver_port}", cms_secret, uploads_dir)
    try:
        uvicorn = ["--log-level", "warning", "--no-access-log"]
        procs.start("providers", ["examples.pipeline.providers:app", "--port", str(providers_port), *uvicorn],
                    module="uvicorn", extra_env={"PROVIDER_FAILURE_RATES": rates,
                                                 "PROVIDER_FLAKY_EVERY": str(FLAKY_EVERY)})
        # The receiver's deliberate failures, spread so that fewer than 5 fall in any minute at the full
        # size: more would open the per-host breaker (5 failures in 60 s) and hold every delivery back.
        down_every, lost_every = receiver_every or (max(4, meetings // 4), max(5, meetings // 4 + 1))
        procs.start("receiver", ["examples.pipeline.receiver:app", "--port", str(receiver_port), *uvicorn],
                    module="uvicorn", extra_env={"PIPELINE_CMS_SECRET": cms_secret,
                                                 "RECEIVER_DOWN_EVERY": str(down_every),
                                                 "RECEIVER_LOST_ACK_EVERY": str(lost_every)})
        procs.start("api", ["--factory", "examples.pipeline.app:create_app", "--port", str(api_port), *uvicorn],
                    module="uvicorn", extra_env={"PIPELINE_EVENTS_SECRET": secrets.token_urlsafe(32),
                                                 "PIPELINE_UPLOAD_DIR": str(uploads_dir)})
        procs.start("relay", ["relay"])
        for worker in WORKERS:
            r.start_worker(worker)
        wait_for_consumers(settings, ["normal"])
        wait_for(lambda: _answers(f"{r.providers}/stats") and _answers(f"{r.receiver}/stats")
                 and _answers(f"{r.api}/meetings/{uuid.uuid4()}"), 60, "the API, the providers and the receiver")
        return conclude(procs, _scenario(r, meetings, sample, kill, label, rates))
    finally:
        tear_down(settings, procs)


def _scenario(r: Run, meetings: int, sample: int, kill: bool, label: str, rates: str) -> int:
    print(f"{meetings:,} meetings + 1 unreadable recording uploaded over HTTP; provider failure rates {rates}; "
          f"{sample} jobs followed over SSE{'; a worker SIGKILLed mid-run' if kill else ''} ...",
          flush=True)
    started = time.monotonic()
    asyncio.run(_upload_all(r, meetings, sample, kill))
    job_ids = [uuid.UUID(u["job_id"]) for u in r.uploads]
    with psycopg.connect(r.settings.psycopg_url, autocommit=True) as conn:
        def statuses() -> dict[str, int]:
            return dict(_rows(conn, "SELECT status, count(*) FROM outbox.jobs WHERE id = ANY(%s) GROUP BY 1",
                              (job_ids,)))  # type: ignore[arg-type]

        def received() -> dict[str, Any]:
            return dict(httpx.get(f"{r.receiver}/stats", timeout=30).json())

        try:
            wait_for(lambda: sum(statuses().get(s, 0) for s in FINAL) == len(job_ids), max(180.0, meetings),
                     "every job to finish", interval_s=1.0)
            wait_for(lambda: len(received()["processed"]) >= len(job_ids), 180, "every webhook at the receiver",
                     interval_s=1.0)
        except TimeoutError as exc:
            print(f"{exc}: jobs {statuses()}, receiver {received()['counts']}", file=sys.stderr)
        try:  # each 2xx the receiver "lost" makes the sender deliver that id again: wait for those copies
            wait_for(lambda: _redelivered(received()["counts"]), 120, "the re-deliveries of the lost acknowledgements",
                     interval_s=1.0)
        except TimeoutError as exc:
            print(f"{exc}: receiver {received()['counts']}", file=sys.stderr)
        return _report(conn, r, label, meetings, job_ids, received(), time.monotonic() - started)


def _redelivered(counts: dict[str, int]) -> bool:
    return counts.get("duplicates_absorbed", 0) >= counts.get("answered_500_after_processing", 0)


def _report(conn: psycopg.Connection[Any], r: Run, label: str, meetings: int, job_ids: list[uuid.UUID],
            got: dict[str, Any], wall_s: float) -> int:
    bad = next(u for u in r.uploads if u["title"] == "unreadable recording")
    good = [uuid.UUID(u["job_id"]) for u in r.uploads if u is not bad]
    bad_id = uuid.UUID(bad["job_id"])
    jobs = {row[0]: row[1:] for row in _rows(conn, "SELECT id, status, attempts FROM outbox.jobs WHERE id = ANY(%s)",
                                             (job_ids,))}  # type: ignore[arg-type]
    stored = {row[0]: row[1:] for row in _rows(
        conn, f"SELECT job_id, status, transcript IS NOT NULL, summary IS NULL, coalesce(degraded, '{{}}') "
              f"FROM {tasks.MEETINGS} WHERE job_id = ANY(%s)", (job_ids,))}  # type: ignore[arg-type]
    succeeded = [j for j in good if jobs.get(j, ("?",))[0] == "succeeded"]
    lost = [j for j in job_ids if jobs.get(j, ("?",))[0] not in FINAL]
    partial = [j for j in succeeded if "summary" in stored[j][3]]
    consistent = all(stored[j][0] == "completed" and stored[j][1] and stored[j][2] == ("summary" in stored[j][3])
                     for j in succeeded)
    outcomes = dict(_rows(conn, "SELECT coalesce(outcome, 'running'), count(*) FROM outbox.attempts "
                                "WHERE job_id = ANY(%s) GROUP BY 1", (job_ids,)))  # type: ignore[arg-type]
    dead_letters = [row[0] for row in _rows(conn, "SELECT job_id FROM outbox.dead_letters WHERE job_id = ANY(%s)",
                                            (job_ids,))]  # type: ignore[arg-type]
    retried = sum(1 for j in good if jobs[j][1] > 1 and jobs[j][0] == "succeeded")
    recovered = len(_rows(conn, "SELECT DISTINCT a.job_id FROM outbox.attempts a JOIN outbox.jobs j ON j.id = a.job_id "
                                "WHERE a.job_id = ANY(%s) AND a.outcome = 'failed' AND j.status = 'succeeded'",
                          (job_ids,)))  # type: ignore[arg-type]
    # The wait between a failed attempt's end and the next attempt's start, by the attempt that failed.
    gaps: dict[int, list[float]] = {}
    for attempt, gap in _rows(conn, "SELECT a.attempt, extract(epoch FROM n.started_at - a.finished_at) "
                                    "FROM outbox.attempts a JOIN outbox.attempts n ON n.job_id = a.job_id "
                                    "AND n.attempt = a.attempt + 1 WHERE a.job_id = ANY(%s) AND a.outcome = 'failed'",
                              (job_ids,)):  # type: ignore[arg-type]
        gaps.setdefault(attempt, []).append(float(gap))
    backoff = "; ".join(f"after attempt {a}: {len(g)} waits, {min(g):.2f}-{max(g):.2f} s (jitter under "
                        f"{2 ** (a - 1):.0f} s; the rest is the wait behind the queued jobs)"
                        for a, g in sorted(gaps.items()))
    processed: dict[str, dict[str, Any]] = got["processed"]
    counts: dict[str, int] = got["counts"]
    expected_ids = {f"msg_{j.hex}" for j in job_ids}
    webhook_results = {wid: e["data"].get("result") for wid, e in processed.items()}
    matches_store = all(
        isinstance(webhook_results.get(f"msg_{j.hex}"), dict)
        and sorted(webhook_results[f"msg_{j.hex}"]["degraded"]) == sorted(stored[j][3]) for j in succeeded)
    bad_event = processed.get(f"msg_{bad_id.hex}", {})
    providers = httpx.get(f"{r.providers}/stats", timeout=30).json()
    summary_calls = providers["requests"].get("summary", 0)
    summary_failed = providers["failures"].get("summary", 0)
    sse_ok = [b for b in r.browsers if b.error is None and b.in_order()
              and b.events[-1]["status"] == "succeeded" and len(b.progress()) >= 2
              and b.progress()[-1]["message"] == "storing"]
    progress_seen = sorted(len(b.progress()) for b in r.browsers)
    print(f"\n{len(r.uploads)} uploads answered 202 (errors {len(r.upload_errors)}) in a run of {wall_s:.1f} s; "
          f"jobs {dict(sorted(Counter(v[0] for v in jobs.values()).items()))}; "
          f"attempts by outcome {outcomes}; providers {providers['requests']} failed {providers['failures']}; "
          f"receiver {counts}")
    for err in r.upload_errors[:5]:
        print(f"upload error: {err}")
    for b in r.browsers:
        if b not in sse_ok:
            print(f"SSE client for job {b.job_id}: error {b.error}, saw "
                  f"{[(e['kind'], e['status'] or e['message']) for e in b.events]}")
    claims = [
        Claim("every job completes despite a summary provider failing 50 % of the time",
              f"{len(succeeded)}/{meetings} readable meetings succeeded; summary provider failed {summary_failed} of "
              f"{summary_calls} calls", len(succeeded) == meetings and len(r.uploads) == meetings + 1),
        Claim("partial results beat total failure: the transcript is saved without the summary",
              f"{len(partial)} meetings stored without a summary and 'summary' in degraded, each with its "
              f"transcript; store matches each webhook's result: {matches_store}",
              bool(partial) and consistent and matches_store),
        Claim("transcription is mandatory: its final failure fails the job",
              f"unreadable recording: job {jobs[bad_id][0]} after {jobs[bad_id][1]} attempt(s), dead letter "
              f"{bad_id in dead_letters}, webhook {bad_event.get('type')}",
              jobs[bad_id][0] == "dead" and bad_id in dead_letters and bad_event.get("type") == "job.dead"),
        Claim("none is lost (late ack; a worker SIGKILLed mid-run)",
              f"{len(r.uploads)} uploads, {len(job_ids) - len(lost)} terminal jobs, lost {len(lost)}; "
              f"{r.kills} SIGKILL, {outcomes.get('crashed', 0)} attempts crashed and re-ran; "
              f"{retried} jobs succeeded on a later attempt",
              not lost and not r.upload_errors and len(r.uploads) == meetings + 1),
        Claim("transient provider failures are retried with exponential back-off",
              f"transcription flaky twice for every {FLAKY_EVERY}th meeting: {recovered} jobs succeeded after "
              f"failed attempts; {backoff or 'no retries'}",
              recovered >= meetings // FLAKY_EVERY and bool(gaps)),
        Claim("every completion webhook is delivered, signed, exactly once to the receiver",
              f"{len(processed)} distinct webhook-ids for {len(job_ids)} jobs, all ours: "
              f"{set(processed) == expected_ids}; {counts.get('verified', 0)} verified deliveries, "
              f"{counts.get('answered_503', 0)} answered 503 and retried, "
              f"{counts.get('answered_500_after_processing', 0)} 2xx lost (500 after processing) and "
              f"{counts.get('duplicates_absorbed', 0)} re-deliveries absorbed, "
              f"{counts.get('signature_rejected', 0)} signatures rejected",
              # "Once" also means no delivery beyond the re-sends of the acknowledgements the receiver
              # deliberately lost: any other duplicate (a sender retrying a delivery that had succeeded)
              # was absorbed by the receiver's id check, but it is not what the claim says.
              set(processed) == expected_ids and counts.get("signature_rejected", 0) == 0
              and counts.get("duplicates_absorbed", 0) == counts.get("answered_500_after_processing", 0)),
        Claim("the browser sees the job's progress over SSE, then its outcome",
              f"{len(sse_ok)}/{len(r.browsers)} streams: running, progress in order up to 'storing', "
              f"outcome succeeded; "
              f"progress events per stream {progress_seen}",
              bool(r.browsers) and len(sse_ok) == len(r.browsers)),
    ]
    print_claims(f"meeting pipeline, {label}", claims)
    return 0 if all(c.held for c in claims) else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m examples.pipeline [--size small|full] [--meetings N] [--summary-failure-rate R]``."""
    parser = argparse.ArgumentParser(prog="python -m examples.pipeline",
                                     description="The meeting pipeline on Tierbox, its claims measured.")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--meetings", type=int, help="meetings to upload (overrides --size)")
    parser.add_argument("--summary-failure-rate", type=float, default=0.5)
    parser.add_argument("--transcribe-failure-rate", type=float, default=0.0,
                        help="random transient transcription failures, retried with back-off (on top of the "
                             f"two deterministic ones of every {FLAKY_EVERY}th meeting)")
    parser.add_argument("--sample", type=int, default=5, help="jobs followed over SSE")
    parser.add_argument("--no-kill", action="store_true", help="do not SIGKILL a worker during the run")
    parser.add_argument("--receiver-every", type=int, nargs=2, metavar=("DOWN", "LOST_ACK"),
                        help="the receiver answers 503 to the first delivery of every DOWN-th id and 500 after "
                             "processing every LOST_ACK-th (default: spread to a few over the run)")
    args = parser.parse_args(argv)
    meetings = args.meetings or SIZES[args.size]
    rates = f"summary={args.summary_failure_rate},transcribe={args.transcribe_failure_rate}"
    label = f"{meetings:,} meetings" if args.meetings else f"size {args.size}, {meetings:,} meetings"
    every = (args.receiver_every[0], args.receiver_every[1]) if args.receiver_every else None
    return run(meetings, args.sample, not args.no_kill, label, rates, every)
