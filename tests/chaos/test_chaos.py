"""The short chaos profile (part of `make test`): every fault kind at least once, then the checker."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from outbox.config import Settings
from tests.chaos.harness import ChaosRun

pytestmark = pytest.mark.slow

# 5,000 jobs over 30 s of production: every fault kind is injected once in the first ~20 s (gaps of
# 1-2.5 s, kinds shuffled), then random ones; `make chaos` is the long profile (1,000,000 jobs).
SHORT_JOBS = int(os.environ.get("CHAOS_JOBS", "5000"))


@pytest.mark.timeout(300)
def test_chaos_short_profile_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(1_000_000))
    print(f"chaos seed {seed} (rerun: CHAOS_SEED={seed} make test)")
    report = ChaosRun(settings, tmp_path, seed=seed, jobs=SHORT_JOBS, fault_gap_s=(1.0, 2.5),
                      produce_s=30, timeout_s=120).run()
    print(report.table())
    assert set(report.faults) >= {"sigkill_relay", "sigkill_worker", "sigterm_pool", "close_connections",
                                  "pg_terminate", "garbage", "queue_limit", "purge_queue", "delete_queue"}
    assert report.committed > 0 and report.rolled_back > 0
    assert report.ok, report.table() + f"\nlost={report.lost[:5]} double={report.double_effects[:5]} " \
                                       f"stranded={report.stranded[:5]} unclean={report.unclean_exits}"
