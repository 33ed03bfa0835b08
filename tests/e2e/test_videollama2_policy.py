"""A learned policy for ``fastav_videollama2`` (the tiny checkpoint the official VideoLLaMA2 code saved): a short
``fastav-eval train-policy --model fastav_videollama2`` run, its policy deployed through the lmms-eval CLI on
AV-Synth (every sample's decision in the samples file), and refused on another model's decoder (fastav_tiny)."""

from __future__ import annotations

import json

import pytest

from tests.e2e.cli import REPO, decisions, printed, results, run, run_record, tail, tasks_path

pytestmark = pytest.mark.e2e

VL2 = REPO / "tests" / "fixtures" / "videollama2_tiny"
MODEL_ARGS = f"pretrained={VL2},vision_tower={VL2}/siglip,dtype=float32,device=cpu"


def test_train_a_videollama2_policy_deploy_it_and_refuse_it_elsewhere(tmp_path):
    policy = tmp_path / "policy"
    trained = run(
        "fastav-eval", "train-policy", "--out", policy, "--model", "fastav_videollama2", "--model_args", MODEL_ARGS,
        "--tasks", "avsynth_qa", "--train-per-task", "4", "--val-per-task", "2", "--timesteps", "32",
        "--n-envs", "1", "--n-steps", "16", "--batch_size", "16", "--eval-every", "16", "--checkpoint-every", "16",
    )  # fmt: skip
    assert (policy / "policy.safetensors").is_file() and (policy / "policy.json").is_file(), tail(trained)
    meta = json.loads((policy / "policy.json").read_text())
    assert meta["model"] == "fastav_videollama2" and meta["training"]["timesteps"] == 32, meta
    assert meta["decoder"] == {"model_type": "qwen2", "num_layers": 4, "hidden_size": 64}, meta["decoder"]
    assert meta["coding"] == {"global_layer": 2, "hidden_size": 64, "projection_seed": 0}, meta["coding"]

    output = tmp_path / "results"
    result = run(
        "lmms-eval", "--model", "fastav_videollama2", "--model_args", f"{MODEL_ARGS},policy={policy}",
        "--tasks", "avsynth_qa", "--include_path", tasks_path(), "--limit", "4", "--output_path", output,
        "--log_samples",
    )  # fmt: skip
    results_file, report = results(output, result)
    assert "avsynth_qa" in report["results"], report["results"]
    assert 0 < report["throughput"]["avg_relative_flops"] < 100, report["throughput"]
    made = decisions(output, "*_samples_avsynth_qa.jsonl")
    assert len(made) == 4, made
    for decision in made:
        assert decision["by"] == "policy:policy" and decision["decided_at"] == 1, decision
        assert set(decision["action"]) == {"video_keep", "audio_keep", "cut_layer", "video_order", "audio_order",
                                           "fine_ratio"}, decision  # fmt: skip
    chooser = run_record(results_file)["pruning"]["chooser"]
    assert chooser["trained_on"] == "fastav_videollama2" and chooser["path"] == str(policy), chooser

    elsewhere = tmp_path / "elsewhere"
    refused = run(
        "lmms-eval", "--model", "fastav_tiny", "--model_args", f"policy={policy}", "--tasks", "avsynth_qa",
        "--include_path", tasks_path(), "--limit", "2", "--output_path", elsewhere,
    )  # fmt: skip
    assert not list(elsewhere.rglob("*_results.json")), tail(refused)
    assert f"policy {policy} was trained on fastav_videollama2" in printed(refused), tail(refused)
