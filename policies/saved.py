"""A saved policy: a folder holding the policy network's weights (``policy.safetensors``) and, as plain JSON, what
rebuilds it and what it was trained for (``policy.json``): the network's spaces and architecture
(:mod:`fastav_eval.policies.network`), the environment and its coding, the model and its decoder's shape, the
modalities, the training run. The learned chooser reads both; the run record names the folder and the hash of both.

Nothing in a policy folder is code, and nothing of it is unpickled. A folder of the earlier format (a Stable-Baselines3
``policy.zip``, whose ``data`` entry holds pickled objects that run when loaded) is refused; its owner converts it
once with ``fastav-eval convert-policy`` (:mod:`fastav_eval.policies.convert`).
"""

from __future__ import annotations

import shlex
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastav_eval.decoder_shape import DecoderShape
from fastav_eval.env_ids import ENVIRONMENTS
from fastav_eval.policies.network import check_network, save_weights
from fastav_eval.records import read_json, sha256_of, write_json

if TYPE_CHECKING:
    from stable_baselines3.common.policies import ActorCriticPolicy

FORMAT = "fastav-policy/2"
LEGACY_FORMAT = "fastav-policy/1"
"""The format before this one: ``policy.zip`` (an SB3 zip, pickled) + ``policy.json``; refused, convertible."""
MODEL_FILE, META_FILE, LEGACY_FILE = "policy.safetensors", "policy.json", "policy.zip"
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
SHIPPED: dict[str, str] = {"fastav_tiny_retention": "TokenRetention policy for fastav_tiny (the AV-Synth testbed)"}
"""Policies shipped with the package: ``policy=<name>`` finds them under ``policies/shipped/<name>``."""
ALGORITHMS = ("PPO", "A2C")
ENV_KINDS = {env.env_id: env.kind for env in ENVIRONMENTS.values()}
"""Gymnasium id -> the policy's kind (:data:`fastav_eval.env_ids.ENVIRONMENTS`)."""


class PolicyNotFoundError(FileNotFoundError, ValueError):
    """``policy=`` names no policy folder (a ValueError too: every command reports it as a bad argument)."""


class PickledPolicyError(ValueError):
    """A policy folder holding only a pickled SB3 zip: loading it would run the code inside it."""


def convert_command(directory: Path) -> str:
    return f"fastav-eval convert-policy {shlex.quote(str(directory))}"


def pickled_policy_error(zip_path: Path) -> PickledPolicyError:
    directory = zip_path.parent
    return PickledPolicyError(
        f"{zip_path}: a pickled Stable-Baselines3 policy ({LEGACY_FORMAT}); loading it would run any code inside it, "
        f"so it is refused; accepted: a folder with {MODEL_FILE} + {META_FILE} ({FORMAT}). If you trained this "
        f"policy yourself, convert it once with `{convert_command(directory)}` (it writes {MODEL_FILE} and a new "
        f"{META_FILE} beside it); never convert a file someone else gave you: ask them for the converted folder"
    )


