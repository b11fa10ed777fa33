"""On PYTHONPATH, makes `opentelemetry` unimportable in the process (as if it were not installed)."""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder
from typing import Any


class _NoOpenTelemetry(MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by tests/tracing/no_otel)", name=name)
        return None


sys.meta_path.insert(0, _NoOpenTelemetry())
