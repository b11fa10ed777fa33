"""Fenced code blocks of the README and docs/, and the marker that excuses one from running.

A ```` ```python ```` or ```` ```sql ```` block is an example, and tests/docs/test_examples.py
runs it. A block that cannot run on its own carries, on the line right before its fence::

    <!-- example: not run, because <why> -->

Anything else that is not meant to run is fenced as what it is (``text``, ``sh``, ``json``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The languages whose blocks are run.
RUN_LANGS = ("python", "sql")
MARKER = re.compile(r"^<!-- example: not run, because (?P<why>.+?) -->$")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: the page it is on (relative to the repository), the line of its fence."""

    path: str
    line: int
    lang: str
    code: str
    #: The reason given by an ``example: not run`` marker, or None.
    skip_reason: str | None

    @property
    def where(self) -> str:
        """``path:line``, as a test id and in failure messages."""
        return f"{self.path}:{self.line}"


def pages() -> list[Path]:
    """The README and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, in order."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        marker = MARKER.match(lines[i - 1].strip()) if i > 0 else None
        found.append(Block(str(page.relative_to(ROOT)), i + 1, m["lang"], "\n".join(lines[i + 1:end]) + "\n",
                           marker["why"] if marker else None))
        i = end + 1
    return found


def stray_markers(page: Path) -> list[str]:
    """Markers not directly above a python or sql fence (they would excuse nothing)."""
    lines = page.read_text().splitlines()
    bad = []
    for n, line in enumerate(lines):
        if "<!-- example:" in line:
            nxt = FENCE.match(lines[n + 1]) if n + 1 < len(lines) else None
            if not MARKER.match(line.strip()) or not nxt or nxt["lang"] not in RUN_LANGS:
                bad.append(f"{page.relative_to(ROOT)}:{n + 1}")
    return bad


def all_blocks(lang: str) -> list[Block]:
    """The blocks in ``lang`` of every page."""
    return [b for page in pages() for b in blocks(page) if b.lang == lang]
