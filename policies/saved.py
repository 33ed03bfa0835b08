"""A saved policy: a folder holding the Stable-Baselines3 model (``policy.zip``) and what it was trained for
(``policy.json``): the environment and its coding, the model and its decoder's shape, the modalities, the training
run. The learned chooser reads both; the run record names the folder and the hash of both files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastav_eval.records import read_json, sha256_of

FORMAT = "fastav-policy/1"
MODEL_FILE, META_FILE = "policy.zip", "policy.json"
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
SHIPPED: dict[str, str] = {"fastav_tiny_retention": "TokenRetention policy for fastav_tiny (the AV-Synth testbed)"}
"""Policies shipped with the package: ``policy=<name>`` finds them under ``policies/shipped/<name>``."""
ALGORITHMS = ("PPO", "A2C")
ENV_KINDS = {"fastav/TokenRetention-v0": "retention", "fastav/TokenExchange-v0": "exchange"}


@dataclass(frozen=True)
class PolicyMeta:
    """What a policy was trained for (``policy.json``).

    Attributes:
        env_id: the Gymnasium id it was trained in (one of :data:`ENV_KINDS`).
        algorithm: one of :data:`ALGORITHMS`.
        coding: the environment's coding (``RetentionCoding`` / ``ExchangeCoding`` ``to_dict()``).
        model: the lmms-eval model name it was trained on.
        decoder: ``{"model_type", "num_layers", "hidden_size"}`` of that model's text decoder.
        modalities: the audio-visual modalities its samples had.
        env_kwargs: the environment's keyword arguments (tasks, split, λ, reward, ...).
        exchange: for an exchange policy, FastAV's profile (in full) and fine ratio it refines.
        training: timesteps, seed, wall time, the best validation reward and where it was reached.
    """

    env_id: str
    algorithm: str
    coding: dict[str, Any]
    model: str
    decoder: dict[str, Any]
    modalities: list[str]
    env_kwargs: dict[str, Any]
    exchange: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    @property
    def kind(self) -> str:
        return ENV_KINDS[self.env_id]

    def save(self, directory: Path) -> Path:
        path = directory / META_FILE
        path.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> PolicyMeta:
        path = directory / META_FILE
        data = read_json(path, "policy metadata")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a FastAV policy (format {data.get('format')!r}; expected {FORMAT!r})")
        if data.get("env_id") not in ENV_KINDS or data.get("algorithm") not in ALGORITHMS:
            raise ValueError(
                f"{path}: env_id {data.get('env_id')!r} / algorithm {data.get('algorithm')!r}; accepted: "
                f"{sorted(ENV_KINDS)} / {list(ALGORITHMS)}"
            )
        return cls(**data)


def resolve_policy(where: str | Path) -> Path:
    """The policy folder ``where`` names: a folder (or its ``policy.zip``), or a shipped policy's name."""
    path = Path(where)
    if path.name == MODEL_FILE:
        path = path.parent
    if (path / MODEL_FILE).is_file() and (path / META_FILE).is_file():
        return path
    if str(where) in SHIPPED:
        shipped = SHIPPED_DIR / str(where)
        if (shipped / MODEL_FILE).is_file():
            return shipped
        raise FileNotFoundError(f"the shipped policy {where!r} is missing from {shipped}: this install is incomplete")
    raise FileNotFoundError(
        f"policy={where!r}: no {MODEL_FILE} and {META_FILE} there; accepted: a folder written by "
        f"`fastav-eval train-policy` (or its {MODEL_FILE}), or a shipped policy: {sorted(SHIPPED)}"
    )


def decoder_identity(text_config: Any) -> dict[str, Any]:
    """What a policy is bound to: the text decoder's type, depth and width."""
    return {"model_type": getattr(text_config, "model_type", None), "num_layers": int(text_config.num_hidden_layers),
            "hidden_size": int(text_config.hidden_size)}  # fmt: skip


def policy_hash(directory: Path) -> str:
    """sha256 over the policy's two files (model, then metadata)."""
    return sha256_of(b"".join((directory / name).read_bytes() for name in (MODEL_FILE, META_FILE)))
