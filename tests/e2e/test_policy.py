"""README: a learned policy. A short training run of the README's command (the shipped policy took 24,576 steps)
evaluated through lmms-eval, then the shipped policy through the lmms-eval CLI."""

from __future__ import annotations

import pytest

from tests.e2e.cli import results, run, tail, tasks_path
from tests.e2e.runs import shipped_policy

pytestmark = pytest.mark.e2e


def test_train_policy_then_evaluate_it(tmp_path):
    policy = tmp_path / "policy"
    trained = run(
        "fastav-eval", "train-policy", "--out", policy, "--timesteps", "512", "--train-per-task", "16",
        "--val-per-task", "4", "--eval-every", "256", "--checkpoint-every", "256",
    )  # fmt: skip
    assert (policy / "policy.safetensors").is_file() and (policy / "policy.json").is_file(), tail(trained)
    assert not (policy / "policy.zip").exists(), "train-policy left an SB3 zip next to the exported policy"
    assert (policy / "training_curves.png").is_file(), tail(trained)
    output = tmp_path / "results-trained"
    result = run(
        "lmms-eval", "--model", "fastav_tiny", "--model_args", f"policy={policy},batch_size=8", "--tasks", "avsynth_qa",
        "--include_path", tasks_path(), "--output_path", output, "--limit", "4",
    )  # fmt: skip
    results(output, result)


def test_shipped_policy(tmp_path):
    shipped_policy(tmp_path / "results-policy")
