"""The configuration and CLI tables of docs/, generated from the code.

Each table sits between ``<!-- table: NAME ... -->`` and ``<!-- end table -->``. The
columns that the code knows (setting, variable, default; command, arguments, options)
are rendered from ``outbox.config.Settings``, ``tierbox.api.config.ApiConfig`` and the
click group ``tierbox.cli.main.cli``; the prose columns are kept from the page, row by
row. ``python -m tests.docs.tables --write`` rewrites the tables after the code changed
(a new row gets an empty prose cell, which tests/docs/test_tables.py refuses until
someone writes it); ``python -m tests.docs.tables`` only reports drift.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import msgspec

from outbox.config import ENV_PREFIX, Settings
from tests.docs.blocks import ROOT
from tierbox.api.config import ApiConfig
from tierbox.cli.main import cli

REGION = re.compile(r"(?P<head><!-- table: (?P<name>[\w-]+)[^\n]*-->\n)(?P<body>.*?)(?P<tail><!-- end table -->)", re.S)
CELL_SPLIT = re.compile(r"(?<!\\)\|")

#: The cells of one table row.
Row = tuple[str, ...]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in CELL_SPLIT.split(line.strip())[1:-1]]


def _line(cells: Row) -> str:
    return "| " + " | ".join(cells) + " |"


def _default(value: object) -> str:
    if value is None or value == ():
        return "none"
    if value == "":
        return '`""`'
    return f"`{value}`"


def _field_defaults(struct: type[msgspec.Struct]) -> Iterator[tuple[str, object]]:
    for field in msgspec.structs.fields(struct):
        yield field.name, field.default


def settings_rows() -> list[Row]:
    """Setting, environment variable, default: one row per field of ``Settings``."""
    return [(f"`{name}`", f"`{ENV_PREFIX}{name.upper()}`", _default(default))
            for name, default in _field_defaults(Settings)]


def api_rows() -> list[Row]:
    """Setting and default: one row per field of ``ApiConfig``."""
    return [(f"`{name}`", _default(default)) for name, default in _field_defaults(ApiConfig)]


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def _choices(param: click.Parameter) -> str:
    if isinstance(param.type, click.Choice):
        return "\\|".join(str(c) for c in param.type.choices)
    return ""


def _argument(param: click.Parameter) -> str:
    shown = _choices(param) or (param.name or "").upper()
    return shown if param.required else f"[{shown}]"


def _option(param: click.Option) -> str:
    choices = _choices(param)
    return f"`{param.opts[0]} {choices}`" if choices else f"`{param.opts[0]}`"


def cli_rows() -> list[Row]:
    """Command with its arguments, and its options: one row per command, subcommands included."""
    rows: list[Row] = []
    for path, command in _commands(cli):
        args = [_argument(p) for p in command.params if isinstance(p, click.Argument)]
        options = [_option(p) for p in command.params if isinstance(p, click.Option)]
        rows.append((f"`{' '.join(('tierbox', *path, *args))}`", ", ".join(options) or "-"))
    return rows


#: name -> (header cells, rows from the code, the key of a row in the page).
TABLES: dict[str, tuple[Row, Callable[[], list[Row]], Callable[[Row], str]]] = {
    "settings": (("Setting", "Environment variable", "Default", "Used by"), settings_rows, lambda r: r[0]),
    "api-settings": (("Setting", "Default", "Set by", "Meaning"), api_rows, lambda r: r[0]),
    "cli": (("Command", "Options", "What it does"), cli_rows, lambda r: _command_path(r[0])),
}
#: The pages holding the tables.
PAGES = (ROOT / "docs" / "configuration.md", ROOT / "docs" / "cli.md")


def _command_path(cell: str) -> str:
    words = cell.strip("`").split()
    return " ".join(w for w in words[1:] if re.fullmatch(r"[a-z][a-z-]*", w))


def render(name: str, body: str) -> str:
    """The table ``name`` as the code has it, with the prose cells of ``body`` (the page's table)."""
    header, rows, key = TABLES[name]
    code_rows = rows()
    known = len(code_rows[0])  # the leading cells come from the code, the rest is prose
    prose = {key(tuple(cells)): tuple(cells[known:]) for cells in map(_cells, body.splitlines()[2:])}
    lines = [_line(header), _line(tuple("---" for _ in header))]
    for row in code_rows:
        kept = prose.get(key(row), ()) + ("",) * len(header)
        lines.append(_line(row + kept[:len(header) - known]))
    return "\n".join(lines) + "\n"


def regions(page: Path) -> Iterator[re.Match[str]]:
    """The marked tables of ``page``."""
    return REGION.finditer(page.read_text())


def rewritten(page: Path) -> str:
    """The text of ``page`` with every marked table rendered from the code."""
    return REGION.sub(lambda m: m["head"] + render(m["name"], m["body"]) + m["tail"], page.read_text())


def main(argv: list[str]) -> int:
    """Report drift; with ``--write``, rewrite the tables."""
    drifted = [p for p in PAGES if rewritten(p) != p.read_text()]
    if "--write" in argv:
        for page in drifted:
            page.write_text(rewritten(page))
            print(f"rewrote {page.relative_to(ROOT)}")
        return 0
    for page in drifted:
        print(f"{page.relative_to(ROOT)}: tables differ from the code; run python -m tests.docs.tables --write")
    return 1 if drifted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
