"""The hotel platform on Tierbox: six tiers, four pools, and the story's claims measured.

One run: a RabbitMQ node of its own, the relay, the four pools (urgent, normal, deferred, calls)
and the scheduler as real processes. A tier override raises calendar syncs to HIGH for a week.
Then, for ``otps`` ticks of 0.1 s, a contact import keeps BULK deep, calls end and spawn their nine
post-processing jobs in CALLS, a campaign's e-mails queue behind BULK's rate limit, and an OTP is
committed every tick: its commit-to-start time is the headline figure. A Stripe webhook for a
booking not yet recorded dies; once the booking exists it is redriven into HIGH with one call.
RabbitMQ is restarted while BULK still has a backlog and jobs keep being committed, and the run
waits for every job it committed to finish: lost = committed jobs that never reached an end.

``--no-restart`` runs on the shared broker (``TIERBOX_AMQP_URL``) instead of a node of its own, so
neither root nor an installed ``rabbitmq-server`` is needed: the restart is skipped (its row is
printed ``not run``) and a row of its own checks that nothing committed was lost or run twice.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

import outbox
from examples.hotel import tasks
from examples.hotel.broker import PrivateNode, unavailable
from examples.support import (
    ROOT,
    Claim,
    Processes,
    child_env,
    conclude,
    example_settings,
    percentile,
    print_claims,
    tear_down,
    wait_for,
    wait_for_consumers,
)
from outbox.config import Settings
from tierbox import migrations

POOLS = ("urgent", "normal", "deferred", "calls")
OTP_BUDGET_S = 5.0
TICK_S = 0.1
FINAL = ("succeeded", "dead", "expired", "discarded")


@dataclass(frozen=True)
class Size:
    """How much work one run commits."""

    contacts: int
    otps: int
    calls: int
    emails: int
    calendar_syncs: int
    drain_timeout_s: float


SIZES = {
    "small": Size(contacts=2_000, otps=60, calls=12, emails=40, calendar_syncs=6, drain_timeout_s=240),
    "full": Size(contacts=50_000, otps=300, calls=40, emails=200, calendar_syncs=20, drain_timeout_s=1800),
}


@dataclass
class Ledger:
    """Every job id this run committed, by what it was for."""

    committed: list[uuid.UUID] = field(default_factory=list)
    otps: list[uuid.UUID] = field(default_factory=list)
    otps_during_restart: list[uuid.UUID] = field(default_factory=list)
    calendar: list[uuid.UUID] = field(default_factory=list)
    emails: list[uuid.UUID] = field(default_factory=list)
    calls: list[list[uuid.UUID]] = field(default_factory=list)
    #: Calls committed while the broker was down (the last ones in ``calls``); their wait is the outage's.
    calls_during_restart: int = 0
    bulk_backlog_max: int = 0
    #: When the run began, by the database's clock (earlier runs' periodic jobs are not this run's).
    began: Any = None

    def add(self, ids: list[uuid.UUID]) -> list[uuid.UUID]:
        self.committed.extend(ids)
        return ids


def _one(conn: psycopg.Connection[Any], task: outbox.Task | str, **options: Any) -> uuid.UUID:
    with conn.transaction():
        return outbox.enqueue(conn, task, **options)


def _contacts(conn: psycopg.Connection[Any], import_id: int, start: int, count: int) -> list[uuid.UUID]:
    with conn.transaction():
        return outbox.enqueue_many(conn, [outbox.job(tasks.import_contact, args=[import_id, row])
                                          for row in range(start, start + count)])


def _finish_call(conn: psycopg.Connection[Any], call_id: int) -> list[uuid.UUID]:
    """The transaction that records a call's end enqueues its nine post-processing jobs in CALLS."""
    with conn.transaction():
        return outbox.enqueue_many(conn, [outbox.job(name, args=[call_id]) for name, _ in tasks.CALL_TASKS])


