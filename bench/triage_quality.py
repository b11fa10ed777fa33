"""Triage quality (issue #14): do failure groups match root causes, and does triage name them right?

``python -m bench.triage_quality [--seed N] [--jobs 10000] [--attempts 2000000 | --quick] [--part P]``

**quality** (``--jobs`` dead letters, default 10,000): a seeded generator of dead letters from
:data:`CAUSES`, each a known root cause with the triage cause it should get. Every failure goes
through the failure path the worker uses, on a freshly migrated database of its own: jobs enqueued
with ``outbox.enqueue_many``, each attempt started with the ledger's ``START_ATTEMPT``, the
handler's exception really raised (by a handler function below, so its traceback is real) and
captured by ``ErrorInfo.of`` (fingerprint included), then recorded with ``RETRY`` or ``DEAD`` as
``workers.outcomes.Recorder`` does; timeouts are real ``asyncio.wait_for`` expiries turned into
``AttemptTimeout`` as ``workers.execute`` does; crashes are expired leases recovered by the real
``outbox.reap``; unknown tasks and undecodable bodies take the Recorder's ``UnknownTask`` /
``DEAD_MESSAGE`` paths with the real envelope decoder's error. The true cause of each dead letter
travels in its job's headers (``bench_cause``), so the truth is read back from the database.

It reports, from ``outbox.dead_letters`` and ``outbox.failure_groups``: groups per true cause
(target 1: no split), true causes per group (target 1: no merge), the share of dead letters and of
causes that ``tierbox.ops.triage.groups`` classifies as expected, the time to read and triage the
groups, and every split, merge and misclassification with its evidence.

**scale** (``--attempts``, default 2,000,000; ``--quick``: 200,000): a set-based SQL generator fills
a second database with that many failed attempts (two per job, 1,000 fingerprints with a skewed
distribution, a quarter of the jobs dead-lettered) and builds ``outbox.failure_groups`` from them.
Then, in the same run: (a) ``ops.triage.groups`` reading every group from the table; (b) the same
read with the table replaced by an aggregate over the attempts (the "view" alternative), and the
aggregate alone; (c) the failure path's cost per failure (``ErrorInfo.of`` + ``RETRY``, which
upserts the group) on that database against an empty one, rounds interleaved.

Both databases are dropped at the end. The figures are printed and appended to
``bench/results/triage_quality-<date>.md`` with the load average at the start.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import decimal
import functools
import json
import os
import random
import statistics
import string
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg

import outbox
from bench.harness import RESULTS_DIR, migrated_database
from outbox import _transitions as transitions
from outbox._encoding import decode_envelope, decode_payload
from outbox._failure import ErrorInfo
from tierbox.ops import queries, triage
from tierbox.workers.execute import AttemptTimeout

TASK_PREFIX = "bench.tq."
POOL = "normal"

# --------------------------------------------------------------------------- varying values


def _token(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _ts(rng: random.Random) -> str:
    """An ISO timestamp in one of the spellings applications print."""
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=rng.randrange(330 * 86400),
                                                                microseconds=rng.randrange(10**6))
    return rng.choice([at.isoformat(), at.strftime("%Y-%m-%d %H:%M:%S"), at.strftime("%Y-%m-%dT%H:%M:%SZ")])


def _http_date(rng: random.Random) -> str:
    """An RFC 7231 date (``Retry-After`` / ``Date`` headers echoed into messages)."""
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=rng.randrange(330 * 86400))
    return at.strftime("%a, %d %b %Y %H:%M:%S GMT")


def _amount(rng: random.Random) -> str:
    """A money amount as applications print them: 12.50, 1,234.50, 0.99, 250."""
    value = decimal.Decimal(rng.randrange(1, 2_000_000)) / 100
    return rng.choice([f"{value:.2f}", f"{value:,.2f}", f"{value:.2f}", str(int(value))])


def _currency(rng: random.Random) -> str:
    return rng.choice(["EUR", "USD", "GBP", "CHF"])


def _ip(rng: random.Random) -> str:
    return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _email(rng: random.Random) -> str:
    """An e-mail address a validator rejected (half of them malformed, as rejected ones are)."""
    user = rng.choice(["a", "ann.lee", "bob+shop", "c_d", "x" * rng.randrange(1, 9)])
    return rng.choice([f"{user}@b.c", f"{user}@mail.example.org", f"{user}@@example.com", f"{user}@",
                       f"{user}.example.com", f"{user}@exa mple.com"])


# --------------------------------------------------------------------------- the application's handlers
# Each function is one code path of the application; its exception is raised for real, so the
# fingerprint sees a real traceback. ``rng`` supplies what varies from job to job.

class RateLimitError(Exception):
    """An SDK's rate-limit error (the shape of openai.RateLimitError's message)."""


class PartnerApiError(Exception):
    """The application's error for a partner API's non-2xx answer."""


class CrmSyncError(Exception):
    """The application's wrapper around whatever made a CRM sync fail (``raise ... from exc``)."""


