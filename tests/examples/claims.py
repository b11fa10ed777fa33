"""Reading an example's closing table (``claim | held | measured``) back in a test."""

from __future__ import annotations

import re

#: The held column's words, as ``examples.support.Claim.verdict`` prints them.
VERDICTS: dict[str, bool | None] = {"yes": True, "NO": False, "not run": None}


def claims(stdout: str) -> dict[str, tuple[bool | None, str]]:
    """Each claim row of the table: claim -> (held, measured); held is None for a row ``not run``."""
    rows: dict[str, tuple[bool | None, str]] = {}
    seen_header = False
    for line in stdout.splitlines():
        parts = [p.strip() for p in line.split(" | ", 2)]
        if parts[:2] == ["claim", "held"]:
            seen_header = True
            continue
        if seen_header and len(parts) == 3 and parts[1] in VERDICTS:
            rows[parts[0]] = (VERDICTS[parts[1]], parts[2])
    return rows


def number(pattern: str, text: str) -> float:
    """The number ``pattern``'s one group captures in ``text`` (thousands separators allowed)."""
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in {text!r}"
    return float(found.group(1).replace(",", ""))
