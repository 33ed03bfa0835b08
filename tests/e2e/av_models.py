"""The end-to-end runs every audio-visual model registration goes through (video-SALMONN 2 and 2+): lmms-eval's
stock ``worldsense`` and ``videomme``, the paper's benchmarks from tiny prepared releases through lmms-eval's CLI,
and a policy trained with ``fastav-eval train-policy`` then deployed with ``policy=``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from tests.e2e.cli import decisions, prepared_paper_benchmarks, results, run, run_record, tail, tasks_path

PAPER_METRICS = {"avhbench_hallucination": "accuracy", "avhbench_match": "accuracy", "avhbench_caption": "cider",
                 "music_avqa": "accuracy", "avqa": "accuracy"}  # fmt: skip
PAPER_SAMPLE_TASKS = ("avhbench_a2v", "avhbench_match", "avhbench_caption", "music_avqa", "avqa")


def samples(output: Path, task: str) -> list[dict]:
    return [json.loads(line) for path in output.rglob(f"*_samples_{task}.jsonl") for line in path.open()]


def stock_tasks(tmp_path: Path, model: str, model_args: str, check_sample: Callable[[dict], None]) -> None:
    """lmms-eval's own ``worldsense`` and ``videomme`` (3 generated samples each, batches of 2): both scores
    reported, and ``check_sample`` holds for every logged sample."""
    output = tmp_path / "results"
    result = run(
        sys.executable, "-m", "tests.lmms.av_cli", tmp_path, "--model", model, "--model_args",
        f"{model_args},batch_size=2", "--tasks", "worldsense,videomme", "--limit", "3",
        "--gen_kwargs", "max_new_tokens=8", "--output_path", output, "--log_samples",
    )  # fmt: skip
    _, report = results(output, result)
    assert "worldsense_score,none" in report["results"]["worldsense"], report["results"]
    assert "videomme_perception_score,none" in report["results"]["videomme"], report["results"]
    for task in ("worldsense", "videomme"):
        answered = samples(output, task)
        assert len(answered) == 3, task
        for sample in answered:
            check_sample(sample)


def paper_benchmarks(tmp_path: Path, model: str, model_args: str, check_sample: Callable[[dict], None]) -> None:
    """``avhbench,music_avqa,avqa`` on tiny prepared releases: every metric reported, no sample failed, and
    ``check_sample`` holds for every logged sample."""
    data = prepared_paper_benchmarks(tmp_path)
    output = tmp_path / "paper"
    result = run(
        "lmms-eval", "--model", model, "--model_args", model_args, "--tasks", "avhbench,music_avqa,avqa",
        "--include_path", tasks_path(), "--gen_kwargs", "max_new_tokens=8", "--output_path", output, "--log_samples",
        env=data,
    )  # fmt: skip
    _, report = results(output, result)
    for task, metric in PAPER_METRICS.items():
        table = report["groups"] if task in report.get("groups", {}) else report["results"]
        assert f"{metric},none" in table[task], (task, table[task])
    assert report["throughput"]["avg_failed"] == 0, report["throughput"]
    for task in PAPER_SAMPLE_TASKS:
        answered = samples(output, task)
        assert answered, task
        for sample in answered:
            check_sample(sample)


def train_and_deploy_policy(tmp_path: Path, model: str, model_args: str, decoder: dict) -> None:
    """A 32-step policy trained on ``avsynth_qa``, then deployed with ``policy=`` on 4 samples: each decision is the
    policy's, and the run record names what it was trained on. ``decoder`` is the policy file's expected decoder."""
    policy = tmp_path / "policy"
    trained = run(
        "fastav-eval", "train-policy", "--out", policy, "--model", model, "--model_args", model_args,
        "--tasks", "avsynth_qa", "--train-per-task", "4", "--val-per-task", "2", "--timesteps", "32", "--n-envs", "1",
        "--n-steps", "16", "--batch_size", "16", "--eval-every", "16", "--checkpoint-every", "16",
    )  # fmt: skip
    assert (policy / "policy.safetensors").is_file() and (policy / "policy.json").is_file(), tail(trained)
    meta = json.loads((policy / "policy.json").read_text())
    assert meta["model"] == model and meta["training"]["timesteps"] == 32, meta
    assert meta["decoder"] == decoder, meta["decoder"]

    output = tmp_path / "results"
    result = run(
        "lmms-eval", "--model", model, "--model_args", f"{model_args},on_error=record,policy={policy}",
        "--tasks", "avsynth_qa", "--include_path", tasks_path(), "--limit", "4", "--output_path", output,
        "--log_samples",
    )  # fmt: skip
    results_file, report = results(output, result)
    assert 0 < report["throughput"]["avg_relative_flops"] < 100, report["throughput"]
    made = decisions(output, "*_samples_avsynth_qa.jsonl")
    assert len(made) == 4, made
    for decision in made:
        assert decision["by"] == "policy:policy", decision
    chooser = run_record(results_file)["pruning"]["chooser"]
    assert chooser["trained_on"] == model and chooser["path"] == str(policy), chooser