def _count(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> int:
    row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


def _bulk_backlog(conn: psycopg.Connection[Any]) -> int:
    return _count(conn, "SELECT count(*) FROM outbox.jobs WHERE tier = 'bulk' AND status IN "
                  "('pending', 'published', 'retrying')", ())


def _otp(conn: psycopg.Connection[Any], i: int) -> uuid.UUID:
    return _one(conn, tasks.send_otp_email, args=[f"guest{i}@example.com"])


def _load(conn: psycopg.Connection[Any], size: Size, ledger: Ledger) -> None:
    """The busy evening: half the import up front, then OTP ticks with the rest of the load around them."""
    half = size.contacts // 2
    for start in range(0, half, 1000):
        ledger.add(_contacts(conn, 1, start, min(1000, half - start)))
    with conn.transaction():  # the whole campaign at once: only the rate limit paces it
        ledger.emails = ledger.add(outbox.enqueue_many(conn, [outbox.job(tasks.send_bulk_email, args=[7, c])
                                                              for c in range(size.emails)]))
    per_tick = -(-(size.contacts - half) // size.otps)
    next_row = half
    for i in range(size.otps):
        tick = time.monotonic()
        ledger.otps.append(ledger.add([_otp(conn, i)])[0])
        if next_row < size.contacts:
            count = min(per_tick, size.contacts - next_row)
            ledger.add(_contacts(conn, 1, next_row, count))
            next_row += count
        if i % max(1, size.otps // size.calls) == 0 and len(ledger.calls) < size.calls:
            ledger.calls.append(ledger.add(_finish_call(conn, 1000 + len(ledger.calls))))
        if i % 10 == 0:
            booking = 500 + i
            ledger.add([_one(conn, tasks.send_payment_success_email, args=[booking]),
                        _one(conn, tasks.create_calendar_event, args=[booking]),
                        _one(conn, tasks.create_invoice, args=[booking]),
                        _one(conn, tasks.generate_contact_summary, args=[booking])])
            ledger.bulk_backlog_max = max(ledger.bulk_backlog_max, _bulk_backlog(conn))
        if i % max(1, size.otps // size.calendar_syncs) == 0 and len(ledger.calendar) < size.calendar_syncs:
            ledger.calendar.append(ledger.add([_one(conn, tasks.sync_calendar, args=[i])])[0])
        time.sleep(max(0.0, TICK_S - (time.monotonic() - tick)))


def _statuses(conn: psycopg.Connection[Any], ids: list[uuid.UUID]) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) FROM outbox.jobs WHERE id = ANY(%s) GROUP BY status",
                        (ids,)).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def _start_delays(conn: psycopg.Connection[Any], ids: list[uuid.UUID]) -> list[float]:
    rows = conn.execute("SELECT EXTRACT(EPOCH FROM (started_at - enqueued_at)) FROM outbox.jobs "
                        "WHERE id = ANY(%s) AND started_at IS NOT NULL", (ids,)).fetchall()
    return [float(r[0]) for r in rows]


def _max_starts_per_second(conn: psycopg.Connection[Any], ids: list[uuid.UUID]) -> tuple[int, float]:
    """The most starts within any 1 s window, and the mean rate from first to last start."""
    starts = sorted(float(r[0]) for r in conn.execute(
        "SELECT EXTRACT(EPOCH FROM a.started_at) FROM outbox.attempts a WHERE a.job_id = ANY(%s)", (ids,)))
    if len(starts) < 2:
        return len(starts), float("nan")
    most, j = 0, 0
    for i, t in enumerate(starts):
        while starts[j] < t - 1.0:
            j += 1
        most = max(most, i - j + 1)
    return most, (len(starts) - 1) / (starts[-1] - starts[0])


def _schedule_without_expires() -> str:
    """What declaring a periodic task without ``expires`` does (in a throwaway registry)."""
    from outbox.registry import Registry

    try:
        outbox.task(lambda: None, name="hotel.no_expiry", schedule=outbox.cron("*/5 * * * *"), registry_=Registry())
    except outbox.RegistryError as exc:
        return f"{type(exc).__name__} ({exc})"
    return "accepted"


def _run_cli(settings: Settings, *argv: str) -> str:
    done = subprocess.run([sys.executable, "-m", "tierbox.cli", *argv], cwd=ROOT, env=child_env(settings),
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tierbox {' '.join(argv)}: {done.stdout}{done.stderr}")
    return done.stdout.strip()


def run(size: Size, label: str, *, restart: bool = True) -> int:
    """One run; returns 0 when every behaviour claim held (the latency claim is reported, not enforced).

    ``restart=False``: on the shared broker of ``TIERBOX_AMQP_URL``, which is never restarted.
    """
    node: PrivateNode | None = None
    if restart:
        why = unavailable()
        if why:
            print(f"cannot restart a broker of our own: {why}; --no-restart runs everything else on the shared "
                  "broker", file=sys.stderr)
            return 2
        node = PrivateNode()
        print(f"starting a RabbitMQ node of our own ({node.name}) ...", flush=True)
        node.start()
        settings = example_settings("examples.hotel.tasks", "hotel", amqp_url=node.url)
    else:
        settings = example_settings("examples.hotel.tasks", "hotel")
        print("on the shared broker (--no-restart): RabbitMQ will not be restarted", flush=True)
    migrations.upgrade(settings.database_url)
    procs = Processes(settings)
    try:
        return conclude(procs, _scenario(settings, procs, node, size, label))
    finally:
        tear_down(settings, procs)
        if node is not None:
            node.stop()


def _scenario(settings: Settings, procs: Processes, node: PrivateNode | None, size: Size, label: str) -> int:
    """The run on the started processes; ``node`` is the broker to restart, None for no restart."""
    outbox.configure(topology=settings.topology, max_payload_bytes=settings.max_payload_bytes)
    ledger = Ledger()
    with psycopg.connect(settings.psycopg_url, autocommit=True) as conn:
        ledger.began = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        conn.execute(f"CREATE TABLE IF NOT EXISTS {tasks.BOOKINGS} (id bigint PRIMARY KEY)")
        conn.execute(f"INSERT INTO {tasks.BOOKINGS} SELECT g FROM generate_series(1, 99) g ON CONFLICT DO NOTHING")
        procs.start("relay", ["relay"])
        for pool in POOLS:
            procs.start(pool, ["worker", "--pool", pool])
        procs.start("scheduler", ["scheduler"])
        wait_for_consumers(settings, settings.topology.tiers)
        override = _run_cli(settings, "override", "set", "hotel.sync_calendar", "high", "--hours", "168",
                            "--reason", "high-demand week")
        print(f"relay, pools {', '.join(POOLS)} and the scheduler are up; {override}", flush=True)

        webhook_ok = ledger.add([_one(conn, tasks.process_stripe_webhook, args=["evt_paid", 42])])[0]
        unknown_booking = 7_000_000 + int(time.time()) % 1_000_000
        webhook_dead = ledger.add([_one(conn, tasks.process_stripe_webhook, args=["evt_early", unknown_booking])])[0]

        print(f"load: {size.contacts:,} contacts in BULK, {size.calls} calls x 9 in CALLS, {size.emails} campaign "
              f"e-mails at {tasks.BULK_EMAIL_RATE}/s, one OTP every {TICK_S * 1000:.0f} ms ...", flush=True)
        t0 = time.monotonic()
        _load(conn, size, ledger)
        load_s = time.monotonic() - t0

        wait_for(lambda: _statuses(conn, [webhook_dead]).get("dead"), 60, "the early webhook's dead letter")
        conn.execute(f"INSERT INTO {tasks.BOOKINGS} VALUES (%s)", (unknown_booking,))
        redriven = outbox.redrive(conn, webhook_dead, "high", by="hotel example", reason="booking now recorded")

        backlog_at_restart = _bulk_backlog(conn)
        restart_s: float | None = None
        if node is not None:
            print(f"restarting RabbitMQ with {backlog_at_restart:,} BULK jobs not yet run ...", flush=True)
            restart_t0 = time.monotonic()
            node.stop_app()
            for i in range(5):  # the platform keeps committing work while the broker is down
                ledger.otps_during_restart.append(ledger.add([_otp(conn, 10_000 + i)])[0])
                ledger.calls.append(ledger.add(_finish_call(conn, 9000 + i)))
            ledger.calls_during_restart = 5
            node.start_app()
            restart_s = time.monotonic() - restart_t0

        everything = [*ledger.committed, redriven]
        t1 = time.monotonic()
        try:
            wait_for(lambda: sum(_statuses(conn, everything).get(s, 0) for s in FINAL) == len(everything),
                     size.drain_timeout_s, "every committed job to finish", interval_s=1.0)
        except TimeoutError as exc:
            print(f"{exc}: {_statuses(conn, everything)}", file=sys.stderr)
        drain_s = time.monotonic() - t1
        return _report(conn, settings, ledger, size, label, webhook_ok=webhook_ok, webhook_dead=webhook_dead,
                       redriven=redriven, load_s=load_s, restart_s=restart_s, drain_s=drain_s,
                       backlog_at_restart=backlog_at_restart)


def _report(conn: psycopg.Connection[Any], settings: Settings, ledger: Ledger, size: Size, label: str, *,
            webhook_ok: uuid.UUID, webhook_dead: uuid.UUID, redriven: uuid.UUID, load_s: float,
            restart_s: float | None, drain_s: float, backlog_at_restart: int) -> int:
    otp = _start_delays(conn, ledger.otps)
    otp_p50, otp_p99, otp_max = percentile(otp, 50), percentile(otp, 99), max(otp, default=float("nan"))
    otp_restart = _start_delays(conn, ledger.otps_during_restart)
    everything = [*ledger.committed, redriven]
    statuses = _statuses(conn, everything)
    expected_dead = {webhook_dead}
    not_done = _count(conn, "SELECT count(*) FROM outbox.jobs WHERE id = ANY(%s) AND status <> ALL(%s)",
                      (everything, list(FINAL)))
    unexpected = _count(conn, "SELECT count(*) FROM outbox.jobs WHERE id = ANY(%s) AND status <> 'succeeded' "
                        "AND NOT id = ANY(%s)", (everything, list(expected_dead)))
    missing = len(set(everything)) - sum(statuses.values())
    twice = _count(conn, "SELECT count(*) FROM (SELECT job_id FROM outbox.attempts WHERE job_id = ANY(%s) AND "
                   "outcome = 'succeeded' GROUP BY job_id HAVING count(*) > 1) d", (everything,))
    lost = not_done + missing
    dl = conn.execute("SELECT tier, reason, new_job_id FROM outbox.dead_letters WHERE job_id = %s",
                      (webhook_dead,)).fetchone()
    new = conn.execute("SELECT tier, status FROM outbox.jobs WHERE id = %s", (redriven,)).fetchone()
    cal = conn.execute("SELECT tier, count(*) FROM outbox.jobs WHERE id = ANY(%s) GROUP BY tier",
                       (ledger.calendar,)).fetchall()
    cal_tiers = {str(r[0]): int(r[1]) for r in cal}
    calls_ok = sum(1 for call in ledger.calls if _statuses(conn, call).get("succeeded") == 9)
    calls_tiers = conn.execute("SELECT DISTINCT tier FROM outbox.jobs WHERE id = ANY(%s)",
                               ([j for call in ledger.calls for j in call],)).fetchall()
    timed_calls = ledger.calls[: len(ledger.calls) - ledger.calls_during_restart]
    calls_delay = _start_delays(conn, [j for call in timed_calls for j in call])
    burst, mean_rate = _max_starts_per_second(conn, ledger.emails)
    beats = conn.execute("SELECT status, count(*), count(DISTINCT idempotency_key) FROM outbox.jobs "
                         "WHERE task = 'hotel.health_check' AND enqueued_at >= %s GROUP BY status",
                         (ledger.began,)).fetchall()
    beat_total = sum(int(r[1]) for r in beats)
    beat_keys = sum(int(r[2]) for r in beats)
    ok_webhook = _statuses(conn, [webhook_ok]).get("succeeded") == 1
    restarted = f"broker down {restart_s:.1f} s, drain after restart" if restart_s is not None else \
        "broker not restarted, drain"
    print(f"\nran {len(everything):,} jobs: {statuses}; load phase {load_s:.1f} s, {restarted} {drain_s:.1f} s; "
          f"largest BULK backlog seen while OTPs were timed: {ledger.bulk_backlog_max:,} jobs")
    kept = (f"{len(everything):,} committed, lost {lost}, not succeeded besides the dead webhook {unexpected}, "
            f"run twice {twice}")
    nothing_lost = lost == 0 and unexpected == 0 and twice == 0
    if restart_s is not None:
        restart_rows = [Claim("a RabbitMQ restart loses nothing",
                              f"{kept}; {backlog_at_restart:,} BULK jobs waiting at the restart; OTPs committed "
                              f"while it was down started {percentile(otp_restart, 50):.1f} s (p50) after commit",
                              nothing_lost)]
    else:  # no restart: the claim is not tested, but losing nothing still is
        restart_rows = [Claim("a RabbitMQ restart loses nothing",
                              "--no-restart: the shared broker is not this run's to restart", None),
                        Claim("nothing committed is lost or run twice (no restart)",
                              f"{kept}; {backlog_at_restart:,} BULK jobs waiting when the load ended", nothing_lost)]
    claims = [
        Claim("OTP e-mail starts < 5 s after commit, whatever the other tiers' depth",
              f"p50 {otp_p50 * 1000:.0f} ms, p99 {otp_p99 * 1000:.0f} ms, max {otp_max * 1000:.0f} ms over "
              f"{len(otp)} OTPs (BULK backlog up to {ledger.bulk_backlog_max:,})", otp_p99 < OTP_BUDGET_S),
        Claim("a call's 9 post-processing jobs run in their own lane",
              f"{calls_ok}/{len(ledger.calls)} calls with 9/9 succeeded, "
              f"tiers {sorted(str(r[0]) for r in calls_tiers)}, "
              f"commit-to-start p99 {percentile(calls_delay, 99) * 1000:.0f} ms",
              calls_ok == len(ledger.calls) and [str(r[0]) for r in calls_tiers] == ["calls"]),
        Claim("a failed Stripe webhook lands in the dead letters",
              f"dead letter tier {dl[0] if dl else '-'}, reason {dl[1] if dl else '-'}; a good webhook succeeded: "
              f"{ok_webhook}", dl is not None and dl[0] == "critical" and ok_webhook),
        Claim("... and is redriven into any tier with one call",
              f"outbox.redrive(conn, job, 'high'): new job in {new[0] if new else '-'}, {new[1] if new else '-'}",
              new is not None and tuple(new) == ("high", "succeeded") and dl is not None and dl[2] == redriven),
        *restart_rows,
        Claim("calendar tasks raised for a week (tier override)",
              f"sync_calendar declared NORMAL, jobs ran in {cal_tiers}",
              cal_tiers == {"high": len(ledger.calendar)}),
        Claim(f"BULK e-mail rate limited ({tasks.BULK_EMAIL_RATE}/s)",
              f"{len(ledger.emails)} e-mails: at most {burst} starts in any 1 s, mean {mean_rate:.1f}/s",
              burst <= tasks.BULK_EMAIL_RATE + 1 and mean_rate <= tasks.BULK_EMAIL_RATE * 1.1),
        Claim("expires is mandatory on every cron job; no run is enqueued twice",
              f"a schedule without expires: {_schedule_without_expires()}; health_check every 2 s (expires 3 s): "
              f"{beat_total} runs, {beat_keys} distinct due times, {({str(r[0]): int(r[1]) for r in beats})}",
              beat_total > 0 and beat_total == beat_keys and _schedule_without_expires().startswith("Registry")),
    ]
    print_claims(f"hotel platform, size {label}", claims, f", {len(everything):,} jobs")
    return 0 if all(c.held is not False for c in claims[1:]) else 1  # a row not run neither holds nor fails


def main(argv: list[str] | None = None) -> int:
    """``python -m examples.hotel [--size small|full] [--contacts N] [--no-restart]``."""
    parser = argparse.ArgumentParser(prog="python -m examples.hotel",
                                     description="The hotel platform on Tierbox, its claims measured.")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--contacts", type=int, help="contacts imported in BULK (overrides --size)")
    parser.add_argument("--no-restart", action="store_true",
                        help="use the shared broker of TIERBOX_AMQP_URL and do not restart it (no root or "
                             "rabbitmq-server needed); the restart claim is printed 'not run'")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    if args.contacts:
        size = Size(**{**size.__dict__, "contacts": args.contacts})
    label = args.size if not args.contacts else f"{args.size}, {args.contacts:,} contacts"
    return run(size, label + (", no restart" if args.no_restart else ""), restart=not args.no_restart)

