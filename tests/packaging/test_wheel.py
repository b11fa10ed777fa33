"""The built distribution, installed as a user installs it: only ``outbox`` and ``tierbox`` on the path.

Builds the sdist and, from it, the wheel (``python -m build``), checks both with
``twine check``, installs the wheel (not editable) into a fresh venv, and runs Tierbox
from a scratch project that has its own ``api/``, ``workers/``, ``relay/`` and
``migrations/`` packages first on ``PYTHONPATH``: the names a Django or FastAPI app
very often has. Before the re-house, ``tierbox worker`` there failed with
``ModuleNotFoundError: No module named 'api.cli'``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import psycopg
import pytest

from tests.helpers import ROOT, wait_until
from tests.packaging.test_layout import _copied_before_install

# One xdist worker runs the whole module: the module-scoped build then happens once, not once per
# worker (two builds at once in one tree was a CI failure: one removed the other's release folder).
# The fixtures build, then pip-install the wheel and its dependencies into a fresh venv: on the shared 2-core box
# (load average 23) that setup alone outlasted the suite's 120 s pytest-timeout; each subprocess has its own
# 600 s limit in _run.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("packaging"), pytest.mark.timeout(900)]

#: The only top-level names the wheel may install (besides its .dist-info).
ALLOWED_TOP_LEVEL = {"outbox", "tierbox"}
#: The application's own packages, named like Tierbox's repository folders.
USER_PACKAGES = ("api", "workers", "relay", "migrations")


def _run(args: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel built from a copy of the tracked files (the wheel from the sdist).

    The copy keeps setuptools' scratch folders (``tierbox-0.1.0/``, ``build/``, the egg-info) out of
    the checkout, where another build or a developer's editable install would race them.
    """
    source = tmp_path_factory.mktemp("source")
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT)
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source])
    _run([sys.executable, "-m", "twine", "check", "--strict", *sorted(out.iterdir())])
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (not editable); returns its bin folder."""
    where = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", where])
    wheel = next(dist.glob("tierbox-*.whl"))
    _run([where / "bin" / "pip", "install", "--quiet", wheel])
    return where / "bin"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An application with its own api/, workers/, relay/, migrations/ and a task module."""
    for name in USER_PACKAGES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f'OWNER = "the application\'s own {name}"\n')
    (tmp_path / "usertasks.py").write_text(textwrap.dedent('''
        """The application's tasks; they import the application's own packages."""
        from pathlib import Path

        import api
        import migrations
        import relay
        import workers

        from outbox import Tier, task

        assert "application" in api.OWNER + workers.OWNER + relay.OWNER + migrations.OWNER


        @task(tier=Tier.HIGH, name="usertasks.touch")
        def touch(path: str, word: str) -> None:
            Path(path).write_text(word)
        '''))
    return tmp_path


