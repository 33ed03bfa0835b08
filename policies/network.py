"""A policy network as plain data: its spaces and architecture in JSON, its weights in safetensors.

A saved policy never holds code. Loading one rebuilds Stable-Baselines3's ``ActorCriticPolicy`` (the network behind
``"MlpPolicy"`` of PPO and A2C) from the JSON below, then copies the weights in from ``policy.safetensors``; nothing
is unpickled, ``torch.load`` is never called and no name in a file is ever imported: the activation is looked up in
:data:`ACTIVATIONS`, a closed table.

The ``network`` entry of ``policy.json``::

    {"policy": "ActorCriticPolicy",
     "observation_space": {"type": "Box", "shape": [38], "dtype": "float32", "low": [...], "high": [...]},
     "action_space": {"type": "MultiDiscrete", "nvec": [5, 5, 3, 3, 3, 3]},   # or {"type": "Discrete", "n": 5}
     "net_arch": {"pi": [64, 64], "vf": [64, 64]},
     "activation": "Tanh",
     "share_features_extractor": true}

Only what the project's environments use is accepted: a flat float ``Box`` observation (shape ``[n]``, finite
bounds), a ``Discrete`` or 1-d ``MultiDiscrete`` action starting at 0, the default ``FlattenExtractor``, no gSDE.
Each space is checked by its role (:func:`check_space`), by the same function when a policy is exported and when one
is loaded, so every saved policy can be rebuilt exactly and nothing else is.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fastav_eval.records import write_atomic

if TYPE_CHECKING:
    from gymnasium import spaces
    from stable_baselines3.common.policies import ActorCriticPolicy

POLICY_CLASS = "ActorCriticPolicy"
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "Tanh": nn.Tanh, "ReLU": nn.ReLU, "LeakyReLU": nn.LeakyReLU, "ELU": nn.ELU, "GELU": nn.GELU, "SiLU": nn.SiLU,
}  # fmt: skip
"""The activations a saved policy may name (SB3's ``activation_fn``): a closed table, never an import path."""
OBSERVATION_DTYPES = ("float32", "float64")
NETWORK_KEYS = ("policy", "observation_space", "action_space", "net_arch", "activation", "share_features_extractor")
WEIGHTS_DTYPE = torch.float32


def _refuse(where: str, field: str, value: Any, accepted: str) -> ValueError:
    return ValueError(f"{where}: {field}={value!r}; accepted: {accepted}")


def _int_list(where: str, field: str, value: Any, minimum: int) -> list[int]:
    ok = isinstance(value, list) and all(
        isinstance(item, int) and not isinstance(item, bool) and item >= minimum for item in value
    )
    if not ok:
        raise _refuse(where, field, value, f"a list of ints >= {minimum}")
    return list(value)


# ---------------------------------------------------------------------------------------------- spaces <-> JSON
ROLES: dict[str, tuple[str, ...]] = {"observation": ("Box",), "action": ("Discrete", "MultiDiscrete")}
"""The space types a saved policy may have in each role."""
ROLE_RULES = {
    "observation": f"a Box of shape [n] with dtype in {list(OBSERVATION_DTYPES)} and finite bounds",
    "action": "a Discrete or 1-d MultiDiscrete space starting at 0",
}


def check_space(space: spaces.Space, role: str, where: str = "") -> spaces.Space:
    """Refuse a space a saved policy cannot have as its ``role`` (``observation`` or ``action``) space; the same
    check on export (:func:`space_to_dict`) and on load (:func:`space_from_dict`)."""
    from gymnasium import spaces

    if role not in ROLES:
        raise ValueError(f"role={role!r}; accepted: {sorted(ROLES)}")
    field = f"{where}: network.{role}_space" if where else f"{role} space"
    ok = type(space).__name__ in ROLES[role]
    if isinstance(space, spaces.Box):
        low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
        ok = ok and len(space.shape) == 1 and np.dtype(space.dtype).name in OBSERVATION_DTYPES
        ok = ok and bool(np.isfinite(low).all() and np.isfinite(high).all())
    elif isinstance(space, spaces.Discrete):
        ok = ok and int(space.start) == 0
    elif isinstance(space, spaces.MultiDiscrete):
        ok = ok and space.nvec.ndim == 1 and not np.asarray(space.start).any()
    if not ok:
        raise ValueError(f"{field}={space}; accepted: {ROLE_RULES[role]}")
    return space


def space_to_dict(space: spaces.Space, role: str) -> dict[str, Any]:
    """A gymnasium space as plain data; a space a saved policy cannot have in ``role`` is refused."""
    from gymnasium import spaces

    check_space(space, role)
    if isinstance(space, spaces.Box):
        low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
        return {"type": "Box", "shape": list(space.shape), "dtype": np.dtype(space.dtype).name,
                "low": low.reshape(-1).tolist(), "high": high.reshape(-1).tolist()}  # fmt: skip
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    return {"type": "MultiDiscrete", "nvec": [int(n) for n in space.nvec]}


def space_from_dict(data: Any, where: str, role: str) -> spaces.Space:
    """The ``role`` space that :func:`space_to_dict` wrote; anything else is refused naming its field
    (``network.<role>_space...``)."""
    from gymnasium import spaces

    field = f"network.{role}_space"
    kinds = {"Box": ("type", "shape", "dtype", "low", "high"), "Discrete": ("type", "n"),
             "MultiDiscrete": ("type", "nvec")}  # fmt: skip
    kind = data.get("type") if isinstance(data, dict) else data
    if not (isinstance(kind, str) and kind in ROLES.get(role, ())):
        raise _refuse(where, f"{field}.type", kind, f"{list(ROLES.get(role, ()))} ({ROLE_RULES.get(role)})")
    if sorted(data) != sorted(kinds[kind]):
        raise _refuse(where, f"{field} keys", sorted(data), str(sorted(kinds[kind])))
    if kind == "Discrete":
        if isinstance(data["n"], bool) or not isinstance(data["n"], int) or data["n"] < 1:
            raise _refuse(where, f"{field}.n", data["n"], "an int >= 1")
        return check_space(spaces.Discrete(data["n"]), role, where)
    if kind == "MultiDiscrete":
        nvec = _int_list(where, f"{field}.nvec", data["nvec"], 1)
        if not nvec:
            raise _refuse(where, f"{field}.nvec", nvec, "a non-empty list of ints >= 1")
        return check_space(spaces.MultiDiscrete(np.array(nvec, dtype=np.int64)), role, where)
    shape = _int_list(where, f"{field}.shape", data["shape"], 1)
    if len(shape) != 1:
        raise _refuse(where, f"{field}.shape", shape, "[n]: a flat observation")
    if not (isinstance(data["dtype"], str) and data["dtype"] in OBSERVATION_DTYPES):
        raise _refuse(where, f"{field}.dtype", data["dtype"], str(list(OBSERVATION_DTYPES)))
    bounds = {}
    for name in ("low", "high"):
        value = data[name]
        ok = isinstance(value, list) and len(value) == shape[0]
        ok = ok and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in value)
        if not ok:
            raise _refuse(where, f"{field}.{name}", value, f"a list of {shape[0]} finite numbers (shape {shape})")
        bounds[name] = np.array(value, dtype=data["dtype"])
    if not (bounds["low"] <= bounds["high"]).all():
        raise _refuse(where, f"{field}.low", data["low"], f"<= {field}.high element-wise")
    return check_space(spaces.Box(bounds["low"], bounds["high"], dtype=np.dtype(data["dtype"])), role, where)


