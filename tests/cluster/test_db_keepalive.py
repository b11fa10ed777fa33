"""A host cut off in the middle of a transaction releases its row locks: the server-side keepalives
Tierbox's connections ask for (``outbox._keepalive``).

A private Postgres listens on a test host's link itself (no forwarder between: the backend's client
socket is the host's), and the host opens two connections that each lock a row and stay idle in
their transactions: one with Tierbox's keepalives, one without (the control). Then the link goes
down. The first backend must end, its transaction rolled back and its lock free, within about the
keepalives' 10 + 3 x 3 s; the control keeps its lock (the kernel's default would wait two hours).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from outbox import _keepalive as keepalive
from outbox.config import Settings
from tests.cluster import hosts
from tests.helpers import ROOT, wait_until
from tests.private_postgres import PrivatePostgres
from tests.private_postgres import unavailable as no_private_postgres

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

HOLDER = textwrap.dedent("""
    import sys, time
    import psycopg
    from outbox import _keepalive as keepalive

    kept = psycopg.connect(sys.argv[1], application_name="kept")
    keepalive.apply(kept)
    plain = psycopg.connect(sys.argv[1], application_name="plain")
    kept.execute("SELECT * FROM held WHERE id = 1 FOR UPDATE")
    plain.execute("SELECT * FROM held WHERE id = 2 FOR UPDATE")
    print("locked", flush=True)
    time.sleep(600)
""")


def _backends(url: str) -> set[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT application_name FROM pg_stat_activity "
                                           "WHERE application_name IN ('kept', 'plain')")}


def _lockable(url: str, row: int) -> bool:
    with psycopg.connect(url) as conn:
        conn.execute("SET lock_timeout = '200ms'")
        try:
            conn.execute("SELECT * FROM held WHERE id = %s FOR UPDATE", (row,))
        except psycopg.errors.LockNotAvailable:
            return False
        return True


def test_a_cut_off_hosts_transaction_ends_and_frees_its_locks(settings: Settings, tmp_path: Path) -> None:
    why = hosts.unavailable() or no_private_postgres()
    if why:
        pytest.skip(f"no test host with a private Postgres: {why}")
    root = Path(tempfile.mkdtemp(prefix="tierbox-pgkeepalive-"))
    shutil.chown(root, "postgres", "postgres")
    with hosts.test_hosts(1, settings) as (host,):
        pg = PrivatePostgres(root, {"listen_addresses": f"127.0.0.1,{host.gateway}"})
        holder: subprocess.Popen[str] | None = None
        try:
            pg.init()
            with open(pg.data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {host.address}/32 trust\n")
            pg.start()
            local = pg.url()
            with psycopg.connect(local, autocommit=True) as conn:
                conn.execute("CREATE TABLE held (id int PRIMARY KEY); INSERT INTO held VALUES (1), (2)")
            remote = f"postgresql://postgres@{host.gateway}:{pg.port}/postgres"
            holder = subprocess.Popen(["ip", "netns", "exec", host.ns, sys.executable, "-c", HOLDER, remote],
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert holder.stdout is not None
            line = holder.stdout.readline()
            assert line.strip() == "locked", line + holder.stdout.read()
            assert not _lockable(local, 1) and not _lockable(local, 2)

            host.cut()
            cut_at = time.monotonic()
            wait_until(lambda: "kept" not in _backends(local), timeout=60, interval=0.5,
                       what="the cut-off host's backend with keepalives to end")
            ended_s = time.monotonic() - cut_at
            assert _lockable(local, 1), "the ended transaction's row lock is free"
            # The control, at the same moment: no keepalives, so its backend still holds its lock.
            assert "plain" in _backends(local) and not _lockable(local, 2)
            budget = keepalive.IDLE_S + keepalive.INTERVAL_S * keepalive.COUNT
            print(f"\ncut-off host's transaction ended {ended_s:.1f} s after the cut "
                  f"(keepalives {keepalive.IDLE_S} + {keepalive.COUNT} x {keepalive.INTERVAL_S} s); "
                  "the control without keepalives still holds its lock")
            assert ended_s < budget + 15, ended_s
        finally:
            if holder is not None:
                holder.kill()
                holder.wait(10)
            if pg.data.exists() and (pg.data / "postmaster.pid").exists():
                pg.stop_immediate()
            shutil.rmtree(root, ignore_errors=True)


async def test_tierbox_engines_and_connections_ask_for_the_keepalives(settings: Settings) -> None:
    """What the test above relies on, for each kind of connection Tierbox opens: SQLAlchemy's async
    and sync engines (the worker pools, the API) and a psycopg connection (the relay, the scheduler)."""
    from sqlalchemy import create_engine, text

    from tierbox.ops import db

    expected = (str(keepalive.IDLE_S), str(keepalive.INTERVAL_S), str(keepalive.COUNT))
    show = ("SELECT current_setting('tcp_keepalives_idle'), current_setting('tcp_keepalives_interval'), "
            "current_setting('tcp_keepalives_count')")
    engine = db.create_engine(settings)
    try:
        async with engine.connect() as conn:
            assert tuple((await conn.execute(text(show))).one()) == expected
    finally:
        await engine.dispose()
    sync = keepalive.on_connect(create_engine(settings.sqlalchemy_url))
    try:
        with sync.connect() as conn:
            assert tuple(conn.execute(text(show)).one()) == expected
    finally:
        sync.dispose()
    async with await psycopg.AsyncConnection.connect(settings.psycopg_url) as aconn:
        await keepalive.apply_async(aconn)
        assert await (await aconn.execute(show)).fetchone() == expected
    with psycopg.connect(settings.psycopg_url) as plain:  # the control: the server's defaults (0: the kernel's)
        assert plain.execute(show).fetchone() != expected