def test_wheel_installs_only_outbox_and_tierbox_and_ships_the_migrations(dist: Path) -> None:
    wheel = next(dist.glob("tierbox-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == ALLOWED_TOP_LEVEL
    revisions = [n for n in names if n.startswith("tierbox/migrations/versions/") and n.endswith(".py")]
    assert len(revisions) == len(list((ROOT / "migrations" / "versions").glob("0*.py"))) >= 6
    assert {"tierbox/migrations/env.py", "tierbox/migrations/script.py.mako", "tierbox/migrations/functions.sql"} <= set(names)
    assert "outbox/py.typed" in names and "tierbox/py.typed" in names


def test_wheel_ships_the_dashboards_templates_and_vendored_assets(dist: Path) -> None:
    """Every template and static file of the dashboard is in the wheel, byte for byte: ``tierbox api``
    serves them from the installed package (no CDN), so one missing from package-data is a broken /ui."""
    wheel = zipfile.ZipFile(next(dist.glob("tierbox-*.whl")))
    ui = ROOT / "api" / "ui"
    shipped = sorted(p for folder in ("templates", "static") for p in (ui / folder).iterdir() if p.is_file())
    names = {p.relative_to(ui).as_posix() for p in shipped}
    assert {"templates/base.html", "templates/control.html", "static/htmx-2.0.4.min.js", "static/app.js",
            "static/app.css"} <= names
    for path in shipped:
        inside = f"tierbox/api/ui/{path.relative_to(ui).as_posix()}"
        assert inside in wheel.namelist(), f"{inside} is missing from the wheel (pyproject package-data)"
        assert wheel.read(inside) == path.read_bytes(), inside


def test_the_dockerfiles_build_context_builds_the_wheel(tmp_path: Path) -> None:
    """What the image's ``pip install`` sees, without a Docker engine: only the paths the Dockerfile copies.

    The image broke once this way (``package directory 'celery_bridge' does not exist``) while every
    other test passed, since they all build from the whole checkout.
    """
    context = tmp_path / "context"
    copied = _copied_before_install((ROOT / "Dockerfile").read_text())
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *copied], cwd=ROOT)
    for name in filter(None, listed.stdout.split("\0")):
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        # COPY keeps tierbox/'s links as links; copy them the same way.
        shutil.copy2(ROOT / name, context / name, follow_symlinks=False)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          "--wheel-dir", tmp_path / "wheel", context])
    names = zipfile.ZipFile(next((tmp_path / "wheel").glob("tierbox-*.whl"))).namelist()
    installed = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith(".py")}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert installed == set(packages)


def test_installed_tierbox_runs_a_job_beside_the_applications_own_packages(
        venv: Path, project: Path, empty_db_url: str, prefix: str, service_urls: dict[str, str],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERBOX_", "PYTHON"))}
    env |= {"PYTHONPATH": str(project), "TIERBOX_DATABASE_URL": empty_db_url, "TIERBOX_AMQP_URL": service_urls["rabbitmq"],
            "TIERBOX_REDIS_URL": service_urls["redis"], "TIERBOX_QUEUE_PREFIX": prefix, "TIERBOX_APP": "usertasks"}
    tierbox = venv / "tierbox"
    kw = {"cwd": project, "env": env}

    assert "relay" in _run([tierbox, "--help"], **kw).stdout
    assert "outbox schema at head" in _run([tierbox, "migrate"], **kw).stdout
    assert _run([tierbox, "check", "--app", "usertasks"], **kw).stdout.startswith("ok: 1 tasks")
    # Nothing of Tierbox came from the checkout: the installed copy answers.
    where = _run([venv / "python", "-c", "import outbox, tierbox.cli, api; print(outbox.__file__, api.OWNER)"], **kw)
    assert "site-packages" in where.stdout and "the application's own api" in where.stdout

    marker = tmp_path_factory.mktemp("marker") / "ran.txt"
    enqueue = f"""
import psycopg, usertasks
from outbox import enqueue
with psycopg.connect({empty_db_url!r}) as conn:
    job = enqueue(conn, usertasks.touch, kwargs={{"path": {str(marker)!r}, "word": "ran"}})
print(job)
"""
    job_id = _run([venv / "python", "-c", enqueue], **kw).stdout.strip()
    logs = tmp_path_factory.mktemp("logs")
    procs = [subprocess.Popen([tierbox, *args], stdout=(logs / f"{args[0]}.log").open("w"), stderr=subprocess.STDOUT,
                              **kw) for args in (["relay"], ["worker", "--pool", "urgent", "--app", "usertasks"])]
    try:
        wait_until(marker.exists, timeout=60, what=f"the job to run (logs in {logs})")
        with psycopg.connect(empty_db_url) as conn:
            status = wait_until(lambda: conn.execute(
                "SELECT status FROM outbox.jobs WHERE id = %s AND status = 'succeeded'", (job_id,)).fetchone(),
                timeout=30, what="the job to be recorded as succeeded")
        assert marker.read_text() == "ran" and status == ("succeeded",)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            assert proc.wait(timeout=30) == 0, (logs / "relay.log").read_text() + (logs / "worker.log").read_text()
