"""A learned policy for ``fastav_qwen2_5_omni`` (a tiny random thinker saved like ``Qwen/Qwen2.5-Omni-7B``; the
processor built locally by tests/lmms/av_cli.py, as the stock video processor needs torchvision): a short
``fastav-eval train-policy --model fastav_qwen2_5_omni`` run on AV-Synth (its in-memory video and separate audio),
and its policy deployed through the lmms-eval CLI with every sample's decision in the samples file."""

from __future__ import annotations

import json
import sys

import pytest

from tests.e2e.cli import decisions, results, run, run_record, tail, tasks_path

pytestmark = pytest.mark.e2e


def test_train_an_omni_policy_and_deploy_it(tmp_path):
    model_args = f"pretrained={tmp_path}/checkpoint,dtype=float32,device=cpu"
    policy = tmp_path / "policy"
    trained = run(
        sys.executable, "-m", "tests.lmms.av_cli", tmp_path, "fastav-eval", "train-policy", "--out", policy,
        "--model", "fastav_qwen2_5_omni", "--model_args", model_args, "--tasks", "avsynth_qa,avsynth_caption",
        "--train-per-task", "3", "--val-per-task", "2", "--timesteps", "32", "--n-envs", "1", "--n-steps", "16",
        "--batch_size", "16", "--eval-every", "16", "--checkpoint-every", "16", "--budget", "retention",
    )  # fmt: skip
    assert (policy / "policy.safetensors").is_file() and (policy / "policy.json").is_file(), tail(trained)
    meta = json.loads((policy / "policy.json").read_text())
    assert meta["model"] == "fastav_qwen2_5_omni" and meta["training"]["timesteps"] == 32, meta
    assert meta["decoder"] == {"model_type": "qwen2_5_omni_text", "num_layers": 4, "hidden_size": 64}, meta["decoder"]
    assert meta["env_kwargs"]["budget"] == "retention", meta["env_kwargs"]

    output = tmp_path / "results"
    result = run(
        sys.executable, "-m", "tests.lmms.av_cli", tmp_path, "--model", "fastav_qwen2_5_omni", "--model_args",
        f"{model_args},policy={policy}", "--tasks", "avsynth_qa", "--include_path", tasks_path(), "--limit", "4",
        "--gen_kwargs", "max_new_tokens=4", "--output_path", output, "--log_samples",
    )  # fmt: skip
    results_file, report = results(output, result)
    assert "avsynth_qa" in report["results"], report["results"]
    throughput = report["throughput"]
    assert 0 < throughput["avg_relative_flops"] < 100 and throughput["avg_audio_tokens"] > 0, throughput
    made = decisions(output, "*_samples_avsynth_qa.jsonl")
    assert len(made) == 4, made
    for decision in made:
        assert decision["by"] == "policy:policy" and decision["decided_at"] == 1, decision
    chooser = run_record(results_file)["pruning"]["chooser"]
    assert chooser["trained_on"] == "fastav_qwen2_5_omni" and chooser["path"] == str(policy), chooser
