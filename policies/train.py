"""Train a pruning policy with Stable-Baselines3 in one of the environments, keep the best on the val split.

    fastav-eval train-policy --out runs/tiny_retention                     # PPO, TokenRetention, fastav_tiny
    fastav-eval train-policy --out runs/tiny_exchange --env exchange --timesteps 8000
    fastav-eval train-policy --out runs/tiny_retention --resume runs/tiny_retention/checkpoints/policy_8192_steps.zip

(``python -m fastav_eval.policies.train`` takes the same arguments.) Training episodes come from the AV-Synth
``train`` split, model selection from the ``val`` split (each of its documents once, deterministic actions); the
test split is never read. The output folder holds:

- ``policy.zip`` + ``policy.json``: the best policy on val and what it was trained for (``policy=<folder>``);
- ``checkpoints/``: the model every ``--checkpoint-every`` steps (``--resume`` continues from one);
- ``tensorboard/``: SB3's logs (``tensorboard --logdir <out>/tensorboard``);
- ``eval/evaluations.npz``, ``monitor/``: the val evaluations and the training episodes;
- ``training_curves.png``: the training reward and the val reward over the steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastav_eval.avsynth import TASKS
from fastav_eval.policies.saved import ALGORITHMS, MODEL_FILE, PolicyMeta, decoder_identity, policy_hash

logger = logging.getLogger(__name__)

ENVS = {"retention": "fastav/TokenRetention-v0", "exchange": "fastav/TokenExchange-v0"}


@dataclass
class TrainSettings:
    """Everything a training run depends on (written into ``policy.json``)."""

    out: Path
    env: str = "retention"
    algorithm: str = "PPO"
    model: str = "fastav_tiny"
    model_args: str = ""
    tasks: tuple[str, ...] = tuple(sorted(TASKS))
    train_per_task: int = 240
    val_per_task: int = 60
    flops_weight: float = 0.5
    reward: str = "mixed"
    timesteps: int = 20_000
    n_envs: int = 2
    n_steps: int = 256
    batch_size: int = 128
    learning_rate: float = 3e-4
    entropy: float = 0.01
    eval_every: int = 2048
    checkpoint_every: int = 2048
    seed: int = 0
    resume: Path | None = None
    env_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.env not in ENVS:
            raise ValueError(f"env={self.env!r}; accepted: {sorted(ENVS)}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm={self.algorithm!r}; accepted: {list(ALGORITHMS)}")
        for name in ("timesteps", "n_envs", "n_steps", "batch_size", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; accepted: >= 1")

    def env_kwargs(self, split: str) -> dict[str, Any]:
        per_task = self.train_per_task if split == "train" else self.val_per_task
        return {"model": self.model, "model_args": self.model_args, "tasks": list(self.tasks), "split": split,
                "per_task": per_task, "flops_weight": self.flops_weight, "reward": self.reward,
                "order": "random" if split == "train" else "cycle", **self.env_options}  # fmt: skip


def _make_env(env_id: str, kwargs: dict[str, Any], monitor_file: Path | None, threads: int | None) -> Any:
    def build() -> Any:
        import gymnasium
        from stable_baselines3.common.monitor import Monitor

        import fastav_eval.envs  # noqa: F401 (registers the environments in a worker process)

        env = gymnasium.make(env_id, **kwargs, threads=threads)
        return Monitor(env, str(monitor_file) if monitor_file else None)

    return build


def _restore_evaluations(callback: Any, log_path: Path) -> None:
    """A resumed run keeps its earlier val evaluations (file and best so far): SB3's EvalCallback starts empty."""
    saved = log_path / "evaluations.npz"
    if not saved.is_file():
        return
    data = np.load(saved)
    callback.evaluations_timesteps = [int(t) for t in data["timesteps"]]
    callback.evaluations_results = [list(r) for r in data["results"]]
    callback.evaluations_length = [list(r) for r in data["ep_lengths"]]
    if len(data["results"]):
        callback.best_mean_reward = float(np.max(np.mean(data["results"], axis=1)))


