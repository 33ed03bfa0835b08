"""The prepared GPU check's smoke mode (``benchmarks/gpu_check.sh --smoke``: CPU, tiny shapes): it must pass every
check and write its JSON and Markdown reports."""

from __future__ import annotations

import json

import pytest

from tests.e2e.cli import REPO, run, tail

pytestmark = pytest.mark.e2e

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(not SCRIPT.is_file(), reason="benchmarks/gpu_check.sh is not there")
def test_gpu_check_smoke(tmp_path):
    out = tmp_path / "gpu_check"
    result = run("bash", SCRIPT, "--smoke", out, check=False)
    assert result.returncode == 0, tail(result)
    report, summary = out / "gpu_check.json", out / "gpu_check.md"
    assert report.is_file() and summary.is_file(), tail(result)
    data = json.loads(report.read_text())
    assert data["format"] == "fastav-gpu-check/1", data["format"]
    assert data["smoke"] is True, data["smoke"]
    assert isinstance(data["rows"], list) and data["rows"], "no timing rows"
    assert isinstance(data["checks"], list) and data["checks"], "no checks"
    failed = [check for check in data["checks"] if check["passed"] is not True]
    assert not failed, f"failed checks: {failed}\n{tail(result)}"
    assert all(isinstance(check["name"], str) and isinstance(check["detail"], str) for check in data["checks"])