# ---------------------------------------------------------------------------------------------- policy <-> JSON
def describe_network(policy: ActorCriticPolicy) -> dict[str, Any]:
    """The ``network`` entry of ``policy.json`` for an SB3 policy (from a model trained or converted here).

    Refuses what a saved policy cannot rebuild: another policy class, another features extractor, gSDE, an
    activation outside :data:`ACTIVATIONS`.
    """
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.common.torch_layers import FlattenExtractor

    if type(policy) is not ActorCriticPolicy:
        raise ValueError(f"policy class {type(policy).__name__}; accepted: {POLICY_CLASS} (SB3's MlpPolicy)")
    if type(policy.features_extractor) is not FlattenExtractor or policy.features_extractor_kwargs:
        raise ValueError(f"features extractor {type(policy.features_extractor).__name__}; accepted: FlattenExtractor")
    if policy.use_sde:
        raise ValueError("use_sde=True; accepted: False (a saved policy has no gSDE noise)")
    names = [name for name, activation in ACTIVATIONS.items() if activation is policy.activation_fn]
    if not names:
        raise ValueError(f"activation_fn={policy.activation_fn!r}; accepted: one of {sorted(ACTIVATIONS)}")
    net_arch = policy.net_arch
    if isinstance(net_arch, dict):
        net_arch = {key: [int(width) for width in net_arch.get(key, [])] for key in ("pi", "vf")}
    else:
        net_arch = [int(width) for width in net_arch]
    return {
        "policy": POLICY_CLASS,
        "observation_space": space_to_dict(policy.observation_space, "observation"),
        "action_space": space_to_dict(policy.action_space, "action"),
        "net_arch": net_arch,
        "activation": names[0],
        "share_features_extractor": bool(policy.share_features_extractor),
    }


