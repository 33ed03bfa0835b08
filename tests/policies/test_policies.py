"""Training (checkpoints, best on val, resume), saved policies (safetensors + JSON: save / load, bit-identical to
SB3's own ``predict``, the refusal of another model's), the learned chooser against the environment it was trained
in, and ``train-policy``'s refusals through the real CLI. Planted payloads and malformed policies: test_safety.py."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import fastav_eval.policies.train as train_module
from fastav_eval.analysis.testbed_runs import run_condition
from fastav_eval.avsynth import build_documents
from fastav_eval.cli import main
from fastav_eval.envs import TokenRetentionEnv
from fastav_eval.policies.chooser import LearnedChooser
from fastav_eval.policies.saved import (
    FORMAT,
    LEGACY_FILE,
    META_FILE,
    MODEL_FILE,
    PolicyMeta,
    policy_hash,
    resolve_policy,
)
from fastav_eval.policies.train import TrainSettings, check_output, train
from fastav_eval.pruning import PruningConfig, install
from fastav_eval.testbed import WEIGHTS_DIR, TestbedModel

TINY = {"tasks": ("avsynth_qa",), "train_per_task": 3, "val_per_task": 2, "n_envs": 1, "n_steps": 16,
        "batch_size": 8, "eval_every": 16, "checkpoint_every": 16}  # fmt: skip


def tiny_cli(**changes: str) -> list[str]:
    """TINY as train-policy's options (``val_per_task="3"`` changes one)."""
    values = {**{name: str(value) for name, value in TINY.items() if name != "tasks"}, "tasks": "avsynth_qa", **changes}
    flags = {name: f"--{name}" if name in UNDERSCORED else f"--{name.replace('_', '-')}" for name in values}
    return [item for name, value in values.items() for item in (flags[name], value)]


UNDERSCORED = ("batch_size", "model_args")
"""train-policy's options spelled as in every command (``--batch_size``, ``--model_args``), not with dashes."""


