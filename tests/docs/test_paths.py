"""Every repository path the README and docs/ name (in backticks) exists: a moved file leaves no stale pointer."""

from __future__ import annotations

import re
import subprocess

from tests.docs.blocks import ROOT, pages

PATH = re.compile(r"`([\w.-]+/[\w./-]*)(?:::[\w\[\]-]+)?`")


def _tracked_top_level() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {line.split("/", 1)[0] for line in out.splitlines() if "/" in line}


def _named_paths() -> list[tuple[str, str]]:
    top = _tracked_top_level()
    found = []
    for page in pages():
        for n, line in enumerate(page.read_text().splitlines(), 1):
            for m in PATH.finditer(line):
                path = m[1].rstrip("/")
                if path.split("/", 1)[0] in top:  # a repository path, not `redriven_at/by` or a URL path
                    found.append((f"{page.relative_to(ROOT)}:{n}", path))
    return found


def test_the_docs_name_paths() -> None:
    assert len(_named_paths()) >= 30  # the pattern still finds what it should


def test_every_named_path_exists() -> None:
    assert [(where, path) for where, path in _named_paths() if not (ROOT / path).exists()] == []
