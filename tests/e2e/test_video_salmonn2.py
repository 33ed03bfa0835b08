"""fastav_video_salmonn2 (the paper's setting by default: the first 4 frames at half depth, then P = 0.2) on the tiny
checkpoint the official video-SALMONN 2 code saved (tests/fixtures/video_salmonn2_tiny): lmms-eval's stock
``videomme`` and ``worldsense``, the paper's benchmarks from tiny releases in the official schemas (``fastav-eval
prepare-data``), and a learned policy trained with ``fastav-eval train-policy`` and deployed with ``policy=``."""

from __future__ import annotations

import json
import sys

import pytest

from tests.e2e.cli import REPO, decisions, prepared_paper_benchmarks, results, run, run_record, tail, tasks_path

pytestmark = pytest.mark.e2e

VS2 = REPO / "tests" / "fixtures" / "video_salmonn2_tiny"
MODEL_ARGS = (
    f"pretrained={VS2},whisper={VS2}/whisper,qformer_config={VS2}/bert-base-uncased,dtype=float32,device=cpu,"
    "on_error=record"
)
VISUAL_PER_FRAME = 182
GLOBAL_LAYER = 2  # half of the tiny LLM's 4 layers


def samples(output, task: str) -> list[dict]:
    return [json.loads(line) for path in output.rglob(f"*_samples_{task}.jsonl") for line in path.open()]


def check_frames_kept(sample: dict) -> None:
    """Every answered sample heard its clip, and the global stage kept exactly the first 4 frames' tokens."""
    counts = sample["token_counts"][0]
    assert "error" not in counts, counts
    video, audio = counts["video_tokens"], counts["audio_tokens"]
    assert video > 0 and video % VISUAL_PER_FRAME == 0 and audio > 0, counts
    frames = video // VISUAL_PER_FRAME
    kept = counts["kept_per_layer"]
    assert kept["video"][:GLOBAL_LAYER] == [video] * GLOBAL_LAYER, kept
    assert kept["video"][GLOBAL_LAYER] == min(frames, 4) * VISUAL_PER_FRAME, (frames, kept)
    assert 0 < counts["relative_flops"] < 100, counts


def test_stock_tasks(tmp_path):
    output = tmp_path / "results"
    result = run(
        sys.executable, "-m", "tests.lmms.av_cli", tmp_path, "--model", "fastav_video_salmonn2",
        "--model_args", f"{MODEL_ARGS},batch_size=2", "--tasks", "worldsense,videomme", "--limit", "3",
        "--gen_kwargs", "max_new_tokens=8", "--output_path", output, "--log_samples",
    )  # fmt: skip
    _, report = results(output, result)
    assert "worldsense_score,none" in report["results"]["worldsense"], report["results"]
    assert "videomme_perception_score,none" in report["results"]["videomme"], report["results"]
    for task in ("worldsense", "videomme"):
        answered = samples(output, task)
        assert len(answered) == 3, task
        for sample in answered:
            check_frames_kept(sample)


def test_paper_benchmarks_from_prepared_releases(tmp_path):
    data = prepared_paper_benchmarks(tmp_path)
    output = tmp_path / "paper"
    result = run(
        "lmms-eval", "--model", "fastav_video_salmonn2", "--model_args", MODEL_ARGS,
        "--tasks", "avhbench,music_avqa,avqa", "--include_path", tasks_path(), "--gen_kwargs", "max_new_tokens=8",
        "--output_path", output, "--log_samples", env=data,
    )  # fmt: skip
    _, report = results(output, result)
    metrics = {"avhbench_hallucination": "accuracy", "avhbench_match": "accuracy", "avhbench_caption": "cider",
               "music_avqa": "accuracy", "avqa": "accuracy"}  # fmt: skip
    for task, metric in metrics.items():
        table = report["groups"] if task in report.get("groups", {}) else report["results"]
        assert f"{metric},none" in table[task], (task, table[task])
    assert report["throughput"]["avg_failed"] == 0, report["throughput"]
    for task in ("avhbench_a2v", "avhbench_match", "avhbench_caption", "music_avqa", "avqa"):
        answered = samples(output, task)
        assert answered, task
        for sample in answered:
            check_frames_kept(sample)


def test_train_a_policy_and_deploy_it(tmp_path):
    policy = tmp_path / "policy"
    trained = run(
        "fastav-eval", "train-policy", "--out", policy, "--model", "fastav_video_salmonn2", "--model_args",
        MODEL_ARGS.replace(",on_error=record", ""), "--tasks", "avsynth_qa", "--train-per-task", "4",
        "--val-per-task", "2", "--timesteps", "32", "--n-envs", "1", "--n-steps", "16", "--batch_size", "16",
        "--eval-every", "16", "--checkpoint-every", "16",
    )  # fmt: skip
    assert (policy / "policy.safetensors").is_file() and (policy / "policy.json").is_file(), tail(trained)
    meta = json.loads((policy / "policy.json").read_text())
    assert meta["model"] == "fastav_video_salmonn2" and meta["training"]["timesteps"] == 32, meta
    assert meta["decoder"] == {"model_type": "qwen2", "num_layers": 4, "hidden_size": 64}, meta["decoder"]

    output = tmp_path / "results"
    result = run(
        "lmms-eval", "--model", "fastav_video_salmonn2", "--model_args", f"{MODEL_ARGS},policy={policy}",
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
    assert chooser["trained_on"] == "fastav_video_salmonn2" and chooser["path"] == str(policy), chooser
