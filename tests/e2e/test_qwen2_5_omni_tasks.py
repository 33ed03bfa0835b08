"""``fastav_qwen2_5_omni`` through lmms-eval's CLI on its own AV tasks, untouched (tiny thinker, offline fixtures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")
pytestmark = pytest.mark.e2e  # lmms-eval CLI runs: with the end-to-end tests, out of the README test command

REPO = Path(__file__).resolve().parents[2]
TASKS = ("worldsense", "av_odyssey", "videomme", "vggsound")
METRICS = {"worldsense": "worldsense_score", "av_odyssey": "av_odyssey_score",
           "videomme": "videomme_perception_score", "vggsound": "acc"}  # fmt: skip


def run(
    root: Path, model_args: str, tasks: tuple[str, ...], model: str = "fastav_qwen2_5_omni"
) -> tuple[dict, dict[str, list[dict]], str]:
    """lmms-eval's CLI on the tiny ``model`` (an Omni registration of tests/lmms/av_cli.py) over ``tasks``: the
    results, each task's logged samples and the command's output."""
    output = root / "out"
    command = [sys.executable, "-m", "tests.lmms.av_cli", str(root), "--model", model,
               "--model_args", f"pretrained={root / 'checkpoint'},dtype=float32,device=cpu,{model_args}",
               "--tasks", ",".join(tasks), "--limit", "3", "--gen_kwargs", "max_new_tokens=4",
               "--output_path", str(output), "--log_samples"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    log = result.stdout + result.stderr
    files = list(output.rglob("*_results.json"))
    assert files, log[-4000:]
    samples = {
        task: [json.loads(line) for path in output.rglob(f"*_samples_{task}.jsonl") for line in path.open()]
        for task in tasks
    }
    return json.loads(files[0].read_text()), samples, log


def test_stock_av_tasks_run_with_the_soundtrack_fed(tmp_path):
    results, samples, _ = run(tmp_path, "video_audio=if_present,global_layer=2,audio_keep_chunks=1,batch_size=2", TASKS)
    for task in TASKS:
        assert f"{METRICS[task]},none" in results["results"][task], task
        assert len(samples[task]) == 3, task
    for task in ("worldsense", "videomme"):  # an mp4 path: frames and its AAC track, interleaved
        for sample in samples[task]:
            counts = sample["token_counts"][0]
            assert counts["video_tokens"] == 32 and counts["audio_tokens"] == 50, (task, counts)
    for sample in samples["vggsound"]:  # an audio dict alone
        assert sample["token_counts"][0]["video_tokens"] == 0 and sample["token_counts"][0]["audio_tokens"] == 25
    odyssey = [s["token_counts"][0] for s in samples["av_odyssey"]]  # wav files next to images or a silent video
    assert all(c["audio_tokens"] > 0 and c["video_tokens"] > 0 for c in odyssey)
    for task_samples in samples.values():
        for sample in task_samples:
            counts = sample["token_counts"][0]
            assert 1 <= counts["output_tokens"] <= 4, "generated tokens, not words"
            assert counts["relative_flops"] < 100 and counts["kept_per_layer"]["audio"][-1] < counts["audio_tokens"]
    throughput = results["throughput"]
    assert throughput["avg_failed"] == 0 and throughput["avg_relative_flops"] < 100 and throughput["avg_prefill_ms"] > 0


def test_a_silent_clip_fails_its_sample_with_the_reason(tmp_path):
    """AV-Odyssey's video documents come without a soundtrack: asked to hear every clip, that sample fails."""
    results, samples, log = run(tmp_path, "prune=none,on_error=record", ("av_odyssey",))
    failed = [s for s in samples["av_odyssey"] if "error" in s["token_counts"][0]]
    assert [s["doc_id"] for s in failed] == [1], "only the document with a video (docs 0 and 2: images and wavs)"
    assert "has no audio track" in failed[0]["token_counts"][0]["error"]
    assert "video_audio=if_present" in failed[0]["token_counts"][0]["error"]
    assert "recorded as failed (on_error=record)" in log
    assert results["throughput"]["avg_failed"] == pytest.approx(1 / 3)


def test_by_default_a_silent_clip_stops_the_run_naming_the_document(tmp_path):
    with pytest.raises(AssertionError) as failure:  # run() asserts that a results file exists
        run(tmp_path, "prune=none", ("av_odyssey",))
    log = str(failure.value)
    assert "av_odyssey doc 1: visual 0:" in log and "has no audio track" in log
    assert "on_error=record would record this sample as failed" in log
