"""fastav_videollama2 (the paper's setting by default) on the tiny checkpoint the official VideoLLaMA2 code saved
(tests/fixtures/videollama2_tiny): lmms-eval's stock AV tasks, then the paper's benchmarks from tiny releases in the
official schemas, converted with the README's ``fastav-eval prepare-data`` commands."""

from __future__ import annotations

import sys

import pytest

from tests.e2e.cli import REPO, prepared_paper_benchmarks, results, run, tasks_path

pytestmark = pytest.mark.e2e

VL2 = REPO / "tests" / "fixtures" / "videollama2_tiny"
MODEL_ARGS = f"pretrained={VL2},vision_tower={VL2}/siglip,dtype=float32,device=cpu,on_error=record"


def check(output, result, metrics: dict[str, str]) -> None:
    _, report = results(output, result)
    for task, metric in metrics.items():
        table = report["groups"] if task in report.get("groups", {}) else report["results"]
        assert f"{metric},none" in table[task], (task, table[task])
    throughput = report["throughput"]
    assert throughput["avg_failed"] == 0 and 0 < throughput["avg_relative_flops"] < 100, throughput
    assert throughput["avg_audio_tokens"] > 0, throughput


def test_stock_tasks(tmp_path):
    output = tmp_path / "results"
    result = run(
        sys.executable, "-m", "tests.lmms.av_cli", tmp_path, "--model", "fastav_videollama2",
        "--model_args", MODEL_ARGS, "--tasks", "worldsense,videomme,vggsound", "--limit", "3",
        "--gen_kwargs", "max_new_tokens=8", "--output_path", output, "--log_samples",
    )  # fmt: skip
    metrics = {"worldsense": "worldsense_score", "videomme": "videomme_perception_score", "vggsound": "acc"}
    check(output, result, metrics)


def test_paper_benchmarks_from_prepared_releases(tmp_path):
    data = prepared_paper_benchmarks(tmp_path)
    output = tmp_path / "paper"
    result = run(
        "lmms-eval", "--model", "fastav_videollama2", "--model_args", MODEL_ARGS, "--tasks", "avhbench,music_avqa,avqa",
        "--include_path", tasks_path(), "--gen_kwargs", "max_new_tokens=8", "--output_path", output, "--log_samples",
        env=data,
    )  # fmt: skip
    metrics = {"avhbench_hallucination": "accuracy", "avhbench_match": "accuracy", "avhbench_caption": "cider",
               "music_avqa": "accuracy", "avqa": "accuracy"}  # fmt: skip
    check(output, result, metrics)
