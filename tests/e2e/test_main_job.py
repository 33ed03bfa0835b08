"""The README's FLOPs command, main job and hand-written rule through the real CLIs."""

from __future__ import annotations

import json
import sys

import pytest

from tests.e2e.cli import decisions, results, run, tasks_path
from tests.e2e.runs import main_job

pytestmark = pytest.mark.e2e


def test_flops_reproduces_the_papers_table_4_default():
    result = run("fastav-eval", "flops", "--preset", "videollama2", "--fine-ratio", "0.2")
    flops = json.loads(result.stdout)["relative_flops"]
    assert abs(flops - 56) <= 1.5, f"relative_flops {flops} is not within 56 +- 1.5"


def test_main_job(tmp_path):
    main_job(tmp_path / "results")


def test_rule_records_every_decision_under_a_third_of_the_flops(tmp_path):
    output = tmp_path / "results-rule"
    result = run(
        "lmms-eval", "--model", "fastav_tiny", "--model_args", "prune=rule:avsynth_senses,batch_size=8",
        "--tasks", "avsynth", "--include_path", tasks_path(), "--output_path", output, "--log_samples", "--limit", "8",
    )  # fmt: skip
    _, report = results(output, result)
    flops = report["throughput"]["avg_relative_flops"]
    assert flops < 34, f"rule:avsynth_senses avg_relative_flops {flops}"
    chosen = decisions(output, "*_samples_*.jsonl")
    assert len(chosen) == 32 and all(d["by"] == "rule:avsynth_senses" and d["kind"] for d in chosen), chosen[:2]


def test_two_processes_shard_every_document_once(tmp_path):
    """Two CPU processes (gloo) through lmms-eval's rank sharding."""
    output = tmp_path / "two-processes"
    result = run(
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "lmms_eval",
        "--model", "fastav_tiny", "--model_args", "device=cpu,prune=fastav", "--tasks", "avsynth_qa",
        "--include_path", tasks_path(), "--limit", "5", "--output_path", output, "--log_samples",
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    results(output, result)
    samples = [json.loads(line) for path in output.rglob("*_samples_avsynth_qa.jsonl") for line in path.open()]
    doc_ids = [sample["doc_id"] for sample in samples]
    assert sorted(doc_ids) == list(range(5)), f"{doc_ids}\n{result.stdout[-3000:]}"