TINY_CLI = tiny_cli()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32-step PPO run through the real CLI (``fastav-eval train-policy``)."""
    out = tmp_path_factory.mktemp("policy")
    assert main(["train-policy", "--out", str(out), "--timesteps", "32", *TINY_CLI]) == 0
    return out


def sb3_observations(count: int = 512, seed: int = 0) -> np.ndarray:
    """``[count + 4, 38]``: the val observations of 4 AV-Synth documents, then ``count`` uniform in the box."""
    env = TokenRetentionEnv(tasks="avsynth_qa", split="val", per_task=4)
    seen = [env.first_pass(index)[0] for index in range(4)]
    env.close()
    box = np.random.default_rng(seed).uniform(-10, 10, size=(count, seen[0].shape[0])).astype(np.float32)
    return np.concatenate([np.stack(seen), box])


def test_training_writes_the_policy_its_checkpoints_logs_and_curves(trained: Path) -> None:
    for name in (MODEL_FILE, META_FILE, "training_curves.png", "eval/evaluations.npz", "eval/val_set.json",
                 "best/policy.safetensors"):  # fmt: skip
        assert (trained / name).is_file(), name
    assert not (trained / LEGACY_FILE).exists() and not (trained / "best" / "best_model.zip").exists()
    assert sorted(p.name for p in (trained / "checkpoints").glob("*.zip")) == [
        "policy_16_steps.zip", "policy_32_steps.zip",
    ]  # fmt: skip
    assert list((trained / "tensorboard").rglob("events.out.tfevents.*"))
    meta = PolicyMeta.load(trained)
    assert meta.format == FORMAT == "fastav-policy/2"
    assert meta.env_id == "fastav/TokenRetention-v0" and meta.algorithm == "PPO"
    assert meta.decoder == {"model_type": "qwen2", "num_layers": 6, "hidden_size": 128}
    assert meta.network["net_arch"] == [64, 64]  # as train-policy builds it: policy_kwargs={"net_arch": [64, 64]}
    assert meta.network["activation"] == "Tanh" and meta.network["action_space"]["nvec"] == [5, 5, 3, 3, 3, 3]
    assert meta.env_kwargs["split"] == "train" and meta.training["timesteps"] == 32
    evaluations = np.load(trained / "eval" / "evaluations.npz")
    assert evaluations["timesteps"].tolist() == [16, 32]
    assert evaluations["results"].shape == (2, 2)  # each val document once per evaluation
    best = int(np.argmax(evaluations["results"].mean(1)))
    assert meta.training["best_at_timestep"] == [16, 32][best]
    assert (trained / MODEL_FILE).read_bytes() == (trained / "best" / MODEL_FILE).read_bytes()


def test_the_saved_policy_acts_bit_identically_to_sb3s_own_predict(trained: Path, tmp_path: Path) -> None:
    """Oracle: SB3's own model (a checkpoint of the run, loaded by SB3) and its ``predict(deterministic=True)``;
    saved as safetensors + JSON and rebuilt by the chooser, it must hold the same weights and give the same actions,
    bit for bit, on real observations and on random ones across the observation box."""
    from stable_baselines3 import PPO

    from fastav_eval.policies.network import describe_network
    from fastav_eval.policies.saved import save_policy

    oracle = PPO.load(str(trained / "checkpoints" / "policy_16_steps.zip"), device="cpu")
    meta = dataclasses.replace(PolicyMeta.load(trained), network=describe_network(oracle.policy))
    chooser = LearnedChooser(save_policy(tmp_path / "saved", oracle.policy, meta))
    theirs, mine = oracle.policy.state_dict(), chooser.model.state_dict()
    assert sorted(theirs) == sorted(mine) and all(torch.equal(theirs[name], mine[name]) for name in theirs)
    observations = sb3_observations()
    expected, _ = oracle.predict(observations, deterministic=True)
    actual, _ = chooser.model.predict(observations, deterministic=True)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape == (len(observations), 6)
    np.testing.assert_array_equal(actual, expected)
    assert len({tuple(row) for row in expected.tolist()}) > 1  # the probes reach more than one action
    single, _ = oracle.predict(observations[0], deterministic=True)
    np.testing.assert_array_equal(chooser.model.predict(observations[0], deterministic=True)[0], single)


def test_the_saved_best_policy_scores_on_val_what_training_recorded(trained: Path) -> None:
    """Oracle: the val reward SB3's EvalCallback recorded for the best evaluation; the saved policy, evaluated again
    by SB3's ``evaluate_policy`` on the same val documents, must score exactly that."""
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    meta = PolicyMeta.load(trained)
    kwargs = {**meta.env_kwargs, "split": "val", "per_task": meta.env_kwargs["val_per_task"], "order": "cycle"}
    del kwargs["val_per_task"]
    env = DummyVecEnv([lambda: Monitor(TokenRetentionEnv(**kwargs))])  # as in training (Monitor rounds rewards)
    rewards, _ = evaluate_policy(LearnedChooser(trained).model, env, 2, deterministic=True, return_episode_rewards=True)
    env.close()
    assert float(np.mean(rewards)) == meta.training["best_val_reward"]


def test_loading_a_policy_leaves_torchs_random_state_alone(trained: Path) -> None:
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    LearnedChooser(trained)
    assert torch.equal(torch.rand(4), expected)


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
    best = int(np.argmax(evaluations["results"].mean(1)))
    assert meta.training["best_at_timestep"] == [16, 32, 48][best]
    from stable_baselines3 import PPO

    oracle = PPO.load(str(resumed / "checkpoints" / f"policy_{[16, 32, 48][best]}_steps.zip"), device="cpu")
    chooser = LearnedChooser(resumed)  # the best of both parts of the run, whichever part it came from
    assert all(torch.equal(oracle.policy.state_dict()[k], v) for k, v in chooser.model.state_dict().items())


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


