"""A PostgreSQL instance of a test's own, for faults that hit the whole server (a crash, a restart).

Those faults must never touch the shared server on 127.0.0.1:5432: every other test (and other
people's runs) use it. This starts the installed server's binaries on a temp data directory and a
free port, in the style of ``bench/broker_cost.py``'s ``postgres()``: ``initdb`` refuses to run as
root, so every server command runs as the ``postgres`` user (``runuser``), and the data directory
belongs to it. Usage::

    with private_postgres(wal_writer_delay="10s") as pg:
        url = pg.create_database("crash")
        ...
        pg.crash()
        pg.start()

The instance is stopped (``pg_ctl stop -m immediate``) and its directory deleted on exit, also when
the test failed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tests.helpers import free_port, wait_until

PG_ROOT = Path("/usr/lib/postgresql")


def unavailable() -> str | None:
    """Why a private instance cannot start here (no server binaries, no ``postgres`` user), or None."""
    if not PG_ROOT.is_dir() or not any((PG_ROOT / v / "bin" / "initdb").exists() for v in os.listdir(PG_ROOT)):
        return f"no PostgreSQL server binaries under {PG_ROOT}"
    if shutil.which("runuser") is None:
        return "no runuser"
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user"
    if os.geteuid() != 0:
        return "not root (runuser -u postgres needs it)"
    return None


class PrivatePostgres:
    """One PostgreSQL server of a test's own on 127.0.0.1:``port``, data in ``root``/db."""

    def __init__(self, root: Path, settings: dict[str, str]) -> None:
        versions = sorted((v for v in os.listdir(PG_ROOT) if (PG_ROOT / v / "bin" / "initdb").exists()),
                          key=lambda v: int(v) if v.isdigit() else 0)
        self.bindir = PG_ROOT / versions[-1] / "bin"
        self.root = root
        self.data = root / "db"
        self.port = free_port()
        self.settings = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(root), **settings}

    def url(self, database: str = "postgres") -> str:
        """The URL of ``database`` on this server (user ``postgres``, trust auth)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def init(self) -> None:
        """``initdb`` the data directory (trust auth, user ``postgres``)."""
        done = self._as_postgres(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                 "--auth=trust", "--no-sync")  # its final sync: seconds on a loaded box, and
        # nothing here outlives the machine (a crash is a killed server: the kernel's page cache stays)
        assert done.returncode == 0, f"initdb: {done.stdout}{done.stderr}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections (after a crash: crash recovery first)."""
        options = " ".join([f"-p {self.port}", *(f"-c {k}={v}" for k, v in self.settings.items())])
        done = self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "120",
                                 "-l", str(self.log_path), "-o", options, "start")
        assert done.returncode == 0, f"pg_ctl start: {done.stdout}{done.stderr}\n{self.log()[-3000:]}"

    def postmaster_pid(self) -> int:
        """The running postmaster's pid (first line of ``postmaster.pid``)."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def crash(self) -> None:
        """Crash the server: SIGQUIT to the postmaster, which is what ``pg_ctl stop -m immediate`` sends.

        Every backend exits at once without a checkpoint; shared memory, and with it the WAL
        buffers not yet written to the kernel, is gone; the next :meth:`start` runs crash recovery
        from the WAL on disk. The signal is sent directly rather than through ``runuser pg_ctl`` so the
        crash follows the caller's observation within a millisecond, not after two process start-ups
        (tens of ms on a loaded box) in which a WAL writer round could flush what the crash should catch.
        Returns when the postmaster has exited.
        """
        pid = self.postmaster_pid()
        os.kill(pid, signal.SIGQUIT)

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False
        wait_until(gone, timeout=60, what=f"postmaster {pid} exits after SIGQUIT")
        # pg_ctl's own wait ends when postmaster.pid is gone; the next start refuses a stale one only if
        # its pid is alive, so nothing else to do.

    def stop_immediate(self) -> None:
        """``pg_ctl stop -m immediate`` (the finalizer; never raises)."""
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def create_database(self, name: str) -> str:
        """Create database ``name`` (durably, before any scenario) and return its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.root / "server.log"

    def log(self) -> str:
        """The server's log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def private_postgres(**settings: str) -> Iterator[PrivatePostgres]:
    """A started private server with the given server ``settings`` (``-c name=value``); stopped with
    ``pg_ctl stop -m immediate`` and its directory deleted on exit, whatever happened."""
    root = Path(tempfile.mkdtemp(prefix="tierbox-pgprivate-"))
    shutil.chown(root, "postgres", "postgres")
    pg = PrivatePostgres(root, settings)
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        if pg.data.exists():
            pg.stop_immediate()
        shutil.rmtree(root, ignore_errors=True)
