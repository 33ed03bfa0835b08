"""The README's main job and the shipped policy through lmms-eval, with their checks: the editable install's e2e tests
and the regular (non-editable) install's (test_installed.py) run the same commands and assert the same."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.cli import REPO, decisions, is_number, results, run, run_record, tasks_path


def main_job(output: Path, cwd: Path = REPO) -> None:
    """README's main job on 8 samples per task: accuracy for the AV-Synth tasks, a pruned run's FLOPs, the record."""
    result = run(
        "lmms-eval", "--model", "fastav_tiny", "--model_args", "prune=fastav", "--tasks", "avsynth",
        "--include_path", tasks_path(cwd), "--output_path", output, "--log_samples", "--limit", "8", cwd=cwd,
    )  # fmt: skip
    results_file, report = results(output, result)
    for task in ("avsynth_match", "avsynth_halluc", "avsynth_qa"):
        assert is_number(report["results"][task]["accuracy,none"]), (task, report["results"][task])
    assert is_number(report["results"]["avsynth_caption"]["cider,none"]), report["results"]["avsynth_caption"]
    flops = report["throughput"]["avg_relative_flops"]
    assert 0 < flops < 100, f"avg_relative_flops {flops} is not a pruned run's"
    record = run_record(results_file)
    assert report["model_name"] and record["format"] == "fastav-run/1", record
    assert record["pruning"]["global_layer"] == 3, record["pruning"]
    assert record["tasks"]["avsynth_qa"]["n"] == 8 and record["versions"]["lmms_eval"], record["tasks"]
    assert record["use_kernels"] is False, "the run record must state that no hub kernels were swapped in"
    assert len(record["pruning_hash"]) == 64, record.get("pruning_hash")


def shipped_policy(output: Path, cwd: Path = REPO) -> None:
    """The shipped policy through lmms-eval: every sample's decision (the policy's action) in the samples files, its
    path and hash in the run record, under a third of the unpruned prefill."""
    result = run(
        "lmms-eval", "--model", "fastav_tiny", "--model_args", "policy=fastav_tiny_retention,batch_size=8",
        "--tasks", "avsynth", "--include_path", tasks_path(cwd), "--output_path", output, "--log_samples",
        "--limit", "8", cwd=cwd,
    )  # fmt: skip
    results_file, report = results(output, result)
    flops = report["throughput"]["avg_relative_flops"]
    assert flops < 32, f"policy=fastav_tiny_retention: avg_relative_flops {flops} is not under a third"
    chosen = decisions(output, "*_samples_avsynth_*.jsonl")
    assert len(chosen) == 32, chosen[:2]
    assert all(d["by"] == "policy:fastav_tiny_retention" and "action" in d for d in chosen), chosen[:2]
    record = run_record(results_file)
    chooser = record["pruning"]["chooser"]
    assert record["prune"] == "policy" and len(chooser["sha256"]) == 64, record["pruning"]