def charge_card(rng: random.Random) -> None:
    """Provider outage: the payment gateway refuses connections (requests/urllib3 wording)."""
    host = f"pay-{rng.randrange(1, 9)}.gateway.example"
    url = f"/v1/charges?idempotency_key={uuid.UUID(int=rng.getrandbits(128))}&amount={_amount(rng)}"
    raise ConnectionError(
        f"HTTPSConnectionPool(host='{host}', port=443): Max retries exceeded with url: {url} (Caused by "
        f"NewConnectionError('<urllib3.connection.HTTPSConnection object at 0x7f{rng.getrandbits(40):010x}>: "
        "Failed to establish a new connection: [Errno 111] Connection refused'))")


def create_label(rng: random.Random) -> None:
    """Provider outage: the shipping API answers 503 (httpx's own raise_for_status)."""
    url = (f"https://api{rng.randrange(1, 4)}.ship.example/v2/labels?order={rng.randrange(10**6)}"
           f"&ts={rng.randrange(1_700_000_000, 1_800_000_000)}")
    httpx.Response(503, request=httpx.Request("POST", url)).raise_for_status()


def geocode(rng: random.Random) -> None:
    """Provider outage: the geocoder does not accept the connection in time (httpx.ConnectTimeout)."""
    raise httpx.ConnectTimeout(f"connect to {_ip(rng)}:{rng.choice([443, 8443])} timed out after "
                               f"{rng.choice(['250ms', '1.5s', '5s', '10000ms'])}")


def sync_contacts(rng: random.Random) -> None:
    """Rate limited: the CRM answers 429 (httpx's raise_for_status), retry-after varying."""
    url = f"https://crm.example/api/contacts/{rng.randrange(10**6)}?page={rng.randrange(1, 50)}"
    response = httpx.Response(429, headers={"retry-after": str(rng.randrange(1, 120))},
                              request=httpx.Request("GET", url))
    response.raise_for_status()


def summarise(rng: random.Random) -> None:
    """Rate limited: an SDK's quota error naming the API key and a wait."""
    key = f"sk-proj-{_token(rng, 24)}"
    raise RateLimitError(f"Error code: 429 - quota exceeded for key {key}; retry after {rng.randrange(1, 90)}s "
                         f"(reset at {_http_date(rng)})")


def load_order(rng: random.Random) -> None:
    """Data error: the order is not there."""
    raise LookupError(f"order {rng.randrange(1, 10**7)} not found")


def load_invoice_order(rng: random.Random) -> None:
    """Data error from another code path with the same type and message shape: must not merge with load_order."""
    raise LookupError(f"order {rng.randrange(1, 10**7)} not found")


def validate_email(rng: random.Random) -> None:
    """Data error: an address the validator rejects, quoted as validators quote it."""
    raise ValueError(f"invalid e-mail address {_email(rng)!r} for customer cus_{_token(rng, 14)}")


def check_limit(rng: random.Random) -> None:
    """Data error: ids, amounts, currencies, timestamps and UUIDs vary; nothing else (must not split)."""
    raise ValueError(f"amount {_amount(rng)} {_currency(rng)} exceeds limit {_amount(rng)} for merchant "
                     f"{uuid.UUID(int=rng.getrandbits(128))} at {_ts(rng)} (request req_{_token(rng, 16)})")


def render_receipt(rng: random.Random) -> None:
    """Code defect: an attribute of None."""
    customer: Any = None if rng.random() < 2 else object()
    print(customer.email)


def build_label(rng: random.Random) -> None:
    """Code defect: a KeyError in the application's own code (a key it forgot to set)."""
    address: dict[str, str] = {"street": f"{rng.randrange(1, 200)} Main St"}
    print(address["shipping_address"])


def total_items(rng: random.Random) -> None:
    """Code defect: a TypeError."""
    count: Any = rng.randrange(1, 9)
    print(count + "items")


def crm_call(rng: random.Random, failure: str) -> None:
    """The CRM client: the connection is reset, or the CRM answers 429 (httpx's raise_for_status)."""
    if failure == "reset":
        raise ConnectionResetError(104, f"Connection reset by peer ({_ip(rng)}:443)")
    sync_contacts(rng)


def sync_account(rng: random.Random, failure: str) -> None:
    """Nested cause: the application wraps whatever the CRM client raised, at one place, in one message."""
    try:
        crm_call(rng, failure)
    except (ConnectionResetError, httpx.HTTPStatusError) as exc:
        raise CrmSyncError(f"CRM sync for account {rng.randrange(10**5)} failed") from exc


def push_partner(rng: random.Random, status: int) -> None:
    """The partner API client: one code path, one message shape, the status code decides the cause."""
    raise PartnerApiError(f"partner API returned HTTP {status} for shipment {rng.randrange(10**6)}")


async def export_report(rng: random.Random) -> None:
    """Timeout: the report query outlives the task's time limit."""
    await asyncio.sleep(10)


# --------------------------------------------------------------------------- the causes


@dataclasses.dataclass(frozen=True)
class Cause:
    """One true root cause: how its failures are produced and what triage should call it."""

    name: str
    #: The triage cause ``ops.triage`` should give its group(s).
    expected: str
    #: raise | timeout | lost | shutdown | unknown_task | undecodable
    kind: str
    #: Relative share of the dead letters.
    weight: int
    #: Retries after the first attempt (each attempt fails the same way).
    retries: int = 1
    handler: Callable[[random.Random], None] | None = None
    note: str = ""


