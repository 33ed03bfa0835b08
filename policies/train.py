"""Train a pruning policy with Stable-Baselines3 in one of the environments, keep the best on the val split.

    fastav-eval train-policy --out runs/tiny_retention                     # PPO, TokenRetention, fastav_tiny
    fastav-eval train-policy --out runs/tiny_exchange --env exchange --timesteps 8000
    fastav-eval train-policy --out runs/tiny_retention --timesteps 30000 --resume \\
        runs/tiny_retention/checkpoints/policy_8192_steps.zip   # continue your own run (same settings)

(``python -m fastav_eval.policies.train`` takes the same arguments.) Training episodes come from the AV-Synth
``train`` split, model selection from the ``val`` split (each of its documents once, deterministic actions); the
test split is never read. ``--out`` must be new or empty, unless ``--resume`` continues a run in it (same val set,
same hyperparameters as the checkpoint; resumed from an earlier checkpoint than the last, the val evaluations after
its step are dropped). A run that fails before its first checkpoint removes what it wrote, so the same command can
be run again. The output folder holds:

- ``policy.safetensors`` + ``policy.json``: the best policy on val (weights; architecture, spaces, coding and what it
  was trained for, as plain JSON) -- ``policy=<folder>``; nothing in them is pickled;
- ``checkpoints/``: SB3's own zips every ``--checkpoint-every`` steps, for ``--resume`` (pickled: your own run's
  files only); ``best/policy.safetensors``: the best weights so far;
- ``tensorboard/``: SB3's logs (``tensorboard --logdir <out>/tensorboard``);
- ``eval/evaluations.npz`` + ``eval/val_set.json``, ``monitor/``: the val evaluations (and which val set they are
  of) and the training episodes;
- ``training_curves.png``: the training reward and the val reward over the steps;
- ``cache/``: each document's first pass (unpruned, or FastAV's for exchange), computed once and shared by the
  workers (``--cache-dir`` puts it elsewhere, to share it across runs; :mod:`fastav_eval.envs.cache`).

``--devices cuda:0,cuda:1`` spreads the workers' models: worker k on ``devices[k % len(devices)]``, the val
environment on the first (default: the device of ``--model_args``, else cpu).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastav_eval.avsynth import TASKS
from fastav_eval.avsynth.dataset import DEFAULT_SEED
from fastav_eval.env_ids import ENVIRONMENTS
from fastav_eval.envs.samples import (
    BUDGETS,
    DOCUMENTS_PER_TASK,
    REWARDS,
    SECONDS_PER_DOCUMENT,
    check_budget,
    check_seeds,
    parse_model_args,
)
from fastav_eval.policies.network import describe_network, save_weights
from fastav_eval.policies.saved import (
    ALGORITHMS,
    FORMAT,
    META_FILE,
    MODEL_FILE,
    PolicyMeta,
    decoder_identity,
    policy_hash,
)
from fastav_eval.records import read_json, write_json

logger = logging.getLogger(__name__)

ENVS = {kind: env.env_id for kind, env in ENVIRONMENTS.items()}
"""``--env`` kind -> Gymnasium id (:data:`fastav_eval.env_ids.ENVIRONMENTS`)."""
VAL_SET_FILE = "val_set.json"
"""``eval/val_set.json``: what the val evaluations in ``eval/evaluations.npz`` were computed on."""
RESUMED_HYPERPARAMETERS = {"learning_rate": "learning_rate", "n_steps": "n_steps", "entropy": "ent_coef",
                           "seed": "seed", "batch_size": "batch_size"}  # fmt: skip
"""Settings a checkpoint carries (setting -> SB3 attribute): a resumed run continues with the checkpoint's, so a
different value given with ``--resume`` is refused rather than silently ignored."""
OLD_BUDGET = "flops"
"""The budget of a run recorded before ``--budget`` existed (its ``val_set.json`` / ``policy.json`` lack it): every
such run charged relative FLOPs."""


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
    data_seeds: tuple[int, ...] = (DEFAULT_SEED,)
    flops_weight: float = 0.5
    reward: str = "mixed"
    budget: str = "flops"
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
    devices: tuple[str, ...] = ()
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.env not in ENVS:
            raise ValueError(f"env={self.env!r}; accepted: {sorted(ENVS)}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm={self.algorithm!r}; accepted: {list(ALGORITHMS)}")
        if self.reward not in REWARDS:
            raise ValueError(f"reward={self.reward!r}; accepted: {list(REWARDS)}")
        check_budget(self.budget)
        self.data_seeds = check_seeds(list(self.data_seeds))
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown or not self.tasks:
            raise ValueError(f"tasks={list(self.tasks)!r}; accepted: a non-empty list of {sorted(TASKS)}")
        for name in ("timesteps", "n_envs", "n_steps", "batch_size", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; accepted: an int >= 1")
        for name in ("train_per_task", "val_per_task"):
            if not 1 <= getattr(self, name) <= DOCUMENTS_PER_TASK:
                raise ValueError(
                    f"{name}={getattr(self, name)}; accepted: an int in 1..{DOCUMENTS_PER_TASK} (the documents per "
                    f"task that AV-Synth's {name.split('_')[0]} split holds)"
                )
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed={self.seed}; accepted: an int in 0..{2**32 - 1}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate={self.learning_rate}; accepted: a number > 0")
        for name in ("entropy", "flops_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name}={getattr(self, name)}; accepted: a number >= 0")
        if not self.devices:
            self.devices = (default_device(self.model_args),)
        self.devices = check_devices(self.devices, self.n_envs)
        rollout = self.n_steps * self.n_envs
        if self.algorithm == "PPO" and not 2 <= self.batch_size <= rollout:
            raise ValueError(
                f"batch_size={self.batch_size}; accepted: an int in 2..{rollout} for PPO (its minibatches are cut "
                f"from one rollout of n_steps * n_envs = {self.n_steps} * {self.n_envs} = {rollout} steps)"
            )

    def env_kwargs(self, split: str) -> dict[str, Any]:
        """The keyword arguments of a ``split`` environment: the train one draws from every ``data_seeds`` stream,
        the val one from the default seed's (the split the selection is made on, whatever the training seeds)."""
        per_task = self.train_per_task if split == "train" else self.val_per_task
        seeds = {"data_seed": list(self.data_seeds)} if split == "train" else {}
        return {**seeds, "model": self.model, "model_args": self.model_args, "tasks": list(self.tasks), "split": split,
                "per_task": per_task, "flops_weight": self.flops_weight, "reward": self.reward, "budget": self.budget,
                "order": "random" if split == "train" else "cycle", **self.env_options}  # fmt: skip

    def device_of(self, rank: int) -> str:
        """The device of training worker ``rank``: ``devices[rank % len(devices)]``."""
        return self.devices[rank % len(self.devices)]

    def first_pass_cache(self) -> Path:
        """The first-pass cache folder: ``--cache-dir``, else ``<out>/cache``."""
        return self.cache_dir if self.cache_dir is not None else self.out / "cache"

    def val_set(self) -> dict[str, Any]:
        """What a val evaluation's reward depends on (``eval/val_set.json``): evaluations of another are not
        comparable."""
        return {"env_id": ENVS[self.env], **self.env_kwargs("val")}


