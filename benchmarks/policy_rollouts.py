"""Environment steps per second of train-policy's rollouts: 1 vs 2 processes, cold vs warm first-pass cache.

    python benchmarks/policy_rollouts.py                  # fastav_tiny and the tiny VideoLLaMA2 checkpoint, CPU

Each setting builds the training environments as ``fastav-eval train-policy`` does (its ``_make_env``: the train
split, random document order, one torch thread per worker when there are two; 1 process: ``DummyVecEnv``, 2:
``SubprocVecEnv``), then times ``reset`` and ``--steps`` vector steps of seeded random actions, with no learning in
between. "cold": an empty first-pass cache folder; "warm": the same folder, filled by the cold run of the same
setting, read by new environments (new processes; their in-memory caches start empty), so the unpruned pass of
every document the warm run draws is read from disk. Environment construction (model loading, document rendering)
is not timed. Printed: each setting's steps, seconds, steps/s and the cache entries written, then the ratios side by
side (2 processes / 1, warm / cold).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fastav_eval.policies.train import ENVS, _make_env

ROOT = Path(__file__).resolve().parents[1]
VL2 = ROOT / "tests" / "fixtures" / "videollama2_tiny"
MODELS: dict[str, dict[str, Any]] = {
    "fastav_tiny": {"model": "fastav_tiny", "model_args": "", "per_task": 512},
    "videollama2_tiny": {
        "model": "fastav_videollama2",
        "model_args": f"pretrained={VL2},vision_tower={VL2}/siglip,dtype=float32,device=cpu",
        "per_task": 64,
    },
}
"""What each model runs: the tiny VideoLLaMA2 checkpoint takes ~10x longer per step, so it gets fewer documents."""
TASKS = ["avsynth_qa", "avsynth_match"]


def measure(model: str, n_envs: int, cache: Path, steps: int, seed: int) -> dict[str, float]:
    """Steps per second of ``n_envs`` training environments of ``model`` over ``steps`` vector steps."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    spec = MODELS[model]
    kwargs = {"model": spec["model"], "model_args": spec["model_args"], "tasks": TASKS, "split": "train",
              "per_task": spec["per_task"], "flops_weight": 0.5, "reward": "mixed", "order": "random"}  # fmt: skip
    threads = 1 if n_envs > 1 else None
    builders = [_make_env(ENVS["retention"], kwargs, None, threads, "cpu", cache) for _ in range(n_envs)]
    env = SubprocVecEnv(builders) if n_envs > 1 else DummyVecEnv(builders)
    try:
        env.seed(seed)
        env.action_space.seed(seed)
        before = len(list(cache.glob("*.json")))
        started = time.perf_counter()
        env.reset()
        for _ in range(steps):
            env.step(np.stack([env.action_space.sample() for _ in range(n_envs)]))
        seconds = time.perf_counter() - started
    finally:
        env.close()
    return {"steps": steps * n_envs, "seconds": seconds, "per_second": steps * n_envs / seconds,
            "written": len(list(cache.glob("*.json"))) - before}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {list(MODELS)}")
    parser.add_argument("--steps", type=int, default=300, help="vector steps per setting on fastav_tiny")
    parser.add_argument("--vl2-steps", type=int, default=40, help="vector steps per setting on videollama2_tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs")
    results: dict[tuple[str, int, str], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for model in args.models.split(","):
            steps = args.vl2_steps if model == "videollama2_tiny" else args.steps
            for n_envs in (1, 2):
                cache = Path(scratch) / f"{model}_{n_envs}"
                for state in ("cold", "warm"):
                    result = measure(model, n_envs, cache, steps, args.seed)
                    results[model, n_envs, state] = result
                    print(
                        f"{model:17s} n_envs={n_envs} {state}: {result['steps']:4.0f} steps in "
                        f"{result['seconds']:6.1f} s"
                        f" = {result['per_second']:6.2f} steps/s ({result['written']:.0f} cache entries written)",
                        flush=True,
                    )
    print(f"load average after: {os.getloadavg()}")
    print("\n| model | cache | 1 process (steps/s) | 2 processes (steps/s) | 2 / 1 |")
    print("|---|---|---|---|---|")
    for model in args.models.split(","):
        for state in ("cold", "warm"):
            one, two = results[model, 1, state]["per_second"], results[model, 2, state]["per_second"]
            print(f"| {model} | {state} | {one:.2f} | {two:.2f} | {two / one:.2f} |")
    print("\n| model | processes | warm / cold |")
    print("|---|---|---|")
    for model in args.models.split(","):
        for n_envs in (1, 2):
            ratio = results[model, n_envs, "warm"]["per_second"] / results[model, n_envs, "cold"]["per_second"]
            print(f"| {model} | {n_envs} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
