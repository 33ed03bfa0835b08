"""fastav_qwen2_5_omni on lmms-eval's own AV tasks, untouched, end to end through lmms-eval's CLI: a tiny random
thinker and generated fixtures in the tasks' schemas (tests/lmms/av_cli.py builds the processor locally: the stock
video processor needs torchvision); then calibrate and report on it, the commands a GPU user runs on the 7B model."""

from __future__ import annotations

import json
import sys

import pytest

from tests.e2e.cli import is_number, results, run, tail

pytestmark = pytest.mark.e2e

METRICS = {"worldsense": "worldsense_score", "av_odyssey": "av_odyssey_score",
           "videomme": "videomme_perception_score", "vggsound": "acc"}  # fmt: skip


@pytest.fixture(scope="module")
def omni(tmp_path_factory):
    """The fixtures' root (with the tiny checkpoint) and the results folder of the lmms-eval run."""
    root = tmp_path_factory.mktemp("omni")
    output = root / "results"
    result = run(
        sys.executable, "-m", "tests.lmms.av_cli", root, "--model", "fastav_qwen2_5_omni", "--model_args",
        f"pretrained={root}/checkpoint,dtype=float32,video_audio=if_present,audio_keep_chunks=1,global_layer=2,"
        "batch_size=2",
        "--tasks", ",".join(METRICS), "--limit", "3", "--gen_kwargs", "max_new_tokens=8", "--output_path", output,
        "--log_samples",
    )  # fmt: skip
    return root, output, result


def test_flops_preset():
    preset = json.loads(run("fastav-eval", "flops", "--preset", "qwen2_5_omni_7b").stdout)
    assert "relative_flops" in preset, preset


def test_stock_tasks_through_lmms_eval(omni):
    _, output, result = omni
    _, report = results(output, result)
    for task, metric in METRICS.items():
        assert f"{metric},none" in report["results"][task], (task, report["results"][task])
    throughput = report["throughput"]
    assert throughput["avg_audio_tokens"] > 0 and throughput["avg_failed"] == 0, throughput
    assert is_number(throughput["avg_relative_flops"]), throughput


def test_calibrate(omni):
    root, _, _ = omni
    result = run(
        sys.executable, "-m", "tests.lmms.av_cli", root, "fastav-eval", "calibrate", "--model", "fastav_qwen2_5_omni",
        "--model_args", f"pretrained={root}/checkpoint,dtype=float32,video_audio=if_present",
        "--tasks", "worldsense,vggsound", "--limit", "2", "--global-layer", "2", "--out", root / "profile.json",
    )  # fmt: skip
    for name in ("profile.json", "profile_rollout.png"):
        assert (root / name).is_file() and (root / name).stat().st_size > 0, f"{name}\n{tail(result)}"


def test_report(omni):
    root, output, result = omni
    results(output, result)
    report = run("fastav-eval", "report", output, "--out", root / "report")
    assert "fastav_qwen2_5_omni" in (root / "report" / "report.md").read_text(), tail(report)
