"""``fastav_tiny`` end to end through lmms-eval (the Python API and the CLI), on a few AV-Synth samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fastav_eval.avsynth import build_documents
from fastav_eval.cli import tasks_path
from fastav_eval.lmms.fastav_tiny import FastAVTiny
from fastav_eval.testbed import WEIGHTS_DIR, TestbedModel
from fastav_eval.testbed.model import media_tensors

lmms_eval = pytest.importorskip("lmms_eval")


def evaluate(model_args: str, tasks: list[str], limit: int = 2) -> dict:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    return simple_evaluate(
        model="fastav_tiny",
        model_args=model_args,
        tasks=tasks,
        limit=limit,
        bootstrap_iters=0,
        log_samples=True,
        task_manager=TaskManager(include_path=str(tasks_path()), model_name="fastav_tiny"),  # selects its prompts
    )


def test_entry_point_resolves_fastav_tiny():
    from lmms_eval import models

    assert models.get_model("fastav_tiny") is FastAVTiny


def test_fastav_run_reports_accuracy_flops_and_kept_tokens_per_sample():
    output = evaluate("prune=fastav", ["avsynth"], limit=2)
    results = output["results"]
    for task in ("avsynth_match", "avsynth_halluc", "avsynth_qa"):
        assert 0.0 <= results[task]["accuracy,none"] <= 1.0
    assert results["avsynth_caption"]["cider,none"] >= 0.0
    throughput = output["throughput"]
    assert 30.0 < throughput["avg_relative_flops"] < 80.0
    assert throughput["avg_prefill_ms"] > 0
    for samples in output["samples"].values():
        for sample in samples:
            counts = sample["token_counts"][0]
            assert counts["prune"] == "fastav"
            kept = counts["kept_per_layer"]
            assert kept["video"][0] == counts["video_tokens"] == 128
            assert kept["audio"][0] == counts["audio_tokens"] == 144
            assert kept["audio"][-1] < 144 and counts["relative_flops"] < 100


def test_unpruned_run_matches_the_stock_model():
    """prune=none goes through the engine with pruning off: same answers as the bare model, 100% FLOPs."""
    output = evaluate("prune=none", ["avsynth_qa"], limit=4)
    assert output["throughput"]["avg_relative_flops"] == pytest.approx(100.0)
    docs = build_documents("test", "avsynth_qa", 4)
    model = TestbedModel.load(WEIGHTS_DIR)
    with torch.no_grad():
        prepared = model.prepare(*media_tensors(docs), [d["question"] for d in docs])
    expected = model.generate(prepared, max_new_tokens=4)
    got = [s["filtered_resps"][0] for s in sorted(output["samples"]["avsynth_qa"], key=lambda s: s["doc_id"])]
    assert got == expected


@pytest.mark.parametrize(
    ("model_args", "message"),
    [
        ({"prune": "fast"}, r"prune='fast'; accepted: \['fastav', 'none'\]"),
        ({"fine_ratio": 1.5}, r"fine_ratio=1\.5; accepted"),
        ({"global_rule": "best"}, r"global_rule='best'; accepted"),
        ({"audio_keep": "ten"}, r"audio_keep='ten'; accepted"),
        ({"finer_ratio": 0.1}, r"unknown --model_args key\(s\) \['finer_ratio'\]"),
        ({"prune": "none", "fine_ratio": 0.3}, r"prune=none takes no pruning arguments"),
        ({"attn_implementation": "flash"}, r"attn_implementation='flash'; accepted"),
        ({"video_keep": -3}, r"video_keep=-3; accepted"),
        ({"audio_keep": 1.5}, r"audio_keep=1\.5; accepted"),
        ({"max_batch_size": 8}, r"max_batch_size=8 is not supported"),
        ({"dtype": "fp8"}, r"dtype='fp8'; accepted"),
    ],
)
def test_bad_model_args_name_the_field(model_args, message):
    with pytest.raises(ValueError, match=message):
        FastAVTiny(**model_args)


def test_cli_run_with_a_bad_key_writes_no_results_and_names_the_key(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "lmms_eval", "--model", "fastav_tiny",
               "--model_args", "prune=fastav,fine_ration=0.2", "--tasks", "avsynth_match",
               "--include_path", str(tasks_path()), "--limit", "1", "--output_path", str(tmp_path)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert "unknown --model_args key(s) ['fine_ration']" in run.stdout + run.stderr
    assert not list(tmp_path.rglob("*_results.json"))


def test_cli_main_job_writes_results_with_flops(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "lmms_eval", "--model", "fastav_tiny", "--model_args", "prune=fastav",
               "--tasks", "avsynth", "--include_path", str(tasks_path()), "--limit", "2",
               "--output_path", str(tmp_path), "--log_samples"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    files = list(tmp_path.rglob("*_results.json"))
    assert files, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(files[0].read_text())
    assert set(results["results"]) >= {"avsynth_match", "avsynth_halluc", "avsynth_qa", "avsynth_caption"}
    assert results["throughput"]["avg_relative_flops"] < 100
    assert len(list(tmp_path.rglob("*_samples_avsynth_*.jsonl"))) == 4
