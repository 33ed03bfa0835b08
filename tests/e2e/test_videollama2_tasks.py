"""``fastav_videollama2`` through lmms-eval's CLI on the stock AV tasks of part 1, untouched (the tiny checkpoint the
official code saved, offline fixtures in the tasks' schemas), with the paper's pruning as the default."""

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
FIXTURE = REPO / "tests" / "fixtures" / "videollama2_tiny"
TASKS = ("worldsense", "av_odyssey", "videomme", "vggsound")
METRICS = {"worldsense": "worldsense_score", "av_odyssey": "av_odyssey_score",
           "videomme": "videomme_perception_score", "vggsound": "acc"}  # fmt: skip


def test_stock_av_tasks_run_with_the_papers_setting(tmp_path):
    output = tmp_path / "out"
    model_args = f"pretrained={FIXTURE},vision_tower={FIXTURE / 'siglip'},dtype=float32,device=cpu,on_error=record"
    command = [sys.executable, "-m", "tests.lmms.av_cli", str(tmp_path), "--model", "fastav_videollama2",
               "--model_args", model_args, "--tasks", ",".join(TASKS), "--limit", "3",
               "--gen_kwargs", "max_new_tokens=4", "--output_path", str(output), "--log_samples"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    files = list(output.rglob("*_results.json"))
    assert files, (result.stdout + result.stderr)[-4000:]
    results = json.loads(files[0].read_text())
    samples = {
        task: [json.loads(line) for path in output.rglob(f"*_samples_{task}.jsonl") for line in path.open()]
        for task in TASKS
    }
    for task in TASKS:
        assert f"{METRICS[task]},none" in results["results"][task], task
        assert len(samples[task]) == 3, task
    for task in ("worldsense", "videomme"):  # an mp4 with its AAC track: 4 frames -> 18 tokens, 30 s -> 1,496
        for sample in samples[task]:
            counts = sample["token_counts"][0]
            assert counts["video_tokens"] == 18 and counts["audio_tokens"] == 1496, (task, counts)
            assert counts["kept_per_layer"]["audio"][:3] == [1496, 1496, 10], counts  # the paper's global stage
            assert counts["kept_per_layer"]["video"][2] == 18 and counts["relative_flops"] < 100
    for sample in samples["vggsound"]:  # an audio dict alone
        counts = sample["token_counts"][0]
        assert counts["video_tokens"] == 0 and counts["audio_tokens"] == 1496, counts
    # AV-Odyssey's questions hold several images / audios; VideoLLaMA2 takes one of each per prompt, so such a
    # sample is recorded as failed with the reason (on_error=record), and one with a single pair is answered.
    for counts in (sample["token_counts"][0] for sample in samples["av_odyssey"]):
        if "error" in counts:
            assert "VideoLLaMA2 takes one" in counts["error"], counts
        else:
            assert counts["audio_tokens"] == 1496 and counts["video_tokens"] == 18, counts
    throughput = results["throughput"]
    assert throughput["avg_relative_flops"] < 100 and throughput["avg_prefill_ms"] > 0
