"""A Jepsen-style chaos run: real producers, relays and pools under a seeded fault schedule, then a checker.

History: producers record what committed (``chaos_orders``, same transaction as the enqueue) and what
they rolled back; handlers record raw executions (``chaos_runs``) and exactly-once effects
(``chaos_effects``, same transaction as the job's success). After a quiet period the checker compares
them with the ledger and the dead letters. Re-run a failure with the seed it prints.

Fault kinds: SIGKILL a relay, SIGKILL a worker pool (mid-handler: some jobs sleep 200 ms), SIGTERM a
pool, close every broker connection of this run from the broker side, terminate every Postgres
backend of the run's database, publish garbage straight into tier queues, cap a queue's length with
a policy (publishes nacked: the relay must keep rows pending), purge a tier queue holding published
jobs, delete a tier queue its pool consumes (both only on the run's own queue prefix: reconciliation
must republish what the broker lost). Broker restarts and resets and Postgres restarts are in the long
profile only (``--restarts``): the broker faults then hit a RabbitMQ node the run starts for itself
(``tests/chaos/node.py``; a reset is followed by recreating the run's vhost and user, as an operator
would), never the shared one; ``restart_postgres`` restarts the shared Postgres (``--exclude`` it).

The run's processes reconcile every second with a 2 s grace (the defaults, 10 s and at least 30 s,
would make a purged job wait longer than the short profile lasts).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from outbox.config import Settings
from tests.chaos import tasks
from tests.chaos.node import BrokerNode
from tests.helpers import ROOT, Proc, settings_env, wait_until

POOLS = ("urgent", "normal", "deferred", "calls")
BASE_FAULTS = ("sigkill_relay", "sigkill_worker", "sigterm_pool", "close_connections", "pg_terminate",
               "garbage", "queue_limit", "purge_queue", "delete_queue")
RESTART_FAULTS = ("restart_rabbitmq", "reset_broker", "restart_postgres")
#: Faults after which the broker no longer holds some published jobs' messages (reconciliation's work).
#: Their recovery is measured until *every* tier they touched has served again (the others: any).
BROKER_LOSS_FAULTS = ("purge_queue", "delete_queue", "reset_broker")
#: How long a broker-loss fault first waits for garbage messages still queued to be dead-lettered.
GARBAGE_SETTLE_S = 10.0
APP = "tests.chaos.tasks"


@dataclass
class Report:
    """What the checker found; ``ok`` is the verdict."""

    seed: int
    committed: int = 0
    rolled_back: int = 0
    effects: int = 0
    raw_executions: int = 0
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    garbage_published: int = 0
    garbage_dead_lettered: int = 0
    #: Garbage messages still queued when a broker-loss fault struck (it may have wiped them).
    garbage_exposed: int = 0
    #: Ready messages the broker reported gone with ``purge_queue`` / ``delete_queue``.
    purged_messages: int = 0
    deleted_messages: int = 0
    #: Rows of ``outbox.republished`` (jobs reconciliation published again).
    republished: int = 0
    duplicates_absorbed: int = 0
    lost: list[str] = field(default_factory=list)
    double_effects: list[str] = field(default_factory=list)
    rolled_back_ran: list[str] = field(default_factory=list)
    stranded: list[str] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    recovery_s: dict[str, list[float]] = field(default_factory=dict)
    #: Broker-loss kinds only: per fault that lost jobs, seconds from the fault until the last job
    #: republished because of it had its effect (see :meth:`ChaosRun.check` for the attribution).
    lost_rerun_s: dict[str, list[float]] = field(default_factory=dict)
    #: Broker-loss kinds only: jobs republished after each fault (summed over the kind's faults).
    lost_jobs: dict[str, int] = field(default_factory=dict)
    unclean_exits: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    wait_p99_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        garbage_ok = (self.garbage_published - self.garbage_exposed <= self.garbage_dead_lettered
                      <= self.garbage_published)
        return not (self.lost or self.double_effects or self.rolled_back_ran or self.stranded
                    or not garbage_ok or self.unclean_exits)

    def table(self) -> str:
        rows = [("seed", self.seed), ("jobs committed", self.committed), ("jobs rolled back", self.rolled_back),
                ("effects (exactly-once)", self.effects), ("raw executions", self.raw_executions),
                ("dead letters", f"{self.dead_letters} " + json.dumps(self.dead_letter_reasons, sort_keys=True)),
                ("garbage published / dead-lettered", f"{self.garbage_published} / {self.garbage_dead_lettered}"),
                ("garbage exposed to a broker-loss fault", self.garbage_exposed),
                ("messages purged / deleted with a queue", f"{self.purged_messages} / {self.deleted_messages}"),
                ("jobs republished by reconciliation", self.republished),
                ("duplicate deliveries absorbed", self.duplicates_absorbed),
                ("lost (must be 0)", len(self.lost)), ("double effects (must be 0)", len(self.double_effects)),
                ("rolled-back jobs that ran (must be 0)", len(self.rolled_back_ran)),
                ("stranded (must be 0)", len(self.stranded)), ("unclean SIGTERM exits", len(self.unclean_exits)),
                ("elapsed s", round(self.elapsed_s, 1))]
        for tier, p99 in sorted(self.wait_p99_s.items()):
            rows.append((f"p99 wait {tier} (commit -> first start)", f"{p99:.2f} s"))
        for proc, mib in sorted(self.peak_rss_mib.items()):
            rows.append((f"peak RSS {proc}", f"{mib:.0f} MiB"))
        for kind in sorted(self.faults):
            rec = sorted(self.recovery_s.get(kind, []))
            p99 = rec[min(len(rec) - 1, int(len(rec) * 0.99))] if rec else float("nan")
            rows.append((f"fault {kind}", f"{self.faults[kind]}x, p99 recovery {p99:.2f} s"))
            if kind in BROKER_LOSS_FAULTS:
                rerun = sorted(self.lost_rerun_s.get(kind, []))
                worst = f"p99 {rerun[min(len(rerun) - 1, int(len(rerun) * 0.99))]:.2f} s" if rerun else "-"
                rows.append((f"fault {kind}: lost jobs ran again",
                             f"{len(rerun)} of {self.faults[kind]} faults lost jobs ({self.lost_jobs.get(kind, 0)} "
                             f"republished), {worst} from the fault to the last one's effect"))
        width = max(len(str(k)) for k, _ in rows)
        return "\n".join(f"{k!s:<{width}}  {v}" for k, v in rows)


class ChaosRun:
    """One seeded run against one database and one queue prefix."""

    def __init__(self, settings: Settings, workdir: Path, seed: int, jobs: int, producers: int = 2,
                 relays: int = 2, fault_gap_s: tuple[float, float] = (1.0, 3.0), restarts: bool = False,
                 produce_s: float = 45.0, timeout_s: float = 150.0, faults: bool = True,
                 bulk_backlog: int = 0, node: BrokerNode | None = None, exclude: tuple[str, ...] = (),
                 reconcile_interval_s: float = 1.0, reconcile_grace_s: float = 2.0) -> None:
        self.node = node
        self.settings = msgspec.structs.replace(
            settings, app=APP, reconcile_interval_s=reconcile_interval_s, reconcile_grace_s=reconcile_grace_s,
            **({"amqp_url": node.url} if node else {}))
        self.workdir = workdir
        self.seed = seed
        self.rng = random.Random(seed)
        self.jobs = jobs
        self.n_producers = producers
        self.n_relays = relays
        self.fault_gap_s = fault_gap_s
        unknown = set(exclude) - set(BASE_FAULTS + RESTART_FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
        self.kinds = tuple(k for k in BASE_FAULTS + (RESTART_FAULTS if restarts else ()) if k not in exclude)
        if "reset_broker" in self.kinds and node is None:
            raise ValueError("reset_broker runs only against a RabbitMQ node of the run's own (node=...), "
                             "never the shared one")
        self.timeout_s = timeout_s
        self.produce_s = produce_s
        self.faults_on = faults
        self.bulk_backlog = bulk_backlog
        self.relays: list[Proc] = []
        self.pools: dict[str, Proc] = {}
        self.producers: list[subprocess.Popen[bytes]] = []
        self.report = Report(seed=seed)
        self._fault_times: list[tuple[str, float, tuple[str, ...]]] = []
        self._garbage_by_tier: dict[str, int] = {}
        #: A fault that prepares first (picks a queue, lets garbage settle) sets the moment it strikes.
        self._fault_at: float | None = None
        self._affected: tuple[str, ...] = ()
        self._n = 0
        self._stopped_logs: list[str] = []

    # -- processes -------------------------------------------------------------------------------------

    def _proc(self, *args: str, label: str = "") -> Proc:
        self._n += 1
        return Proc(list(args), self.settings, self.workdir / f"{args[0]}-{label or args[-1]}-{self._n}.log")

    def _start_pool(self, pool: str) -> None:
        self.pools[pool] = self._proc("worker", "--pool", pool)

    def _start_producers(self) -> None:
        env = settings_env(self.settings)
        share = self.jobs // self.n_producers
        for i in range(self.n_producers):
            count = share if i < self.n_producers - 1 else self.jobs - share * (self.n_producers - 1)
            log = open(self.workdir / f"producer-{i}.log", "ab")
            self.producers.append(subprocess.Popen(
                [sys.executable, "-m", "tests.chaos.producer", str(count), str(self.seed * 100 + i), "0.1",
                 str(self.produce_s)],
                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))

    def start(self) -> None:
        with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
            conn.execute(tasks.DDL)
        self._enqueue_backlog()
        self.relays = [self._proc("relay", label=str(i)) for i in range(self.n_relays)]
        for pool in POOLS:
            self._start_pool(pool)
        # 90 s: on the shared 2-core box (load average above 20) four pools took over 30 s to import and start.
        self._wait(lambda: all("worker.started" in p.output() for p in self.pools.values()), 90, "pools up")
        self._start_producers()

    def _enqueue_backlog(self) -> None:
        """A BULK backlog committed before the run (the load-held profile drains it under load)."""
        import outbox

        with psycopg.connect(self.settings.database_url) as conn:
            for start in range(0, self.bulk_backlog, 10_000):
                n = min(10_000, self.bulk_backlog - start)
                ids = outbox.enqueue_many(conn, [outbox.job(tasks.EFFECTS["bulk"]) for _ in range(n)])
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO public.chaos_orders (job_id, tier) VALUES (%s, 'bulk')",
                                    [(i,) for i in ids])
                conn.commit()

    def stop(self) -> None:
        for p in self.producers:
            if p.poll() is None:
                p.kill()
        for proc in [*self.relays, *self.pools.values()]:
            self._note_rss(proc)
            if proc.alive():
                proc.kill(signal.SIGTERM)
        for proc in [*self.relays, *self.pools.values()]:
            try:
                code = proc.wait(40)
            except AssertionError:  # still running: Proc.wait has had it dump its stacks into its log
                code = -9
            self._stopped_logs.append(proc.output())
            if code != 0:
                self.report.unclean_exits.append(f"{proc.args} exit {code}")
            proc.stop()
        self._clear_queue_limit()

    # -- faults ----------------------------------------------------------------------------------------

    def schedule(self) -> list[str]:
        """Every kind once in a seeded order; the run repeats random kinds after that."""
        kinds = list(self.kinds)
        self.rng.shuffle(kinds)
        return kinds

    def inject(self, kind: str) -> None:
        """Inject one fault; recovery is later measured on the tiers it affected."""
        self.report.faults[kind] = self.report.faults.get(kind, 0) + 1
        self._affected = tuple(self.settings.topology.tiers)
        self._fault_at = None
        at = time.time()
        getattr(self, f"_fault_{kind}")()
        self._fault_times.append((kind, self._fault_at or at, self._affected))
        with open(self.workdir / "faults.log", "a") as log:  # the sequence, to read beside a finding
            log.write(f"{self._fault_at or at:.3f} {kind} {','.join(self._affected)} "
                      f"purged={self.report.purged_messages} deleted={self.report.deleted_messages}\n")

    def _note_rss(self, proc: Proc) -> None:
        """Peak resident memory of a process about to be stopped (VmHWM), kept per process kind."""
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                kind = " ".join(proc.args[:3]) if proc.args[0] == "worker" else proc.args[0]
                mib = int(line.split()[1]) / 1024
                self.report.peak_rss_mib[kind] = max(self.report.peak_rss_mib.get(kind, 0.0), mib)

    def _fault_sigkill_relay(self) -> None:
        i = self.rng.randrange(len(self.relays))
        self.relays[i].kill(signal.SIGKILL)
        self.relays[i].wait(10)
        self.relays[i].stop()
        self.relays[i] = self._proc("relay", label=str(i))

    def _fault_sigkill_worker(self) -> None:
        pool = self.rng.choice(POOLS)
        self._affected = self.settings.topology.pools[pool].tiers
        self.pools[pool].kill(signal.SIGKILL)
        self.pools[pool].wait(10)
        self.pools[pool].stop()
        self._start_pool(pool)

    def _fault_sigterm_pool(self) -> None:
        pool = self.rng.choice(POOLS)
        self._affected = self.settings.topology.pools[pool].tiers
        proc = self.pools[pool]
        # The fault is a graceful stop of a running pool. A pool restarted by an earlier fault may still
        # be importing, before its SIGTERM handler exists (the default action then kills it, exit -15,
        # which is a different fault: a crash, already covered by sigkill_worker).
        wait_until(lambda: "worker.started" in proc.output() or not proc.alive(), timeout=30,
                   what=f"pool {pool} started before its SIGTERM")
        self._note_rss(proc)
        proc.kill(signal.SIGTERM)
        code = proc.wait(60)
        self._stopped_logs.append(proc.output())
        if code != 0:
            self.report.unclean_exits.append(f"{proc.args} SIGTERM exit {code}")
        proc.stop()
        self._start_pool(pool)

    def _fault_close_connections(self) -> None:
        if self.node:  # every connection on the run's own node is the run's: one call
            self._fault_at = time.time()
            self._rabbitmqctl("close_all_connections", "chaos")
            return
        # The table formatter prints pids as close_connection parses them (<node.N.N.N>); the JSON
        # formatter's "#PID<N.N.N>" is refused ({:invalid_pid_syntax, ...}): until 2026-12-01 this fault
        # listed with --formatter json and so closed nothing.
        out = self._rabbitmqctl("list_connections", "-q", "--no-table-headers", "pid", "client_properties").stdout
        for line in out.splitlines():
            pid, _, props = line.partition("\t")
            if pid.startswith("<") and self.settings.queue_prefix in props:
                self._fault_at = self._fault_at or time.time()  # listing takes seconds: count from the first close
                self._rabbitmqctl("close_connection", pid, "chaos")

    def _rabbitmqctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl ARGS`` against the run's broker: its own node if it has one, else the shared one
        (only for faults confined to the run's connections, queues and policy)."""
        cmd = [str(ROOT / "scripts" / "rabbitmq-node"), "ctl", self.node.name] if self.node else ["rabbitmqctl"]
        return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)

    def _vhost(self) -> list[str]:
        return ["-p", self.node.vhost] if self.node else []

    def _fault_pg_terminate(self) -> None:
        with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = current_database() AND pid <> pg_backend_pid()")

    def _fault_garbage(self) -> None:
        import aio_pika

        tier = self.rng.choice(list(self.settings.topology.tiers))
        body = self.rng.randbytes(self.rng.randint(0, 64))

        async def publish() -> bool:
            conn = await aio_pika.connect(self.settings.amqp_url)
            async with conn:
                ch = await conn.channel(publisher_confirms=True)
                try:
                    await ch.default_exchange.publish(aio_pika.Message(body=body),
                                                      routing_key=self.settings.queue_name(tier))
                except aio_pika.exceptions.DeliveryError:
                    return False  # refused (queue at its length limit): never entered the system
            return True
        if asyncio.run(publish()):
            self.report.garbage_published += 1
            self._garbage_by_tier[tier] = self._garbage_by_tier.get(tier, 0) + 1

    def _policy_name(self) -> str:
        return f"chaos-{self.settings.queue_prefix.strip('.')}"

    def _fault_queue_limit(self) -> None:
        tier = self.rng.choice(["high", "bulk"])  # one classic, one quorum queue
        self._affected = (tier,)
        self._limit_pattern = "^" + self.settings.queue_name(tier).replace(".", "\\.") + "$"
        self._set_limit(5)  # the queue fills: RabbitMQ nacks further publishes, the relay keeps rows pending
        time.sleep(2.0)
        self._clear_queue_limit()

    def _set_limit(self, length: int) -> None:
        self._rabbitmqctl("set_policy", *self._vhost(), "--apply-to", "queues", self._policy_name(),
                          self._limit_pattern, json.dumps({"max-length": length, "overflow": "reject-publish"}))

    def _clear_queue_limit(self) -> None:
        # RabbitMQ 3.10 leaves a quorum queue rejecting publishes if the policy is simply cleared while it
        # is full; raising the limit first makes it accept again, then the policy can go.
        if getattr(self, "_limit_pattern", None):
            self._set_limit(1_000_000_000)
            time.sleep(0.5)
        self._rabbitmqctl("clear_policy", *self._vhost(), self._policy_name())

    def _fault_restart_rabbitmq(self) -> None:
        if self.node:  # the run's own node
            self.node.restart_app()
            return
        subprocess.run(["rabbitmqctl", "stop_app"], capture_output=True, timeout=120)
        subprocess.run(["rabbitmqctl", "start_app"], capture_output=True, timeout=120)

    # -- broker-loss faults: the broker forgets messages of jobs Postgres says are published -----------

    def _amqp(self, work: Any) -> Any:
        """Run ``await work(connection)`` on a fresh connection to the run's broker."""
        import aio_pika

        async def go() -> Any:
            conn = await aio_pika.connect(self.settings.amqp_url,
                                          client_properties={"connection_name": f"{self.settings.queue_prefix} chaos"})
            async with conn:
                return await work(conn)
        return asyncio.run(go())

    def _ready(self) -> dict[str, int]:
        """Ready messages per tier queue (a queue missing right now counts 0)."""
        async def count(conn: Any) -> dict[str, int]:
            out = {}
            for tier in self.settings.topology.tiers:
                ch = await conn.channel()  # a failed passive declare closes its channel: one each
                try:
                    q = await ch.declare_queue(self.settings.queue_name(tier), passive=True)
                    out[tier] = int(q.declaration_result.message_count or 0)
                except Exception:  # noqa: BLE001 - missing right now (deleted, not yet declared again)
                    out[tier] = 0
            return out
        result: dict[str, int] = self._amqp(count)
        return result

    def _loss_target(self) -> str:
        """A tier queue holding published jobs (seeded choice among those with ready messages)."""
        ready = self._ready()
        holding = sorted(t for t, n in ready.items() if n > 0)
        return self.rng.choice(holding or sorted(ready))

    def _settle_garbage(self) -> None:
        """Garbage still queued when the broker loses messages may be lost with them (it is no job: the
        outbox cannot bring it back). Give the pools a moment to dead-letter it; what is still queued
        after that is counted as exposed, and the checker allows that many missing dead letters."""
        def queued() -> int:
            with psycopg.connect(self.settings.database_url) as conn:
                row = conn.execute("SELECT count(*) FROM outbox.dead_letters WHERE reason = 'undecodable'").fetchone()
            return self.report.garbage_published - self.report.garbage_exposed - (int(row[0]) if row else 0)
        end = time.monotonic() + GARBAGE_SETTLE_S
        while (n := queued()) > 0 and time.monotonic() < end:
            time.sleep(0.2)
        self.report.garbage_exposed += max(n, 0)

    def _fault_purge_queue(self) -> None:
        self._settle_garbage()
        tier = self._loss_target()
        self._affected = (tier,)

        async def purge(conn: Any) -> int:
            q = await (await conn.channel()).declare_queue(self.settings.queue_name(tier), passive=True)
            self._fault_at = time.time()
            ok = await q.purge()
            return int(ok.message_count or 0)
        try:
            self.report.purged_messages += self._amqp(purge)
        except Exception:  # noqa: BLE001 - the queue was just gone (a delete_queue before): nothing to purge
            pass

    def _fault_delete_queue(self) -> None:
        self._settle_garbage()
        tier = self._loss_target()
        self._affected = (tier,)

        async def delete(conn: Any) -> int:
            q = await (await conn.channel()).declare_queue(self.settings.queue_name(tier), passive=True)
            self._fault_at = time.time()
            ok = await q.delete(if_unused=False, if_empty=False)  # consumed or not, empty or not
            return int(ok.message_count or 0)
        try:
            self.report.deleted_messages += self._amqp(delete)
        except Exception:  # noqa: BLE001 - the queue was just gone (a delete_queue before): nothing to delete
            pass

    def _fault_reset_broker(self) -> None:
        if self.node is None:  # refused in __init__ too: never the shared node
            raise AssertionError("reset_broker needs the run's own RabbitMQ node")
        self._settle_garbage()
        self._fault_at = time.time()
        self.node.reset()  # stop_app, reset, start_app, then the run's vhost and user again

    def _fault_restart_postgres(self) -> None:
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
                       capture_output=True, timeout=120)

    # -- the run ---------------------------------------------------------------------------------------

    def run(self) -> Report:
        began = time.monotonic()
        try:
            self.start()  # inside: a start that times out must not leave its relays and pools running
            pending = self.schedule() if self.faults_on else []
            deadline = began + self.timeout_s
            while self.faults_on and time.monotonic() < deadline:
                time.sleep(self.rng.uniform(*self.fault_gap_s))
                if pending:
                    self.inject(pending.pop())
                elif self._producing():
                    self.inject(self.rng.choice(self.kinds))
                else:
                    break
            self._quiet(deadline)
        finally:
            self.stop()
        self.report.elapsed_s = time.monotonic() - began
        self.check()
        return self.report

    def _producing(self) -> bool:
        return any(p.poll() is None for p in self.producers)

    def _quiet(self, deadline: float) -> None:
        """Wait until producers are done and every committed job has finished (or the deadline)."""
        self._wait(lambda: not self._producing(), max(deadline - time.monotonic(), 1), "producers done", fail=False)
        self._wait(lambda: self._unfinished() == 0, max(deadline - time.monotonic(), 1) + 60, "quiet", fail=False)

    def _unfinished(self) -> int:
        with psycopg.connect(self.settings.database_url) as conn:
            row = conn.execute("""SELECT count(*) FROM public.chaos_orders o JOIN outbox.jobs j ON j.id = o.job_id
                                  WHERE j.status NOT IN ('succeeded', 'dead')""").fetchone()
        return int(row[0]) if row else 0

    def _wait(self, predicate: Any, timeout: float, what: str, fail: bool = True) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if predicate():
                    return
            except psycopg.OperationalError:
                pass
            time.sleep(0.2)
        if fail:
            raise AssertionError(f"chaos seed {self.seed}: timed out waiting for {what}")

    # -- the checker -----------------------------------------------------------------------------------

    def check(self) -> None:
        r = self.report
        with psycopg.connect(self.settings.database_url) as conn:
            def q(sql: str) -> list[tuple[Any, ...]]:
                return conn.execute(sql).fetchall()

            r.committed = q("SELECT count(*) FROM public.chaos_orders")[0][0]
            r.rolled_back = q("SELECT count(*) FROM public.chaos_rolled_back")[0][0]
            r.effects = q("SELECT count(*) FROM public.chaos_effects")[0][0]
            r.raw_executions = q("SELECT count(*) FROM public.chaos_runs")[0][0]
            r.dead_letters = q("SELECT count(*) FROM outbox.dead_letters WHERE job_id IS NOT NULL")[0][0]
            r.dead_letter_reasons = {str(reason): int(n) for reason, n in q(
                "SELECT reason, count(*) FROM outbox.dead_letters WHERE job_id IS NOT NULL GROUP BY reason")}
            r.garbage_dead_lettered = q("SELECT count(*) FROM outbox.dead_letters WHERE reason = 'undecodable'")[0][0]
            r.lost = [str(x[0]) for x in q("""
                SELECT o.job_id FROM public.chaos_orders o
                WHERE NOT EXISTS (SELECT 1 FROM public.chaos_effects e WHERE e.job_id = o.job_id)
                  AND NOT EXISTS (SELECT 1 FROM outbox.dead_letters d WHERE d.job_id = o.job_id)""")]
            r.double_effects = [str(x[0]) for x in q(
                "SELECT job_id FROM public.chaos_effects GROUP BY job_id HAVING count(*) > 1")]
            r.rolled_back_ran = [str(x[0]) for x in q("""
                SELECT b.job_id FROM public.chaos_rolled_back b
                WHERE EXISTS (SELECT 1 FROM outbox.jobs j WHERE j.id = b.job_id)
                   OR EXISTS (SELECT 1 FROM public.chaos_runs x WHERE x.job_id = b.job_id)""")]
            r.stranded = [f"{x[0]} {x[1]}" for x in q("""
                SELECT o.job_id, j.status FROM public.chaos_orders o JOIN outbox.jobs j ON j.id = o.job_id
                WHERE j.status NOT IN ('succeeded', 'dead')""")]
            for tier, p99 in q("""
                SELECT j.tier, percentile_cont(0.99) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM a.started_at - j.enqueued_at))
                FROM public.chaos_orders o JOIN outbox.jobs j ON j.id = o.job_id
                JOIN outbox.attempts a ON a.job_id = j.id AND a.attempt = 1
                GROUP BY j.tier"""):
                r.wait_p99_s[tier] = float(p99)
            r.republished = q("SELECT count(*) FROM outbox.republished")[0][0]
            # Each job's first republish and its effect (None: it has none, e.g. dead-lettered).
            republished = [(str(tier), float(at_), None if eff is None else float(eff)) for tier, at_, eff in q("""
                SELECT r.tier, EXTRACT(EPOCH FROM min(r.at)),
                       (SELECT EXTRACT(EPOCH FROM min(e.at)) FROM public.chaos_effects e WHERE e.job_id = r.job_id)
                FROM outbox.republished r GROUP BY r.job_id, r.tier""")]
            effects: dict[str, list[float]] = {}
            for at_, tier in q("""
                SELECT e.at, o.tier FROM public.chaos_effects e JOIN public.chaos_orders o USING (job_id)
                ORDER BY e.at"""):
                effects.setdefault(tier, []).append(at_.timestamp())
        r.duplicates_absorbed = sum(_skipped(log) for log in self._stopped_logs)
        for kind, at, tiers in self._fault_times:
            # Recovery: from the fault until the next effect of a job in a tier the fault touched (any
            # such tier; for the broker-loss kinds, every such tier that served again).
            nexts = []
            for tier in tiers:
                times = effects.get(tier, [])
                i = bisect.bisect_right(times, at)
                if i < len(times):
                    nexts.append(times[i])
            if nexts:
                after = max(nexts) if kind in BROKER_LOSS_FAULTS else min(nexts)
                r.recovery_s.setdefault(kind, []).append(after - at)
        self._measure_lost_rerun(republished)

    def _measure_lost_rerun(self, republished: list[tuple[str, float, float | None]]) -> None:
        """For each broker-loss fault: the time from the fault until every job it lost ran again.

        A job is charged to the latest broker-loss fault before its republish that touched its tier (no
        other fault drops a published message: a killed worker's or a closed connection's unacked
        messages are requeued, and ``queue_limit`` dead-letters what it drops). A republished job
        without an effect (dead-lettered instead) ends its fault's measure at the checker, never early.
        """
        losses = [(at, kind, tiers) for kind, at, tiers in self._fault_times if kind in BROKER_LOSS_FAULTS]
        losses.sort()
        last_effect: dict[int, float] = {}
        jobs: dict[int, int] = {}
        for tier, republished_at, effect_at in republished:
            owner = None
            for i, (at, _kind, tiers) in enumerate(losses):
                if at <= republished_at and tier in tiers:
                    owner = i
            if owner is None:
                continue
            done = effect_at if effect_at is not None else time.time()
            last_effect[owner] = max(last_effect.get(owner, 0.0), done)
            jobs[owner] = jobs.get(owner, 0) + 1
        for i, (at, kind, _tiers) in enumerate(losses):
            if i in last_effect:
                self.report.lost_rerun_s.setdefault(kind, []).append(max(last_effect[i] - at, 0.0))
                self.report.lost_jobs[kind] = self.report.lost_jobs.get(kind, 0) + jobs[i]


def _skipped(log: str) -> int:
    total = 0
    for line in log.splitlines():
        if "action=worker.stopped" in line:
            for part in line.split():
                if part.startswith("skipped_"):
                    total += int(part.split("=", 1)[1])
    return total