def test_the_hash_covers_both_files(trained: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    before = policy_hash(copy)
    meta = json.loads((copy / META_FILE).read_text())
    meta["training"]["seed"] = 1
    (copy / META_FILE).write_text(json.dumps(meta))
    edited_meta = policy_hash(copy)
    weights = bytearray((copy / MODEL_FILE).read_bytes())
    weights[-1] ^= 1
    (copy / MODEL_FILE).write_bytes(bytes(weights))
    assert len({before, edited_meta, policy_hash(copy)}) == 3


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
    assert resolve_policy(trained / MODEL_FILE) == trained == resolve_policy(trained / META_FILE)
    with pytest.raises(FileNotFoundError, match="accepted: a folder written by `fastav-eval train-policy`"):
        resolve_policy(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    shutil.copyfile(trained / MODEL_FILE, tmp_path / "bad" / MODEL_FILE)
    (tmp_path / "bad" / META_FILE).write_text(json.dumps({"format": "something/2"}))
    with pytest.raises(ValueError, match=r"not a FastAV policy \(format='something/2'; accepted: 'fastav-policy/2'"):
        PolicyMeta.load(tmp_path / "bad")


def test_a2c_and_an_exchange_policy_train_and_deploy(tmp_path: Path) -> None:
    """A2C in TokenRetention; PPO in TokenExchange, whose chooser refines FastAV's selection at FastAV's budget."""
    a2c = train(TrainSettings(out=tmp_path / "a2c", algorithm="A2C", timesteps=16, **TINY))
    assert PolicyMeta.load(a2c).algorithm == "A2C" and PolicyMeta.load(a2c).training["batch_size"] is None
    exchange = train(TrainSettings(out=tmp_path / "exchange", env="exchange", timesteps=32, **TINY))
    chooser = LearnedChooser(exchange)
    assert PolicyMeta.load(exchange).network["action_space"]["type"] == "Discrete"
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
    with pytest.raises(ValueError, match=r"entropy=-0\.1; accepted: a number >= 0"):
        TrainSettings(out=tmp_path, entropy=-0.1)
    with pytest.raises(ValueError, match="flops_weight=-1; accepted: a number >= 0"):
        TrainSettings(out=tmp_path, flops_weight=-1)
    TrainSettings(out=tmp_path, algorithm="A2C", batch_size=100_000)  # A2C has no minibatches: unused


# ---------------------------------------------------------------------------------------------- train-policy's CLI
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--learning-rate", "0"], "learning_rate=0.0; accepted: a number > 0"),
        (["--learning-rate=-1e-3"], "learning_rate=-0.001; accepted: a number > 0"),
        (["--batch_size", "600"], r"batch_size=600; accepted: an int in 2\.\.512 for PPO .* 256 \* 2 = 512"),
        (["--batch_size", "64", "--n-steps", "16", "--n-envs", "2"], r"batch_size=64; accepted: an int in 2\.\.32"),
        (["--train-per-task", "100001"], r"train_per_task=100001; accepted: an int in 1\.\.100000"),
        (["--val-per-task", "0"], r"val_per_task=0; accepted: an int in 1\.\.100000"),
    ],
)
def test_train_policy_refuses_settings_it_cannot_honour(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["train-policy", "--out", str(tmp_path / "run"), *argv]) == 2
    assert not (tmp_path / "run").exists()  # refused before anything was written
    assert re.search(message, capsys.readouterr().err), message


