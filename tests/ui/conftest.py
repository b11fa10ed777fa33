"""Chromium (Debian's ``chromium`` package) driven by Playwright, and a real ``tierbox api`` process.

The browser is never downloaded: Playwright launches ``/usr/bin/chromium``
(``make test`` installs it through ``scripts/ensure-chromium``). Screenshots of
each screen go to ``test-artifacts/ui/`` (git-ignored).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT

CHROMIUM = Path(os.environ.get("TIERBOX_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "test-artifacts" / "ui"


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium for one test.

    Per test, not per session: Playwright's sync API keeps an event loop running in this thread while
    it is open, and the broker clean-up of the ``prefix`` fixture (``asyncio.run``) must run after it closed.
    Request it after ``system`` so it is closed first."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium), "
                    "or run scripts/ensure-chromium", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture
def shots() -> Path:
    """Where the screenshots go."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