def _evaluate_final(model: Any, eval_env: Any, episodes: int, evaluation: Any, out: Path) -> None:
    from stable_baselines3.common.evaluation import evaluate_policy

    rewards, lengths = evaluate_policy(model, eval_env, episodes, deterministic=True, return_episode_rewards=True)
    evaluation.evaluations_timesteps.append(model.num_timesteps)
    evaluation.evaluations_results.append(list(rewards))
    evaluation.evaluations_length.append(list(lengths))
    np.savez(out / "eval" / "evaluations.npz", timesteps=evaluation.evaluations_timesteps,
             results=evaluation.evaluations_results, ep_lengths=evaluation.evaluations_length)  # fmt: skip
    model.save(str(out / "best" / "best_model"))


def train(settings: TrainSettings) -> Path:
    """Train, keep the best policy on val, write the output folder; returns it."""
    import stable_baselines3
    from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback, EvalCallback
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    import fastav_eval.envs  # noqa: F401

    out = settings.out
    for sub in ("checkpoints", "eval", "monitor", "best"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    env_id = ENVS[settings.env]
    threads = 1 if settings.n_envs > 1 else None
    builders = [
        _make_env(env_id, settings.env_kwargs("train"), out / "monitor" / f"train_{rank}", threads)
        for rank in range(settings.n_envs)
    ]
    train_env = SubprocVecEnv(builders) if settings.n_envs > 1 else DummyVecEnv(builders)
    train_env.seed(settings.seed)
    eval_kwargs = settings.env_kwargs("val")
    eval_env = DummyVecEnv([_make_env(env_id, eval_kwargs, None, None)])
    val_documents = len(eval_env.envs[0].unwrapped.documents)
    algorithm = getattr(stable_baselines3, settings.algorithm)
    tensorboard = str(out / "tensorboard")
    if settings.resume is not None:
        model = algorithm.load(str(settings.resume), env=train_env, tensorboard_log=tensorboard, device="cpu")
        logger.info("resuming %s from %s at %d steps", settings.algorithm, settings.resume, model.num_timesteps)
    else:
        extra = {"n_steps": settings.n_steps}
        if settings.algorithm == "PPO":
            extra.update(batch_size=settings.batch_size, n_epochs=10)
        model = algorithm(
            "MlpPolicy", train_env, learning_rate=settings.learning_rate, ent_coef=settings.entropy,
            gamma=0.0 if settings.env == "retention" else 0.99, seed=settings.seed, tensorboard_log=tensorboard,
            policy_kwargs={"net_arch": [64, 64]}, device="cpu", verbose=0, **extra,
        )  # fmt: skip
    evaluation = EvalCallback(
        eval_env, n_eval_episodes=val_documents, eval_freq=max(1, settings.eval_every // settings.n_envs),
        log_path=str(out / "eval"), best_model_save_path=str(out / "best"), deterministic=True, verbose=0,
    )  # fmt: skip
    _restore_evaluations(evaluation, out / "eval")
    checkpoints = CheckpointCallback(
        max(1, settings.checkpoint_every // settings.n_envs), str(out / "checkpoints"), name_prefix="policy"
    )
    remaining = settings.timesteps - model.num_timesteps
    logger.info(
        "training %s on %s (%s, λ=%s, reward %s): %d steps in %d envs, val on %d documents every %d steps",
        settings.algorithm, env_id, settings.model, settings.flops_weight, settings.reward, remaining,
        settings.n_envs, val_documents, settings.eval_every,
    )  # fmt: skip
    started = time.perf_counter()
    if remaining > 0:
        with torch.enable_grad():  # SB3's updates need autograd, whatever mode the caller is in
            model.learn(
                remaining, callback=CallbackList([checkpoints, evaluation]), progress_bar=True,
                reset_num_timesteps=settings.resume is None, tb_log_name=settings.algorithm,
            )  # fmt: skip
    seconds = time.perf_counter() - started
    model.save(str(out / "checkpoints" / f"policy_{model.num_timesteps}_steps"))
    best = out / "best" / "best_model.zip"
    if not best.is_file():  # no evaluation ran (a run shorter than eval_every): the final model, evaluated once
        _evaluate_final(model, eval_env, val_documents, evaluation, out)
    shutil.copyfile(best, out / MODEL_FILE)
    unwrapped = eval_env.envs[0].unwrapped
    write_meta(settings, unwrapped, model.num_timesteps, seconds, evaluation)
    write_curves(out)
    train_env.close()
    eval_env.close()
    logger.info("best val policy: %s (sha256 %s)", out / MODEL_FILE, policy_hash(out)[:12])
    return out


def write_meta(settings: TrainSettings, env: Any, timesteps: int, seconds: float, evaluation: Any) -> Path:
    """``policy.json``: what the policy was trained for and how."""
    from fastav_eval.pruning import find_text_model

    text_config = find_text_model(env.samples.adapter.decoder).config
    means = [float(np.mean(r)) for r in evaluation.evaluations_results]
    best = int(np.argmax(means)) if means else None
    exchange = None
    if settings.env == "exchange":
        exchange = {"profile": env.profile.to_dict(), "fine_ratio": float(env.samples.runner.engine.config.fine_ratio)}
    meta = PolicyMeta(
        env_id=ENVS[settings.env],
        algorithm=settings.algorithm,
        coding=env.coding.to_dict(),
        model=settings.model,
        decoder=decoder_identity(text_config),
        modalities=["video", "audio"],
        env_kwargs={**settings.env_kwargs("train"), "val_per_task": settings.val_per_task},
        exchange=exchange,
        training={
            "timesteps": int(timesteps),
            "seconds_this_run": round(seconds, 1),
            "seed": settings.seed,
            "n_envs": settings.n_envs,
            "n_steps": settings.n_steps,
            "batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate,
            "entropy": settings.entropy,
            "best_val_reward": means[best] if best is not None else None,
            "best_at_timestep": evaluation.evaluations_timesteps[best] if best is not None else None,
            "resumed_from": str(settings.resume) if settings.resume else None,
            "date": date.today().isoformat(),
        },
    )
    return meta.save(settings.out)


def write_curves(out: Path) -> Path | None:
    """``training_curves.png``: training episode reward (moving mean) and val reward over the steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    monitors = sorted((out / "monitor").glob("*.monitor.csv"))
    for monitor in monitors:
        rows = np.genfromtxt(monitor, delimiter=",", skip_header=2)
        if rows.ndim == 2 and len(rows) > 1:
            lengths, rewards = rows[:, 1], rows[:, 0]
            window = max(1, len(rewards) // 50)
            smooth = np.convolve(rewards, np.ones(window) / window, mode="valid")
            steps = np.cumsum(lengths)[window - 1 :] * len(monitors)
            axis.plot(steps, smooth, alpha=0.6, label=f"train ({monitor.name.split('.')[0]})")
    saved = out / "eval" / "evaluations.npz"
    if saved.is_file():
        data = np.load(saved)
        axis.plot(data["timesteps"], data["results"].mean(axis=1), "o-", color="black", label="val (deterministic)")
    axis.set_xlabel("environment steps")
    axis.set_ylabel("episode reward")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = out / "training_curves.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainSettings(out=Path("."))
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--env", default=defaults.env, choices=sorted(ENVS))
    parser.add_argument("--algorithm", default=defaults.algorithm, choices=ALGORITHMS)
    parser.add_argument("--model", default=defaults.model, help="lmms-eval model name (fastav_tiny, ...)")
    parser.add_argument("--model-args", default=defaults.model_args, help="its --model_args (no pruning keys)")
    parser.add_argument("--tasks", nargs="+", default=list(defaults.tasks), choices=sorted(TASKS))
    parser.add_argument("--train-per-task", type=int, default=defaults.train_per_task)
    parser.add_argument("--val-per-task", type=int, default=defaults.val_per_task)
    parser.add_argument("--flops-weight", type=float, default=defaults.flops_weight, help="λ")
    parser.add_argument("--reward", default=defaults.reward, choices=["score", "loglik", "mixed"])
    parser.add_argument("--timesteps", type=int, default=defaults.timesteps)
    parser.add_argument("--n-envs", type=int, default=defaults.n_envs, help="SubprocVecEnv workers (1: in process)")
    parser.add_argument("--n-steps", type=int, default=defaults.n_steps, help="rollout steps per env per update")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--entropy", type=float, default=defaults.entropy, help="entropy coefficient")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--resume", type=Path, help="a checkpoint (.zip) to continue from")


def settings_from(args: argparse.Namespace) -> TrainSettings:
    names = {f.name for f in dataclasses.fields(TrainSettings)}
    values = {key: value for key, value in vars(args).items() if key in names}
    values["tasks"] = tuple(values["tasks"])
    return TrainSettings(**values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="[train-policy] %(message)s")
    path = train(settings_from(parser.parse_args(argv)))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
