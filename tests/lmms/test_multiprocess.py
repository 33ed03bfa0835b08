"""Two CPU processes (gloo) through lmms-eval's rank sharding: the merged results equal a single process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastav_eval.resources import tasks_path

pytest.importorskip("lmms_eval")

LIMIT = 5  # odd: rank 1 runs a padding clone of its last request, which must not count


def run(output: Path, processes: int) -> tuple[dict, list[dict]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "lmms_eval", "--model", "fastav_tiny",
               "--model_args", "device=cpu,prune=fastav", "--tasks", "avsynth_qa", "--include_path", str(tasks_path()),
               "--limit", str(LIMIT), "--output_path", str(output), "--log_samples"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    files = list(output.rglob("*_results.json"))
    assert files, result.stdout[-3000:] + result.stderr[-3000:]
    samples = [json.loads(line) for path in output.rglob("*_samples_avsynth_qa.jsonl") for line in path.open()]
    return json.loads(files[0].read_text()), samples


def test_two_processes_merge_to_the_single_process_results(tmp_path):
    single, single_samples = run(tmp_path / "one", 1)
    merged, merged_samples = run(tmp_path / "two", 2)
    doc_ids = [sample["doc_id"] for sample in merged_samples]
    assert sorted(doc_ids) == list(range(LIMIT)), "every document once, none twice"
    assert merged["results"]["avsynth_qa"]["accuracy,none"] == single["results"]["avsynth_qa"]["accuracy,none"]
    by_doc = {sample["doc_id"]: sample for sample in single_samples}
    for sample in merged_samples:
        assert sample["filtered_resps"] == by_doc[sample["doc_id"]]["filtered_resps"]
        assert (
            sample["token_counts"][0]["relative_flops"] == by_doc[sample["doc_id"]]["token_counts"][0]["relative_flops"]
        )
    for key in ("avg_relative_flops", "avg_relative_flops_exact", "avg_video_kept_mean", "avg_audio_kept_mean"):
        assert merged["throughput"][key] == pytest.approx(single["throughput"][key], rel=1e-9), key
    assert merged["throughput"]["total_gen_tokens"] == single["throughput"]["total_gen_tokens"]
