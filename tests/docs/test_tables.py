"""The configuration and CLI tables of docs/ say what the code has (tests/docs/tables.py renders them).

Fix a failure with ``python -m tests.docs.tables --write``, then write the prose cell of any
new row.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from outbox.config import ENV_PREFIX, Settings
from tests.docs import tables
from tests.docs.blocks import ROOT, pages
from tierbox.cli.main import cli

#: Where the code that reads TIERBOX_* variables lives (the repository folders of both packages, the demo).
SOURCE_DIRS = ("outbox", "api", "celery_bridge", "cli", "flow", "migrations", "ops", "relay", "scheduler", "webhooks",
               "workers", "examples")
ENV_NAME = re.compile(r"\bTIERBOX_[A-Z0-9_]*[A-Z0-9]\b")


def _names() -> list[str]:
    return [m["name"] for page in tables.PAGES for m in tables.regions(page)]


def test_every_table_is_on_a_page_once() -> None:
    assert sorted(_names()) == sorted(tables.TABLES)


@pytest.mark.parametrize("page", tables.PAGES, ids=lambda p: p.name)
def test_tables_match_the_code(page: Path) -> None:
    have, want = page.read_text(), tables.rewritten(page)
    diff = "".join(difflib.unified_diff(have.splitlines(True), want.splitlines(True), "page", "code"))
    assert have == want, f"{page.relative_to(ROOT)} drifted from the code; run python -m tests.docs.tables --write\n{diff}"


def test_every_row_has_its_prose() -> None:
    empty = []
    for page in tables.PAGES:
        for m in tables.regions(page):
            for line in m["body"].splitlines()[2:]:
                if any(not cell for cell in tables._cells(line)):
                    empty.append(f"{page.name}: {line}")
    assert empty == []


def _rerendered(text: str) -> str:
    return tables.REGION.sub(lambda m: m["head"] + tables.render(m["name"], m["body"]) + m["tail"], text)


def test_a_drifted_table_is_caught() -> None:
    # The check must be able to fail: a wrong default, a missing setting, a missing command.
    config, cli_page = (p.read_text() for p in tables.PAGES)
    wrong_default = config.replace("| `500` |", "| `400` |")
    assert wrong_default != config and _rerendered(wrong_default) == config
    for broken in (re.sub(r"\| `lease_s` \|[^\n]*\n", "", config), re.sub(r"\| `tierbox prune` \|[^\n]*\n", "", cli_page)):
        assert broken not in (config, cli_page)
        assert _rerendered(broken) != broken


def test_the_tables_cover_the_code() -> None:
    page = tables.PAGES[0].read_text()
    assert all(f"| `{name}` | `{ENV_PREFIX}{name.upper()}` |" in page for name in Settings.__struct_fields__)
    commands = {" ".join(path) for path, _ in tables._commands(cli)}
    assert {"dlq redrive", "override set", "worker", "migrate"} <= commands
    assert all(f"| `tierbox {c}" in tables.PAGES[1].read_text() for c in commands)


def _code_env_names() -> set[str]:
    found = {ENV_PREFIX + name.upper() for name in Settings.__struct_fields__}
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            found |= set(ENV_NAME.findall(path.read_text()))
    return found


def test_every_variable_the_code_reads_is_documented() -> None:
    documented = set(ENV_NAME.findall((ROOT / "docs" / "configuration.md").read_text()))
    assert sorted(_code_env_names() - documented) == []


def test_the_docs_name_no_variable_the_code_lacks() -> None:
    named = {(p.relative_to(ROOT).as_posix(), n) for p in pages() for n in ENV_NAME.findall(p.read_text())}
    code = _code_env_names()
    assert sorted((page, n) for page, n in named if n not in code) == []


def _table(text: str, header_start: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(tables._cells(line))
    return rows


def _number(value: float) -> str:
    return f"{value:g}"


def _tier_rows() -> list[list[str]]:
    from outbox.tiers import DEFAULT_TOPOLOGY

    return [[f"`{name}`", str(spec.weight), "best effort" if spec.slo_s is None else f"{_number(spec.slo_s)} s",
             f"`{spec.queue_name(name)}`", spec.queue_type, str(spec.max_priority) if spec.max_priority else "-",
             f"`{spec.pool}`"]
            for name, spec in sorted(DEFAULT_TOPOLOGY.tiers.items(), key=lambda kv: -kv[1].weight)]


@pytest.mark.parametrize("page", ["README.md", "docs/tiers-and-pools.md"])
def test_the_tier_table_is_the_default_topology(page: str) -> None:
    assert _table((ROOT / page).read_text(), "| Tier | Weight |") == _tier_rows()


def test_the_pool_table_is_the_default_topology() -> None:
    from outbox.tiers import DEFAULT_TOPOLOGY

    def per_tier(values: Mapping[str, float]) -> str:
        return ", ".join(f"`{t}` {_number(v)}" for t, v in values.items()) or "-"

    want = [[f"`{name}`", ", ".join(f"`{t}`" for t in pool.tiers), str(pool.concurrency), per_tier(pool.reserved),
             str(pool.prefetch), per_tier(pool.min_share)] for name, pool in DEFAULT_TOPOLOGY.pools.items()]
    assert _table((ROOT / "docs" / "tiers-and-pools.md").read_text(), "| Pool | Tiers |") == want