def check_network(data: Any, where: str) -> dict[str, Any]:
    """``policy.json``'s ``network`` entry, checked field by field (a ValueError names the first wrong one)."""
    _checked_spaces(data, where)
    return data


def _checked_spaces(data: Any, where: str) -> tuple[spaces.Space, spaces.Space]:
    """:func:`check_network`, returning the observation and action spaces it rebuilt on the way."""
    if not isinstance(data, dict):
        raise _refuse(where, "network", data, f"an object with keys {list(NETWORK_KEYS)}")
    if sorted(data) != sorted(NETWORK_KEYS):
        raise _refuse(where, "network keys", sorted(data), str(sorted(NETWORK_KEYS)))
    if data["policy"] != POLICY_CLASS:
        raise _refuse(where, "network.policy", data["policy"], repr(POLICY_CLASS))
    if not (isinstance(data["activation"], str) and data["activation"] in ACTIVATIONS):
        raise _refuse(where, "network.activation", data["activation"], f"one of {sorted(ACTIVATIONS)}")
    if not isinstance(data["share_features_extractor"], bool):
        raise _refuse(where, "network.share_features_extractor", data["share_features_extractor"], "true or false")
    net_arch = data["net_arch"]
    if isinstance(net_arch, dict):
        if sorted(net_arch) != ["pi", "vf"]:
            raise _refuse(where, "network.net_arch keys", sorted(net_arch), "['pi', 'vf']")
        for key in ("pi", "vf"):
            _int_list(where, f"network.net_arch.{key}", net_arch[key], 1)
    else:
        _int_list(where, "network.net_arch", net_arch, 1)
    observation = space_from_dict(data["observation_space"], where, "observation")
    return observation, space_from_dict(data["action_space"], where, "action")


def build_network(data: dict[str, Any], where: str) -> ActorCriticPolicy:
    """An SB3 ``ActorCriticPolicy`` with the architecture ``data`` describes (weights still initial), in eval mode.

    Built under a forked torch RNG: loading a policy leaves the caller's random state as it was.
    """
    from stable_baselines3.common.policies import ActorCriticPolicy

    observation_space, action_space = _checked_spaces(data, where)
    with torch.random.fork_rng(devices=[]):
        policy = ActorCriticPolicy(
            observation_space,
            action_space,
            lambda _progress: 0.0,  # lr_schedule: the optimizer SB3 builds is never stepped here
            net_arch=data["net_arch"],
            activation_fn=ACTIVATIONS[data["activation"]],
            share_features_extractor=data["share_features_extractor"],
        )
    return policy.to("cpu").eval()


# ---------------------------------------------------------------------------------------------- weights
def save_weights(policy: ActorCriticPolicy, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """The policy's ``state_dict`` (float32, CPU, contiguous) to ``path`` (safetensors), written atomically."""
    from safetensors.torch import save

    weights = policy.state_dict()
    state = {name: tensor.detach().to("cpu", WEIGHTS_DTYPE).contiguous() for name, tensor in weights.items()}
    return write_atomic(path, save(state, metadata=metadata))


def load_weights(policy: ActorCriticPolicy, path: Path) -> ActorCriticPolicy:
    """Copy the weights in ``path`` into ``policy``: every tensor must be there, with the shape and dtype that the
    architecture in ``policy.json`` gives; a missing, unexpected or misshapen tensor is refused by name.

    ``safetensors`` reads a JSON header and raw tensor bytes: no code runs.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error
    expected = policy.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path}: tensors {missing} missing and {unexpected} unexpected for the network in policy.json "
            f"(network.net_arch / network.observation_space / network.action_space); accepted: exactly "
            f"{sorted(expected)}"
        )
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape) or state[name].dtype != WEIGHTS_DTYPE:
            raise ValueError(
                f"{path}: tensor {name} has shape {list(state[name].shape)} ({state[name].dtype}); accepted: "
                f"{list(tensor.shape)} ({WEIGHTS_DTYPE}), as the network in policy.json (network.net_arch / "
                "network.observation_space / network.action_space) gives"
            )
    policy.load_state_dict(state, strict=True)
    policy.requires_grad_(False)
    return policy


__all__ = [
    "ACTIVATIONS", "build_network", "check_network", "check_space", "describe_network", "load_weights", "save_weights",
    "space_from_dict", "space_to_dict",
]  # fmt: skip