CAUSES: tuple[Cause, ...] = (
    Cause("gateway refused", "provider outage", "raise", 12, 2, charge_card, "hosts, URLs with query strings"),
    Cause("shipping 503", "provider outage", "raise", 8, 1, create_label, "httpx 503, hosts, query strings"),
    Cause("geocoder connect timeout", "provider outage", "raise", 5, 1, geocode, "IPs, ports, durations"),
    Cause("CRM 429", "rate limited", "raise", 8, 1, sync_contacts, "httpx 429, ids in the URL"),
    Cause("LLM quota", "rate limited", "raise", 5, 1, summarise, "API keys, retry-after, HTTP dates"),
    Cause("order not found", "data error", "raise", 10, 1, load_order, "ids"),
    Cause("invoice's order not found", "data error", "raise", 4, 1, load_invoice_order,
          "same type and message shape as 'order not found', another code path"),
    Cause("invalid e-mail", "data error", "raise", 6, 0, validate_email, "quoted malformed addresses"),
    Cause("amount over limit", "data error", "raise", 6, 0, check_limit,
          "amounts, currencies, UUIDs, timestamps, tokens"),
    Cause("None attribute", "code defect", "raise", 4, 1, render_receipt),
    Cause("KeyError in app code", "code defect", "raise", 3, 1, build_label),
    Cause("TypeError", "code defect", "raise", 3, 1, total_items),
    Cause("CRM sync: reset (nested)", "provider outage", "raise", 4, 1,
          functools.partial(sync_account, failure="reset"),
          "CrmSyncError from ConnectionResetError, in sync_account"),
    Cause("CRM sync: 429 (nested)", "rate limited", "raise", 4, 1,
          functools.partial(sync_account, failure="429"),
          "CrmSyncError from httpx 429: the same wrapper, message and code path as the reset"),
    Cause("partner 503", "provider outage", "raise", 4, 1, functools.partial(push_partner, status=503),
          "status code in the message; shipment ids"),
    Cause("partner 429", "rate limited", "raise", 4, 1, functools.partial(push_partner, status=429),
          "the same code path and message shape as 'partner 503', status 429"),
    Cause("report timeout", "timeout", "timeout", 5, 1, note="asyncio.wait_for expiry -> AttemptTimeout"),
    Cause("worker lost", "crashed", "lost", 4, 0, note="expired lease, outbox.reap"),
    Cause("shutdown mid-job", "crashed", "shutdown", 2, 0, note="WorkerShutdown (grace period over)"),
    Cause("unknown task", "poison message", "unknown_task", 2, 0, note="legacy task names"),
    Cause("undecodable body", "poison message", "undecodable", 2, 0, note="a foreign producer's JSON events"),
)

_BY_NAME = {c.name: c for c in CAUSES}
_TASK_OF = {c.name: TASK_PREFIX + c.name.replace(" ", "_").replace("'", "").replace(":", "").replace("(", "")
            .replace(")", "") for c in CAUSES}
_LEGACY_TASKS = [f"{TASK_PREFIX}legacy.sync_v{n}" for n in range(1, 6)]


def _noop() -> None:
    """The producer side's stand-in: the tasks only need to be known to ``enqueue``."""


# Registered once, by the imported module (``python -m`` runs a second copy as ``__main__``, see the end).
for _name in [*_TASK_OF.values(), *_LEGACY_TASKS] if __name__ != "__main__" else []:
    outbox.task(name=_name, tier=outbox.Tier.NORMAL, max_retries=3)(_noop)


def caught(fn: Callable[[random.Random], None], rng: random.Random) -> BaseException:
    """The exception ``fn`` raises, caught the way a worker catches it (traceback kept)."""
    try:
        fn(rng)
    except Exception as exc:  # noqa: BLE001 - what a worker catches
        return exc
    raise AssertionError(f"{fn.__name__} did not raise")


def timed_out(loop: asyncio.AbstractEventLoop, task: str, rng: random.Random) -> BaseException:
    """A real expiry of ``asyncio.wait_for`` around :func:`export_report`, as ``workers.execute`` reports it."""
    timeout_s = 0.001

    async def attempt() -> None:
        try:
            await asyncio.wait_for(export_report(rng), timeout_s)
        except TimeoutError as exc:
            raise AttemptTimeout(f"{task} exceeded its timeout of {timeout_s}s") from exc

    try:
        loop.run_until_complete(attempt())
    except AttemptTimeout as exc:
        return exc
    raise AssertionError("export_report did not time out")


# --------------------------------------------------------------------------- databases


database = migrated_database  # a fresh migrated database per measurement


def _exec(conn: psycopg.Connection[Any], stmt: Any, params: dict[str, Any]) -> list[Any]:
    return conn.execute(stmt.pg, params, prepare=True).fetchall()


# --------------------------------------------------------------------------- the generator


def plan(seed: int, jobs: int) -> list[str]:
    """The true cause of each of ``jobs`` dead letters, in a seeded random order."""
    rng = random.Random(seed)
    total = sum(c.weight for c in CAUSES)
    names: list[str] = []
    for cause in CAUSES:  # every cause at least once; the rest by weight
        names += [cause.name] * max(1, round(jobs * cause.weight / total))
    names = names[:jobs] + [CAUSES[0].name] * max(0, jobs - len(names))
    rng.shuffle(names)
    return names


