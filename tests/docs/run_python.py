"""Run one page's Python examples in order, in one namespace, in this (fresh) process.

Reads a JSON list of ``{"path", "line", "code"}`` from stdin. Each block is compiled
under its page's name with its own line numbers, so a traceback points into the page.
Exits 1 on the first block that raises.
"""

from __future__ import annotations

import json
import sys
import traceback
import types


def main() -> int:
    """Run the blocks; print which one failed and why."""
    # A real, importable module, as the user's own would be (SQLAlchemy resolves annotations through it).
    module = types.ModuleType("docs_example")
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    for block in json.load(sys.stdin):
        code = "\n" * block["line"] + block["code"]
        try:
            exec(compile(code, block["path"], "exec"), namespace)  # running the docs is the point
        except BaseException:  # noqa: BLE001 - reported with the page's line numbers
            print(f"example at {block['path']}:{block['line']} raised:", file=sys.stderr)
            traceback.print_exc()
            return 1
        print(f"ran {block['path']}:{block['line']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