# ---------------------------------------------------------------------------------------------- checks before work
def default_device(model_args: str) -> str:
    """``--devices``' default: the ``device`` of ``model_args``, else cpu (model args that do not parse are left to
    the val environment, which names what is wrong with them)."""
    try:
        device = parse_model_args(model_args).get("device")
    except ValueError:
        device = None
    return str(device) if device else "cpu"


def check_devices(devices: tuple[str, ...] | list[str], n_envs: int) -> tuple[str, ...]:
    """``devices`` as the workers use them, or a ValueError naming ``--devices`` and what it accepts.

    Rule: each entry ``cpu``, ``cuda`` or ``cuda:<index>`` (``cuda`` means ``cuda:0``), each device once; CUDA
    entries need a CUDA device of that index on this machine; at most ``n_envs`` entries (worker k uses
    ``devices[k % len(devices)]``, so a device past the ``n_envs``-th would get no worker)."""
    accepted = "a comma-separated list of cpu, cuda or cuda:<index>, each once"
    names: list[str] = []
    for entry in devices:
        text = str(entry).strip()
        try:
            device = torch.device(text)
        except (RuntimeError, ValueError):
            device = None
        if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and text != "cpu"):
            raise ValueError(
                f"--devices={','.join(map(str, devices))!r}: {text!r} is not a device; accepted: {accepted}"
            )
        if device.type == "cuda":
            index = device.index or 0
            if not torch.cuda.is_available():
                raise ValueError(
                    f"--devices={','.join(devices)!r}: {text!r} needs CUDA, which this machine does not have; "
                    "accepted: cpu"
                )
            if index >= torch.cuda.device_count():
                raise ValueError(
                    f"--devices={','.join(devices)!r}: {text!r}; accepted: cpu or cuda:0..cuda:"
                    f"{torch.cuda.device_count() - 1} (the CUDA devices of this machine)"
                )
            text = f"cuda:{index}"
        names.append(text)
    if not names:
        raise ValueError(f"--devices=''; accepted: {accepted}")
    if len(set(names)) != len(names):
        raise ValueError(f"--devices={','.join(devices)!r} names a device twice; accepted: {accepted}")
    if len(names) > n_envs:
        raise ValueError(
            f"--devices={','.join(devices)!r}: {len(names)} devices for n_envs={n_envs} workers; accepted: at most "
            f"{n_envs} devices (worker k uses devices[k % len(devices)]; a device past the {n_envs}th would be unused)"
        )
    return tuple(names)