def test_train_policy_takes_comma_separated_tasks_like_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastav_eval.cli import build_parser

    args = build_parser().parse_args(["train-policy", "--out", str(tmp_path), "--tasks", "avsynth_qa,avsynth_match"])
    assert args.tasks == ("avsynth_qa", "avsynth_match")
    for bad in ("avsynth_qa,avsynth_foo", "avsynth_qa,avsynth_qa", ""):
        with pytest.raises(SystemExit):
            main(["train-policy", "--out", str(tmp_path / "run"), "--tasks", bad])
        assert f"--tasks {bad!r}; accepted: comma-separated AV-Synth tasks" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_policy_refuses_a_non_empty_out_unless_resumed(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = {path: path.stat().st_mtime_ns for path in run.rglob("*")}
    assert main(["train-policy", "--out", str(run), "--timesteps", "32", *TINY_CLI]) == 2
    error = capsys.readouterr().err
    assert f"--out={str(run)!r} is not empty" in error and "accepted: a new or empty folder, or --resume" in error
    assert {path: path.stat().st_mtime_ns for path in run.rglob("*")} == before  # nothing touched
    (tmp_path / "file").write_text("x")
    assert main(["train-policy", "--out", str(tmp_path / "file")]) == 2
    assert "is a file; accepted: a new or empty folder" in capsys.readouterr().err


def test_train_policy_resume_refusals_name_the_option(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    missing = run / "checkpoints" / "policy_99_steps.zip"
    assert main(["train-policy", "--out", str(run), "--resume", str(missing), *TINY_CLI]) == 2
    assert f"--resume={str(missing)!r}: no such file; accepted: a checkpoint zip" in capsys.readouterr().err
    checkpoint = str(run / "checkpoints" / "policy_16_steps.zip")
    assert main(["train-policy", "--out", str(run), "--resume", checkpoint, "--algorithm", "A2C", *TINY_CLI]) == 2
    assert f"algorithm='A2C'; accepted: 'PPO', the algorithm of the --resume checkpoint {checkpoint!r}" in (
        capsys.readouterr().err
    )
    assert main(["train-policy", "--out", str(run), "--resume", str(run / META_FILE), *TINY_CLI]) == 2
    assert "not a Stable-Baselines3 checkpoint" in capsys.readouterr().err
    other_val = tiny_cli(val_per_task="3")
    assert main(["train-policy", "--out", str(run), "--resume", checkpoint, "--timesteps", "48", *other_val]) == 2
    error = capsys.readouterr().err
    assert "were made on another val set: per_task=2 there, 3 now" in error
    (run / "eval" / "val_set.json").unlink()  # a run from before val_set.json: its episode count still tells
    assert main(["train-policy", "--out", str(run), "--resume", checkpoint, "--timesteps", "48", *other_val]) == 2
    assert "hold 2 episodes each, this val set 3 documents" in capsys.readouterr().err
    shutil.copyfile(trained / "eval" / "val_set.json", run / "eval" / "val_set.json")
    args = ["train-policy", "--out", str(run), "--resume", checkpoint, *TINY_CLI]
    assert main([*args, "--timesteps", "48", "--learning-rate", "0.001"]) == 2
    assert "given: learning_rate=0.001 (the checkpoint: 0.0003)" in capsys.readouterr().err
    assert main([*args, "--timesteps", "16"]) == 2
    assert "timesteps=16; accepted: more than the 16 steps the checkpoint" in capsys.readouterr().err


def test_train_policy_spells_model_args_as_every_command_and_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from fastav_eval.cli import build_parser

    parsed = build_parser().parse_args(["train-policy", "--out", "x", "--model_args", "dtype=float32"])
    assert parsed.model_args == "dtype=float32"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-policy", "--out", "x", "--model-args", "dtype=float32"])
    assert "unrecognized arguments: --model-args" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train-policy", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 240)", "(default: 60)", "(default: 0.0003)", "(default: PPO)", "(default: 128)"):
        assert default in shown, default


class Stop(Exception):
    """Raised by a stand-in for a piece of train-policy, to fail a run at that point."""


@pytest.mark.parametrize(
    ("layout", "failure"),
    [("new", ValueError("no model for you")), ("new nested", KeyboardInterrupt()), ("empty", ValueError("no model"))],
)
def test_a_run_failing_before_its_first_checkpoint_leaves_out_as_it_found_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], layout: str,
    failure: BaseException,
) -> None:  # fmt: skip
    """The environments are built and the output folders written before the model: a failure (or Ctrl-C) there
    must not leave an ``--out`` that the same command then refuses as not empty, with nothing to resume."""
    out = {"new": tmp_path / "run", "new nested": tmp_path / "a" / "b" / "run", "empty": tmp_path / "empty"}[layout]
    if layout == "empty":
        out.mkdir()
    seen = {}

    def failing_build(settings: TrainSettings, train_env: object, tensorboard: str) -> None:
        seen["held"] = sorted(path.name for path in out.iterdir())  # the run had written its folders by now
        raise failure

    monkeypatch.setattr(train_module, "_build_model", failing_build)
    argv = ["train-policy", "--out", str(out), "--timesteps", "32", *TINY_CLI]
    if isinstance(failure, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            main(argv)
    else:
        assert main(argv) == 2
        assert "no model" in capsys.readouterr().err
    assert {"checkpoints", "eval", "monitor"} <= set(seen["held"])
    if layout == "empty":
        assert out.is_dir() and not any(out.iterdir())
    else:
        assert not out.exists() and not (tmp_path / "a").exists()
    check_output(TrainSettings(out=out, timesteps=32, **TINY))  # the same command is accepted again


def test_a_run_failing_after_a_checkpoint_keeps_it_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_curves(out: Path) -> None:
        raise Stop("after the checkpoints")

    monkeypatch.setattr(train_module, "write_curves", failing_curves)
    with pytest.raises(Stop):
        train(TrainSettings(out=tmp_path / "run", timesteps=16, **TINY))
    assert (tmp_path / "run" / "checkpoints" / "policy_16_steps.zip").is_file()


def test_resuming_from_an_earlier_checkpoint_drops_the_later_evaluations(
    trained: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``trained`` evaluated at 16 and 32; resumed from 16, the evaluation at 32 belongs to the run being replaced:
    the resumed run's evaluations are 16 (kept), 32 and 48 (its own), each step once, and its best is one of them."""
    from stable_baselines3 import PPO

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    checkpoint = run / "checkpoints" / "policy_16_steps.zip"
    first = dict(np.load(run / "eval" / "evaluations.npz"))
    caplog.set_level("INFO", logger="fastav_eval.policies.train")
    assert main(["train-policy", "--out", str(run), "--resume", str(checkpoint), "--timesteps", "48", *TINY_CLI]) == 0
    evaluations = np.load(run / "eval" / "evaluations.npz")
    assert evaluations["timesteps"].tolist() == [16, 32, 48]
    np.testing.assert_array_equal(evaluations["results"][0], first["results"][0])  # the one before the checkpoint
    assert "dropping 1 val evaluation(s) made after it (at steps [32]" in caplog.text
    meta = PolicyMeta.load(run)
    best = int(np.argmax(evaluations["results"].mean(1)))
    assert meta.training["best_at_timestep"] == [16, 32, 48][best]
    assert meta.training["best_val_reward"] == float(evaluations["results"][best].mean())
    assert _val_reward(run) == meta.training["best_val_reward"]  # the saved policy is the one evaluated best
    if float(first["results"][1].mean()) > float(first["results"][0].mean()):  # the dropped evaluation was the best
        assert f"restored the best before it from {checkpoint}" in caplog.text
    if best < 2:  # the last checkpoint holds the weights after the last update, not the ones evaluated
        oracle = PPO.load(str(run / "checkpoints" / f"policy_{[16, 32, 48][best]}_steps.zip"), device="cpu")
        mine = LearnedChooser(run).model.state_dict()
        assert all(torch.equal(oracle.policy.state_dict()[name], tensor) for name, tensor in mine.items())


def _val_reward(folder: Path) -> float:
    """The saved policy's mean val reward, by SB3's ``evaluate_policy`` on the val documents it was selected on."""
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    meta = PolicyMeta.load(folder)
    kwargs = {**meta.env_kwargs, "split": "val", "per_task": meta.env_kwargs["val_per_task"], "order": "cycle"}
    del kwargs["val_per_task"]
    env = DummyVecEnv([lambda: Monitor(TokenRetentionEnv(**kwargs))])  # as in training (Monitor rounds rewards)
    episodes = len(env.envs[0].unwrapped.documents)
    rewards, _ = evaluate_policy(
        LearnedChooser(folder).model, env, episodes, deterministic=True, return_episode_rewards=True
    )
    env.close()
    return float(np.mean(rewards))


def test_resume_refusals_come_before_anything_is_built_or_written(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint's hyperparameters and steps are plain JSON in its ``data`` entry; a run from before
    ``val_set.json`` is checked against its ``policy.json``: each refused before an environment is built."""

    def no_building(*args: object, **kwargs: object) -> None:
        raise AssertionError("an environment was built before the refusal")

    monkeypatch.setattr(train_module, "_make_env", no_building)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = {path: path.stat().st_mtime_ns for path in run.rglob("*")}
    args = ["train-policy", "--out", str(run), "--resume", str(run / "checkpoints" / "policy_16_steps.zip")]
    assert main([*args, *TINY_CLI, "--timesteps", "48", "--learning-rate", "0.001"]) == 2
    assert "given: learning_rate=0.001 (the checkpoint: 0.0003)" in capsys.readouterr().err
    assert main([*args, *tiny_cli(n_steps="32"), "--timesteps", "48", "--seed", "1"]) == 2
    assert "given: n_steps=32 (the checkpoint: 16), seed=1 (the checkpoint: 0)" in capsys.readouterr().err
    assert main([*args, *TINY_CLI, "--timesteps", "16"]) == 2
    assert "timesteps=16; accepted: more than the 16 steps the checkpoint" in capsys.readouterr().err
    assert {path: path.stat().st_mtime_ns for path in run.rglob("*")} == before  # val_set.json not rewritten
    (run / "eval" / "val_set.json").unlink()  # a run from before val_set.json: its policy.json tells
    for changes, message in [
        ({"flops_weight": "0.7"}, "flops_weight=0.5 there, 0.7 now"),
        ({"reward": "score"}, "reward='mixed' there, 'score' now"),
        ({"tasks": "avsynth_qa,avsynth_match", "val_per_task": "1"},
         "per_task=2 there, 1 now; tasks=['avsynth_qa'] there, ['avsynth_qa', 'avsynth_match'] now"),
    ]:  # fmt: skip
        assert main([*args, *tiny_cli(**changes), "--timesteps", "48"]) == 2
        error = capsys.readouterr().err
        assert f"were made on another val set, as its {run / META_FILE} records: {message}" in error, error
    assert not (run / "eval" / "val_set.json").exists()


def test_train_policy_records_its_budget_and_resume_refuses_another(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--budget retention`` goes into ``policy.json`` and ``val_set.json``; resuming with another budget is refused
    before anything is built; a run recorded before ``--budget`` (no budget in either file) reads as ``flops``."""
    run = tmp_path / "run"
    assert main(["train-policy", "--out", str(run), "--timesteps", "16", "--budget", "retention", *TINY_CLI]) == 0
    assert PolicyMeta.load(run).env_kwargs["budget"] == "retention"
    assert json.loads((run / "eval" / "val_set.json").read_text())["budget"] == "retention"
    assert PolicyMeta.load(trained).env_kwargs["budget"] == "flops"  # the default, recorded too
    checkpoint = str(run / "checkpoints" / "policy_16_steps.zip")
    args = ["train-policy", "--out", str(run), "--resume", checkpoint, "--timesteps", "48", *TINY_CLI]
    assert main(args) == 2  # --budget left out: flops
    assert "were made on another val set: budget='retention' there, 'flops' now" in capsys.readouterr().err
    (run / "eval" / "val_set.json").unlink()  # a run from before val_set.json: its policy.json tells
    assert main(args) == 2
    assert f"as its {run / META_FILE} records: budget='retention' there, 'flops' now" in capsys.readouterr().err
    old = tmp_path / "old"  # a flops run recorded before --budget existed
    shutil.copytree(trained, old)
    val_set = json.loads((old / "eval" / "val_set.json").read_text())
    del val_set["budget"]
    (old / "eval" / "val_set.json").write_text(json.dumps(val_set))
    resume = {"out": old, "timesteps": 48, "resume": old / "checkpoints" / "policy_16_steps.zip", **TINY}
    assert check_output(TrainSettings(**resume)) is not None  # reads as flops
    with pytest.raises(ValueError, match="budget='flops' there, 'retention' now"):
        check_output(TrainSettings(**resume, budget="retention"))
    (old / "eval" / "val_set.json").unlink()
    meta = json.loads((old / META_FILE).read_text())
    del meta["env_kwargs"]["budget"]
    (old / META_FILE).write_text(json.dumps(meta))
    assert check_output(TrainSettings(**resume)) is not None
    with pytest.raises(ValueError, match="budget='flops' there, 'retention' now"):
        check_output(TrainSettings(**resume, budget="retention"))


def test_a_bad_budget_is_refused_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"budget='tokens'; accepted: \['flops', 'retention'\]"):
        TrainSettings(out=tmp_path, budget="tokens")
    with pytest.raises(SystemExit):
        main(["train-policy", "--out", str(tmp_path / "run"), "--budget", "tokens"])
    error = capsys.readouterr().err  # quoted or not, by Python version
    assert re.search(r"argument --budget: invalid choice: 'tokens' \(choose from '?flops'?, '?retention'?\)", error)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- devices and the cache
def fake_cuda(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize(
    ("argv", "cuda", "message"),
    [
        (
            ["--devices", "gpu0"],
            0,
            r"--devices='gpu0': 'gpu0' is not a device; accepted: a comma-separated list of cpu",
        ),
        (["--devices", "cpu,,cpu"], 0, r"'' is not a device; accepted: a comma-separated list of cpu, cuda"),
        (["--devices", "cuda:0"], 0, r"--devices='cuda:0': 'cuda:0' needs CUDA, which this machine does not have"),
        (["--devices", "cuda:2", "--n-envs", "2"], 2, r"'cuda:2'; accepted: cpu or cuda:0\.\.cuda:1"),
        (["--devices", "cuda,cuda:0", "--n-envs", "2"], 2, r"names a device twice"),
        (["--devices", "cuda:0,cuda:1", "--n-envs", "1"], 2, r"2 devices for n_envs=1 workers; accepted: at most 1"),
    ],
)
def test_train_policy_refuses_devices_it_cannot_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], cuda: int,
    message: str,
) -> None:  # fmt: skip
    fake_cuda(monkeypatch, cuda)
    assert main(["train-policy", "--out", str(tmp_path / "run"), *argv]) == 2
    assert not (tmp_path / "run").exists()
    assert re.search(message, capsys.readouterr().err), message


def test_devices_default_to_the_model_args_and_spread_over_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert TrainSettings(out=tmp_path).devices == ("cpu",)
    fake_cuda(monkeypatch, 2)
    assert TrainSettings(out=tmp_path, model_args="device=cuda:1", n_envs=1).devices == ("cuda:1",)
    settings = TrainSettings(out=tmp_path, devices=("cuda", "cuda:1"), n_envs=3)
    assert settings.devices == ("cuda:0", "cuda:1")
    assert [settings.device_of(rank) for rank in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert settings.first_pass_cache() == tmp_path / "cache"
    assert TrainSettings(out=tmp_path, cache_dir=tmp_path / "shared").first_pass_cache() == tmp_path / "shared"


def test_training_records_its_devices_and_fills_the_cache(trained: Path) -> None:
    meta = PolicyMeta.load(trained)
    assert meta.training["devices"] == ["cpu"] and meta.training["cache_dir"] == str(trained / "cache")
    assert "devices" not in meta.env_kwargs and "cache_dir" not in meta.env_kwargs  # not part of the val set
    assert len(list((trained / "cache").glob("*.json"))) == 5  # 3 train + 2 val documents, each computed once


def test_a_shared_cache_serves_a_second_run_and_resume_takes_other_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second run on the same --cache-dir computes no first pass (its entries are read, not rewritten); devices
    are where the work runs, not a hyperparameter: a resumed run may name others."""
    shared = tmp_path / "shared"
    first = train(TrainSettings(out=tmp_path / "a", timesteps=16, cache_dir=shared, **TINY))
    entries = {path: path.stat().st_mtime_ns for path in shared.glob("*.json")}
    assert len(entries) == 5 and not (first / "cache").exists()
    from fastav_eval.envs.samples import SampleRunner

    passes: list[int] = []
    run = SampleRunner.run

    def counting(self: SampleRunner, index: int, decide: object = None, watch: object = None) -> object:
        if decide is None:  # a first pass (no chooser decision): what the cache holds
            passes.append(index)
        return run(self, index, decide, watch)

    monkeypatch.setattr(SampleRunner, "run", counting)
    second = train(TrainSettings(out=tmp_path / "b", timesteps=16, cache_dir=shared, **TINY))
    assert passes == [] and {path: path.stat().st_mtime_ns for path in shared.glob("*.json")} == entries
    assert PolicyMeta.load(second).training["cache_dir"] == str(shared)
    fake_cuda(monkeypatch, 1)
    resumed = TrainSettings(out=first, timesteps=48, resume=first / "checkpoints" / "policy_16_steps.zip",
                            devices=("cuda:0",), **TINY)  # fmt: skip
    assert check_output(resumed) is not None  # checked like any resume; the other device is accepted
