"""Training (checkpoints, best on val, resume), saved policies (save / load, the refusal of another model's) and
the learned chooser against the environment it was trained in: the same observation gives the same action, and
the same action the same pruned pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fastav_eval.avsynth import build_documents
from fastav_eval.envs import TokenRetentionEnv
from fastav_eval.policies.chooser import LearnedChooser
from fastav_eval.policies.saved import META_FILE, MODEL_FILE, PolicyMeta, policy_hash, resolve_policy
from fastav_eval.policies.train import TrainSettings, train
from fastav_eval.pruning import PruningConfig, install
from fastav_eval.testbed import WEIGHTS_DIR, TestbedModel
from fastav_eval.testbed.evaluate import run_condition

TINY = {"tasks": ("avsynth_qa",), "train_per_task": 3, "val_per_task": 2, "n_envs": 1, "n_steps": 16,
        "batch_size": 8, "eval_every": 16, "checkpoint_every": 16}  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(TrainSettings(out=tmp_path_factory.mktemp("policy"), timesteps=32, **TINY))


def test_training_writes_the_policy_its_checkpoints_logs_and_curves(trained: Path) -> None:
    for name in (MODEL_FILE, META_FILE, "training_curves.png", "eval/evaluations.npz", "best/best_model.zip"):
        assert (trained / name).is_file(), name
    assert sorted(p.name for p in (trained / "checkpoints").glob("*.zip")) == [
        "policy_16_steps.zip", "policy_32_steps.zip",
    ]  # fmt: skip
    assert list((trained / "tensorboard").rglob("events.out.tfevents.*"))
    meta = PolicyMeta.load(trained)
    assert meta.env_id == "fastav/TokenRetention-v0" and meta.algorithm == "PPO"
    assert meta.decoder == {"model_type": "qwen2", "num_layers": 6, "hidden_size": 128}
    assert meta.env_kwargs["split"] == "train" and meta.training["timesteps"] == 32
    evaluations = np.load(trained / "eval" / "evaluations.npz")
    assert evaluations["timesteps"].tolist() == [16, 32]
    assert evaluations["results"].shape == (2, 2)  # each val document once per evaluation
    best = int(np.argmax(evaluations["results"].mean(1)))
    assert meta.training["best_at_timestep"] == [16, 32][best]


def test_resume_continues_an_interrupted_run(tmp_path: Path) -> None:
    interrupted = train(TrainSettings(out=tmp_path, timesteps=16, **TINY))
    checkpoint = interrupted / "checkpoints" / "policy_16_steps.zip"
    assert checkpoint.is_file()
    resumed = train(TrainSettings(out=tmp_path, timesteps=48, resume=checkpoint, **TINY))
    meta = PolicyMeta.load(resumed)
    assert meta.training["timesteps"] == 48 and meta.training["resumed_from"] == str(checkpoint)
    evaluations = np.load(resumed / "eval" / "evaluations.npz")
    assert evaluations["timesteps"].tolist() == [16, 32, 48]  # the evaluation before the interruption is kept
    names = sorted(p.name for p in (resumed / "checkpoints").glob("*.zip"))
    assert names == ["policy_16_steps.zip", "policy_32_steps.zip", "policy_48_steps.zip"]


def test_the_chooser_acts_as_the_policy_did_in_its_environment(trained: Path) -> None:
    """The oracle is the environment: its observation of each document, the saved model's action for it, and the
    pruned pass of that action, against the chooser deciding for a batch through the evaluation harness."""
    chooser = LearnedChooser(trained)
    env = TokenRetentionEnv(tasks="avsynth_qa", split="val", per_task=4)
    results = run_condition(TestbedModel.load(WEIGHTS_DIR), env.documents, "full", chooser.config(), batch_size=4)
    for index, result in enumerate(results):
        observation, _ = env.first_pass(index)
        action, _ = chooser.model.predict(observation, deterministic=True)
        outcome = env.outcome(index, action)
        assert result.record.decision["action"] == env.coding.describe(action)
        assert result.relative_flops == pytest.approx(outcome.relative_flops)
        assert {name: counts[-1] for name, counts in result.record.kept_per_layer.items()} == outcome.kept
    env.close()
    described = chooser.describe()
    assert described["sha256"] == policy_hash(trained) and described["path"] == str(trained)


def test_a_policy_for_another_model_is_refused(trained: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(trained, other)
    meta = json.loads((other / META_FILE).read_text())
    meta["decoder"]["num_layers"] = 4
    (other / META_FILE).write_text(json.dumps(meta))
    model = TestbedModel.load(WEIGHTS_DIR)
    with pytest.raises(ValueError, match=r"trained on fastav_tiny \(\{.*'num_layers': 4.*this decoder is"):
        install(model.decoder, LearnedChooser(other).config())
    with pytest.raises(
        ValueError, match=r"trained on samples with \['video', 'audio'\] tokens; these have \['video'\]"
    ):
        run_condition(model, build_documents("val", "avsynth_qa", 1), "no_audio", LearnedChooser(trained).config())


def test_policy_names_and_bad_files_are_named(trained: Path, tmp_path: Path) -> None:
    assert resolve_policy(trained / MODEL_FILE) == trained
    with pytest.raises(FileNotFoundError, match="accepted: a folder written by `fastav-eval train-policy`"):
        resolve_policy(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    shutil.copyfile(trained / MODEL_FILE, tmp_path / "bad" / MODEL_FILE)
    (tmp_path / "bad" / META_FILE).write_text(json.dumps({"format": "something/2"}))
    with pytest.raises(ValueError, match="not a FastAV policy"):
        PolicyMeta.load(tmp_path / "bad")


def test_a2c_and_an_exchange_policy_train_and_deploy(tmp_path: Path) -> None:
    """A2C in TokenRetention; PPO in TokenExchange, whose chooser refines FastAV's selection at FastAV's budget."""
    a2c = train(TrainSettings(out=tmp_path / "a2c", algorithm="A2C", timesteps=16, **TINY))
    assert PolicyMeta.load(a2c).algorithm == "A2C"
    exchange = train(TrainSettings(out=tmp_path / "exchange", env="exchange", timesteps=32, **TINY))
    chooser = LearnedChooser(exchange)
    model = TestbedModel.load(WEIGHTS_DIR)
    documents = build_documents("val", "avsynth_qa", 3)
    refined = run_condition(model, documents, "full", chooser.config())
    fastav = run_condition(model, documents, "full", PruningConfig(profile=chooser.profile, fine_ratio=0.2))
    for mine, theirs in zip(refined, fastav, strict=True):
        steps = mine.record.decision["swap_steps"]
        assert 0 <= steps <= chooser.coding.max_swaps
        assert mine.relative_flops == pytest.approx(theirs.relative_flops)  # swaps keep FastAV's token count
        assert sum(counts[-1] for counts in mine.record.kept_per_layer.values()) == sum(
            counts[-1] for counts in theirs.record.kept_per_layer.values()
        )


def test_bad_training_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"algorithm='DQN'; accepted: \['PPO', 'A2C'\]"):
        TrainSettings(out=tmp_path, algorithm="DQN")
    with pytest.raises(ValueError, match="env='bandit'"):
        TrainSettings(out=tmp_path, env="bandit")
