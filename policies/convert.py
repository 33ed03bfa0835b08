"""``fastav-eval convert-policy <folder> [--out <folder>]``: a policy you trained yourself before
``fastav-policy/2`` (``policy.zip`` + ``policy.json``) to the safe format (``policy.safetensors`` + ``policy.json``).

This module is the one place that calls Stable-Baselines3's ``load`` on a file. That unpickles the zip's ``data``
entry, which executes any code planted in it, so it is only ever called explicitly: by this command, with a printed
warning, on a file its user made, and by ``train-policy --resume`` on the user's own checkpoint
(:func:`load_own_zip`). Loading a policy for evaluation (``policy=``) never comes here.

The conversion checks itself against SB3's own ``model.predict(deterministic=True)``: on seeded random observations
of the policy's observation space, the rebuilt network must give bit-identical actions, or nothing is written.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fastav_eval.policies.network import build_network, describe_network, load_weights
from fastav_eval.policies.saved import (
    ALGORITHMS,
    FORMAT,
    LEGACY_FILE,
    LEGACY_FORMAT,
    META_FILE,
    MODEL_FILE,
    PolicyMeta,
    save_policy,
)
from fastav_eval.records import read_json

PROBES = 1024
"""Random observations on which the converted network must act exactly as SB3's loaded model."""


def load_own_zip(algorithm: str, path: Path, why: str, **kwargs: Any) -> Any:
    """SB3's ``<algorithm>.load(path, **kwargs)``, after a warning on stderr: it unpickles ``path``, which runs any
    code inside it. ``why`` says which explicit request of the user's this is."""
    import stable_baselines3

    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r}; accepted: {list(ALGORITHMS)}")
    if not path.is_file():
        raise ValueError(f"{why}: {str(path)!r} is not a file")
    print(
        f"WARNING ({why}): loading {path} with Stable-Baselines3 unpickles it, which executes any code inside it; "
        "only do this with a file you made yourself",
        file=sys.stderr,
    )
    return getattr(stable_baselines3, algorithm).load(str(path), device="cpu", **kwargs)


def _legacy_meta(source: Path) -> dict[str, Any]:
    path = source / META_FILE
    if not (source / LEGACY_FILE).is_file():
        raise ValueError(
            f"convert-policy {source}: no {LEGACY_FILE} there; accepted: a folder written by `fastav-eval "
            f"train-policy` before {FORMAT} ({LEGACY_FILE} + {META_FILE})"
        )
    if not path.is_file():
        raise ValueError(
            f"convert-policy {source}: no {META_FILE} beside {LEGACY_FILE}; accepted: the whole folder train-policy "
            "wrote (a checkpoint zip alone does not say which environment, coding and model it was trained for)"
        )
    data = read_json(path, "policy metadata")
    found = data.get("format") if isinstance(data, dict) else None
    if found != LEGACY_FORMAT:
        raise ValueError(f"{path}: format={found!r}; accepted: {LEGACY_FORMAT!r} ({FORMAT} needs no converting)")
    PolicyMeta.check_fields(data, path, without=("network",))  # the network comes from the zip
    return {key: value for key, value in data.items() if key != "format"}


def _probe_observations(space: Any, count: int, seed: int = 0) -> np.ndarray:
    """``[count, obs]`` observations drawn uniformly inside the Box ``space`` (seeded), as the policy's dtype."""
    rng = np.random.default_rng(seed)
    low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    return rng.uniform(low, high, size=(count, *space.shape)).astype(space.dtype)


def convert(source: Path, out: Path | None = None, probes: int = PROBES) -> Path:
    """Convert the folder ``source`` (``policy.zip`` + ``policy.json`` of ``fastav-policy/1``) into ``out`` (default:
    ``source`` itself, where ``policy.zip`` is left in place, never read again); returns the folder written."""
    target = source if out is None else out
    if target.resolve() != source.resolve() and any((target / name).exists() for name in (MODEL_FILE, META_FILE)):
        raise ValueError(f"--out={str(target)!r} already holds a policy; accepted: a folder without one")
    old = _legacy_meta(source)
    model = load_own_zip(old["algorithm"], source / LEGACY_FILE, "convert-policy")
    meta = PolicyMeta(**old, network=describe_network(model.policy))
    with tempfile.TemporaryDirectory() as scratch:  # written, read back as a user will, checked, then kept
        written = save_policy(Path(scratch), model.policy, meta)
        reread = PolicyMeta.load(written)
        rebuilt = load_weights(build_network(reread.network, str(written / META_FILE)), written / MODEL_FILE)
        observations = _probe_observations(model.observation_space, probes)
        expected, _ = model.predict(observations, deterministic=True)
        actual, _ = rebuilt.predict(observations, deterministic=True)
        if reread != meta:
            raise ValueError(
                f"convert-policy {source}: {META_FILE} read back differs from what was written; nothing written to "
                f"{target}; accepted: a {META_FILE} whose values survive a JSON round trip"
            )
        if not np.array_equal(expected, actual):
            differ = int(
                np.any(np.asarray(expected).reshape(probes, -1) != np.asarray(actual).reshape(probes, -1), 1).sum()
            )
            raise ValueError(
                f"convert-policy {source}: the rebuilt network acts differently from SB3's model.predict"
                f"(deterministic=True) on {differ} of {probes} random observations, so nothing was written to "
                f"{target}; accepted: a {LEGACY_FILE} whose policy is SB3's MlpPolicy as train-policy built it "
                "(report this if it is one)"
            )
    save_policy(target, model.policy, meta)
    print(
        f"converted {source / LEGACY_FILE} -> {target / MODEL_FILE} + {target / META_FILE} ({FORMAT}); the same "
        f"actions as SB3's model.predict(deterministic=True) on {probes} random observations"
        + (f"; {source / LEGACY_FILE} is no longer read and may be deleted" if target == source else "")
    )
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help=f"a policy folder you made ({LEGACY_FILE} + {META_FILE})")
    parser.add_argument("--out", type=Path, help="where to write the converted policy (default: the same folder)")


def run(args: argparse.Namespace) -> int:
    """The ``convert-policy`` command."""
    convert(args.folder, args.out)
    return 0


__all__ = ["add_arguments", "convert", "load_own_zip", "run"]
