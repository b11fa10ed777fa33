"""Fixtures of the tracing tests: a real OTLP/HTTP receiver, and settings that load the tracing tasks."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest

from outbox.config import Settings
from tests.tracing.receiver import Receiver


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The system tests' settings, with the tracing tests' tasks loaded by the workers too."""
    return msgspec.structs.replace(settings, app="sample_tasks,tests.tracing.tasks")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An OTLP/HTTP receiver on a free local port, for this test."""
    r = Receiver()
    yield r
    r.close()
