"""Benchmark figures are recorded in bench/README.md; a docs page quotes one only with a pointer to it.

The rule (bench/README.md, "Figures first written on docs pages"): a page that names a benchmark
run (``python -m bench...`` or ``bench/<script>.py``) points at the bench/README.md section that
records its figures, as `` `bench/README.md`, "<section title>" ``. The site cannot link outside
docs/, so the pointer is text; this test keeps it from rotting: every quoted title must still be
a section of bench/README.md.
"""

from __future__ import annotations

import re

from tests.docs.blocks import ROOT, pages

#: A page naming a benchmark run or script.
NAMES_A_BENCH = re.compile(r"python -m bench\b|\bbench/\w+\.py\b")
#: `bench/README.md`, "Title" (also without backticks, with the title in parentheses, across a line break).
POINTER = re.compile(r'bench/README\.md`?,?\s*\(?"(?P<title>[^"]+)"')
#: Pages that name a benchmark but quote none of its figures.
NO_FIGURES = {
    "docs/configuration.md": "generated settings table: names bench/latency.py as the reader of a variable",
    "docs/progress.md": "names bench/job_events.py as where the hot-path cost is measured, quotes no figure",
}


def _sections() -> list[str]:
    """bench/README.md's headings and bold item labels (``4. **Batched starts**``), without markup."""
    text = (ROOT / "bench" / "README.md").read_text()
    titles = [m[1] for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)]
    titles += re.findall(r"^\s*(?:\d+\.|[-*])\s+\*\*(.+?)\*\*", text, re.MULTILINE)
    return [t.replace("`", "").strip() for t in titles]


def _unresolved(text: str, sections: list[str]) -> list[str]:
    return [m["title"] for m in POINTER.finditer(text)
            if not any(s.startswith(" ".join(m["title"].split())) for s in sections)]


def _page_problems(name: str, text: str, sections: list[str]) -> list[str]:
    problems = [f"{name}: no section named {title!r} in bench/README.md" for title in _unresolved(text, sections)]
    if NAMES_A_BENCH.search(text) and name not in NO_FIGURES and not POINTER.search(text):
        problems.append(f'{name}: names a benchmark but points at no `bench/README.md`, "<section>"')
    return problems


def test_every_page_quoting_bench_figures_points_at_their_section() -> None:
    sections = _sections()
    assert len(sections) >= 20  # the heading parser still finds them
    assert [p for page in pages() for p in _page_problems(str(page.relative_to(ROOT)), page.read_text(), sections)] == []


def test_the_pages_quoting_figures_are_found() -> None:
    # Guards the patterns: these pages quote bench figures today, with pointers.
    pointed = {str(p.relative_to(ROOT)) for p in pages() if POINTER.search(p.read_text())}
    assert {"docs/cluster.md", "docs/dashboard.md", "docs/tracing.md", "docs/triage.md", "docs/guarantees.md",
            "docs/schema.md", "docs/limitations.md"} <= pointed
    named = {str(p.relative_to(ROOT)) for p in pages() if NAMES_A_BENCH.search(p.read_text())}
    assert set(NO_FIGURES) <= named


def test_a_page_without_a_pointer_or_with_a_stale_one_is_caught() -> None:
    sections, name = _sections(), "docs/probe.md"
    assert _page_problems(name, "Measured with `python -m bench.cluster`: 1262 publishes/s.\n", sections) == [
        'docs/probe.md: names a benchmark but points at no `bench/README.md`, "<section>"']
    stale = 'Measured with `python -m bench.cluster` (`bench/README.md`, "A section since renamed").\n'
    assert _page_problems(name, stale, sections) == [
        "docs/probe.md: no section named 'A section since renamed' in bench/README.md"]
    wrapped = 'Measured with `python -m bench.cluster` (`bench/README.md`,\n"bench.cluster: classic").\n'
    assert _page_problems(name, wrapped, sections) == []
