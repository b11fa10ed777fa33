"""Every ```python and ```sql block of README.md and docs/*.md runs, against the real services.

* Python: the blocks of one page run in order, in one namespace, in a fresh
  interpreter (``tests/docs/run_python.py``) whose ``TIERBOX_*`` environment names a
  migrated database of this test alone (fixtures ``db_url``/``settings``), so an example
  reads its URLs with ``outbox.Settings.from_env()``. A block that raises fails the page.
* SQL: each block runs alone through ``psql`` (so ``\\set`` and ``:'var'`` work as they
  do for an operator), with ``ON_ERROR_STOP``, inside ``BEGIN`` ... ``ROLLBACK`` on a
  migrated database holding sample jobs and dead letters (``tests/docs/seed.py``).
* A block that cannot run on its own is fenced as what it is (``text``, ``sh``, ``json``)
  or, when it must stay ``python``/``sql``, carries on the line above its fence::

      <!-- example: not run, because <why> -->

  Those are counted and listed by ``test_skipped_examples_are_few``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from outbox.config import Settings
from tests.docs.blocks import ROOT, RUN_LANGS, Block, all_blocks, blocks, pages, stray_markers
from tests.helpers import settings_env

#: How many python/sql examples may be excused from running; raise it only with a reason.
MAX_SKIPPED = 2


def _runnable(lang: str) -> list[Block]:
    return [b for b in all_blocks(lang) if b.skip_reason is None]


def _python_pages() -> list[str]:
    return sorted({b.path for b in _runnable("python")})


def test_the_pages_have_examples() -> None:
    # Guards the collection itself: a parser that found nothing would make every test below pass.
    assert len(_runnable("python")) >= 12, [b.where for b in _runnable("python")]
    assert len(_runnable("sql")) >= 15, [b.where for b in _runnable("sql")]
    assert len(_python_pages()) >= 5


@pytest.mark.parametrize("page", _python_pages())
def test_python_examples_run(page: str, settings: Settings) -> None:
    todo = [{"path": b.path, "line": b.line, "code": b.code} for b in _runnable("python") if b.path == page]
    env = settings_env(settings)
    env.pop("TIERBOX_APP", None)  # the examples name their own modules
    done = subprocess.run([sys.executable, "-m", "tests.docs.run_python"], input=json.dumps(todo), cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, f"{page}:\n{done.stdout}\n{done.stderr}"
    ran = [line for line in done.stdout.splitlines() if line.startswith("ran ")]
    assert len(ran) == len(todo), done.stdout


@pytest.mark.parametrize("block", _runnable("sql"), ids=lambda b: b.where)
def test_sql_examples_run(block: Block, seeded_db_url: str) -> None:
    assert not re.search(r"\b(COMMIT|END)\b", block.code, re.IGNORECASE), (
        f"{block.where}: an example must not COMMIT; it runs in a transaction that is rolled back")
    psql = shutil.which("psql")
    assert psql, "psql is needed to run the SQL examples as an operator would"
    script = f"BEGIN;\n{block.code}\nROLLBACK;\n"
    done = subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", seeded_db_url, "-f", "-"],
                          input=script, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{block.where}:\n{done.stdout}\n{done.stderr}"


def test_a_failing_example_fails_its_page() -> None:
    # The runner must report a raising block with the page's own line number, and stop there.
    todo = [{"path": "docs/x.md", "line": 10, "code": "x = 1\n"},
            {"path": "docs/x.md", "line": 20, "code": "y = x\nraise RuntimeError('stale example')\n"},
            {"path": "docs/x.md", "line": 30, "code": "z = 3\n"}]
    done = subprocess.run([sys.executable, "-m", "tests.docs.run_python"], input=json.dumps(todo), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert 'File "docs/x.md", line 22' in done.stderr and "stale example" in done.stderr
    assert "ran docs/x.md:30" not in done.stdout


def test_skipped_examples_are_few() -> None:
    skipped = [b for lang in RUN_LANGS for b in all_blocks(lang) if b.skip_reason is not None]
    listing = "\n".join(f"  {b.where}: {b.skip_reason}" for b in skipped)
    print(f"{len(skipped)} example(s) not run:\n{listing}")
    assert len(skipped) <= MAX_SKIPPED, f"{len(skipped)} examples excused from running:\n{listing}"
    assert all(b.skip_reason and b.skip_reason.strip() for b in skipped)


def test_markers_sit_on_examples() -> None:
    assert [m for page in pages() for m in stray_markers(page)] == []


def test_json_examples_parse() -> None:
    for page in pages():
        for b in blocks(page):
            if b.lang == "json":
                json.loads(b.code)  # a broken body or topology file would mislead whoever copies it


def test_no_unknown_fences() -> None:
    # A typo such as ```pyhton would silently exempt a block from running.
    known = {*RUN_LANGS, "text", "sh", "json", "mermaid"}
    odd = [f"{b.where} ({b.lang or 'no language'})" for p in pages() for b in blocks(p) if b.lang not in known]
    assert odd == []