@dataclass(frozen=True)
class PolicyMeta:
    """What rebuilds a policy and what it was trained for (``policy.json``).

    Attributes:
        env_id: the Gymnasium id it was trained in (one of :data:`ENV_KINDS`).
        algorithm: one of :data:`ALGORITHMS`.
        coding: the environment's coding (``RetentionCoding`` / ``ExchangeCoding`` ``to_dict()``).
        model: the lmms-eval model name it was trained on.
        decoder: that model's text decoder (:func:`decoder_identity`: ``{"model_type", "num_layers", "hidden_size"}``).
        modalities: the audio-visual modalities its samples had.
        env_kwargs: the environment's keyword arguments (tasks, split, λ, reward, ...).
        network: the policy network's spaces and architecture (:func:`~fastav_eval.policies.network.check_network`).
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
    network: dict[str, Any]
    exchange: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    @property
    def kind(self) -> str:
        return ENV_KINDS[self.env_id]

    def save(self, directory: Path) -> Path:
        """``<directory>/policy.json``, written atomically (plain JSON: no NaN, no objects)."""
        return write_json(directory / META_FILE, asdict(self), indent=1, sort_keys=True)

    @classmethod
    def check_fields(cls, data: dict[str, Any], path: Path, without: tuple[str, ...] = ()) -> None:
        """Refuse unknown or missing fields of ``policy.json`` (``data``, read from ``path``) and wrong values of
        the plain ones, naming each; ``without``: fields this file does not have (``network`` before /2)."""
        names = [f.name for f in fields(cls) if f.name not in without]
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        unknown, missing = sorted(set(data) - set(names)), sorted(set(required) - set(data) - set(without))
        if unknown or missing:
            raise ValueError(f"{path}: fields {unknown} unknown and {missing} missing; accepted: {sorted(names)}")
        if not (isinstance(data["env_id"], str) and data["env_id"] in ENV_KINDS):
            raise ValueError(f"{path}: env_id={data['env_id']!r}; accepted: {sorted(ENV_KINDS)}")
        if not (isinstance(data["algorithm"], str) and data["algorithm"] in ALGORITHMS):
            raise ValueError(f"{path}: algorithm={data['algorithm']!r}; accepted: {list(ALGORITHMS)}")
        if not isinstance(data["model"], str):
            raise ValueError(f"{path}: model={data['model']!r}; accepted: an lmms-eval model name (a string)")
        modalities = data["modalities"]
        if not (isinstance(modalities, list) and all(isinstance(name, str) for name in modalities)):
            raise ValueError(
                f"{path}: modalities={modalities!r}; accepted: a list of modality names, e.g. ['video', 'audio']"
            )
        for name in ("coding", "decoder", "env_kwargs", "training"):
            if not isinstance(data.get(name, {}), dict):
                raise ValueError(f"{path}: {name}={data[name]!r}; accepted: a JSON object")

    @classmethod
    def load(cls, directory: Path) -> PolicyMeta:
        """``<directory>/policy.json``, every field checked; a wrong one is refused by name."""
        path = directory / META_FILE
        data = read_json(path, "policy metadata")
        found = data.get("format") if isinstance(data, dict) else None
        if found == LEGACY_FORMAT:
            raise pickled_policy_error(directory / LEGACY_FILE)
        if found != FORMAT:
            raise ValueError(f"{path}: not a FastAV policy (format={found!r}; accepted: {FORMAT!r})")
        cls.check_fields(data, path)
        check_network(data["network"], str(path))
        return cls(**data)


def save_policy(directory: Path, policy: ActorCriticPolicy, meta: PolicyMeta) -> Path:
    """Write ``policy.safetensors`` (the network's weights) and ``policy.json`` (``meta``) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(policy, directory / MODEL_FILE, metadata={"format": FORMAT})
    meta.save(directory)
    return directory


def resolve_policy(where: str | Path) -> Path:
    """The policy folder ``where`` names: a folder (or one of its files), or a shipped policy's name.

    A folder of the earlier pickled format is refused (:class:`PickledPolicyError`) before anything in it is read.
    """
    path = Path(where)
    if path.name in (MODEL_FILE, META_FILE, LEGACY_FILE):
        path = path.parent
    if (path / MODEL_FILE).is_file() and (path / META_FILE).is_file():
        return path
    if (path / LEGACY_FILE).is_file():
        raise pickled_policy_error(path / LEGACY_FILE)
    if str(where) in SHIPPED:
        shipped = SHIPPED_DIR / str(where)
        if (shipped / MODEL_FILE).is_file() and (shipped / META_FILE).is_file():
            return shipped
        raise PolicyNotFoundError(f"the shipped policy {where!r} is missing from {shipped}: this install is incomplete")
    raise PolicyNotFoundError(
        f"policy={str(where)!r}: no {MODEL_FILE} and {META_FILE} there; accepted: a folder written by "
        f"`fastav-eval train-policy` (or one of its files), or a shipped policy: {sorted(SHIPPED)}"
    )


def decoder_identity(text_config: Any) -> dict[str, Any]:
    """What a policy is bound to: the text decoder's type, depth and width (:meth:`DecoderShape.identity`)."""
    return DecoderShape.from_config(text_config).identity(getattr(text_config, "model_type", None))


def policy_hash(directory: Path) -> str:
    """sha256 over the policy's two files (weights, then metadata)."""
    return sha256_of(b"".join((directory / name).read_bytes() for name in (MODEL_FILE, META_FILE)))
