"""Readable tables for the CLI: the same structs the API returns, as aligned columns."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

#: Widest cell before it is cut (full values are in ``--json``).
MAX_CELL = 48


def as_json(value: Any) -> str:
    """``value`` (structs, lists, dicts) as indented JSON."""
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def table(rows: Sequence[Any], columns: Sequence[str]) -> str:
    """``rows`` (structs or dicts) as a table of ``columns``; ``(none)`` when empty."""
    if not rows:
        return "(none)"
    cells = [[_cell(_get(r, c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def fields(value: Any, names: Sequence[str]) -> str:
    """One record as ``name: value`` lines."""
    width = max(len(n) for n in names)
    return "\n".join(f"{n.ljust(width)}  {_cell(_get(value, n), limit=400)}" for n in names)


def _get(row: Any, name: str) -> Any:
    return row.get(name) if isinstance(row, dict) else getattr(row, name, None)


def _cell(value: Any, limit: int = MAX_CELL) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
    elif isinstance(value, float):
        text = f"{value:.2f}"
    elif isinstance(value, (dict, list)):
        text = msgspec.json.encode(value).decode()
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
