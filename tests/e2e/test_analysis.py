"""README "Analysis" through the real CLI: calibrate reproduces the shipped testbed profile; a small sweep (resumed:
the second call runs nothing), its report, and a submitted bundle that verify accepts and, edited, rejects."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.e2e.cli import run, tail

pytestmark = pytest.mark.e2e

SWEEP = ["--model", "fastav_tiny", "--tasks", "avsynth", "--limit", "8", "--vary", "fine_ratio=0,0.3",
         "--vary", "global_rule=random"]  # fmt: skip


def test_calibrate_reproduces_the_shipped_profile(tmp_path):
    import fastav_eval.testbed as testbed

    folder = tmp_path / "calibrated"
    result = run(
        "fastav-eval", "calibrate", "--model", "fastav_tiny", "--tasks", "avsynth_val", "--limit", "24",
        "--target-flops", "60", "--out", folder / "profile.json",
    )  # fmt: skip
    calibrated = json.loads((folder / "profile.json").read_text())
    shipped = json.loads((testbed.WEIGHTS_DIR / "profile.json").read_text())
    assert calibrated["keep"] == shipped["keep"], (calibrated["keep"], shipped["keep"])
    assert (folder / "profile_rollout.png").is_file() and (folder / "profile_importance.png").is_file(), tail(result)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The sweep's folder, and the second (resumed) call's output."""
    folder = tmp_path_factory.mktemp("analysis") / "sweep"
    run("fastav-eval", "sweep", *SWEEP, "--out", folder)
    return folder, run("fastav-eval", "sweep", *SWEEP, "--out", folder)


@pytest.fixture(scope="module")
def bundle(sweep):
    """``fastav-eval submit`` of the sweep's base run against its unpruned run."""
    folder, _ = sweep
    runs = json.loads((folder / "sweep.json").read_text())
    base = next(key for key, entry in runs.items() if entry["name"] == "base")
    unpruned = next(key for key, entry in runs.items() if entry["name"] == "unpruned")
    out = folder.parent / "bundle"
    run("fastav-eval", "submit", folder / base, "--baseline", folder / unpruned, "--out", out)
    return out


def test_sweep_resumes_without_running_anything(sweep):
    _, again = sweep
    assert "ran 0, skipped 5 finished, 0 failed" in again.stdout, tail(again)


def test_report(sweep):
    folder, _ = sweep
    result = run("fastav-eval", "report", folder, "--out", folder / "report", "--x-axis", "fine_ratio")
    report = folder / "report" / "report.md"
    assert report.is_file() and report.stat().st_size > 0, tail(result)
    assert (folder / "report" / "pareto.png").is_file() and (folder / "report" / "pareto.png").stat().st_size > 0
    assert "Against the unpruned run" in report.read_text(), tail(result)


def test_verify_accepts_the_submitted_bundle(bundle):
    result = run("fastav-eval", "verify", bundle)
    line = re.compile(r"^task avsynth_qa: .*/avsynth/avsynth_qa\.yaml \(fastav-eval package\)$", re.M)
    assert line.search(result.stdout), tail(result)


def test_verify_rejects_an_edited_bundle(bundle):
    edited = bundle.parent / "bundle-edited"
    shutil.copytree(bundle, edited)
    files = sorted((edited / "results").glob("*_samples_avsynth_qa.jsonl"))
    assert files, f"no avsynth_qa samples in the bundle {bundle}"
    for samples in files:  # the first sample's answer
        first, *rest = samples.read_text().splitlines(keepends=True)
        changed = re.sub(r'"filtered_resps": "[a-z]*"', '"filtered_resps": "edited"', first, count=1)
        assert changed != first, first[:500]
        samples.write_text(changed + "".join(rest))
    result = run("fastav-eval", "verify", edited, check=False)
    assert result.returncode != 0, f"verify accepted an edited bundle\n{tail(result)}"


def test_compare_runs_methods_at_equal_flops_and_reports_them(tmp_path):
    """Budgets solved on avsynth_qa_val, a run per method and target, the shipped policy's, plus the unpruned one on
    avsynth_qa, and the report with each run's achieved FLOPs beside its target and a Pareto plot per task."""
    folder = tmp_path / "compare"
    result = run(
        "fastav-eval", "compare", "--model", "fastav_tiny", "--tasks", "avsynth_qa", "--calibrate-on",
        "avsynth_qa_val", "--calibration-limit", "4", "--methods", "fastav,random,pdrop,seats", "--target-flops", "60",
        "--policy", "fastav_tiny_retention", "--limit", "6", "--batch_size", "6", "--out", folder,
    )  # fmt: skip
    budgets = json.loads((folder / "compare.json").read_text())["budgets"]
    assert [(b["method"], b["target"]) for b in budgets] == [("fastav", 60.0), ("random", 60.0), ("pdrop", 60.0),
                                                              ("seats", 60.0)]  # fmt: skip
    assert all(b["value"] is not None and b["achieved"] <= 60.0 for b in budgets), budgets
    report = (folder / "report" / "report.md").read_text()
    for name in ("fastav@60%", "random@60%", "pdrop@60%", "seats@60%", "policy:fastav_tiny_retention", "unpruned",
                 "random retain=", "pdrop retain=", "seats retain="):  # fmt: skip
        assert name in report, tail(result)
    assert (folder / "report" / "avsynth_qa" / "pareto.png").is_file(), tail(result)
    index = json.loads((folder / "sweep.json").read_text())  # run hash -> name, model args
    assert sorted(entry["name"] for entry in index.values()) == [
        "fastav@60%", "pdrop@60%", "policy:fastav_tiny_retention", "random@60%", "seats@60%", "unpruned"
    ]  # fmt: skip
