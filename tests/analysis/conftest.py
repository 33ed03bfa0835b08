"""The real lmms-eval runs the analysis tests share (one sweep per test session: each run takes about a minute on
two CPU cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastav_eval.analysis import sweep as sweeping
from tests.analysis.sweep_fixture import TASKS


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> tuple[Path, list[sweeping.SweepRun]]:
    """The FastAV defaults and the unpruned baseline on 6 documents of two tasks, each a real lmms-eval run
    (with ``--log_samples``)."""
    out = tmp_path_factory.mktemp("sweep")
    runs = sweeping.build_grid("fastav_tiny", "", TASKS, {}, limit=6)
    result = sweeping.run_sweep(runs, out, say=lambda _: None)
    assert result.ran == ["base", "unpruned"], [(out / r.hash / "lmms_eval.log").read_text()[-3000:] for r in runs]
    return out, runs