def check_output(settings: TrainSettings) -> dict[str, Any] | None:
    """Refuse what this run cannot do faithfully, before anything is built or written; returns the ``--resume``
    checkpoint's ``data`` (plain JSON), or None.

    - a non-empty ``--out`` without ``--resume`` (its evaluations and best score would decide the new run's best);
    - ``--resume`` naming no file, or a checkpoint of another algorithm, other hyperparameters, or as many steps as
      ``--timesteps`` already (read from the zip's ``data`` entry as JSON: nothing is unpickled, nothing built);
    - ``--resume`` into a folder whose val evaluations were made on another val set;
    - ``--resume`` from a step before the best val policy so far, when the best before that step cannot be restored.
    """
    out, resume = settings.out, settings.resume
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out={str(out)!r} is a file; accepted: a new or empty folder")
    held = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
    if held and resume is None:
        raise ValueError(
            f"--out={str(out)!r} is not empty (it holds {held[:6]}); accepted: a new or empty folder, or --resume "
            f"<checkpoint> to continue the run in it (e.g. --resume {out / 'checkpoints' / 'policy_<steps>_steps.zip'})"
        )
    if resume is None:
        return None
    if not resume.is_file():
        raise ValueError(
            f"--resume={str(resume)!r}: no such file; accepted: a checkpoint zip of your own train-policy run, e.g. "
            f"{out / 'checkpoints' / 'policy_<steps>_steps.zip'}"
        )
    data = checkpoint_data(resume)
    algorithm = checkpoint_algorithm(data)
    if algorithm != settings.algorithm:
        raise ValueError(
            f"algorithm={settings.algorithm!r}; accepted: {algorithm!r}, the algorithm of the --resume checkpoint "
            f"{str(resume)!r}"
        )
    check_resumed(settings, data)
    _check_val_set(settings)
    saved = out / "eval" / "evaluations.npz"
    if saved.is_file():
        _trim_evaluations(saved, checkpoint_steps(data, resume), out / "checkpoints")  # refuses an unrestorable best
    return data


def _check_val_set(settings: TrainSettings) -> None:
    """``--resume`` into a folder whose val evaluations were made on another val set is refused: by
    ``eval/val_set.json``, or for a run from before it, by the episodes per evaluation and ``policy.json``."""
    out = settings.out
    saved = out / "eval" / "evaluations.npz"
    if not saved.is_file():
        return
    recorded_path = out / "eval" / VAL_SET_FILE
    wanted = json.loads(json.dumps(settings.val_set()))
    if recorded_path.is_file():
        recorded = read_json(recorded_path, "the val set record")
        recorded = {"budget": OLD_BUDGET, **recorded} if isinstance(recorded, dict) else {}
        differ = sorted(key for key in {*recorded, *wanted} if recorded.get(key) != wanted.get(key))
        if differ:
            raise ValueError(
                f"--resume into {str(out)!r}: its val evaluations ({saved}) were made on another val set: "
                + "; ".join(f"{key}={recorded.get(key)!r} there, {wanted.get(key)!r} now" for key in differ)
                + "; accepted: the same val settings as that run, or a new --out"
            )
        return
    episodes = np.load(saved)["results"].shape[-1]
    documents = settings.val_per_task * len(set(settings.tasks))
    if episodes != documents:
        raise ValueError(
            f"--resume into {str(out)!r}: its val evaluations hold {episodes} episodes each, this val set "
            f"{documents} documents (val_per_task={settings.val_per_task}, {len(set(settings.tasks))} tasks); "
            "accepted: the same val settings as that run, or a new --out"
        )
    meta_path = out / META_FILE
    if not meta_path.is_file():
        return
    meta = read_json(meta_path, "policy metadata")
    env_kwargs = meta.get("env_kwargs") if isinstance(meta, dict) else None
    if not isinstance(env_kwargs, dict):
        return
    recorded = {key: env_kwargs[key] for key in ("model", "model_args", "tasks", "flops_weight", "reward")
                if key in env_kwargs}  # fmt: skip
    recorded["budget"] = env_kwargs.get("budget", OLD_BUDGET)
    if "val_per_task" in env_kwargs:
        recorded["per_task"] = env_kwargs["val_per_task"]
    if "env_id" in meta:
        recorded["env_id"] = meta["env_id"]
    differ = sorted(key for key in recorded if recorded[key] != wanted.get(key))
    if differ:
        raise ValueError(
            f"--resume into {str(out)!r}: its val evaluations ({saved}) were made on another val set, as its "
            f"{meta_path} records: "
            + "; ".join(f"{key}={recorded[key]!r} there, {wanted.get(key)!r} now" for key in differ)
            + "; accepted: the same settings as that run, or a new --out"
        )