class Generator:
    """Produces dead letters of known causes through the failure path (see the module's docstring)."""

    def __init__(self, conn: psycopg.Connection[Any], seed: int) -> None:
        self.conn = conn
        self.rng = random.Random(seed + 1)
        self.loop = asyncio.new_event_loop()
        self.failures = 0

    def close(self) -> None:
        """Close the event loop the timeouts ran on."""
        self.loop.close()

    def run(self, causes: list[str], batch: int = 500) -> None:
        """Dead-letter one job per entry of ``causes``."""
        for i in range(0, len(causes), batch):
            chunk = causes[i:i + batch]
            undecodable = [c for c in chunk if _BY_NAME[c].kind == "undecodable"]
            jobs = [c for c in chunk if _BY_NAME[c].kind != "undecodable"]
            for name in undecodable:
                self._undecodable(name)
            specs = [outbox.job(self._task(name), args=[n], headers={"bench_cause": name},
                                max_retries=_BY_NAME[name].retries) for n, name in enumerate(jobs)]
            ids = outbox.enqueue_many(self.conn, specs)
            self.conn.commit()
            self._fail(list(zip(ids, jobs, strict=True)))

    def _task(self, name: str) -> str:
        return self.rng.choice(_LEGACY_TASKS) if _BY_NAME[name].kind == "unknown_task" else _TASK_OF[name]

    def _start(self, job_id: uuid.UUID) -> int:
        [row] = _exec(self.conn, transitions.START_ATTEMPT, {"job_id": job_id, "worker_id": "bench-tq",
                                                             "lease_s": 300.0, "acked_early": False, "token": None})
        assert row[0] == "run", row
        return int(row[1])

    def _fail(self, jobs: list[tuple[uuid.UUID, str]]) -> None:
        """Run every attempt of ``jobs`` to its failure until each is dead."""
        left = list(jobs)
        while left:
            lost: list[uuid.UUID] = []
            still: list[tuple[uuid.UUID, str]] = []
            for job_id, name in left:
                cause = _BY_NAME[name]
                attempt = self._start(job_id)
                last = attempt > cause.retries
                if cause.kind == "lost":  # the worker dies: nothing is recorded, the lease expires
                    lost.append(job_id)
                    if not last:
                        still.append((job_id, name))
                    continue
                self._record(job_id, attempt, cause, last)
                if not last:
                    still.append((job_id, name))
            self.conn.commit()
            if lost:
                self._reap(lost)
            left = still

    def _record(self, job_id: uuid.UUID, attempt: int, cause: Cause, last: bool) -> None:
        """One failed attempt through the statement the worker's Recorder would use."""
        outcome, reason = "failed", "failed"
        if cause.kind == "raise":
            assert cause.handler is not None
            error = ErrorInfo.of(caught(cause.handler, self.rng))
        elif cause.kind == "timeout":
            error = ErrorInfo.of(timed_out(self.loop, _TASK_OF[cause.name], self.rng))
            outcome = reason = "timeout"
        elif cause.kind == "shutdown":  # Recorder.release_job
            error = ErrorInfo("WorkerShutdown", "worker stopped before the job finished (grace period over)")
            outcome = reason = "crashed"
        elif cause.kind == "unknown_task":  # Recorder._unknown_task: dead at once
            task = self.conn.execute("SELECT task FROM outbox.jobs WHERE id = %s", (job_id,)).fetchone()
            error = ErrorInfo("UnknownTask", f"no handler registered as {task[0] if task else '?'!r} in pool {POOL}")
            reason, last = "unknown_task", True
        else:
            raise AssertionError(cause.kind)
        self.failures += 1
        params = {"job_id": job_id, "attempt": attempt, "outcome": outcome, **error.params()}
        if last:
            [row] = _exec(self.conn, transitions.DEAD, {**params, "reason": reason})
        else:
            [row] = _exec(self.conn, transitions.RETRY, {**params, "delay_s": 0.0})
        assert row[0] == 1, (cause.name, row)

    def _reap(self, jobs: list[uuid.UUID]) -> None:
        """Expire the leases of ``jobs`` (their worker died) and let the real reaper recover them."""
        self.conn.execute("UPDATE outbox.leases SET expires_at = now() - interval '1 second' WHERE job_id = ANY(%s)",
                          (jobs,))
        self.conn.commit()
        while self.conn.execute("SELECT count(*) FROM outbox.reap(1000)").fetchone() != (0,):
            self.conn.commit()
        self.conn.commit()
        self.failures += len(jobs)

    def _undecodable(self, name: str) -> None:
        """A foreign producer's event on our queue (valid JSON, not an envelope), dead-lettered as the Recorder does."""
        event = {"event": self.rng.choice(["order.created", "order.paid", "order.shipped"]),
                 "order_id": self.rng.randrange(10**7), "at": _ts(self.rng)}
        body = json.dumps(event).encode()
        try:  # what workers.delivery.Delivery.decode does
            decode_payload(decode_envelope(body).payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            error = ErrorInfo(type(exc).__name__, str(exc)[:2000])  # workers.processing: Undeliverable("undecodable")
        else:
            raise AssertionError("a foreign event decoded as an envelope")
        _exec(self.conn, transitions.DEAD_MESSAGE, {
            "job_id": None, "task": None, "tier": "normal", "priority": 5, "payload": None,
            "headers": json.dumps({"bench_cause": name}), "raw_body": body, "reason": "undecodable",
            **error.params()})
        self.failures += 1


# --------------------------------------------------------------------------- the quality report


@dataclasses.dataclass
class Quality:
    """What the quality part measured."""

    dead_letters: int
    failures: int
    generate_s: float
    read_s: list[float]
    #: The same reads after ANALYZE.
    analyzed_s: list[float]
    groups: int
    #: cause -> fingerprint -> dead letters
    matrix: dict[str, Counter[str]]
    triaged: dict[str, triage.TriagedGroup]
    #: outbox.failure_groups: total bytes, live rows, dead rows, updates, HOT updates, analysed by autovacuum.
    table: tuple[Any, ...]


def measure_quality(url: str, seed: int, jobs: int) -> Quality:
    """Generate the dead letters, read the groups back with triage, compare with the truth."""
    causes = plan(seed, jobs)
    with psycopg.connect(url) as conn:
        gen = Generator(conn, seed)
        t0 = time.perf_counter()
        try:
            gen.run(causes)
        finally:
            gen.close()
        generate_s = time.perf_counter() - t0
        conn.commit()
        rows = conn.execute("SELECT headers->>'bench_cause', fingerprint, count(*) FROM outbox.dead_letters "
                            "GROUP BY 1, 2").fetchall()
        table = conn.execute(
            "SELECT pg_total_relation_size('outbox.failure_groups'), n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd, "
            "last_autoanalyze IS NOT NULL FROM pg_stat_user_tables WHERE relid = 'outbox.failure_groups'::regclass"
        ).fetchone()
        conn.rollback()

        def reads() -> tuple[list[float], list[triage.TriagedGroup]]:
            values, found = [], []
            for _ in range(5):
                t = time.perf_counter()
                found = triage.groups(conn, limit=100_000)
                values.append(time.perf_counter() - t)
                conn.rollback()
            return values, found

        # Read as an operator finds the table right after the failures (autovacuum may not have analysed
        # it yet), then after ANALYZE: the planner's estimate for a table it has not analysed decides
        # whether the read is JIT-compiled.
        read_s, triaged = reads()
        conn.autocommit = True
        conn.execute("ANALYZE outbox.failure_groups, outbox.dead_letters, outbox.attempts")
        conn.autocommit = False
        analyzed_s, triaged = reads()
    matrix: dict[str, Counter[str]] = defaultdict(Counter)
    for cause, fp, n in rows:
        matrix[str(cause)][str(fp)] += int(n)
    by_fp = {t.group.fingerprint: t for t in triaged}
    dead = sum(sum(c.values()) for c in matrix.values())
    return Quality(dead, gen.failures, generate_s, read_s, analyzed_s, len(by_fp), dict(matrix), by_fp,
                   tuple(table) if table else ())


def _short(text: str | None, n: int = 110) -> str:
    text = (text or "").replace("\n", " ").replace("|", "/")
    return text if len(text) <= n else text[:n - 3] + "..."


def quality_report(q: Quality, out: list[str]) -> dict[str, Any]:
    """Tables and lists of the quality part (appended to ``out``); returns the headline figures."""
    causes_per_group: dict[str, set[str]] = defaultdict(set)
    for name, fps_of in q.matrix.items():
        for fp in fps_of:
            causes_per_group[fp].add(name)
    out.append(f"{q.dead_letters:,} dead letters from {len(q.matrix)} true causes ({q.failures:,} failed attempts "
               f"and undeliverable messages), generated in {q.generate_s:.1f} s; {q.groups} failure groups.\n")
    out.append("| true cause | dead letters | groups | causes sharing its group(s) | expected | triaged as "
               "(dead letters) | varies |")
    out.append("|---|---|---|---|---|---|---|")
    right = 0
    causes_right = 0
    wrong: list[str] = []
    for cause in CAUSES:
        fps = q.matrix.get(cause.name, Counter())
        got: Counter[str] = Counter()
        for fp, n in fps.items():
            t = q.triaged.get(fp)
            got[t.verdict.cause if t else "(no group)"] += n
            if t is not None and t.verdict.cause != cause.expected:
                wrong.append(f"- **{cause.name}** (expected *{cause.expected}*): group `{fp}` {t.group.error_type}: "
                             f"`{_short(t.group.message)}` sample `{_short(t.group.sample_message)}` "
                             f"reasons {t.group.reasons} outcomes {t.group.outcomes} -> *{t.verdict.cause}* "
                             f"(rule {t.verdict.rule}: {_short(t.verdict.evidence, 160)}), {n} dead letters")
        right += got.get(cause.expected, 0)
        causes_right += int(set(got) == {cause.expected})
        others = sorted({c for fp in fps for c in causes_per_group[fp]} - {cause.name})
        out.append(f"| {cause.name} | {sum(fps.values())} | {len(fps)} | {', '.join(others) or '-'} | "
                   f"{cause.expected} | {', '.join(f'{k} ({v})' for k, v in got.most_common())} | {cause.note} |")
    merged = {fp: cs for fp, cs in causes_per_group.items() if len(cs) > 1}
    split = {c: fps for c, fps in q.matrix.items() if len(fps) > 1}
    pure_groups = sum(1 for cs in causes_per_group.values() if len(cs) == 1)
    figures = {
        "causes": len(q.matrix), "groups": len(causes_per_group),
        "causes_one_group": sum(1 for fps in q.matrix.values() if len(fps) == 1),
        "groups_one_cause": pure_groups,
        "dead_letters_right": right / q.dead_letters, "causes_right": causes_right / len(q.matrix),
        "read_ms": statistics.median(q.read_s) * 1000, "analyzed_ms": statistics.median(q.analyzed_s) * 1000,
    }
    out.append("")
    out.append(f"- causes in exactly one group (no split): {figures['causes_one_group']} of {figures['causes']}; "
               f"groups of exactly one cause (no merge): {pure_groups} of {figures['groups']}")
    out.append(f"- classified as expected: {right:,} of {q.dead_letters:,} dead letters "
               f"({100 * figures['dead_letters_right']:.1f} %), {causes_right} of {len(q.matrix)} causes")
    out.append(f"- `ops.triage.groups` (read + classify all {q.groups} groups), ms, median (min-max) of "
               f"{len(q.read_s)} reads: as found {_mm(q.read_s)}; after ANALYZE {_mm(q.analyzed_s)}")
    if q.table:
        size, live, dead_rows, upd, hot, analysed = q.table
        out.append(f"- `outbox.failure_groups` as found: {live} live rows, {dead_rows} dead row versions, "
                   f"{size / 1024:,.0f} KiB with indexes; {upd} updates of which {hot} HOT; "
                   f"autoanalysed: {'yes' if analysed else 'no'}")
    out.append("\n**Splits** (a cause in more than one group):" + ("" if split else " none"))
    for cause_name, fps in sorted(split.items()):
        out.append(f"- {cause_name}: {len(fps)} groups")
        for fp, n in fps.most_common(6):
            t = q.triaged.get(fp)
            if t is not None:
                out.append(f"  - `{fp}` {n} dead letters: {t.group.error_type} `{_short(t.group.message)}` "
                           f"frames {t.group.frames[:1]}")
        if len(fps) > 6:
            out.append(f"  - ... and {len(fps) - 6} more")
    out.append("\n**Merges** (a group with more than one cause):" + ("" if merged else " none"))
    for fp, cs in sorted(merged.items()):
        t = q.triaged.get(fp)
        out.append(f"- `{fp}` {t.group.error_type if t else ''} `{_short(t.group.message if t else '')}`: "
                   f"{', '.join(sorted(cs))}")
    out.append("\n**Misclassified** (group's verdict is not the cause's expected one):" + ("" if wrong else " none"))
    out += wrong
    return figures


# --------------------------------------------------------------------------- the 2 M-attempt figures

# The groups of ``n`` failed attempts, two per job, a quarter of the jobs dead; 1,000 fingerprints,
# skewed (the index is floor(1000 * r^3): a few large groups, a long tail of small ones).
BULK_SQL = """
CREATE TEMP TABLE bulk_jobs ON COMMIT DROP AS
SELECT md5('j' || i)::uuid AS id, i,
       'fp' || lpad(floor(1000 * power(random(), 3))::int::text, 4, '0') AS fp,
       now() - make_interval(secs => random() * 86400 * 7) AS at
FROM generate_series(1, %(jobs)s) AS i;
INSERT INTO outbox.jobs (id, task, tier, priority, payload, headers, status, attempts, max_retries, available_at,
                         enqueued_at, started_at, finished_at, last_error)
SELECT id, 'bench.tq.bulk_' || (i %% 40), 'normal', 5,
       jsonb_build_object('args', jsonb_build_array(i), 'kwargs', '{}'::jsonb), '{}'::jsonb,
       CASE WHEN i %% 4 = 0 THEN 'dead' ELSE 'retrying' END, 2, 1,
       at + interval '30 days', at, at, CASE WHEN i %% 4 = 0 THEN at END, 'order ' || i || ' not found'
FROM bulk_jobs;
INSERT INTO outbox.attempts (job_id, attempt, worker_id, started_at, finished_at, outcome, error_type, error_message,
                             traceback, fingerprint)
SELECT id, a, 'bench-bulk', at, at, 'failed', 'LookupError', 'order ' || i || ' not found',
       'Traceback (most recent call last):' || repeat(E'\\n  File "/srv/app/' || md5(fp) || '.py", line ' || i %% 300
           || ', in handler', 6) || E'\\nLookupError: order ' || i || ' not found',
       fp
FROM bulk_jobs CROSS JOIN generate_series(1, 2) AS a;
INSERT INTO outbox.dead_letters (job_id, task, tier, priority, payload, headers, reason, error_type, error_message,
                                 attempts, enqueued_at, failed_at, fingerprint)
SELECT id, 'bench.tq.bulk_' || (i %% 40), 'normal', 5, jsonb_build_object('args', jsonb_build_array(i)), '{}'::jsonb,
       'failed', 'LookupError', 'order ' || i || ' not found', 2, at, at, fp
FROM bulk_jobs WHERE i %% 4 = 0;
"""

# The groups as an aggregate over the attempts: what a view would compute on every read. (A view
# cannot keep the normalised message, the frames or a triage status: those are not in the attempts;
# the message is the latest raw one, frames empty, status 'open'.)
AGGREGATE_SQL = """
SELECT a.fingerprint, min(a.error_type) AS error_type, max(a.error_message) AS message,
       max(a.error_message) AS sample_message, '{}'::text[] AS frames,
       (array_agg(DISTINCT j.task))[1:20] AS tasks, (array_agg(DISTINCT j.tier))[1:20] AS tiers,
       array_agg(DISTINCT a.outcome) AS outcomes, COALESCE(min(d.reasons), '{}'::text[]) AS reasons,
       count(*) AS failed_attempts, COALESCE(min(d.n), 0) AS dead_letters,
       min(a.finished_at) AS first_seen, max(a.finished_at) AS last_seen,
       (array_agg(a.job_id ORDER BY a.finished_at DESC))[1:10] AS sample_job_ids, 'open'::text AS status,
       NULL::timestamptz AS resolved_at, NULL::timestamptz AS regressed_at
FROM outbox.attempts a
JOIN outbox.jobs j ON j.id = a.job_id
LEFT JOIN (SELECT fingerprint, count(*) AS n, array_agg(DISTINCT reason) AS reasons
           FROM outbox.dead_letters GROUP BY fingerprint) AS d ON d.fingerprint = a.fingerprint
WHERE a.outcome IN ('failed', 'timeout', 'crashed') AND a.fingerprint IS NOT NULL
GROUP BY a.fingerprint
"""

FILL_GROUPS_SQL = f"""
INSERT INTO outbox.failure_groups (fingerprint, error_type, message, sample_message, frames, tasks, tiers, outcomes,
                                   reasons, failed_attempts, dead_letters, first_seen, last_seen, sample_job_ids)
SELECT fingerprint, error_type, message, sample_message, frames, tasks, tiers, outcomes, reasons, failed_attempts,
       dead_letters, first_seen, last_seen, sample_job_ids
FROM ({AGGREGATE_SQL}) AS agg
"""


def _timed(fn: Callable[[], Any], n: int) -> list[float]:
    values = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        values.append(time.perf_counter() - t)
    return values


def _failure_round(conn: psycopg.Connection[Any], rng: random.Random, n: int) -> float:
    """Seconds per failure of ``n`` failures (ErrorInfo.of + RETRY, one transaction each), as bench/triage.py."""
    ids = outbox.enqueue_many(conn, [outbox.job(_TASK_OF["order not found"], args=[i]) for i in range(n)])
    conn.commit()
    for job_id in ids:
        _exec(conn, transitions.START_ATTEMPT, {"job_id": job_id, "worker_id": "bench-tq", "lease_s": 300.0,
                                                "acked_early": False, "token": None})
    conn.commit()
    excs = [caught(load_order, rng) for _ in range(n)]
    t0 = time.perf_counter()
    for job_id, exc in zip(ids, excs, strict=True):
        [row] = _exec(conn, transitions.RETRY, {"job_id": job_id, "attempt": 1, "delay_s": 3600.0, "outcome": "failed",
                                                **ErrorInfo.of(exc).params()})
        conn.commit()
        assert row[0] == 1, row
    return (time.perf_counter() - t0) / n


def measure_scale(attempts: int, failures: int, rounds: int, out: list[str]) -> dict[str, float]:
    """The 2 M-attempt figures (see the module's docstring); appends its table to ``out``."""
    figures: dict[str, float] = {}
    with database("tq_scale") as big_url, database("tq_empty") as empty_url, \
            psycopg.connect(big_url) as big, psycopg.connect(empty_url) as empty:
        t0 = time.perf_counter()
        # One simple-protocol script (several statements, no parameters): the size is an int.
        big.execute(BULK_SQL.replace("%(jobs)s", str(int(attempts // 2))).replace("%%", "%").encode())
        big.commit()
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        big.execute(FILL_GROUPS_SQL)
        big.commit()
        fill_s = time.perf_counter() - t0
        big.autocommit = True
        big.execute("VACUUM ANALYZE outbox.jobs, outbox.attempts, outbox.dead_letters, outbox.failure_groups")
        big.autocommit = False
        sizes = big.execute(
            "SELECT (SELECT count(*) FROM outbox.attempts), (SELECT count(*) FROM outbox.dead_letters), "
            "(SELECT count(*) FROM outbox.failure_groups), pg_total_relation_size('outbox.attempts'), "
            "pg_total_relation_size('outbox.failure_groups')").fetchone()
        assert sizes is not None
        n_attempts, n_dead, n_groups, attempts_bytes, groups_bytes = sizes
        big.rollback()

        def read_table() -> None:
            triage.groups(big, limit=100_000)
            big.rollback()

        view_stmt = queries.FAILURE_GROUPS.pg.replace("FROM outbox.failure_groups g", f"FROM ({AGGREGATE_SQL}) g")

        def read_view() -> None:
            big.execute(view_stmt, {"status": None, "task": None, "fingerprint": None, "limit": 100_000}).fetchall()
            big.rollback()

        def aggregate_only() -> None:
            big.execute(f"SELECT count(*) FROM ({AGGREGATE_SQL}) AS agg").fetchone()
            big.rollback()

        def read_table_no_jit() -> None:
            big.execute("SET LOCAL jit = off")
            read_table()

        read_table()  # warm the caches for both alike
        table_s = _timed(read_table, 5)
        table_nojit_s = _timed(read_table_no_jit, 5)
        slow = 3 if attempts <= 500_000 else 2  # the aggregate reads every attempt: fewer repetitions at 2 M
        view_s = _timed(read_view, slow) if "FROM outbox.failure_groups g" in queries.FAILURE_GROUPS.pg else []
        agg_s = _timed(aggregate_only, slow)

        rng = random.Random(7)
        per: dict[str, list[float]] = {"empty": [], "big": []}
        _failure_round(empty, rng, 50)  # warm up: prepared statements, the group's row
        _failure_round(big, rng, 50)
        for r in range(rounds):
            for which in (("empty", "big") if r % 2 == 0 else ("big", "empty")):
                per[which].append(_failure_round(empty if which == "empty" else big, rng, failures))
    ms = 1000.0
    figures.update(attempts=n_attempts, dead=n_dead, groups=n_groups, load_s=load_s, fill_s=fill_s,
                   table_ms=statistics.median(table_s) * ms, agg_ms=statistics.median(agg_s) * ms,
                   view_ms=statistics.median(view_s) * ms if view_s else float("nan"),
                   fail_empty_ms=statistics.median(per["empty"]) * ms, fail_big_ms=statistics.median(per["big"]) * ms)
    out.append(f"{n_attempts:,} failed attempts ({attempts_bytes / 2**20:,.0f} MiB with indexes), {n_dead:,} dead "
               f"letters, {n_groups:,} groups ({groups_bytes / 2**10:,.0f} KiB); bulk insert {load_s:.1f} s, groups "
               f"built from scratch (INSERT ... SELECT of the aggregate) {fill_s:.1f} s.\n")
    out.append("| figure | median (min-max), ms |")
    out.append("|---|---|")
    out.append(f"| (a) `ops.triage.groups`, all {n_groups:,} groups, from the table | {_mm(table_s)} |")
    out.append(f"| (a) the same with `SET LOCAL jit = off` | {_mm(table_nojit_s)} |")
    out.append(f"| (b) the same read over the aggregate instead of the table (the view) | {_mm(view_s)} |")
    out.append(f"| (b) the aggregate alone (rebuilding every group from the attempts) | {_mm(agg_s)} |")
    out.append(f"| (c) failure path per failure (`ErrorInfo.of` + `RETRY` with the group upsert), empty database | "
               f"{_mm(per['empty'], 3)} |")
    out.append(f"| (c) the same with {n_attempts:,} attempts and {n_groups:,} groups | {_mm(per['big'], 3)} |")
    out.append(f"\n(c): {rounds} rounds of {failures} failures on each database, interleaved, one transaction per "
               f"failure; ratio big/empty {figures['fail_big_ms'] / figures['fail_empty_ms']:.2f}.")
    return figures


def _mm(values: list[float], digits: int = 1) -> str:
    if not values:
        return "n/a"
    v = [x * 1000 for x in values]
    return f"{statistics.median(v):,.{digits}f} ({min(v):,.{digits}f}-{max(v):,.{digits}f})"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    """Run the chosen parts, print them, append them to ``bench/results/triage_quality-<date>.md``."""
    parser = argparse.ArgumentParser(prog="python -m bench.triage_quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--jobs", type=int, default=10_000, help="dead letters of the quality part")
    parser.add_argument("--attempts", type=int, default=2_000_000, help="failed attempts of the scale part")
    parser.add_argument("--quick", action="store_true", help="scale part with 200,000 attempts")
    parser.add_argument("--part", choices=("quality", "scale", "both"), default="both")
    parser.add_argument("--failures", type=int, default=300, help="failures per round of (c)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of (c) on each database")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    attempts = 200_000 if args.quick else args.attempts
    load = Path("/proc/loadavg").read_text().split()[:3]
    out = [f"# Triage quality run {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} "
           f"(`python -m bench.triage_quality {' '.join(argv if argv is not None else sys.argv[1:])}`)", "",
           f"- {os.cpu_count()} CPUs; load average at start: {' '.join(load)} (shared machine)", ""]
    print("\n".join(out), flush=True)
    started = len(out)
    if args.part in ("quality", "both"):
        out.append(f"## Quality: {args.jobs:,} dead letters, seed {args.seed}\n")
        with database("tq_quality") as url:
            quality_report(measure_quality(url, args.seed, args.jobs), out)
        print("\n".join(out[started:]), flush=True)
        started = len(out)
    if args.part in ("scale", "both"):
        out.append(f"\n## Scale: {attempts:,} failed attempts\n")
        measure_scale(attempts, args.failures, args.rounds, out)
        print("\n".join(out[started:]), flush=True)
    if not args.no_save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"triage_quality-{dt.date.today().isoformat()}.md"
        with path.open("a") as f:
            f.write("\n".join(out) + "\n\n")
        print(f"\nresults appended to {path}")


if __name__ == "__main__":
    # Run the imported module's main: the handlers' frames then read ``bench.triage_quality:...``, as an
    # application module's would, not ``__main__:...``.
    from bench import triage_quality

    triage_quality.main()