def checkpoint_data(path: Path) -> dict[str, Any]:
    """The ``data`` entry of the SB3 zip ``path``, read as plain JSON: nothing is unpickled. SB3 stores numbers and
    strings (``num_timesteps``, ``learning_rate``, ``n_steps``, ...) as they are; objects are base64 pickles under
    ``:serialized:``, never decoded here."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"--resume={str(path)!r}: not a Stable-Baselines3 checkpoint ({error}); accepted: a checkpoint zip of "
            "your own train-policy run"
        ) from error
    if not isinstance(data, dict):
        raise ValueError(
            f"--resume={str(path)!r}: not a Stable-Baselines3 checkpoint (its data entry is not a JSON object); "
            "accepted: a checkpoint zip of your own train-policy run"
        )
    return data


def checkpoint_algorithm(data: dict[str, Any]) -> str:
    """PPO or A2C: which algorithm saved a checkpoint, from its ``data`` (:func:`checkpoint_data`); PPO's own settings
    (``n_epochs``) are stored only by PPO. SB3's ``A2C.load`` would take a PPO zip."""
    return "PPO" if "n_epochs" in data else "A2C"


def checkpoint_steps(data: dict[str, Any], path: Path) -> int:
    """The steps a checkpoint has trained (``num_timesteps`` of its ``data``)."""
    steps = data.get("num_timesteps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(
            f"--resume={str(path)!r}: num_timesteps={steps!r} in its data entry; accepted: a checkpoint zip of your "
            "own train-policy run (an int >= 0 there)"
        )
    return steps


def check_resumed(settings: TrainSettings, data: dict[str, Any]) -> None:
    """A resumed model continues with the checkpoint's hyperparameters and step count (its ``data``, plain JSON):
    refuse other values given now (``policy.json`` would claim them), and a ``--timesteps`` the checkpoint has
    already reached."""
    differ = []
    for name, attribute in RESUMED_HYPERPARAMETERS.items():
        if name == "batch_size" and settings.algorithm != "PPO":
            continue
        theirs = data.get(attribute)
        if isinstance(theirs, bool) or not isinstance(theirs, float | int):
            continue  # not stored as a number: nothing to compare
        if not math.isclose(float(theirs), float(getattr(settings, name))):
            differ.append(f"{name}={getattr(settings, name)!r} (the checkpoint: {theirs!r})")
    if differ:
        raise ValueError(
            f"--resume={str(settings.resume)!r} continues with its own hyperparameters; given: {', '.join(differ)}; "
            "accepted: the checkpoint's values (or leave --resume out and train anew)"
        )
    steps = checkpoint_steps(data, settings.resume or Path())
    if steps >= settings.timesteps:
        raise ValueError(
            f"timesteps={settings.timesteps}; accepted: more than the {steps} steps the checkpoint "
            f"{str(settings.resume)!r} has already trained"
        )


def _trim_evaluations(saved: Path, steps: int, checkpoints: Path) -> tuple[list[int], Path | None, float | None]:
    """What resuming at ``steps`` keeps of the val evaluations in ``saved``: the indices of those at or before
    ``steps`` (later ones belong to the run after that checkpoint, which this run replaces); and, when the best so
    far is among the dropped, so that ``best/`` holds weights this run no longer has: the checkpoint at the best kept
    evaluation's step and its recorded mean reward (to restore ``best/`` from), or ``(None, -inf)`` when no
    evaluation is kept. Refused when that checkpoint is missing."""
    with np.load(saved) as data:
        timesteps, means = [int(t) for t in data["timesteps"]], np.mean(data["results"], axis=1)
    keep = [index for index, step in enumerate(timesteps) if step <= steps]
    best = int(np.argmax(means)) if len(means) else None
    if best is None or best in keep:
        return keep, None, None
    if not keep:
        return keep, None, -math.inf
    kept_best = keep[int(np.argmax(means[keep]))]
    source = checkpoints / f"policy_{timesteps[kept_best]}_steps.zip"
    if not source.is_file():
        raise ValueError(
            f"--resume at step {steps}: the best val policy so far (step {timesteps[best]}) came after it, and the "
            f"best before it (step {timesteps[kept_best]}) has no checkpoint ({source} is missing) to restore it from; "
            f"accepted: a --resume checkpoint at or after step {timesteps[best]}, or a new --out"
        )
    return keep, source, float(means[kept_best])


# ---------------------------------------------------------------------------------------------- pieces of a run
def _make_env(
    env_id: str,
    kwargs: dict[str, Any],
    monitor_file: Path | None,
    threads: int | None,
    device: str | None = None,
    cache_dir: Path | None = None,
) -> Any:
    """A builder of one environment (in a worker process, for SubprocVecEnv): its model on ``device`` (None: the
    model args' own), its first passes shared through ``cache_dir`` (None: in memory only)."""

    def build() -> Any:
        import gymnasium
        from stable_baselines3.common.monitor import Monitor

        import fastav_eval.envs  # noqa: F401 (registers the environments in a worker process)

        arguments = dict(kwargs)
        if device is not None:
            arguments["model_args"] = {**parse_model_args(arguments.get("model_args")), "device": device}
        env = gymnasium.make(env_id, **arguments, threads=threads, cache_dir=cache_dir)
        return Monitor(env, str(monitor_file) if monitor_file else None)

    return build


def _restore_evaluations(
    callback: Any, log_path: Path, steps: int, settings: TrainSettings, eval_env: Any, episodes: int
) -> None:
    """A resumed run keeps its earlier val evaluations (file and best so far) up to the checkpoint's ``steps``: SB3's
    EvalCallback starts empty. Evaluations after ``steps`` were of the run this one replaces: dropped (said in the
    log); when the best so far was among them, ``best/`` gets the best kept evaluation's weights back from its
    checkpoint, once they score on val what that evaluation recorded (a run's last checkpoint holds the weights after
    its last update, not the ones evaluated at its step: refused)."""
    saved = log_path / "evaluations.npz"
    if not saved.is_file():
        return
    best_file = log_path.parent / "best" / MODEL_FILE
    keep, source, recorded = _trim_evaluations(saved, steps, log_path.parent / "checkpoints")
    with np.load(saved) as data:
        timesteps = [int(data["timesteps"][index]) for index in keep]
        results = [list(data["results"][index]) for index in keep]
        lengths = [list(data["ep_lengths"][index]) for index in keep]
        dropped = [int(step) for step in data["timesteps"] if int(step) > steps]
    earlier = None
    if source is not None and recorded is not None:
        from stable_baselines3.common.evaluation import evaluate_policy

        from fastav_eval.policies.convert import load_own_zip

        earlier = load_own_zip(settings.algorithm, source, "train-policy --resume (the best before the resumed step)")
        rewards, _ = evaluate_policy(earlier, eval_env, episodes, deterministic=True, return_episode_rewards=True)
        if not math.isclose(float(np.mean(rewards)), recorded, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(
                f"--resume={str(settings.resume)!r}: the best val policy so far came after step {steps}, and the best "
                f"before it cannot be restored: {source} scores {float(np.mean(rewards))!r} on val where its "
                f"evaluation recorded {recorded!r} (the last checkpoint of a run holds the weights after its last "
                "update); accepted: a --resume checkpoint at or after the best so far, or a new --out"
            )
    if dropped:
        logger.info(
            "resuming at step %d: dropping %d val evaluation(s) made after it (at steps %s, by the run this one "
            "replaces); keeping %d", steps, len(dropped), dropped, len(keep),
        )  # fmt: skip
        if results:
            np.savez(saved, timesteps=timesteps, results=results, ep_lengths=lengths)
        else:
            saved.unlink()
    if recorded is not None:  # the best so far was dropped
        best_file.unlink(missing_ok=True)
        if earlier is not None:
            save_weights(earlier.policy, best_file, metadata={"format": FORMAT})
            logger.info(
                "the best val policy so far came after step %d: restored the best before it from %s", steps, source
            )
    callback.evaluations_timesteps = timesteps
    callback.evaluations_results = results
    callback.evaluations_length = lengths
    if results:
        callback.best_mean_reward = float(np.max(np.mean(results, axis=1)))


def _export_best(callback_base: type) -> Any:
    """An SB3 callback for ``EvalCallback(callback_on_new_best=...)``: writes the new best policy's weights to
    ``<best>/policy.safetensors`` (no pickle; its architecture goes into ``policy.json`` at the end)."""

    class ExportBest(callback_base):  # type: ignore[misc, valid-type]
        def __init__(self, best: Path) -> None:
            super().__init__(verbose=0)
            self.best = best

        def _on_step(self) -> bool:
            save_weights(self.model.policy, self.best / MODEL_FILE, metadata={"format": FORMAT})
            return True

    return ExportBest


def _export_earlier_best(algorithm: str, best_dir: Path) -> None:
    """A run resumed from before ``fastav-policy/2`` kept its best as SB3's ``best/best_model.zip`` (the user's own
    file): its weights become ``best/policy.safetensors``, so an earlier best still wins over a worse later one."""
    legacy = best_dir / "best_model.zip"
    if (best_dir / MODEL_FILE).is_file() or not legacy.is_file():
        return
    from fastav_eval.policies.convert import load_own_zip

    earlier = load_own_zip(algorithm, legacy, "train-policy --resume (the best so far)")
    save_weights(earlier.policy, best_dir / MODEL_FILE, metadata={"format": FORMAT})


def _evaluate_final(model: Any, eval_env: Any, episodes: int, evaluation: Any, out: Path) -> None:
    from stable_baselines3.common.evaluation import evaluate_policy

    rewards, lengths = evaluate_policy(model, eval_env, episodes, deterministic=True, return_episode_rewards=True)
    evaluation.evaluations_timesteps.append(model.num_timesteps)
    evaluation.evaluations_results.append(list(rewards))
    evaluation.evaluations_length.append(list(lengths))
    np.savez(out / "eval" / "evaluations.npz", timesteps=evaluation.evaluations_timesteps,
             results=evaluation.evaluations_results, ep_lengths=evaluation.evaluations_length)  # fmt: skip
    save_weights(model.policy, out / "best" / MODEL_FILE, metadata={"format": FORMAT})


def _build_model(settings: TrainSettings, train_env: Any, tensorboard: str) -> Any:
    """A new SB3 model, or the ``--resume`` checkpoint (SB3's ``load``: the user's own file, said so on stderr; its
    settings were checked by :func:`check_output` before anything was built)."""
    import stable_baselines3

    if settings.resume is not None:
        from fastav_eval.policies.convert import load_own_zip

        model = load_own_zip(
            settings.algorithm, settings.resume, "train-policy --resume", env=train_env, tensorboard_log=tensorboard
        )
        logger.info("resuming %s from %s at %d steps", settings.algorithm, settings.resume, model.num_timesteps)
        return model
    extra = {"n_steps": settings.n_steps}
    if settings.algorithm == "PPO":
        extra.update(batch_size=settings.batch_size, n_epochs=10)
    return getattr(stable_baselines3, settings.algorithm)(
        "MlpPolicy", train_env, learning_rate=settings.learning_rate, ent_coef=settings.entropy,
        gamma=0.0 if settings.env == "retention" else 0.99, seed=settings.seed, tensorboard_log=tensorboard,
        policy_kwargs={"net_arch": [64, 64]}, device="cpu", verbose=0, **extra,
    )  # fmt: skip


def train(settings: TrainSettings) -> Path:
    """Train, keep the best policy on val, write the output folder; returns it.

    A run that fails (or is interrupted) before its first checkpoint removes what it wrote into a new or empty
    ``--out``: there is nothing to resume, and the same command can be run again."""
    import fastav_eval.envs  # noqa: F401

    resumed = check_output(settings)
    out = settings.out
    created = None  # the first folder of out's path that this run creates
    for folder in (out, *out.parents):
        if folder.exists():
            break
        created = folder
    fresh = created is not None or not any(out.iterdir())  # check_output: new, or empty, or a run to resume
    try:
        _run(settings, resumed)
    except BaseException:  # a failure, or Ctrl-C
        if fresh and not any((out / "checkpoints").glob("*.zip")):
            _remove_partial(out, created)
        raise
    logger.info("best val policy: %s + %s (sha256 %s)", out / MODEL_FILE, META_FILE, policy_hash(out)[:12])
    return out


def _run(settings: TrainSettings, resumed: dict[str, Any] | None) -> None:
    """:func:`train` after its checks: build, learn, write the output folder."""
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback, EvalCallback
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    out = settings.out
    env_id = ENVS[settings.env]
    # The val environment first, in this process: a wrong model or model_args is refused here, not in a worker.
    logger.info("building the val environment (%s, %d documents per task)", settings.model, settings.val_per_task)
    cache = settings.first_pass_cache()
    eval_env = DummyVecEnv([_make_env(env_id, settings.env_kwargs("val"), None, None, settings.devices[0], cache)])
    train_env = None
    try:
        for sub in ("checkpoints", "eval", "monitor", "best"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        write_json(out / "eval" / VAL_SET_FILE, settings.val_set(), indent=1, sort_keys=True)
        val_documents = len(eval_env.envs[0].unwrapped.documents)
        logger.info(
            "building %d training environment(s): %d train documents per task from each of seeds %s (about %.0f s "
            "of rendering)",
            settings.n_envs, settings.train_per_task, ",".join(map(str, settings.data_seeds)),
            settings.train_per_task * len(settings.tasks) * len(settings.data_seeds) * SECONDS_PER_DOCUMENT,
        )  # fmt: skip
        threads = 1 if settings.n_envs > 1 else None
        builders = [
            _make_env(env_id, settings.env_kwargs("train"), out / "monitor" / f"train_{rank}", threads,
                      settings.device_of(rank), cache)
            for rank in range(settings.n_envs)
        ]  # fmt: skip
        train_env = SubprocVecEnv(builders) if settings.n_envs > 1 else DummyVecEnv(builders)
        train_env.seed(settings.seed)
        model = _build_model(settings, train_env, str(out / "tensorboard"))
        best_dir = out / "best"
        if settings.resume is not None:
            _export_earlier_best(settings.algorithm, best_dir)
        evaluation = EvalCallback(
            eval_env, n_eval_episodes=val_documents, eval_freq=max(1, settings.eval_every // settings.n_envs),
            log_path=str(out / "eval"), best_model_save_path=None, deterministic=True, verbose=0,
            callback_on_new_best=_export_best(BaseCallback)(best_dir),
        )  # fmt: skip
        if resumed is not None:
            steps = checkpoint_steps(resumed, settings.resume or Path())
            _restore_evaluations(evaluation, out / "eval", steps, settings, eval_env, val_documents)
        checkpoints = CheckpointCallback(
            max(1, settings.checkpoint_every // settings.n_envs), str(out / "checkpoints"), name_prefix="policy"
        )
        remaining = settings.timesteps - model.num_timesteps
        logger.info(
            "training %s on %s (%s, λ=%s on %s, reward %s): %d steps in %d envs, val on %d documents every %d steps",
            settings.algorithm, env_id, settings.model, settings.flops_weight, settings.budget, settings.reward,
            remaining,
            settings.n_envs, val_documents, settings.eval_every,
        )  # fmt: skip
        started = time.perf_counter()
        with torch.enable_grad():  # SB3's updates need autograd, whatever mode the caller is in
            model.learn(
                remaining, callback=CallbackList([checkpoints, evaluation]), progress_bar=True,
                reset_num_timesteps=settings.resume is None, tb_log_name=settings.algorithm,
            )  # fmt: skip
        seconds = time.perf_counter() - started
        model.save(str(out / "checkpoints" / f"policy_{model.num_timesteps}_steps"))
        if not (best_dir / MODEL_FILE).is_file():  # no evaluation ran (a run shorter than eval_every)
            _evaluate_final(model, eval_env, val_documents, evaluation, out)
        shutil.copyfile(best_dir / MODEL_FILE, out / MODEL_FILE)
        write_meta(settings, eval_env.envs[0].unwrapped, model, seconds, evaluation)
        write_curves(out)
    finally:
        if train_env is not None:
            train_env.close()
        eval_env.close()


def _remove_partial(out: Path, created: Path | None) -> None:
    """A run that failed before its first checkpoint leaves nothing to resume: remove what it wrote into ``out``
    (and ``created``, the first folder of ``out``'s path this run created), so the same command can be run again."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
    else:
        for path in out.iterdir():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    logger.info("the run stopped before its first checkpoint: removed what it had written to %s", out)


def write_meta(settings: TrainSettings, env: Any, model: Any, seconds: float, evaluation: Any) -> Path:
    """``policy.json``: the network's architecture and spaces, what the policy was trained for and how."""
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
        network=describe_network(model.policy),
        exchange=exchange,
        training={
            "timesteps": int(model.num_timesteps),
            "seconds_this_run": round(seconds, 1),
            "seed": settings.seed,
            "n_envs": settings.n_envs,
            "devices": list(settings.devices),
            "cache_dir": str(settings.first_pass_cache()),
            "n_steps": settings.n_steps,
            "batch_size": settings.batch_size if settings.algorithm == "PPO" else None,
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


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each option's default."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``train-policy``'s options (``--help`` shows their defaults with ArgumentDefaultsHelpFormatter)."""
    defaults = TrainSettings(out=Path("."))
    documents = f"documents per task, 1..{DOCUMENTS_PER_TASK}"
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        default=argparse.SUPPRESS,
        help="output folder: new or empty, unless --resume",
    )
    parser.add_argument("--env", default=defaults.env, choices=sorted(ENVS), help="the environment")
    parser.add_argument("--algorithm", default=defaults.algorithm, choices=ALGORITHMS, help="SB3 algorithm")
    parser.add_argument("--model", default=defaults.model, help="lmms-eval model name (fastav_tiny, ...)")
    parser.add_argument(
        "--model_args", default=defaults.model_args, help="its --model_args, no pruning keys (default: '%(default)s')"
    )
    parser.add_argument(
        "--tasks", type=task_list, default=",".join(defaults.tasks), help="AV-Synth tasks, comma-separated"
    )
    parser.add_argument("--train-per-task", type=int, default=defaults.train_per_task, help=f"train {documents}")
    parser.add_argument("--val-per-task", type=int, default=defaults.val_per_task, help=f"val {documents}")
    parser.add_argument(
        "--data-seeds", type=seed_list, default=",".join(map(str, defaults.data_seeds)),
        help="AV-Synth generator seeds of the train documents, comma-separated (--train-per-task from each); val "
        "always draws from the default seed",
    )  # fmt: skip
    parser.add_argument("--flops-weight", type=float, default=defaults.flops_weight, help="λ, >= 0, on the budget")
    parser.add_argument(
        "--budget", default=defaults.budget, choices=list(BUDGETS),
        help="what λ charges: relative prefill FLOPs, or the share of audio-visual tokens kept (mean over layers)",
    )  # fmt: skip
    parser.add_argument("--reward", default=defaults.reward, choices=list(REWARDS), help="what quality is")
    parser.add_argument("--timesteps", type=int, default=defaults.timesteps, help="environment steps in all")
    parser.add_argument("--n-envs", type=int, default=defaults.n_envs, help="SubprocVecEnv workers (1: in process)")
    parser.add_argument(
        "--devices", type=device_list, default=argparse.SUPPRESS,
        help="comma-separated devices of the workers' models (cpu, cuda:0, ...): worker k on devices[k %% len], the "
        "val environment on the first; at most --n-envs of them (default: --model_args' device, else cpu)",
    )  # fmt: skip
    parser.add_argument(
        "--cache-dir", type=Path, default=argparse.SUPPRESS,
        help="folder of the per-document first passes, shared by the workers; name one to share it across runs "
        "(default: <out>/cache)",
    )  # fmt: skip
    parser.add_argument("--n-steps", type=int, default=defaults.n_steps, help="rollout steps per env per update")
    parser.add_argument(
        "--batch_size", type=int, default=defaults.batch_size, help="PPO minibatch, 2..n_steps*n_envs (A2C: unused)"
    )
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="> 0")
    parser.add_argument("--entropy", type=float, default=defaults.entropy, help="entropy coefficient, >= 0")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every, help="steps between val evaluations")
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every, help="steps between zips")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="SB3 and environment seed")
    parser.add_argument(
        "--resume", type=Path, help="your own checkpoint zip to continue from (<out>/checkpoints/policy_<N>_steps.zip)"
    )


def task_list(text: str) -> tuple[str, ...]:
    """``--tasks a,b``: comma-separated, as in ``calibrate``, ``sweep`` and lmms-eval."""
    names = tuple(name.strip() for name in text.split(","))
    unknown = [name for name in names if name not in TASKS]
    if not text.strip() or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"--tasks {text!r}; accepted: comma-separated AV-Synth tasks, each once, from {sorted(TASKS)}"
        )
    return names


def seed_list(text: str) -> tuple[int, ...]:
    """``--data-seeds 1,2,3``: comma-separated distinct ints >= 0."""
    try:
        return check_seeds([int(part) for part in text.split(",")])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--data-seeds {text!r}; accepted: comma-separated distinct ints >= 0 (AV-Synth generator seeds)"
        ) from None


def device_list(text: str) -> tuple[str, ...]:
    """``--devices cuda:0,cuda:1``: comma-separated, checked with the number of workers by :func:`check_devices`."""
    return tuple(name.strip() for name in text.split(","))


def settings_from(args: argparse.Namespace) -> TrainSettings:
    names = {f.name for f in dataclasses.fields(TrainSettings)}
    values = {key: value for key, value in vars(args).items() if key in names}
    values["tasks"] = tuple(values["tasks"])
    return TrainSettings(**values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[train-policy] %(message)s")
    try:
        path = train(settings_from(args))
    except ValueError as error:
        parser.exit(2, f"train-policy: error: {error}\n")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
